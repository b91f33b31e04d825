"""dnsmasq's configuration as waltd writes it, checked by dnsmasq itself."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from waltd.config import WaltNet
from waltd.provision.dnsmasq import Paths, host_entry, render_config

NET = WaltNet(
    interface="walt-net",
    ip=ipaddress.IPv4Interface("192.168.152.1/22"),
    dhcp_range=(ipaddress.IPv4Address("192.168.152.100"), ipaddress.IPv4Address("192.168.155.250")),
)


def test_rendered_config_is_valid_for_dnsmasq(tmp_path: Path) -> None:
    dnsmasq = require_tool("dnsmasq")
    paths = Paths(folder=tmp_path, tftp_root=tmp_path / "tftp")
    (tmp_path / "tftp").mkdir()
    paths.hosts.mkdir()
    text = render_config(NET, paths, Path("/usr/bin/waltd-dhcp-event"))
    paths.conf.write_text(text)
    res = subprocess.run(
        [dnsmasq, "--test", f"--conf-file={paths.conf}"], capture_output=True, text=True, timeout=10
    )
    assert res.returncode == 0, res.stderr
    lines = text.splitlines()
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


def test_host_entry() -> None:
    assert host_entry("52-54-00-AA-BB-CC", "node-aabbcc") == "52:54:00:aa:bb:cc,node-aabbcc\n"
    for bad in ("a,b", "x\ndhcp-range=1", ""):
        with pytest.raises(ValueError):
            host_entry("52:54:00:aa:bb:cc", bad)
