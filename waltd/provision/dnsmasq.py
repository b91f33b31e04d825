"""dnsmasq driven by waltd: its configuration (pure) and its process (a supervised child).

dnsmasq answers DHCP on the node network only (`network.walt-net`; without it, no
dnsmasq at all), tags walt nodes by vendor or user class, gives the boot answers of the
boot conversation, reads known nodes from `dhcp-hostsdir` (picked up by inotify, so adding
a node drops no lease), serves TFTP from a server-owned folder, and reports every lease
change through the `waltd-dhcp-event` hook.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from waltd import log
from waltd.config import WaltNet
from waltd.db import StateError
from waltd.dhcp_event import SOCKET_ENV, SPOOL_ENV
from waltd.provision.models import normalise_mac
from waltd.supervisor import Service

if TYPE_CHECKING:
    from waltd.daemon import Context

_log = log.get("dnsmasq")

# iPXE binaries of Debian's ipxe package, answered to firmware PXE (not yet iPXE).
IPXE_FILES = {"undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe", "ipxe.efi": "/usr/lib/ipxe/ipxe.efi"}

BOOTSTRAP_IPXE = """#!ipxe
# waltd bootstrap: announce the model, then boot this node's own start script.
cpuid --ext 29 && set model pc-x86-64 || set model pc-x86-32
set user-class walt.node.${model}
:dhcp
dhcp || goto dhcp
:start
chain tftp://${next-server}/nodes/${mac:hexhyp}/start.ipxe || goto retry
:retry
sleep 5
goto start
"""


@dataclass(frozen=True)
class Paths:
    """Where dnsmasq's files live: config, leases, host reservations, TFTP root."""

    folder: Path
    tftp_root: Path

    @property
    def conf(self) -> Path:
        return self.folder / "dnsmasq.conf"

    @property
    def leases(self) -> Path:
        return self.folder / "leases"

    @property
    def hosts(self) -> Path:
        return self.folder / "hosts.d"


def render_config(net: WaltNet, paths: Paths, hook: Path) -> str:
    """dnsmasq.conf for the node network `net` (INFRA.md's working configuration)."""
    first, last = net.dhcp_range
    lines = [
        "# Written by waltd; changes are overwritten.",
        "port=0",  # no DNS: waltd only wants DHCP and TFTP
        f"interface={net.interface}",
        "bind-interfaces",
        "except-interface=lo",
        "no-ping",  # without it the first offer waits ~3 s
        "dhcp-authoritative",
        f"dhcp-range={first},{last},{net.ip.network.netmask},12h",
        f"dhcp-leasefile={paths.leases}",
        f"dhcp-script={hook}",
        f"dhcp-hostsdir={paths.hosts}",
        "dhcp-vendorclass=set:walt,walt.node",
        "dhcp-userclass=set:walt,walt.node",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-vendorclass=set:pxe,PXEClient",
        "dhcp-match=set:efi,option:client-arch,7",
        "dhcp-match=set:efi,option:client-arch,9",
        # Firmware PXE gets an iPXE binary; iPXE without a walt class gets the bootstrap.
        "dhcp-boot=tag:pxe,tag:!ipxe,tag:!efi,undionly.kpxe",
        "dhcp-boot=tag:pxe,tag:!ipxe,tag:efi,ipxe.efi",
        "dhcp-boot=tag:ipxe,tag:!walt,bootstrap.ipxe",
        # iPXE would wait 3 s for ProxyDHCP at every DHCP without this.
        "dhcp-option=encap:175,176,1b",
        "enable-tftp",
        f"tftp-root={paths.tftp_root}",
        "log-facility=-",
    ]
    return "\n".join(lines) + "\n"


def host_entry(mac: str, name: str) -> str:
    """A dhcp-hostsdir line giving a known node its name (its lease keeps its address)."""
    mac = normalise_mac(mac)
    if not name or not all(c.isalnum() or c == "-" for c in name) or len(name) > 63:
        raise ValueError(f"not a valid host name: {name[:70]!r}")
    return f"{mac},{name}\n"


def hook_path() -> Path:
    """The `waltd-dhcp-event` beside the running interpreter (the same installation)."""
    beside = Path(sys.executable).parent / "waltd-dhcp-event"
    if beside.exists():
        return beside
    found = shutil.which("waltd-dhcp-event")
    if not found:
        raise RuntimeError("waltd-dhcp-event is not installed")
    return Path(found)


class DnsmasqService(Service):
    """Runs dnsmasq on the node network as a supervised child; a crash restarts it."""

    name = "dnsmasq"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.paths = Paths(
            folder=ctx.state_dir / "dnsmasq", tftp_root=ctx.config.exports.root / "tftp"
        )
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        net = self._ctx.config.walt_net
        assert net is not None, "dnsmasq runs only with a node network"
        # dnsmasq drops to `nobody` and must still read its hosts folder and TFTP files.
        for folder in (self.paths.folder, self.paths.hosts, self.paths.tftp_root):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        self._install_boot_files()
        self.paths.conf.write_text(render_config(net, self.paths, hook_path()))
        env = {
            **os.environ,
            SOCKET_ENV: str(self._ctx.state_dir / "dhcp-events.sock"),
            SPOOL_ENV: str(self._ctx.state_dir / "dhcp-spool"),
        }
        argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={self.paths.conf}", "--pid-file"]
        # Published before the hosts are rebuilt, so a node detected meanwhile writes its own
        # entry rather than fall between the two.
        self._ctx.dnsmasq = self
        try:
            await self._write_known_hosts()
            self._proc = await self._ctx.children.spawn(
                argv,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                drops_privileges=True,  # it becomes `nobody`
            )
        except BaseException:
            self._ctx.dnsmasq = None
            raise
        _log.info(
            "dnsmasq_started",
            pid=self._proc.pid,
            interface=net.interface,
            dhcp_range=f"{net.dhcp_range[0]}-{net.dhcp_range[1]}",
        )
        return self

    async def _write_known_hosts(self) -> None:
        """Give every recorded node its hosts.d entry.

        Nodes first seen while dnsmasq was not running (from the spool at start, or during
        a restart backoff) got none when they were detected.
        """
        db = self._ctx.db
        try:
            if db is None:
                raise StateError("the state database is not open")
            nodes = await db.list_nodes()
        except (StateError, RuntimeError) as err:
            # DHCP matters more than names: start without them rather than not at all.
            _log.warning("known_hosts_not_written", error=str(err))
            return
        for node in nodes:
            try:
                self.add_host(node.mac, node.name)
            except ValueError as err:
                _log.warning("known_host_skipped", mac=node.mac, error=str(err))

    def _install_boot_files(self) -> None:
        (self.paths.tftp_root / "bootstrap.ipxe").write_text(BOOTSTRAP_IPXE)
        for name, source in IPXE_FILES.items():
            if Path(source).exists():
                shutil.copyfile(source, self.paths.tftp_root / name)

    async def serve(self) -> None:
        """Relay dnsmasq's output to the log; its exit is a crash (the supervisor restarts it).

        The crash message carries dnsmasq's last words (e.g. an unknown interface).
        """
        assert self._proc is not None and self._proc.stdout is not None
        last: deque[str] = deque(maxlen=3)
        async for raw in self._proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                last.append(line)
                _log.debug("dnsmasq_output", line=line)
        status = await self._ctx.children.wait(self._proc)
        said = f": {' | '.join(last)}" if last else ""
        raise RuntimeError(f"dnsmasq exited with status {status}{said}")

    async def __aexit__(self, *exc: object) -> None:
        self._ctx.dnsmasq = None
        if self._proc is not None:
            await self._ctx.children.stop(self._proc, grace=2)
            self._proc = None

    def add_host(self, mac: str, name: str) -> Path:
        """Make `mac` a known host (inotify: no restart, no lease lost); returns its file."""
        entry = host_entry(mac, name)
        path = self.paths.hosts / normalise_mac(mac).replace(":", "-")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(entry)
        tmp.chmod(0o644)
        tmp.replace(path)
        return path
