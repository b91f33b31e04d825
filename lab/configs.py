"""Configuration text of the lab's servers and tools: pure functions, no I/O."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

import yaml


def registry_config(
    storage: Path,
    port: int,
    *,
    secret: str,
    htpasswd: Path | None = None,
    realm: str = "waltd-lab",
    access_log: bool = False,
) -> str:
    """`docker-registry serve` configuration: filesystem storage, 127.0.0.1:`port`.

    With `htpasswd` (a bcrypt file) every request needs basic authentication. With
    `access_log` every request is written to stdout, one line each (Apache combined format).
    """
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    config: dict[str, object] = {
        "version": "0.1",
        # As a production registry is set up: no access log unless asked, blob descriptors
        # cached.
        "log": {"level": "warn", "accesslog": {"disabled": not access_log}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secret},
    }
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": realm, "path": str(htpasswd)}}
    return yaml.safe_dump(config, sort_keys=False)


# Marker of the line the udhcpc script prints for the lab to read the lease.
LEASE_MARKER = "walt-lab-lease"
HOSTNAME_MARKER = "walt-lab-hostname"


def udhcpc_script(busybox: str) -> str:
    """Event script of `busybox udhcpc` (busybox ships none): set the leased address, report it
    and the host name the server gave."""
    return (
        "#!/bin/sh\n"
        "# udhcpc runs this with the event in $1 and the lease in the environment\n"
        f"bb={_shell_word(busybox)}\n"
        'case "$1" in\n'
        '    deconfig) "$bb" ip -4 addr flush dev "$interface" ;;\n'
        "    bound|renew)\n"
        '        "$bb" ip -4 addr flush dev "$interface"\n'
        '        "$bb" ip addr add "$ip/$mask" dev "$interface"\n'
        f'        echo "{LEASE_MARKER} $ip/$mask"\n'
        f'        if [ -n "$hostname" ]; then echo "{HOSTNAME_MARKER} $hostname"; fi\n'
        "        ;;\n"
        "esac\n"
    )


def _shell_word(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", value):
        raise ValueError(f"unexpected characters in path {value!r}")
    return value


def pxe_dnsmasq_conf(
    *,
    interface: str,
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address],
    netmask: ipaddress.IPv4Address,
    tftp_root: Path,
    folder: Path,
    hosts: Iterable[tuple[str, ipaddress.IPv4Address]] = (),
) -> str:
    """dnsmasq for network boots without waltd: DHCP, TFTP from `tftp_root`, the boot
    answers waltd gives (firmware PXE gets undionly.kpxe, iPXE without a walt class
    bootstrap.ipxe, a node saying its class no boot file), IPv6 router advertisements.

    `hosts` pins (MAC, address) pairs. Its lease and pid files go into `folder`.
    """
    first, last = dhcp_range
    lines = [
        "port=0",
        f"interface={interface}",
        "bind-interfaces",
        "no-ping",  # without it the first offer waits ~3 s
        "dhcp-authoritative",
        f"dhcp-range={first},{last},{netmask},12h",
        *(f"dhcp-host={mac},{ip}" for mac, ip in hosts),
        f"dhcp-leasefile={folder / 'leases'}",
        f"pid-file={folder / 'dnsmasq.pid'}",
        "dhcp-vendorclass=set:walt,walt.node",
        "dhcp-userclass=set:walt,walt.node",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-vendorclass=set:pxe,PXEClient",
        "dhcp-boot=tag:pxe,tag:!ipxe,undionly.kpxe",
        "dhcp-boot=tag:ipxe,tag:!walt,bootstrap.ipxe",
        # iPXE would wait 3 s for ProxyDHCP at every DHCP without this
        "dhcp-option=encap:175,176,1b",
        # iPXE waits ~13 s for an IPv6 router unless one advertises
        "enable-ra",
        f"dhcp-range=::,constructor:{interface},ra-only",
        "enable-tftp",
        f"tftp-root={tftp_root}",
        "log-facility=-",
        "log-dhcp",
    ]
    return "\n".join(lines) + "\n"
