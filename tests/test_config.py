"""server.conf: every rule with the message operators get, defaults, round trip, load, save."""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import stat
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import require_root
from tests.support.faults import file_size_limit
from waltd.config import (
    HUB_DESCRIPTION,
    Api,
    Config,
    ConfigError,
    Daemon,
    Exports,
    Images,
    Problem,
    Registry,
    WaltNet,
    default_config,
    load,
    parse,
    restart_needed,
    save,
    to_data,
)

SRC = "/etc/walt/server.conf"
HUB = Registry(label="hub", api="docker-hub", description=HUB_DESCRIPTION)
FULL_EXAMPLE = """
network:
    walt-net:
        interface: walt-net
        ip: 192.168.152.1/22
        dhcp-range: 192.168.152.100-192.168.155.250
registries:
-   label: hub
    api: docker-hub
    description: Public registry at hub.docker.com
-   label: local
    api: docker-registry-v2
    description: Local registry
    host: reg.example.org
    port: 443
    protocol: https
    auth: basic
images:
    fetch-concurrency: 2
    retry-min-s: 30
    retry-max-s: 900
    docker-socket: /var/run/docker.sock
    search-deadline-s: 120
    search-max-repositories: 10000
    search-max-bytes: 8388608
    fetch-timeout-s: 1800
exports:
    root: /var/lib/walt
    nfs: kernel
    unmount-grace-s: 300
api:
    socket: /run/waltd/api.sock
boot:
    timeout-s: 180
    retries: 2
    http-port: 80
    probe-interval-s: 60
daemon:
    state-dir: /var/lib/walt/state
    shutdown-budget-s: 20
    image-storage: /var/lib/containers/storage
    run-dir: /run/waltd
"""
LABEL_RE = re.compile(r"[a-z0-9-]+")


def messages(err: ConfigError) -> list[str]:
    """The error's problems as operators read them, one line each."""
    return [str(problem) for problem in err.problems]


def problems(data: object) -> list[str]:
    """The messages parse() gives for data that must be invalid."""
    with pytest.raises(ConfigError) as caught:
        parse(data, SRC)
    return messages(caught.value)


def problem(data: object) -> str:
    """The one message parse() gives for data with exactly one problem."""
    messages = problems(data)
    assert len(messages) == 1, messages
    return messages[0]


def walt_net(**keys: object) -> dict[str, object]:
    return {"network": {"walt-net": {"interface": "walt-net", "ip": "192.168.152.1/22", **keys}}}


def v2(**keys: object) -> dict[str, object]:
    return {"label": "local", "api": "docker-registry-v2", "host": "reg.example.org", **keys}


def jfrog(**keys: object) -> dict[str, object]:
    return {
        "label": "art",
        "api": "jfrog-artifactory",
        "host": "art.example.org",
        "repository": "walt",
        **keys,
    }


# --- defaults -------------------------------------------------------------------------------


def test_default_config_is_the_hub_alone_and_no_node_network() -> None:
    default = default_config()
    assert default.walt_net is None
    assert default.registries == (HUB,)
    assert default.images == Images(fetch_concurrency=2, retry_min_s=30, retry_max_s=900)
    assert default.exports == Exports(root=Path("/var/lib/walt"), nfs="kernel")
    assert default.api == Api(socket=Path("/run/waltd/api.sock"))
    assert default.daemon == Daemon(state_dir=Path("/var/lib/walt/state"), shutdown_budget_s=20)
    assert default.source == "<defaults>"


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"network": None, "images": None, "exports": None, "api": None, "daemon": None},
        {"network": {}, "images": {}, "exports": {}, "api": {}, "daemon": {}},
    ],
)
def test_empty_file_and_empty_sections_mean_defaults(data: object) -> None:
    parsed = parse(data, SRC)
    assert parsed == default_config()
    assert parsed.source == SRC


def test_reference_example() -> None:
    parsed = parse(yaml.safe_load(FULL_EXAMPLE), SRC)
    assert parsed.walt_net == WaltNet(
        interface="walt-net",
        ip=IPv4Interface("192.168.152.1/22"),
        dhcp_range=(IPv4Address("192.168.152.100"), IPv4Address("192.168.155.250")),
    )
    assert parsed.registries == (
        HUB,
        Registry(
            label="local",
            api="docker-registry-v2",
            description="Local registry",
            host="reg.example.org",
            port=443,
            protocol="https",
            auth="basic",
        ),
    )
    assert (parsed.images, parsed.exports, parsed.api, parsed.daemon) == (
        Images(),
        Exports(),
        Api(),
        Daemon(),
    )


def test_source_takes_no_part_in_equality() -> None:
    assert parse({}, "a.conf") == parse({}, "b.conf")


# --- network.walt-net -----------------------------------------------------------------------


def test_without_walt_net_there_is_no_dhcp() -> None:
    assert parse({"network": {}}, SRC).walt_net is None


def test_walt_net_needs_interface_and_ip() -> None:
    assert problems({"network": {"walt-net": None}}) == [
        f"{SRC}: network.walt-net: key 'interface': is required; e.g. walt-net, the node network "
        "interface (without network.walt-net, no DHCP)",
        f"{SRC}: network.walt-net: key 'ip': is required; e.g. 192.168.152.1/22",
    ]


def test_walt_net_must_be_a_mapping() -> None:
    assert problem({"network": {"walt-net": "eth0"}}) == (
        f"{SRC}: network.walt-net: must be a mapping with keys interface, ip, dhcp-range, "
        "not 'eth0'"
    )


@pytest.mark.parametrize("name", ["", "x" * 16, "eth/0", "eth 0", "eth:0", ".", "..", "eth\t0", 5])
def test_interface_must_be_a_linux_interface_name(name: object) -> None:
    message = problem(walt_net(interface=name))
    assert message.startswith(f"{SRC}: network.walt-net: key 'interface': ")
    assert message.endswith(
        "is not a Linux interface name; use 1 to 15 characters without '/', ':' or spaces, "
        "e.g. walt-net"
    )


@pytest.mark.parametrize("name", ["x" * 15, "walt-net", "eth0.100", "br_walt", "enp0s31f6"])
def test_interface_names_accepted(name: str) -> None:
    net = parse(walt_net(interface=name), SRC).walt_net
    assert net is not None and net.interface == name


@pytest.mark.parametrize(
    ("ip", "text"),
    [
        (
            "192.168.152.1",
            "'192.168.152.1' has no prefix length; write the server's address with the node "
            "subnet's size, e.g. 192.168.152.1/22",
        ),
        (
            "192.168.152.300/22",
            "'192.168.152.300/22' is not an IPv4 address with a prefix length, "
            "e.g. 192.168.152.1/22",
        ),
        ("fd00::1/64", "'fd00::1/64' is not an IPv4 address with a prefix length"),
        (
            "192.168.152.0/22",
            "'192.168.152.0/22' is the network address of 192.168.152.0/22; use a host address, "
            "e.g. 192.168.152.1/22",
        ),
        ("192.168.155.255/22", "'192.168.155.255/22' is the broadcast address of"),
        (
            "10.0.0.1/31",
            "the subnet 10.0.0.0/31 leaves no address for nodes; use a prefix length of 30 or less",
        ),
        ("10.0.0.1/32", "leaves no address for nodes"),
        ("127.0.0.1/8", "'127.0.0.1/8' is not a unicast address for a node network"),
        ("224.0.0.1/8", "is not a unicast address"),
        (22, "must be the server's IPv4 address with the node subnet's prefix length, "),
    ],
)
def test_ip_must_be_a_host_address_with_its_subnet(ip: object, text: str) -> None:
    message = problem(walt_net(ip=ip))
    assert message.startswith(f"{SRC}: network.walt-net: key 'ip': ")
    assert text in message


def test_ip_with_a_netmask_is_accepted() -> None:
    net = parse(walt_net(ip="192.168.152.1/255.255.252.0"), SRC).walt_net
    assert net is not None and net.ip == IPv4Interface("192.168.152.1/22")


@pytest.mark.parametrize(
    ("dhcp_range", "text"),
    [
        ("192.168.152.100", "'192.168.152.100' is not a range; write FIRST-LAST, e.g. "),
        ("a-b", "'a-b' is not a range"),
        ("10.0.0.1-10.0.0.2-10.0.0.3", "is not a range"),
        (100, "100 is not a range"),
        (
            "192.168.152.100-192.168.160.1",
            "192.168.160.1 is outside the node subnet 192.168.152.0/22; use addresses from "
            "192.168.152.1 to 192.168.155.254",
        ),
        ("192.168.155.200-192.168.155.255", "192.168.155.255 is outside the node subnet"),
        (
            "192.168.155.250-192.168.152.100",
            "the first address 192.168.155.250 comes after the last 192.168.152.100",
        ),
        (
            "192.168.152.1-192.168.152.9",
            "the range holds the server's own address 192.168.152.1; start it after that address",
        ),
    ],
)
def test_dhcp_range_must_fit_the_subnet(dhcp_range: object, text: str) -> None:
    message = problem(walt_net(**{"dhcp-range": dhcp_range}))
    assert message.startswith(f"{SRC}: network.walt-net: key 'dhcp-range': ")
    assert text in message


def test_dhcp_range_accepted_with_spaces_and_a_single_address() -> None:
    net = parse(walt_net(**{"dhcp-range": "192.168.152.9 - 192.168.152.9"}), SRC).walt_net
    assert net is not None
    assert net.dhcp_range == (IPv4Address("192.168.152.9"), IPv4Address("192.168.152.9"))


def test_dhcp_range_form_is_checked_even_when_ip_is_wrong() -> None:
    assert len(problems(walt_net(ip="nonsense", **{"dhcp-range": "x"}))) == 2
    assert len(problems(walt_net(ip="nonsense", **{"dhcp-range": "1.2.3.4-1.2.3.5"}))) == 1


@pytest.mark.parametrize(
    ("ip", "first", "last"),
    [
        ("192.168.152.1/22", "192.168.152.2", "192.168.155.254"),
        ("192.168.155.254/22", "192.168.152.1", "192.168.155.253"),
        ("10.0.0.100/24", "10.0.0.101", "10.0.0.254"),
        ("10.0.0.200/24", "10.0.0.1", "10.0.0.199"),
        ("10.0.0.1/30", "10.0.0.2", "10.0.0.2"),
        ("10.0.0.2/30", "10.0.0.1", "10.0.0.1"),
    ],
)
def test_default_dhcp_range_is_the_longer_run_beside_the_server(
    ip: str, first: str, last: str
) -> None:
    net = parse(walt_net(ip=ip), SRC).walt_net
    assert net is not None
    assert net.dhcp_range == (IPv4Address(first), IPv4Address(last))


@given(st.integers(8, 30), st.data())
def test_default_dhcp_range_excludes_the_server_and_covers_half_the_hosts(
    prefix: int, data: st.DataObject
) -> None:
    hosts = 2 ** (32 - prefix) - 2
    server = IPv4Address("10.0.0.0") + data.draw(st.integers(1, hosts))
    net = parse(walt_net(ip=f"{server}/{prefix}"), SRC).walt_net
    assert net is not None
    first, last = net.dhcp_range
    subnet = net.ip.network
    assert subnet.network_address < first <= last < subnet.broadcast_address
    assert not first <= server <= last
    assert int(last) - int(first) + 1 >= (hosts - 1) // 2
    # An explicit range equal to the default is accepted as well.
    assert parse(to_data(parse(walt_net(ip=f"{server}/{prefix}"), SRC)), SRC).walt_net == net


# --- registries -----------------------------------------------------------------------------


def test_registries_absent_means_the_hub() -> None:
    assert parse({}, SRC).registries == (HUB,)


def test_empty_registries_disable_the_hub() -> None:
    assert parse({"registries": []}, SRC).registries == ()


def test_null_registries_are_ambiguous() -> None:
    assert problem({"registries": None}) == (
        f"{SRC}: registries: is empty (null); write `registries: []` for no registry at all "
        "(the hub disabled too), or remove the key to keep the default hub entry"
    )


def test_registries_must_be_a_list_of_mappings() -> None:
    assert problem({"registries": {"label": "hub"}}) == (
        f"{SRC}: registries: must be a list of registry entries, not a mapping"
    )
    assert problem({"registries": ["local"]}) == (
        f"{SRC}: registries[0]: must be a mapping with keys label, api, description, host, "
        "port, protocol, auth, repository, not 'local'"
    )


def test_api_is_required_and_checked_first() -> None:
    # Without a known api, nothing else is required: one message, not a cascade.
    assert problem({"registries": [{"label": "local"}]}) == (
        f"{SRC}: registries entry 'local': key 'api': is required; use one of docker-hub, "
        "docker-registry-v2, jfrog-artifactory"
    )
    assert problem({"registries": [v2(api="dockerhub")]}) == (
        f"{SRC}: registries entry 'local': key 'api': 'dockerhub' is not allowed; use one of "
        "docker-hub, docker-registry-v2, jfrog-artifactory"
    )


def test_hub_entry_defaults() -> None:
    assert parse({"registries": [{"api": "docker-hub"}]}, SRC).registries == (HUB,)
    custom = {"label": "hub", "api": "docker-hub", "description": "Docker Hub"}
    assert parse({"registries": [custom]}, SRC).registries == (
        replace(HUB, description="Docker Hub"),
    )


def test_hub_entry_is_always_labelled_hub() -> None:
    assert problem({"registries": [{"label": "dockerhub", "api": "docker-hub"}]}) == (
        f"{SRC}: registries entry 'dockerhub': key 'label': 'dockerhub' is not allowed; the "
        "docker-hub entry is always labelled hub"
    )


def test_hub_entry_takes_no_host() -> None:
    assert problem({"registries": [{"api": "docker-hub", "host": "hub.docker.com"}]}) == (
        f"{SRC}: registries entry 'hub': key 'host' does not apply to api docker-hub; allowed "
        "keys: label, api, description, registry-url, hub-url"
    )


def test_only_one_hub_entry() -> None:
    assert problem({"registries": [{"api": "docker-hub"}, {"api": "docker-hub"}]}) == (
        f"{SRC}: registries[1]: key 'api': only one docker-hub entry is allowed; registries[0] "
        "is one"
    )


def test_registry_v2_defaults() -> None:
    (registry,) = parse({"registries": [v2()]}, SRC).registries
    assert registry == Registry(
        label="local",
        api="docker-registry-v2",
        description="Docker registry v2",
        host="reg.example.org",
        port=443,
        protocol="https",
        auth="none",
        repository=None,
    )


def test_registry_v2_needs_label_and_host() -> None:
    assert problems({"registries": [{"api": "docker-registry-v2"}]}) == [
        f"{SRC}: registries[0]: key 'label': is required; e.g. local",
        f"{SRC}: registries[0]: key 'host': is required; e.g. reg.example.org",
    ]


def test_registry_v2_has_no_repository() -> None:
    assert problem({"registries": [v2(repository="walt")]}) == (
        f"{SRC}: registries entry 'local': key 'repository' does not apply to api "
        "docker-registry-v2; allowed keys: label, api, description, host, port, protocol, auth"
    )


def test_artifactory_entry() -> None:
    (registry,) = parse({"registries": [jfrog(port=8443, auth="basic")]}, SRC).registries
    assert registry == Registry(
        label="art",
        api="jfrog-artifactory",
        description="JFrog Artifactory",
        host="art.example.org",
        port=8443,
        protocol="https",
        auth="basic",
        repository="walt",
    )


def test_artifactory_needs_label_host_and_repository() -> None:
    assert problems({"registries": [{"api": "jfrog-artifactory"}]}) == [
        f"{SRC}: registries[0]: key 'label': is required; e.g. local",
        f"{SRC}: registries[0]: key 'host': is required; e.g. reg.example.org",
        f"{SRC}: registries[0]: key 'repository': is required; e.g. walt",
    ]


@pytest.mark.parametrize("repository", ["Walt", "walt/images", "-walt", "walt..x", "", 5])
def test_artifactory_repository_is_a_path_component(repository: object) -> None:
    assert f"{SRC}: registries entry 'art': key 'repository': " in problem(
        {"registries": [jfrog(repository=repository)]}
    )


@pytest.mark.parametrize(
    ("port", "shown"), [(0, "0"), (65536, "65536"), ("443", "'443'"), (True, "a boolean (true)")]
)
def test_port_is_an_integer_from_1_to_65535(port: object, shown: str) -> None:
    assert problem({"registries": [v2(port=port)]}) == (
        f"{SRC}: registries entry 'local': key 'port': must be an integer from 1 to 65535, "
        f"not {shown}"
    )


def test_protocol_choice() -> None:
    assert problem({"registries": [v2(protocol="ftp")]}) == (
        f"{SRC}: registries entry 'local': key 'protocol': 'ftp' is not allowed; use one of "
        "http, https, https-no-verify"
    )
    for protocol in ("http", "https", "https-no-verify"):
        (registry,) = parse({"registries": [v2(protocol=protocol)]}, SRC).registries
        assert registry.protocol == protocol


def test_auth_choice() -> None:
    assert problem({"registries": [jfrog(auth="token")]}) == (
        f"{SRC}: registries entry 'art': key 'auth': 'token' is not allowed; use one of none, basic"
    )


@given(st.from_regex(LABEL_RE, fullmatch=True).filter(lambda s: s not in ("hub", "walt", "docker")))
def test_labels_of_the_grammar_are_accepted(label: str) -> None:
    (registry,) = parse({"registries": [v2(label=label)]}, SRC).registries
    assert registry.label == label


@given(st.text(max_size=12).filter(lambda s: not LABEL_RE.fullmatch(s)))
def test_labels_outside_the_grammar_are_refused(label: str) -> None:
    message = problem({"registries": [v2(label=label)]})
    assert message.startswith(f"{SRC}: registries[0]: key 'label': ")
    assert message.endswith("is not allowed; use lower-case letters, digits and '-', e.g. local")


@pytest.mark.parametrize("label", ["hub", "walt", "docker"])
def test_clone_url_locations_are_reserved_labels(label: str) -> None:
    assert problem({"registries": [v2(label=label)]}) == (
        f"{SRC}: registries entry {label!r}: key 'label': {label!r} is not allowed; walt, hub "
        "and docker are clone URL locations, choose another label"
    )


def test_duplicate_labels_name_entries_by_position() -> None:
    entries = [v2(), v2(host="other.example.org")]
    assert problem({"registries": entries}) == (
        f"{SRC}: registries[1]: key 'label': 'local' is already used by registries[0]; labels "
        "must be unique"
    )


def test_same_host_and_port_is_refused() -> None:
    entries = [v2(label="a"), v2(label="b", host="REG.example.org")]
    assert problem({"registries": entries}) == (
        f"{SRC}: registries entry 'b': key 'host': REG.example.org:443 is already used by "
        "registries entry 'a'; only jfrog-artifactory entries with different repositories may "
        "share a host and port"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (v2(label="a", host="fd00::1"), v2(label="b", host="fd00:0::1")),
        (v2(label="a", host="art.example.org"), jfrog(label="b")),
        (jfrog(label="a"), jfrog(label="b")),
    ],
)
def test_same_endpoint_conflicts(first: dict[str, object], second: dict[str, object]) -> None:
    assert "key 'host':" in problem({"registries": [first, second]})


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (v2(label="a"), v2(label="b", port=5000)),
        (jfrog(label="a"), jfrog(label="b", repository="other")),
    ],
)
def test_endpoints_that_may_coexist(first: dict[str, object], second: dict[str, object]) -> None:
    assert len(parse({"registries": [first, second]}, SRC).registries) == 2


@pytest.mark.parametrize(
    ("description", "text"),
    [
        ("", "must be one line of 1 to 35 characters, not ''"),
        ("   ", "must be one line of 1 to 35 characters, not '   '"),
        ("two\nlines", "must be one line of 1 to 35 characters, not 'two\\nlines'"),
        (5, "must be one line of 1 to 35 characters, not 5"),
        ("x" * 36, f"'{'x' * 36}' has 36 characters; use at most 35 (it fills a table column)"),
    ],
)
def test_description_is_one_short_line(description: object, text: str) -> None:
    assert problem({"registries": [v2(description=description)]}) == (
        f"{SRC}: registries entry 'local': key 'description': {text}"
    )


def test_description_of_35_characters_is_accepted() -> None:
    (registry,) = parse({"registries": [v2(description="é" * 35)]}, SRC).registries
    assert registry.description == "é" * 35


@pytest.mark.parametrize(
    "host",
    [
        "https://reg.example.org",
        "reg.example.org:5000",
        "reg.example.org/v2",
        "reg example.org",
        "-reg.example.org",
        "reg.example.org.",
        "1.2.3",
        "",
        5,
    ],
)
def test_host_is_a_bare_name_or_address(host: object) -> None:
    message = problem({"registries": [v2(host=host)]})
    assert message.startswith(f"{SRC}: registries entry 'local': key 'host': ")
    assert message.endswith(
        "is not allowed; use a host name or IP address alone (no scheme, port or path), "
        "e.g. reg.example.org"
    )


@pytest.mark.parametrize(
    "host", ["localhost", "10.0.0.5", "fd00::1", "Reg-1.Example.org", "a" * 63 + ".org"]
)
def test_hosts_accepted(host: str) -> None:
    (registry,) = parse({"registries": [v2(host=host)]}, SRC).registries
    assert registry.host == host


def test_credentials_in_a_host_are_not_echoed() -> None:
    message = problem({"registries": [v2(host="walt:hunter2@reg.example.org")]})
    assert message == (
        f"{SRC}: registries entry 'local': key 'host': must not hold credentials "
        "(user:password@host); credentials do not belong in server.conf; use walt-server-setup"
    )


@pytest.mark.parametrize("key", ["password", "username", "token", "Password"])
def test_credential_keys_are_refused_without_their_value(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"registries": [v2(auth="basic", **{key: "hunter2"})]}, SRC)
    assert messages(caught.value) == [
        f"{SRC}: registries entry 'local': unknown key {key!r}: credentials do not belong in "
        "server.conf; use walt-server-setup"
    ]
    assert "hunter2" not in str(caught.value)


def test_unknown_registry_key_lists_the_allowed_ones() -> None:
    assert problem({"registries": [v2(protocl="http")]}) == (
        f"{SRC}: registries entry 'local': unknown key 'protocl'; allowed keys: label, api, "
        "description, host, port, protocol, auth (did you mean 'protocol'?)"
    )


# --- boot ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boot", "text"),
    [
        ({"timeout-s": 0}, "boot: key 'timeout-s'"),
        ({"timeout-s": 7200}, "boot: key 'timeout-s'"),
        ({"retries": -1}, "boot: key 'retries'"),
        ({"retries": 11}, "boot: key 'retries'"),
        ({"http-port": 0}, "boot: key 'http-port'"),
        ({"http-port": 70000}, "boot: key 'http-port'"),
        ({"port": 80}, "boot: unknown key 'port'"),
    ],
)
def test_boot_bounds(boot: dict[str, object], text: str) -> None:
    assert problem({"boot": boot}).startswith(f"{SRC}: {text}")


def test_boot_is_reloaded_without_a_restart(tmp_path: Path) -> None:
    old = parse({}, SRC)
    new = parse({"boot": {"timeout-s": 60, "retries": 0, "http-port": 8080}}, SRC)
    assert new.boot.timeout_s == 60 and new.boot.retries == 0 and new.boot.http_port == 8080
    assert restart_needed(old, new) == []


# --- images, exports, api, daemon -----------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "text"),
    [
        ("images", "fetch-concurrency", 0, "must be an integer from 1 to 64, not 0"),
        ("images", "fetch-concurrency", 65, "must be an integer from 1 to 64, not 65"),
        ("images", "fetch-concurrency", 2.5, "must be an integer from 1 to 64, not 2.5"),
        ("images", "fetch-concurrency", "2", "must be an integer from 1 to 64, not '2'"),
        (
            "images",
            "retry-min-s",
            0,
            "must be a number of seconds above 0 and at most 86400, not 0",
        ),
        ("images", "retry-min-s", -1.5, "above 0 and at most 86400, not -1.5"),
        ("images", "retry-min-s", math.nan, "above 0 and at most 86400, not nan"),
        ("images", "retry-max-s", math.inf, "above 0 and at most 86400, not inf"),
        ("images", "retry-max-s", [900], "above 0 and at most 86400, not a list"),
        ("exports", "root", "var/lib/walt", "must be an absolute path, e.g. /var/lib/walt, not "),
        ("exports", "root", 5, "must be an absolute path, e.g. /var/lib/walt, not 5"),
        ("exports", "nfs", "nfsd", "'nfsd' is not allowed; use one of kernel, ganesha"),
        ("api", "socket", "api.sock", "must be an absolute path, e.g. /run/waltd/api.sock, not "),
        ("api", "socket", "/" + "s" * 107, "is 108 bytes long; a Unix socket path has at most 107"),
        ("daemon", "state-dir", "state", "must be an absolute path, e.g. /var/lib/walt/state, "),
        ("daemon", "run-dir", "run/waltd", "must be an absolute path, e.g. /run/waltd, not "),
        ("daemon", "shutdown-budget-s", 0, "must be a number of seconds above 0 and at most 3600"),
        ("daemon", "shutdown-budget-s", 3601, "above 0 and at most 3600, not 3601"),
        ("daemon", "shutdown-budget-s", "20", "above 0 and at most 3600, not '20'"),
    ],
)
def test_section_values(section: str, key: str, value: object, text: str) -> None:
    message = problem({section: {key: value}})
    assert message.startswith(f"{SRC}: {section}: key {key!r}: ")
    assert text in message


@pytest.mark.parametrize("key", ["fetch-concurrency", "retry-min-s"])
def test_yaml_booleans_are_not_numbers(key: str) -> None:
    message = problem(yaml.safe_load(f"images:\n  {key}: yes\n"))
    assert message.startswith(f"{SRC}: images: key {key!r}: must be ")
    assert message.endswith("not a boolean (true)")


def test_retry_max_not_below_retry_min() -> None:
    assert problem({"images": {"retry-max-s": 10}}) == (
        f"{SRC}: images: key 'retry-max-s': 10 is less than retry-min-s (30); use at least 30"
    )


def test_section_values_accepted() -> None:
    parsed = parse(
        {
            "images": {"fetch-concurrency": 64, "retry-min-s": 0.5, "retry-max-s": 0.5},
            "exports": {"root": "/srv/walt", "nfs": "ganesha"},
            "api": {"socket": "/tmp/w.sock"},
            "daemon": {"state-dir": "/srv/state", "shutdown-budget-s": 3600},
        },
        SRC,
    )
    assert parsed.images == Images(64, 0.5, 0.5)
    assert parsed.exports == Exports(Path("/srv/walt"), "ganesha")
    assert parsed.api == Api(Path("/tmp/w.sock"))
    assert parsed.daemon == Daemon(Path("/srv/state"), 3600)


@pytest.mark.parametrize(
    ("section", "keys"),
    [
        ("network", "walt-net"),
        (
            "images",
            "fetch-concurrency, retry-min-s, retry-max-s, docker-socket, search-deadline-s, "
            "search-max-repositories, search-max-bytes, fetch-timeout-s",
        ),
        ("exports", "root, nfs, unmount-grace-s"),
        ("api", "socket"),
        ("daemon", "state-dir, shutdown-budget-s, image-storage, run-dir"),
    ],
)
def test_sections_must_be_mappings(section: str, keys: str) -> None:
    assert problem({section: [1]}) == (
        f"{SRC}: {section}: must be a mapping with keys {keys}, not a list"
    )


# --- unknown keys, top level, all problems at once ------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (
            {"registry": []},
            "top level: unknown key 'registry'; allowed keys: network, registries, images, "
            "exports, api, boot, daemon (did you mean 'registries'?)",
        ),
        ({1: 2}, "top level: unknown key 1; allowed keys: network, registries, images, "),
        (
            {"network": {"walt_net": {}}},
            "network: unknown key 'walt_net'; allowed keys: walt-net (did you mean 'walt-net'?)",
        ),
        (
            walt_net(range="192.168.152.9-192.168.152.20"),
            "network.walt-net: unknown key 'range'; allowed keys: interface, ip, dhcp-range",
        ),
        (
            {"images": {"concurrency": 3}},
            "images: unknown key 'concurrency'; allowed keys: fetch-concurrency, retry-min-s, "
            "retry-max-s, docker-socket, search-deadline-s, search-max-repositories, "
            "search-max-bytes, fetch-timeout-s (did you mean 'fetch-concurrency'?)",
        ),
        ({"daemon": {"password": "x"}}, "daemon: unknown key 'password': credentials do not "),
    ],
)
def test_unknown_keys(data: object, text: str) -> None:
    assert problem(data).startswith(f"{SRC}: {text}")


@pytest.mark.parametrize(("data", "shown"), [([1], "a list"), ("walt", "'walt'"), (3, "3")])
def test_top_level_must_be_a_mapping(data: object, shown: str) -> None:
    assert problem(data) == (
        f"{SRC}: top level: must be a mapping with keys network, registries, images, exports, "
        f"api, boot, daemon, not {shown}"
    )


def test_all_problems_are_reported_at_once() -> None:
    data = {
        "network": {"walt-net": {"interface": "eth 0", "ip": "192.168.152.1"}},
        "registries": [v2(protocol="ftp"), {"api": "nope"}],
        "images": {"fetch-concurrency": 0},
        "exports": {"nfs": "nfsd"},
        "api": {"socket": "relative"},
        "daemon": {"state-dir": "relative"},
        "extra": 1,
    }
    with pytest.raises(ConfigError) as caught:
        parse(data, SRC)
    err = caught.value
    assert len(err.problems) == 9
    assert all(message.startswith(f"{SRC}: ") for message in messages(err))
    assert str(err) == "\n".join(messages(err))
    sections = [problem.section for problem in err.problems]
    # The top level first (its unknown key), then each section in the file's order.
    assert sections == [None, *["network"] * 2, *["registries"] * 2, "images", "exports", "api",
                        "daemon"]  # fmt: skip


_SOME_KEYS = st.sampled_from(
    ["network", "walt-net", "interface", "ip", "dhcp-range", "registries", "label", "api",
     "docker-hub", "host", "port", "images", "retry-min-s", "exports", "root", "daemon"]
)  # fmt: skip
_ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | _SOME_KEYS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_SOME_KEYS | st.text(max_size=4) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(_SOME_KEYS, _ANY_VALUE, max_size=5) | _ANY_VALUE)
def test_any_data_gives_a_config_or_messages_never_a_traceback(data: object) -> None:
    try:
        parse(data, SRC)
    except ConfigError as err:
        assert err.problems
        assert all(message.startswith(f"{SRC}: ") for message in messages(err))


def test_config_error_holds_its_problems() -> None:
    found = [
        Problem("f", "images", "images", "retry-min-s", "must be a number"),
        Problem("f", None, "line 3", None, "key 'a' appears twice"),
        Problem("f", None, "", None, "cannot read it"),
    ]
    err = ConfigError(found)
    found.append(Problem("f", None, "", None, "later"))
    assert err.problems == found[:3]
    assert str(err) == (
        "f: images: key 'retry-min-s': must be a number\nf: line 3: key 'a' appears twice\n"
        "f: cannot read it"
    )


def test_a_problem_names_its_key_for_tools() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"registries": [v2(port=0), {"api": "docker-hub", "bogus": 1}]}, SRC)
    port, bogus = caught.value.problems
    assert (port.section, port.where, port.key) == (
        "registries",
        "registries entry 'local'",
        "port",
    )
    assert port.text == "must be an integer from 1 to 65535, not 0"
    # An unknown key is a problem of its entry: the key is named in the text.
    assert (bogus.section, bogus.where, bogus.key) == ("registries", "registries entry 'hub'", None)


# --- to_data round trip ---------------------------------------------------------------------

_LABELS = st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True).filter(
    lambda s: s not in ("hub", "walt", "docker")
)
_REPOSITORIES = st.from_regex(r"[a-z0-9]+([._-][a-z0-9]+)?", fullmatch=True)
_DESCRIPTIONS = st.text(min_size=1, max_size=35).filter(lambda s: s.strip() and s.isprintable())


@st.composite
def _config_data(draw: st.DrawFn) -> dict[str, object]:
    data: dict[str, object] = {}
    if draw(st.booleans()):
        prefix = draw(st.integers(8, 30))
        base = IPv4Address("10.0.0.0") + draw(st.integers(0, 2**24 - 1))
        subnet = ipaddress.IPv4Network((base, prefix), strict=False)
        first, last = subnet.network_address + 1, subnet.broadcast_address - 1
        server = IPv4Address(draw(st.integers(int(first), int(last))))
        net: dict[str, object] = {
            "interface": draw(st.from_regex(r"[a-z][a-z0-9_.-]{0,14}", fullmatch=True)),
            "ip": f"{server}/{prefix}",
        }
        sides = [
            (low, high) for low, high in ((first, server - 1), (server + 1, last)) if low <= high
        ]
        low, high = draw(st.sampled_from(sides))
        start = draw(st.integers(int(low), int(high)))
        end = draw(st.integers(start, int(high)))
        if draw(st.booleans()):
            net["dhcp-range"] = f"{IPv4Address(start)}-{IPv4Address(end)}"
        data["network"] = {"walt-net": net}
    if draw(st.booleans()):
        entries: list[dict[str, object]] = []
        for index, label in enumerate(draw(st.lists(_LABELS, unique=True, max_size=3))):
            api = draw(st.sampled_from(["docker-registry-v2", "jfrog-artifactory"]))
            entry: dict[str, object] = {"label": label, "api": api, "host": f"reg{index}.example"}
            if draw(st.booleans()):
                entry["port"] = draw(st.integers(1, 65535))
                entry["protocol"] = draw(st.sampled_from(["http", "https", "https-no-verify"]))
                entry["auth"] = draw(st.sampled_from(["none", "basic"]))
                entry["description"] = draw(_DESCRIPTIONS)
            if api == "jfrog-artifactory":
                entry["repository"] = draw(_REPOSITORIES)
            entries.append(entry)
        if draw(st.booleans()):
            entries.insert(draw(st.integers(0, len(entries))), {"api": "docker-hub"})
        data["registries"] = entries
    retry_min = draw(st.floats(0.001, 1000))
    data["images"] = {
        "fetch-concurrency": draw(st.integers(1, 64)),
        "retry-min-s": retry_min,
        "retry-max-s": draw(st.floats(retry_min, 86400)),
    }
    data["exports"] = {"nfs": draw(st.sampled_from(["kernel", "ganesha"]))}
    data["daemon"] = {"shutdown-budget-s": draw(st.floats(0.01, 3600) | st.integers(1, 3600))}
    return data


@pytest.mark.parametrize(
    "original",
    [
        default_config(),
        parse(yaml.safe_load(FULL_EXAMPLE), SRC),
        replace(default_config(), registries=()),
    ],
)
def test_to_data_round_trips(original: Config) -> None:
    assert parse(to_data(original), SRC) == original


def test_to_data_writes_the_file_keys() -> None:
    data = to_data(parse(yaml.safe_load(FULL_EXAMPLE), SRC))
    assert data == yaml.safe_load(FULL_EXAMPLE)
    assert "network" not in to_data(default_config())
    assert to_data(replace(default_config(), registries=()))["registries"] == []


@given(_config_data())
def test_to_data_round_trips_through_yaml(data: dict[str, object]) -> None:
    original = parse(data, SRC)
    text = yaml.safe_dump(to_data(original), sort_keys=False, allow_unicode=True)
    assert parse(yaml.safe_load(text), SRC) == original


# --- load -----------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.conf"
    path.write_text(text, encoding="utf-8")
    return path


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path)
    return messages(caught.value)


def test_load_a_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_EXAMPLE)
    loaded = load(path)
    assert loaded == parse(yaml.safe_load(FULL_EXAMPLE), SRC)
    assert loaded.source == str(path)


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_load_an_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load(path) == default_config()
    assert load(path).source == str(path)


def test_load_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.conf"
    assert load_problems(path) == [f"{path}: cannot read it: No such file or directory"]


def test_load_a_folder(tmp_path: Path) -> None:
    assert load_problems(tmp_path) == [f"{tmp_path}: not a regular file (a folder); refused unread"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("registries: [\n", "line 2, column 1: YAML syntax error: "),
        ("images:\n\tfetch-concurrency: 2\n", "line 2, column 1: YAML syntax error: "),
        ("images:\n  a: 1\n   b: 2\n", "line 3, column 5: YAML syntax error: "),
        ("a: 1\n--- \nb: 2\n", "line 2, column 1: YAML syntax error: "),
        ("images: {}\n\x00\n", "line 2: YAML syntax error: character #x0000 is not allowed"),
    ],
)
def test_load_a_yaml_syntax_error(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    (message,) = load_problems(path)
    assert message.startswith(f"{path}: {where}")


def test_load_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "server.conf"
    path.write_bytes(b"images: {}\n# \xe9t\xe9\n")
    assert load_problems(path) == [f"{path}: not UTF-8 text (byte 13)"]


def test_load_a_non_mapping_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, "- network\n- registries\n")
    assert load_problems(path) == [
        f"{path}: top level: must be a mapping with keys network, registries, images, exports, "
        "api, boot, daemon, not a list"
    ]


def test_load_names_the_file_in_every_message(tmp_path: Path) -> None:
    path = write(tmp_path, "images:\n  fetch-concurrency: 0\nexports:\n  nfs: nfsd\n")
    messages = load_problems(path)
    assert len(messages) == 2
    assert all(message.startswith(f"{path}: ") for message in messages)


def test_load_refuses_duplicate_keys(tmp_path: Path) -> None:
    # PyYAML would silently keep the last one: a typo of the same kind as an unknown key.
    path = write(
        tmp_path,
        "images:\n  fetch-concurrency: 0\nregistries:\n- label: local\n  api: docker-registry-v2\n"
        "  host: reg.example.org\n  port: 80\n  port: 5000\nimages: {}\n",
    )
    assert load_problems(path) == [
        f"{path}: line 8: key 'port' appears twice in the same mapping; keep one",
        f"{path}: line 9: key 'images' appears twice in the same mapping; keep one",
    ]


def test_load_accepts_yaml_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "registries:\n"
        "- &base {label: a, api: docker-registry-v2, host: a.example.org, auth: basic}\n"
        "- <<: *base\n  label: b\n  host: b.example.org\n",
    )
    assert [(r.label, r.auth) for r in load(path).registries] == [("a", "basic"), ("b", "basic")]


# --- save -----------------------------------------------------------------------------------


def a_config() -> Config:
    return parse(yaml.safe_load(FULL_EXAMPLE), SRC)


def test_save_a_new_file_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "server.conf"
    old_umask = os.umask(0o077)
    try:
        save(path, a_config())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load(path) == a_config()
    assert os.listdir(tmp_path) == ["server.conf"]


def test_save_replaces_the_file_by_rename_and_keeps_its_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "# the old file\n")
    path.chmod(0o640)
    inode = path.stat().st_ino
    save(path, a_config())
    assert path.stat().st_ino != inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load(path) == a_config()
    assert os.listdir(tmp_path) == ["server.conf"]


def test_save_keeps_the_owner(tmp_path: Path) -> None:
    require_root()  # changing a file's owner needs root
    path = write(tmp_path, "")
    os.chown(path, 1234, 1235)
    save(path, a_config())
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 1235)


def test_save_through_a_symlink_writes_its_target(tmp_path: Path) -> None:
    target = write(tmp_path, "")
    link = tmp_path / "link.conf"
    link.symlink_to(target)
    save(link, a_config())
    assert link.is_symlink()
    assert load(target) == a_config()


def test_save_refuses_an_invalid_config_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "server.conf"
    bad = replace(a_config(), images=Images(fetch_concurrency=0))
    with pytest.raises(ConfigError) as caught:
        save(path, bad)
    assert messages(caught.value) == [
        f"{path}: images: key 'fetch-concurrency': must be an integer from 1 to 64, not 0"
    ]
    assert os.listdir(tmp_path) == []


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    """The write fails for real, as on a full disk: EFBIG past this process's file size limit."""
    path = write(tmp_path, "# the old file\n")
    with file_size_limit(64), pytest.raises(OSError) as caught:
        save(path, a_config())
    assert caught.value.errno == errno.EFBIG
    assert path.read_text() == "# the old file\n"
    assert os.listdir(tmp_path) == ["server.conf"]


# --- restart_needed -------------------------------------------------------------------------


def test_reloadable_changes_need_no_restart() -> None:
    old = a_config()
    new = replace(old, registries=(), images=Images(fetch_concurrency=8), source="other")
    assert restart_needed(old, old) == []
    assert restart_needed(old, new) == []


@pytest.mark.parametrize(
    ("changes", "needed"),
    [
        ({"walt_net": None}, ["network"]),
        ({"exports": Exports(nfs="ganesha")}, ["exports"]),
        ({"api": Api(socket=Path("/run/other.sock"))}, ["api"]),
        ({"daemon": Daemon(shutdown_budget_s=5)}, ["daemon"]),
        (
            {
                "walt_net": None,
                "exports": Exports(root=Path("/srv")),
                "api": Api(socket=Path("/run/other.sock")),
                "daemon": Daemon(state_dir=Path("/srv/state")),
                "images": Images(fetch_concurrency=8),
            },
            ["network", "exports", "api", "daemon"],
        ),
    ],
)
def test_restart_needed(changes: dict[str, object], needed: list[str]) -> None:
    old = a_config()
    assert restart_needed(old, replace(old, **changes)) == needed  # type: ignore[arg-type]


def test_docker_socket_is_an_absolute_path() -> None:
    parsed = parse({"images": {"docker-socket": "/srv/docker.sock"}}, SRC)
    assert parsed.images.docker_socket == Path("/srv/docker.sock")
    assert "docker-socket" in problem({"images": {"docker-socket": "docker.sock"}})


def test_hub_urls_for_a_mirror() -> None:
    hub = {
        "label": "hub",
        "api": "docker-hub",
        "registry-url": "http://127.0.0.1:5000/",
        "hub-url": "https://hub.example.org",
    }
    parsed = parse({"registries": [hub]}, SRC)
    assert parsed.registries[0].registry_url == "http://127.0.0.1:5000"
    assert parsed.registries[0].hub_url == "https://hub.example.org"
    assert parse(to_data(parsed), SRC) == parsed
    for bad in ("ftp://x", "http://u:pw@x", "https://x/path", "x:5000"):
        msg = problem({"registries": [{**hub, "registry-url": bad}]})
        assert "registry-url" in msg and "pw" not in msg
