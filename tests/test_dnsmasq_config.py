"""dnsmasq's configuration as waltd writes it, checked by dnsmasq itself."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from waltd.config import WaltNet
from waltd.process import Children
from waltd.provision.dnsmasq import (
    KLIBC_TRUE,
    Hook,
    Paths,
    dnsmasq_has_lua,
    forget_old_files,
    has_lua,
    host_entry,
    name_option,
    noop_script,
    render_config,
    write_lua_hook,
)

NET = WaltNet(
    interface="walt-net",
    ip=ipaddress.IPv4Interface("192.168.152.1/22"),
    dhcp_range=(ipaddress.IPv4Address("192.168.152.100"), ipaddress.IPv4Address("192.168.155.250")),
)


def _paths(tmp_path: Path) -> Paths:
    paths = Paths(
        folder=tmp_path,
        tftp_root=tmp_path / "tftp",
        spool=tmp_path / "spool",
        leases=tmp_path / "state" / "leases",
    )
    (tmp_path / "tftp").mkdir(parents=True)
    paths.hosts.mkdir()
    paths.options.mkdir()
    paths.leases.parent.mkdir()
    return paths


def _dnsmasq_accepts(paths: Paths, text: str) -> None:
    dnsmasq = require_tool("dnsmasq")
    paths.conf.write_text(text)
    res = subprocess.run(
        [dnsmasq, "--test", f"--conf-file={paths.conf}"], capture_output=True, text=True, timeout=10
    )
    assert res.returncode == 0, res.stderr


def test_rendered_config_is_valid_for_dnsmasq(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    text = render_config(NET, paths, Hook(script=Path("/usr/bin/waltd-dhcp-event")))
    _dnsmasq_accepts(paths, text)
    lines = text.splitlines()
    assert "dhcp-script=/usr/bin/waltd-dhcp-event" in lines
    assert not any(line.startswith("dhcp-luascript=") for line in lines)
    assert "dhcp-range=192.168.152.100,192.168.155.250,255.255.252.0,12h" in lines
    assert "interface=walt-net" in lines and "port=0" in lines
    assert "dhcp-vendorclass=set:walt,walt.node" in lines
    assert "dhcp-userclass=set:walt,walt.node" in lines
    assert "dhcp-boot=tag:ipxe,tag:!walt,bootstrap.ipxe" in lines
    assert f"dhcp-hostsdir={paths.hosts}" in lines
    # Many nodes boot at once: dnsmasq's default of 50 TFTP transfers is raised.
    assert f"tftp-root={paths.tftp_root}" in lines and "tftp-max=4096" in lines
    # iPXE's DHCP ends without waiting for ProxyDHCP or an IPv6 router
    assert "dhcp-option=encap:175,176,1b" in lines and "enable-ra" in lines
    assert "dhcp-range=::,constructor:walt-net,ra-only" in lines
    # no line per DHCP message or router advert unless asked for (a daemon logging at debug
    # level)
    assert "quiet-dhcp" in lines and "quiet-ra" in lines


def test_dhcp_lines_are_written_only_when_asked_for(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    hook = Hook(script=Path("/usr/bin/waltd-dhcp-event"))
    text = render_config(NET, paths, hook, dhcp_lines=True)
    _dnsmasq_accepts(paths, text)
    assert "quiet-dhcp" not in text.splitlines() and "quiet-ra" not in text.splitlines()
    quiet = text.replace("log-facility=-\n", "log-facility=-\nquiet-dhcp\nquiet-ra\n")
    assert quiet == render_config(NET, paths, hook)


def test_a_host_entry_tags_a_node_and_its_option_names_it() -> None:
    """No name in the host entry (dnsmasq would rename the lease and report it again): the
    name is option 12 in the answers to the node's tag."""
    assert host_entry("52-54-00-AA-BB-CC") == "52:54:00:aa:bb:cc,set:name-525400aabbcc\n"
    option = name_option("52-54-00-AA-BB-CC", "node-aabbcc")
    assert option == "tag:name-525400aabbcc,12,node-aabbcc\n"
    for bad in ("a,b", "x\ndhcp-range=1", "", "n" * 64):
        with pytest.raises(ValueError):
            name_option("52:54:00:aa:bb:cc", bad)
    with pytest.raises(ValueError):
        host_entry("52:54:00:aa:bb")


def test_dnsmasq_reads_the_host_entry_and_the_name_option(tmp_path: Path) -> None:
    """The same lines as dnsmasq's own options (its check reads no hosts or options folder)."""
    paths = _paths(tmp_path)
    mac = "52:54:00:aa:bb:cc"
    lines = f"dhcp-host={host_entry(mac)}dhcp-option={name_option(mac, 'node-aabbcc')}"
    _dnsmasq_accepts(paths, render_config(NET, paths, Hook(script=Path("/bin/true"))) + lines)


def test_the_lua_hook_comes_with_a_script_beside_it(tmp_path: Path) -> None:
    """dnsmasq gives a Lua script the client's classes only when a dhcp-script is set too."""
    paths = _paths(tmp_path)
    lua = write_lua_hook(paths.lua_hook)
    text = render_config(NET, paths, Hook(script=Path("/usr/bin/true"), lua=lua))
    _dnsmasq_accepts(paths, text)
    lines = text.splitlines()
    assert f"dhcp-luascript={lua}" in lines and "dhcp-script=/usr/bin/true" in lines
    assert lua.stat().st_mode & 0o077 == 0  # root's alone: dnsmasq's helper runs it as root


def test_the_script_beside_the_lua_hook_is_klibc_true() -> None:
    """The set-up installs klibc's `true` (Debian's klibc-utils); dnsmasq runs it with a
    lease event's arguments, and it does nothing: status 0, no output."""
    klibc_true = require_tool(str(KLIBC_TRUE))  # a path: which() checks it is executable
    assert noop_script() == Path(klibc_true) == KLIBC_TRUE
    argv = [klibc_true, "add", "52:54:00:aa:bb:cc", "192.168.152.100", "node-aabbcc"]
    done = subprocess.run(argv, capture_output=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_without_klibc_the_true_on_the_path_is_the_script(tmp_path: Path) -> None:
    assert noop_script(tmp_path / "no-klibc" / "true") == Path(require_tool("true"))
    not_executable = tmp_path / "true"
    not_executable.write_text("")
    assert noop_script(not_executable) == Path(require_tool("true"))


def test_lua_support_is_read_from_the_compile_time_options() -> None:
    head = "Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley\n"
    assert has_lua(head + "Compile time options: IPv6 GNU-getopt DBus Lua TFTP conntrack\n")
    assert not has_lua(head + "Compile time options: IPv6 GNU-getopt DBus no-Lua TFTP\n")
    assert not has_lua("Lua\n")  # only the options line counts


async def test_the_installed_dnsmasq_runs_lua(tmp_path: Path) -> None:
    """The set-up installs a dnsmasq with Lua (Debian's dnsmasq-base-lua)."""
    require_tool("dnsmasq")
    assert await dnsmasq_has_lua(Children(tmp_path / "children.json"))


def test_files_of_the_old_layout_go_and_the_leases_stay(tmp_path: Path) -> None:
    """dnsmasq's configuration, hooks and host entries moved from the state folder to the
    runtime one; the leases stayed. What an earlier daemon wrote there is removed, once."""
    paths = _paths(tmp_path / "run")
    old = paths.leases.parent
    for name in ("dnsmasq.conf", "dhcp-hook", "dhcp-hook.lua"):
        (old / name).write_text("old")
    (old / "hosts.d").mkdir()
    (old / "hosts.d" / "52-54-00-00-00-01").write_text("52:54:00:00:00:01,pc-000001\n")
    paths.leases.write_text("lease\n")
    forget_old_files(old, paths)
    assert [p.name for p in old.iterdir()] == [paths.leases.name]
    # the runtime folder being the old one: nothing is removed
    (paths.hosts / "entry").write_text("x")
    forget_old_files(paths.folder, paths)
    assert (paths.hosts / "entry").exists()
