"""What a server.conf describes: the configuration's dataclasses, its defaults and its problems.

`to_data` writes a configuration back as the file's YAML data; validation reads it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

EX_CONFIG = 78
DEFAULT_PATH = Path("/etc/walt/server.conf")
# The file's top-level sections, each with the Config field that holds it.
SECTIONS = {
    "network": "walt_net",
    "registries": "registries",
    "images": "images",
    "exports": "exports",
    "api": "api",
    "boot": "boot",
    "daemon": "daemon",
}
# The sections a SIGHUP applies; a change elsewhere needs a restart.
RELOADABLE = ("registries", "images", "boot")
HUB_DESCRIPTION = "Public registry at hub.docker.com"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, and what is allowed instead.

    `source` is the file (or what the data came from); `section` the top-level section the
    problem lies in (None for the file as a whole or its top level); `where` the place an
    operator looks at ("registries entry 'local'", "line 3", "" for the whole file); `key` the
    key at fault when there is one.
    """

    source: str
    section: str | None
    where: str
    key: str | None
    text: str

    def __str__(self) -> str:
        text = self.text if self.key is None else f"key {self.key!r}: {self.text}"
        return f"{self.source}: {self.where}: {text}" if self.where else f"{self.source}: {text}"


class ConfigError(Exception):
    """An unusable configuration; `problems` lists them all, str() gives one line each."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = list(problems)


@dataclass(frozen=True)
class WaltNet:
    """The node network: the daemon serves DHCP on `interface` only."""

    interface: str
    ip: IPv4Interface
    dhcp_range: tuple[IPv4Address, IPv4Address]


@dataclass(frozen=True)
class Registry:
    """A registry entry; `host` is a bare name or IP address (IPv6 without brackets)."""

    label: str
    api: str
    description: str
    host: str | None = None
    port: int | None = None
    protocol: str | None = None
    auth: str = "none"
    repository: str | None = None
    registry_url: str | None = None  # docker-hub only; None: https://registry-1.docker.io
    hub_url: str | None = None  # docker-hub only; None: https://hub.docker.com

    @property
    def takes_login(self) -> bool:
        """Whether a login may be sent to it: Basic registries, and Docker Hub (optional there)."""
        return self.auth == "basic" or self.api == "docker-hub"


@dataclass(frozen=True)
class Images:
    """Default image downloads: concurrency and retry backoff after a total failure; the
    bounds of each source's part in a search (its time, the repositories and the bytes of
    lists it may read)."""

    fetch_concurrency: int = 2
    retry_min_s: float = 30.0
    retry_max_s: float = 900.0
    # The local docker daemon: a source for search, clone and default images.
    docker_socket: Path = Path("/var/run/docker.sock")
    search_deadline_s: float = 120.0
    search_max_repositories: int = 10_000
    search_max_bytes: int = 8 * 2**20
    # How long one source may take to give a default image (resolving and copying it).
    fetch_timeout_s: float = 1800.0


@dataclass(frozen=True)
class Exports:
    """Where images and node folders live, and which NFS server exports them."""

    root: Path = Path("/var/lib/walt")
    nfs: str = "kernel"
    # An image no node uses stays mounted this long (a node switching back finds it).
    unmount_grace_s: float = 300.0


@dataclass(frozen=True)
class Api:
    """The API's Unix socket."""

    socket: Path = Path("/run/waltd/api.sock")


@dataclass(frozen=True)
class Boot:
    """How nodes boot: the HTTP port of boot files, and what a node that does not report
    booted in time gets (a log line; a virtual node, a reset, `retries` times at most)."""

    timeout_s: float = 180.0
    retries: int = 2
    http_port: int = 80
    # Booted nodes are sent a packet this often: one that no longer answers the kernel's
    # address resolution becomes a failed neighbour, hence `down`, even when silent.
    probe_interval_s: float = 60.0


@dataclass(frozen=True)
class Daemon:
    """The daemon's own state folder, its image storage, how long a shutdown may take, and
    its runtime folder."""

    state_dir: Path = Path("/var/lib/walt/state")
    shutdown_budget_s: float = 20.0
    # The internal repository's podman storage (its graphroot).
    image_storage: Path = Path("/var/lib/containers/storage")
    # What means nothing after a reboot and is remade at every start (dnsmasq's
    # configuration and host entries, the lease-event spool, the record of child
    # processes, the node layout's changing folders): a memory file system under systemd
    # (RuntimeDirectory=waltd), so that the files made and removed at every DHCP event
    # never reach the disk.
    run_dir: Path = Path("/run/waltd")


@dataclass(frozen=True)
class Config:
    """A whole server.conf; `source` (the file it came from) takes no part in comparisons."""

    walt_net: WaltNet | None
    registries: tuple[Registry, ...]
    images: Images
    exports: Exports
    api: Api
    daemon: Daemon
    boot: Boot = Boot()
    source: str = field(default="<defaults>", compare=False)


HUB = Registry(label="hub", api="docker-hub", description=HUB_DESCRIPTION)


def default_config() -> Config:
    """The configuration of an empty file: the hub entry only, and no node network."""
    return Config(
        walt_net=None,
        registries=(HUB,),
        images=Images(),
        exports=Exports(),
        api=Api(),
        daemon=Daemon(),
    )


def _plain(seconds: float) -> int | float:
    """30 rather than 30.0 in the file."""
    return int(seconds) if float(seconds).is_integer() else seconds


def _registry_data(registry: Registry) -> dict[str, object]:
    data: dict[str, object] = {
        "label": registry.label,
        "api": registry.api,
        "description": registry.description,
    }
    if registry.api != "docker-hub":
        data |= {
            "host": registry.host,
            "port": registry.port,
            "protocol": registry.protocol,
            "auth": registry.auth,
        }
    if registry.api == "jfrog-artifactory":
        data["repository"] = registry.repository
    if registry.registry_url:
        data["registry-url"] = registry.registry_url
    if registry.hub_url:
        data["hub-url"] = registry.hub_url
    return data


def to_data(config: Config) -> dict[str, object]:
    """The configuration as YAML-able data, every value written out; `parse` reads it back."""
    data: dict[str, object] = {}
    if config.walt_net is not None:
        net = config.walt_net
        first, last = net.dhcp_range
        data["network"] = {
            "walt-net": {
                "interface": net.interface,
                "ip": net.ip.with_prefixlen,
                "dhcp-range": f"{first}-{last}",
            }
        }
    # Always written: an absent key would bring the hub back.
    data["registries"] = [_registry_data(registry) for registry in config.registries]
    data["images"] = {
        "fetch-concurrency": config.images.fetch_concurrency,
        "retry-min-s": _plain(config.images.retry_min_s),
        "retry-max-s": _plain(config.images.retry_max_s),
        "docker-socket": str(config.images.docker_socket),
        "search-deadline-s": _plain(config.images.search_deadline_s),
        "search-max-repositories": config.images.search_max_repositories,
        "search-max-bytes": config.images.search_max_bytes,
        "fetch-timeout-s": _plain(config.images.fetch_timeout_s),
    }
    data["exports"] = {
        "root": str(config.exports.root),
        "nfs": config.exports.nfs,
        "unmount-grace-s": _plain(config.exports.unmount_grace_s),
    }
    data["api"] = {"socket": str(config.api.socket)}
    data["boot"] = {
        "timeout-s": _plain(config.boot.timeout_s),
        "retries": config.boot.retries,
        "http-port": config.boot.http_port,
        "probe-interval-s": _plain(config.boot.probe_interval_s),
    }
    data["daemon"] = {
        "state-dir": str(config.daemon.state_dir),
        "shutdown-budget-s": _plain(config.daemon.shutdown_budget_s),
        "image-storage": str(config.daemon.image_storage),
        "run-dir": str(config.daemon.run_dir),
    }
    return data
