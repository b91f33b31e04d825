"""Validation of server.conf's data: pure, every problem found in one pass.

`parse` checks loaded YAML data and raises one `ConfigError` listing every problem, each naming
the file, the entry and the key and saying what is allowed, so that an operator fixes the file
in one pass. Its time is linear in the size of the data (a few thousand registries included).

Decisions an operator may want to know:
- An empty file, or one holding only comments, means all defaults (like `{}`): the defaults are
  safe, as they serve no DHCP.
- A section written with no value (`images:` with everything below commented out) means that
  section's defaults. `registries:` with no value is refused instead: it is ambiguous between
  "no registry at all" (`registries: []`) and "the default hub entry" (no `registries` key).
- The default `dhcp-range` is the longer of the two runs of host addresses on either side of the
  server's address: with the usual server address at the start of the subnet, every other host
  of the subnet. (A subnet of /30 or larger has an even number of hosts, so there is no tie.)
- Registry entries are named by their label when it is well formed and unique, else by their
  position counted from 0 (`registries[2]` is the third entry).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from waltd import names
from waltd.config.schema import (
    HUB,
    HUB_DESCRIPTION,
    SECTIONS,
    Api,
    Boot,
    Config,
    ConfigError,
    Daemon,
    Exports,
    Images,
    Problem,
    Registry,
    WaltNet,
)

MAX_DESCRIPTION = 35
MAX_FETCH_CONCURRENCY = 64
# Bounds that keep timers sane: a retry delay of 1e300 s would overflow the event loop.
MAX_RETRY_S = 86400.0
MAX_SHUTDOWN_BUDGET_S = 3600.0
# A search's bounds per source: an hour, a million repositories, 1 GiB of lists at most.
MAX_SEARCH_DEADLINE_S = 3600.0
# A node that takes more than an hour to boot is broken; ten resets are plenty.
MAX_BOOT_TIMEOUT_S = 3600.0
MAX_BOOT_RETRIES = 10
# One source's part in a default-image fetch: a day covers a slow link and a huge image.
MAX_FETCH_TIMEOUT_S = 86400.0
MAX_SEARCH_REPOSITORIES = 1_000_000
MIN_SEARCH_BYTES, MAX_SEARCH_BYTES = 64 * 2**10, 2**30
# sun_path holds 108 bytes including the final NUL: a longer socket path fails at bind().
MAX_SOCKET_PATH = 107

_WALT_NET_KEYS = ("interface", "ip", "dhcp-range")
_APIS = ("docker-hub", "docker-registry-v2", "jfrog-artifactory")
_PROTOCOLS = ("http", "https", "https-no-verify")
_AUTHS = ("none", "basic")
_NFS_SERVERS = ("kernel", "ganesha")
_COMMON_KEYS = ("label", "api", "description")
# Docker Hub's registry and web API by default; a pull-through mirror or a stand-in otherwise.
_HUB_KEYS = (*_COMMON_KEYS, "registry-url", "hub-url")
_V2_KEYS = (*_COMMON_KEYS, "host", "port", "protocol", "auth")
_REGISTRY_KEYS = {
    "docker-hub": _HUB_KEYS,
    "docker-registry-v2": _V2_KEYS,
    "jfrog-artifactory": (*_V2_KEYS, "repository"),
}
_ALL_REGISTRY_KEYS = _REGISTRY_KEYS["jfrog-artifactory"]
_DEFAULT_DESCRIPTIONS = {
    "docker-hub": HUB_DESCRIPTION,
    "docker-registry-v2": "Docker registry v2",
    "jfrog-artifactory": "JFrog Artifactory",
}
# Keys an operator may try for registry credentials: they belong in the secrets file.
_CREDENTIAL_KEYS = frozenset(
    {"password", "passwd", "username", "user", "login", "token", "secret", "credentials"}
)
_CREDENTIALS_ELSEWHERE = "credentials do not belong in server.conf; use walt-server-setup"
_RESERVED = f"{', '.join(names.CLONE_LOCATIONS[:-1])} and {names.CLONE_LOCATIONS[-1]}"

_HOSTNAME_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
# difflib's suggestions cost time in the key's length: a longer key gets none.
_MAX_SUGGESTED_KEY = 64

T = TypeVar("T")


class _Report:
    """Collects problems; `section` is the top-level section being checked (None: the top)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.section: str | None = None
        self.problems: list[Problem] = []

    def add(self, where: str, text: str) -> None:
        self.problems.append(Problem(self.source, self.section, where, None, text))

    def key(self, where: str, key: str, text: str) -> None:
        self.problems.append(Problem(self.source, self.section, where, key, text))


class _Invalid(Exception):
    """Raised by a value check; its text says what is wrong and what is allowed."""


def show(value: object) -> str:
    """A short description of a value for a message (YAML spellings for booleans and null)."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _not_allowed(value: object, choices: tuple[str, ...]) -> str:
    return f"{show(value)} is not allowed; use one of {', '.join(choices)}"


def _unknown_keys(
    report: _Report,
    where: str,
    mapping: Mapping[object, object],
    allowed: tuple[str, ...],
    misplaced: tuple[str, ...] = (),
    context: str = "",
) -> None:
    """Report keys outside `allowed`; `misplaced` ones are valid elsewhere, `context` says where."""
    listing = f"allowed keys: {', '.join(allowed)}"
    for key in mapping:
        if key in allowed:
            continue
        if isinstance(key, str) and key.lower() in _CREDENTIAL_KEYS:
            # Never echo the value: it is likely a secret.
            report.add(where, f"unknown key {key!r}: {_CREDENTIALS_ELSEWHERE}")
        elif key in misplaced:
            report.add(where, f"key {key!r} does not apply {context}; {listing}")
        else:
            short = isinstance(key, str) and len(key) <= _MAX_SUGGESTED_KEY
            guess = difflib.get_close_matches(key, allowed, n=1) if short else []
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            report.add(where, f"unknown key {show(key)}; {listing}{hint}")


def _mapping(
    report: _Report, where: str, value: object, allowed: tuple[str, ...]
) -> dict[str, object] | None:
    """The allowed keys of a mapping (null counts as empty), or None if it is not one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        report.add(where, f"must be a mapping with keys {', '.join(allowed)}, not {show(value)}")
        return None
    _unknown_keys(report, where, value, allowed)
    return {key: item for key, item in value.items() if key in allowed}


def _field(
    report: _Report,
    where: str,
    mapping: Mapping[str, object],
    key: str,
    check: Callable[[object], T],
    default: T | None = None,
    required: str = "",
) -> T | None:
    """The checked value of `key`, `default` when absent; None after reporting a problem.

    A non-empty `required` makes the key mandatory and says what to write.
    """
    if key not in mapping:
        if required:
            report.key(where, key, f"is required; {required}")
        return default
    try:
        return check(mapping[key])
    except _Invalid as err:
        report.key(where, key, str(err))
        return None


def _choice(choices: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _Invalid(_not_allowed(value, choices))

    return check


def _integer(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        # bool is an int in Python, but YAML `yes` must not pass as 1.
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise _Invalid(f"must be an integer from {low} to {high}, not {show(value)}")

    return check


def _seconds(high: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        # NaN fails both comparisons, infinity the upper bound.
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= high:
            return float(value)
        raise _Invalid(
            f"must be a number of seconds above 0 and at most {high:g}, not {show(value)}"
        )

    return check


def _absolute_path(example: str) -> Callable[[object], Path]:
    def check(value: object) -> Path:
        if isinstance(value, str) and value.startswith("/") and "\0" not in value:
            return Path(value)
        raise _Invalid(f"must be an absolute path, e.g. {example}, not {show(value)}")

    return check


def _socket_path(value: object) -> Path:
    path = _absolute_path("/run/waltd/api.sock")(value)
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise _Invalid(
            f"{show(str(path))} is {size} bytes long; a Unix socket path has at most "
            f"{MAX_SOCKET_PATH}"
        )
    return path


def _interface(value: object) -> str:
    # The kernel's dev_valid_name(): below IFNAMSIZ (16), no '/', ':' or space, not . or ..
    if (
        isinstance(value, str)
        and 1 <= len(value) <= 15
        and value.isascii()
        and value.isprintable()
        and not any(char in value for char in "/: ")
        and value not in (".", "..")
    ):
        return value
    raise _Invalid(
        f"{show(value)} is not a Linux interface name; use 1 to 15 characters without '/', "
        "':' or spaces, e.g. walt-net"
    )


def _server_ip(value: object) -> IPv4Interface:
    example = "e.g. 192.168.152.1/22"
    if not isinstance(value, str):
        raise _Invalid(
            f"must be the server's IPv4 address with the node subnet's prefix length, {example}, "
            f"not {show(value)}"
        )
    if "/" not in value:
        raise _Invalid(
            f"{show(value)} has no prefix length; write the server's address with the node "
            f"subnet's size, {example}"
        )
    try:
        ip = IPv4Interface(value)
    except ValueError:
        raise _Invalid(
            f"{show(value)} is not an IPv4 address with a prefix length, {example}"
        ) from None
    net = ip.network
    if net.prefixlen > 30:
        raise _Invalid(
            f"the subnet {net} leaves no address for nodes; use a prefix length of 30 or less"
        )
    if ip.ip.is_multicast or ip.ip.is_loopback or ip.ip.is_unspecified or ip.ip.is_reserved:
        raise _Invalid(f"{show(value)} is not a unicast address for a node network, {example}")
    for special, what in ((net.network_address, "network"), (net.broadcast_address, "broadcast")):
        if ip.ip == special:
            raise _Invalid(
                f"{show(value)} is the {what} address of {net}; use a host address, e.g. "
                f"{net.network_address + 1}/{net.prefixlen}"
            )
    return ip


def _default_dhcp_range(ip: IPv4Interface) -> tuple[IPv4Address, IPv4Address]:
    """The longer run of host addresses beside the server's address."""
    first = ip.network.network_address + 1
    last = ip.network.broadcast_address - 1
    if int(last) - int(ip.ip) >= int(ip.ip) - int(first):
        return ip.ip + 1, last
    return first, ip.ip - 1


def _dhcp_range(
    report: _Report, where: str, value: object, ip: IPv4Interface | None
) -> tuple[IPv4Address, IPv4Address] | None:
    """The checked range; when the server's address is unknown, only its form is checked."""
    example = "e.g. 192.168.152.100-192.168.155.250"
    parts = value.split("-") if isinstance(value, str) else []
    try:
        low, high = (IPv4Address(part.strip()) for part in parts)
    except ValueError:
        # Either not two parts (unpacking) or not two addresses.
        report.key(
            where, "dhcp-range", f"{show(value)} is not a range; write FIRST-LAST, {example}"
        )
        return None
    if ip is None:
        return None
    problems: list[str] = []
    first = ip.network.network_address + 1
    last = ip.network.broadcast_address - 1
    for end in (low, high):
        if not first <= end <= last:
            problems.append(
                f"{end} is outside the node subnet {ip.network}; use addresses from {first} "
                f"to {last}"
            )
    if low > high:
        problems.append(f"the first address {low} comes after the last {high}; write FIRST-LAST")
    elif low <= ip.ip <= high:
        problems.append(
            f"the range holds the server's own address {ip.ip}; start it after that address "
            "or end it before"
        )
    for problem in problems:
        report.key(where, "dhcp-range", problem)
    return None if problems else (low, high)


def _parse_network(report: _Report, value: object) -> WaltNet | None:
    network = _mapping(report, "network", value, ("walt-net",))
    if not network:
        return None
    where = "network.walt-net"
    net = _mapping(report, where, network["walt-net"], _WALT_NET_KEYS)
    if net is None:
        return None
    hint = "e.g. walt-net, the node network interface (without network.walt-net, no DHCP)"
    interface = _field(report, where, net, "interface", _interface, required=hint)
    ip = _field(report, where, net, "ip", _server_ip, required="e.g. 192.168.152.1/22")
    if "dhcp-range" in net:
        dhcp_range = _dhcp_range(report, where, net["dhcp-range"], ip)
    else:
        dhcp_range = None if ip is None else _default_dhcp_range(ip)
    if interface is None or ip is None or dhcp_range is None:
        return None
    return WaltNet(interface=interface, ip=ip, dhcp_range=dhcp_range)


def _description(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise _Invalid(f"must be one line of 1 to {MAX_DESCRIPTION} characters, not {show(value)}")
    if len(value) > MAX_DESCRIPTION:
        raise _Invalid(
            f"{show(value)} has {len(value)} characters; use at most {MAX_DESCRIPTION} "
            "(it fills a table column)"
        )
    return value


def _label(value: object) -> str:
    if not isinstance(value, str) or not names.is_label(value):
        raise _Invalid(
            f"{show(value)} is not allowed; use lower-case letters, digits and '-', e.g. local"
        )
    if value in names.CLONE_LOCATIONS:
        raise _Invalid(
            f"{value!r} is not allowed; {_RESERVED} are clone URL locations, choose another label"
        )
    return value


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return True
    # An all-digit last label is a mistyped IPv4 address, not a name.
    return (
        len(value) <= 253
        and _HOSTNAME_RE.fullmatch(value) is not None
        and not value.rsplit(".", 1)[-1].isdigit()
    )


def _host(value: object) -> str:
    if isinstance(value, str) and "@" in value:
        # Not echoed: the part before '@' is likely a user and password.
        raise _Invalid(f"must not hold credentials (user:password@host); {_CREDENTIALS_ELSEWHERE}")
    if isinstance(value, str) and _is_host(value):
        return value
    raise _Invalid(
        f"{show(value)} is not allowed; use a host name or IP address alone (no scheme, port "
        "or path), e.g. reg.example.org"
    )


def _base_url(value: object) -> str:
    if isinstance(value, str) and "@" in value:
        raise _Invalid(f"must not hold credentials (user:password@host); {_CREDENTIALS_ELSEWHERE}")
    if isinstance(value, str):
        parts = urlsplit(value)
        if (
            parts.scheme in ("http", "https")
            and parts.hostname
            and not parts.query
            and not parts.fragment
            and parts.path in ("", "/")
            and value.isprintable()
            and " " not in value
        ):
            return value.rstrip("/")
    raise _Invalid(
        f"{show(value)} is not allowed; use an http:// or https:// URL of a host and optional "
        "port, without a path, e.g. https://mirror.example.org:5000"
    )


def _repository(value: object) -> str:
    # The repository prefixes remote image names: it is a Docker path component.
    if isinstance(value, str) and names.is_path_component(value):
        return value
    raise _Invalid(
        f"{show(value)} is not allowed; use lower-case letters and digits, separated by '.', "
        "'_', '__' or '-' (a Docker path component), e.g. walt"
    )


def _raw_label(entry: object) -> str | None:
    """The entry's label if well formed (a docker-hub entry's defaults to hub), else None."""
    if not isinstance(entry, dict):
        return None
    label = entry.get("label", "hub" if entry.get("api") == "docker-hub" else None)
    return label if isinstance(label, str) and names.is_label(label) else None


def _parse_registry(report: _Report, where: str, entry: object) -> Registry | None:
    if not isinstance(entry, dict):
        report.add(
            where,
            f"must be a mapping with keys {', '.join(_ALL_REGISTRY_KEYS)}, not {show(entry)}",
        )
        return None
    apis = ", ".join(_APIS)
    api = _field(report, where, entry, "api", _choice(_APIS), required=f"use one of {apis}")
    allowed = _REGISTRY_KEYS[api] if api else _ALL_REGISTRY_KEYS
    _unknown_keys(report, where, entry, allowed, _ALL_REGISTRY_KEYS, f"to api {api}")
    description = _field(
        report, where, entry, "description", _description, _DEFAULT_DESCRIPTIONS.get(api or "")
    )
    if api == "docker-hub":
        if entry.get("label", "hub") != "hub":
            report.key(
                where,
                "label",
                f"{show(entry['label'])} is not allowed; the docker-hub entry is always "
                "labelled hub",
            )
            return None
        registry_url = _field(report, where, entry, "registry-url", _base_url)
        hub_url = _field(report, where, entry, "hub-url", _base_url)
        if description is None or (
            (registry_url is None and "registry-url" in entry)
            or (hub_url is None and "hub-url" in entry)
        ):
            return None
        return Registry("hub", api, description, registry_url=registry_url, hub_url=hub_url)
    # Without a known api, check the keys present but require none: the api error comes first.
    label = _field(report, where, entry, "label", _label, required="e.g. local" if api else "")
    host = _field(
        report, where, entry, "host", _host, required="e.g. reg.example.org" if api else ""
    )
    port = _field(report, where, entry, "port", _integer(1, 65535), 443)
    protocol = _field(report, where, entry, "protocol", _choice(_PROTOCOLS), "https")
    auth = _field(report, where, entry, "auth", _choice(_AUTHS), "none")
    jfrog = api == "jfrog-artifactory"
    repository = None
    if api != "docker-registry-v2":  # there, a repository is reported as a key that does not apply
        hint = "e.g. walt" if jfrog else ""
        repository = _field(report, where, entry, "repository", _repository, required=hint)
    if (
        api is None
        or description is None
        or label is None
        or host is None
        or port is None
        or protocol is None
        or auth is None
        or (jfrog and repository is None)
    ):
        return None
    return Registry(label, api, description, host, port, protocol, auth, repository)


def _endpoint(host: str, port: int) -> tuple[str, int]:
    """Host and port as compared: the host case-blind, an IP address in canonical form."""
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower(), port


def _parse_registries(report: _Report, value: object) -> tuple[Registry, ...]:
    if value is None:
        report.add(
            "registries",
            "is empty (null); write `registries: []` for no registry at all (the hub disabled "
            "too), or remove the key to keep the default hub entry",
        )
        return ()
    if not isinstance(value, list):
        report.add("registries", f"must be a list of registry entries, not {show(value)}")
        return ()
    labels = [_raw_label(entry) for entry in value]
    counts = Counter(label for label in labels if label)
    places = [
        f"registries entry {label!r}" if label and counts[label] == 1 else f"registries[{index}]"
        for index, label in enumerate(labels)
    ]
    first_hub: str | None = None
    first_by_label: dict[str, str] = {}
    parsed: list[tuple[str, Registry]] = []
    for where, label, entry in zip(places, labels, value, strict=True):
        registry = _parse_registry(report, where, entry)
        if isinstance(entry, dict) and entry.get("api") == "docker-hub":
            if first_hub is not None:
                report.key(
                    where, "api", f"only one docker-hub entry is allowed; {first_hub} is one"
                )
                continue
            first_hub = where
        elif label and label not in names.CLONE_LOCATIONS:
            if label in first_by_label:
                report.key(
                    where,
                    "label",
                    f"{label!r} is already used by {first_by_label[label]}; labels must be unique",
                )
                continue
            first_by_label[label] = where
        if registry is not None:
            parsed.append((where, registry))
    _shared_endpoints(report, parsed)
    return tuple(registry for _, registry in parsed)


def _shared_endpoints(report: _Report, parsed: list[tuple[str, Registry]]) -> None:
    """Report each entry whose host and port an earlier entry has, naming the first such entry.

    Only jfrog-artifactory entries with different repositories may share them. One pass with
    dictionaries keeps this linear in the number of entries.
    """
    first: dict[tuple[str, int], tuple[int, str]] = {}
    first_not_jfrog: dict[tuple[str, int], tuple[int, str]] = {}
    first_jfrog: dict[tuple[str, int, str | None], tuple[int, str]] = {}
    for index, (where, registry) in enumerate(parsed):
        if registry.host is None or registry.port is None:  # the docker-hub entry
            continue
        endpoint = _endpoint(registry.host, registry.port)
        if registry.api == "jfrog-artifactory":
            key = (*endpoint, registry.repository)
            clashes = [first_not_jfrog.get(endpoint), first_jfrog.get(key)]
            first_jfrog.setdefault(key, (index, where))
        else:
            clashes = [first.get(endpoint)]
            first_not_jfrog.setdefault(endpoint, (index, where))
        first.setdefault(endpoint, (index, where))
        earlier = min((clash for clash in clashes if clash is not None), default=None)
        if earlier is not None:
            report.key(
                where,
                "host",
                f"{names.host_port(registry.host, registry.port)} is already used by "
                f"{earlier[1]}; only jfrog-artifactory entries with different repositories may "
                "share a host and port",
            )


_IMAGES_KEYS = (
    "fetch-concurrency",
    "retry-min-s",
    "retry-max-s",
    "docker-socket",
    "search-deadline-s",
    "search-max-repositories",
    "search-max-bytes",
    "fetch-timeout-s",
)


def _parse_images(report: _Report, value: object) -> Images:
    where = "images"
    images = _mapping(report, where, value, _IMAGES_KEYS)
    default = Images()
    if images is None:
        return default
    concurrency = _field(
        report,
        where,
        images,
        "fetch-concurrency",
        _integer(1, MAX_FETCH_CONCURRENCY),
        default.fetch_concurrency,
    )
    retry_min = _field(
        report, where, images, "retry-min-s", _seconds(MAX_RETRY_S), default.retry_min_s
    )
    retry_max = _field(
        report, where, images, "retry-max-s", _seconds(MAX_RETRY_S), default.retry_max_s
    )
    if retry_min is not None and retry_max is not None and retry_max < retry_min:
        report.key(
            where,
            "retry-max-s",
            f"{retry_max:g} is less than retry-min-s ({retry_min:g}); use at least {retry_min:g}",
        )
    docker_socket = _field(
        report, where, images, "docker-socket", _socket_path, default.docker_socket
    )
    search = (
        _field(
            report,
            where,
            images,
            "search-deadline-s",
            _seconds(MAX_SEARCH_DEADLINE_S),
            default.search_deadline_s,
        ),
        _field(
            report,
            where,
            images,
            "search-max-repositories",
            _integer(1, MAX_SEARCH_REPOSITORIES),
            default.search_max_repositories,
        ),
        _field(
            report,
            where,
            images,
            "search-max-bytes",
            _integer(MIN_SEARCH_BYTES, MAX_SEARCH_BYTES),
            default.search_max_bytes,
        ),
    )
    fetch_timeout = _field(
        report,
        where,
        images,
        "fetch-timeout-s",
        _seconds(MAX_FETCH_TIMEOUT_S),
        default.fetch_timeout_s,
    )
    if concurrency is None or retry_min is None or retry_max is None or docker_socket is None:
        return default
    deadline, repositories, size = search
    if deadline is None or repositories is None or size is None or fetch_timeout is None:
        return default
    return Images(
        concurrency,
        retry_min,
        retry_max,
        docker_socket,
        deadline,
        repositories,
        size,
        fetch_timeout,
    )


def _parse_exports(report: _Report, value: object) -> Exports:
    exports = _mapping(report, "exports", value, ("root", "nfs", "unmount-grace-s"))
    default = Exports()
    if exports is None:
        return default
    root = _field(report, "exports", exports, "root", _absolute_path("/var/lib/walt"), default.root)
    nfs = _field(report, "exports", exports, "nfs", _choice(_NFS_SERVERS), default.nfs)
    grace = _field(
        report,
        "exports",
        exports,
        "unmount-grace-s",
        _seconds(MAX_RETRY_S),
        default.unmount_grace_s,
    )
    if root is None or nfs is None or grace is None:
        return default
    return Exports(root, nfs, grace)


def _parse_api(report: _Report, value: object) -> Api:
    api = _mapping(report, "api", value, ("socket",))
    default = Api()
    if api is None:
        return default
    socket = _field(report, "api", api, "socket", _socket_path, default.socket)
    return default if socket is None else Api(socket)


def _parse_boot(report: _Report, value: object) -> Boot:
    boot = _mapping(
        report, "boot", value, ("timeout-s", "retries", "http-port", "probe-interval-s")
    )
    default = Boot()
    if boot is None:
        return default
    timeout = _field(
        report, "boot", boot, "timeout-s", _seconds(MAX_BOOT_TIMEOUT_S), default.timeout_s
    )
    retries = _field(
        report, "boot", boot, "retries", _integer(0, MAX_BOOT_RETRIES), default.retries
    )
    port = _field(report, "boot", boot, "http-port", _integer(1, 65535), default.http_port)
    probe = _field(
        report,
        "boot",
        boot,
        "probe-interval-s",
        _seconds(MAX_BOOT_TIMEOUT_S),
        default.probe_interval_s,
    )
    if timeout is None or retries is None or port is None or probe is None:
        return default
    return Boot(timeout, retries, port, probe)


def _parse_daemon(report: _Report, value: object) -> Daemon:
    daemon = _mapping(
        report, "daemon", value, ("state-dir", "shutdown-budget-s", "image-storage", "run-dir")
    )
    default = Daemon()
    if daemon is None:
        return default
    state_dir = _field(
        report,
        "daemon",
        daemon,
        "state-dir",
        _absolute_path("/var/lib/walt/state"),
        default.state_dir,
    )
    budget = _field(
        report,
        "daemon",
        daemon,
        "shutdown-budget-s",
        _seconds(MAX_SHUTDOWN_BUDGET_S),
        default.shutdown_budget_s,
    )
    storage = _field(
        report,
        "daemon",
        daemon,
        "image-storage",
        _absolute_path("/var/lib/containers/storage"),
        default.image_storage,
    )
    run_dir = _field(
        report, "daemon", daemon, "run-dir", _absolute_path("/run/waltd"), default.run_dir
    )
    if state_dir is None or budget is None or storage is None or run_dir is None:
        return default
    return Daemon(state_dir, budget, storage, run_dir)


def parse(data: object, source: str) -> Config:
    """Check loaded YAML data (None is an empty file) and build the configuration.

    Raises ConfigError listing every problem found, each prefixed with `source`.
    """
    report = _Report(source)
    top = _mapping(report, "top level", data, tuple(SECTIONS))
    if top is None:
        raise ConfigError(report.problems)
    # Each section's problems carry its name, for a tool that fixes one section only.
    report.section = "network"
    walt_net = _parse_network(report, top.get("network"))
    report.section = "registries"
    registries = _parse_registries(report, top["registries"]) if "registries" in top else (HUB,)
    report.section = "images"
    images = _parse_images(report, top.get("images"))
    report.section = "exports"
    exports = _parse_exports(report, top.get("exports"))
    report.section = "api"
    api = _parse_api(report, top.get("api"))
    report.section = "boot"
    boot = _parse_boot(report, top.get("boot"))
    report.section = "daemon"
    daemon = _parse_daemon(report, top.get("daemon"))
    config = Config(walt_net, registries, images, exports, api, daemon, boot, source=source)
    if report.problems:
        raise ConfigError(report.problems)
    return config
