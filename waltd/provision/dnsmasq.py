"""dnsmasq driven by waltd: its configuration (pure) and its process (a supervised child).

dnsmasq answers DHCP on the node network only (`network.walt-net`; without it, no
dnsmasq at all), tags walt nodes by vendor or user class, gives the boot answers of the
boot conversation, reads known nodes from `dhcp-hostsdir` and their names from
`dhcp-optsdir` (picked up by inotify, so adding a node drops no lease), serves TFTP from a
server-owned folder, and reports every lease change and finished TFTP transfer as one file
in the spool that detection drains:

- through `dhcp_hook.lua`, run inside dnsmasq's helper process, when dnsmasq has Lua
  (Debian's dnsmasq-base-lua): no interpreter started per event (dnsmasq still starts a
  program that does nothing, `noop_script`, without which the hook gets no classes);
- else through the exec hook `dhcp_event`, a bare interpreter started per event (about 10 ms
  each, one after another): a warning at start says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Self

import waltd
from waltd import dhcp_event, log
from waltd.atomic import write_atomic
from waltd.config import Config, WaltNet
from waltd.context import Context
from waltd.db import StateError
from waltd.names import normalise_mac
from waltd.node_events import NodeSeen, Resync, Subscription
from waltd.process import Children
from waltd.provision.boot import install_server_files, public_folder
from waltd.supervisor import Service

_log = log.get("dnsmasq")

# Concurrent TFTP transfers (dnsmasq's default, 50, is a handful of nodes booting at
# once); each needs one or two descriptors, which the daemon's raised limit leaves.
TFTP_MAX = 4096
# The Lua hook's file names start with this (dhcp_hook.lua reads it from its environment).
PREFIX_ENV = "WALTD_EVENT_PREFIX"
# How long `dnsmasq --version` may take.
VERSION_TIMEOUT_S = 10.0
# klibc's `true` (Debian's klibc-utils): no dynamic loader starts with it. The loader's CPU
# feature probing traps to the hypervisor in a virtual machine, where coreutils' `true` then
# costs about 1 ms of CPU more per call; dnsmasq runs its script at every lease event.
KLIBC_TRUE = Path("/usr/lib/klibc/bin/true")


@dataclass(frozen=True)
class Paths:
    """Where dnsmasq's files live: config, hooks and host reservations (remade at every
    start: the runtime folder), leases (kept across reboots: the state folder), TFTP root."""

    folder: Path
    tftp_root: Path
    spool: Path  # where the hook puts each event, one file each, for detection
    leases: Path

    @property
    def conf(self) -> Path:
        return self.folder / "dnsmasq.conf"

    @property
    def hosts(self) -> Path:
        return self.folder / "hosts.d"

    @property
    def options(self) -> Path:
        return self.folder / "options.d"

    @property
    def hook(self) -> Path:
        return self.folder / "dhcp-hook"

    @property
    def lua_hook(self) -> Path:
        return self.folder / "dhcp-hook.lua"


def dnsmasq_paths(ctx: Context) -> Paths:
    """Where the daemon of `ctx` keeps dnsmasq's files."""
    return Paths(
        folder=ctx.run_dir / "dnsmasq",
        tftp_root=ctx.config.exports.root / "tftp",
        spool=ctx.run_dir / "dhcp-spool",
        leases=ctx.state_dir / "dnsmasq" / "leases",
    )


def forget_old_files(old: Path, paths: Paths) -> None:
    """Remove what a daemon of an earlier layout wrote in `old` (the state folder's dnsmasq
    folder, which now keeps the leases alone) and now writes in `paths.folder`: its
    configuration, hooks and host entries, remade at every start."""
    if os.path.realpath(old) == os.path.realpath(paths.folder):
        return
    for file in (paths.conf, paths.hook, paths.lua_hook):
        (old / file.name).unlink(missing_ok=True)
    shutil.rmtree(old / paths.hosts.name, ignore_errors=True)


@dataclass(frozen=True)
class Hook:
    """How dnsmasq reports lease events: `script` (dhcp-script) alone, or `lua` beside it.

    dnsmasq hands a Lua script the client's classes only when a dhcp-script is set too
    (it collects them for scripts alone), so the Lua hook comes with a program that does
    nothing as that script (`noop_script`).
    """

    script: Path
    lua: Path | None = None


def noop_script(klibc_true: Path = KLIBC_TRUE) -> Path | None:
    """The cheapest program that does nothing: klibc's `true` when installed, else the
    `true` on the PATH; None when there is neither."""
    if os.access(klibc_true, os.X_OK):
        return klibc_true
    found = shutil.which("true")
    return Path(found) if found is not None else None


def has_lua(version: str) -> bool:
    """Whether `dnsmasq --version` output lists Lua among its compile-time options."""
    for line in version.splitlines():
        if line.startswith("Compile time options:"):
            return "Lua" in line.split()
    return False


def render_config(net: WaltNet, paths: Paths, hook: Hook, *, dhcp_lines: bool = False) -> str:
    """dnsmasq.conf for the node network `net`; `dhcp_lines`: dnsmasq writes a line per
    DHCP message and router advert (the daemon relays them as debug records), else none
    (`quiet-dhcp`, `quiet-ra`)."""
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
        f"dhcp-script={hook.script}",
        *([f"dhcp-luascript={hook.lua}"] if hook.lua is not None else []),
        f"dhcp-hostsdir={paths.hosts}",
        f"dhcp-optsdir={paths.options}",
        "dhcp-vendorclass=set:walt,walt.node",
        "dhcp-userclass=set:walt,walt.node",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-vendorclass=set:pxe,PXEClient",
        "dhcp-match=set:efi,option:client-arch,7",
        "dhcp-match=set:efi,option:client-arch,9",
        # Firmware PXE gets an iPXE binary; iPXE without a walt class gets the bootstrap (the
        # bootstrap's own DHCP, with its walt class, still says PXEClient: it gets neither).
        "dhcp-boot=tag:pxe,tag:!ipxe,tag:!walt,tag:!efi,undionly.kpxe",
        "dhcp-boot=tag:pxe,tag:!ipxe,tag:!walt,tag:efi,ipxe.efi",
        "dhcp-boot=tag:ipxe,tag:!walt,bootstrap.ipxe",
        # iPXE would wait 3 s for ProxyDHCP at every DHCP without this.
        "dhcp-option=encap:175,176,1b",
        # Without router adverts iPXE waits for an IPv6 router at each DHCP (13-30 s); dnsmasq
        # sends them only when the interface has an IPv6 prefix beyond its link-local one
        # (addresses only: no DHCPv6 is served).
        "enable-ra",
        f"dhcp-range=::,constructor:{net.interface},ra-only",
        "enable-tftp",
        f"tftp-root={paths.tftp_root}",
        f"tftp-max={TFTP_MAX}",
        "log-facility=-",
        # a line per DHCP message is four per node booting, and one per router solicitation
        # and advert: only worth writing (and relaying) when the daemon logs at debug level
        *([] if dhcp_lines else ["quiet-dhcp", "quiet-ra"]),
    ]
    return "\n".join(lines) + "\n"


def name_tag(mac: str) -> str:
    """The dnsmasq tag of one known node: `name-` and its MAC's hex digits."""
    return "name-" + normalise_mac(mac).replace(":", "")


def host_entry(mac: str) -> str:
    """A dhcp-hostsdir line tagging a known node (`name_tag`); its lease keeps its address.

    The entry names no host: dnsmasq would make that name its lease's, then report the
    renamed lease as one more lease event (and rewrite its lease file, with an fsync), for
    every new node. The name goes in the node's answers as an option (`name_option`).
    """
    return f"{normalise_mac(mac)},set:{name_tag(mac)}\n"


def name_option(mac: str, name: str) -> str:
    """The dhcp-optsdir line giving a known node its name: DHCP option 12 (host name, which
    dnsmasq knows by number only) in the answers to its tag (`host_entry`), to clients that
    ask for it, as dnsmasq gives a lease's own name."""
    if not name or not all(c.isalnum() or c == "-" for c in name) or len(name) > 63:
        raise ValueError(f"not a valid host name: {name[:70]!r}")
    return f"tag:{name_tag(mac)},12,{name}\n"


def write_hook(path: Path) -> Path:
    """Write dnsmasq's dhcp-script (`dhcp_event.hook_script`: this installation's interpreter
    and waltd package, started without site packages); root's alone (dnsmasq runs its
    scripts as root)."""
    root = Path(waltd.__file__).resolve().parent.parent
    text = dhcp_event.hook_script(sys.executable, str(root))
    write_atomic(path, text.encode(), 0o700)
    return path


def write_lua_hook(path: Path) -> Path:
    """Write the Lua hook (`dhcp_hook.lua` of this package); root's alone (dnsmasq's helper
    runs it as root)."""
    text = resources.files(__package__).joinpath("dhcp_hook.lua").read_bytes()
    write_atomic(path, text, 0o600)
    return path


async def dnsmasq_has_lua(children: Children) -> bool:
    """Whether the dnsmasq on the PATH runs Lua scripts (False when it cannot tell)."""
    try:
        async with asyncio.timeout(VERSION_TIMEOUT_S):  # a timeout cancels: the child is killed
            status, out, _ = await children.run(["dnsmasq", "--version"])
    except (OSError, TimeoutError):
        return False  # no dnsmasq, or a stuck one: starting it says so
    return status == 0 and has_lua(out.decode(errors="replace"))


class DnsmasqService(Service):
    """Runs dnsmasq on the node network as a supervised child; a crash restarts it."""

    name = "dnsmasq"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.paths = dnsmasq_paths(ctx)
        self._proc: asyncio.subprocess.Process | None = None
        self._nodes: Subscription | None = None

    async def __aenter__(self) -> Self:
        net = self._ctx.config.walt_net
        assert net is not None, "dnsmasq runs only with a node network"
        # dnsmasq drops to `nobody` and must still read its hosts folder and TFTP files.
        for folder in (
            self.paths.folder,
            self.paths.hosts,
            self.paths.options,
            self.paths.leases.parent,
            self.paths.tftp_root,
        ):
            public_folder(folder)
        forget_old_files(self.paths.leases.parent, self.paths)
        self._install_boot_files(self._ctx.config)
        self.paths.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        hook = await self._hook()
        dhcp_lines = _log.is_enabled_for(logging.DEBUG)
        self.paths.conf.write_text(render_config(net, self.paths, hook, dhcp_lines=dhcp_lines))
        env = {
            **os.environ,
            dhcp_event.SPOOL_ENV: str(self.paths.spool),
            # names of this run sort after those of earlier runs and of the exec hook
            PREFIX_ENV: f"{time.time_ns():020d}",
        }
        argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={self.paths.conf}", "--pid-file"]
        # Subscribed before the hosts are rebuilt, so a node detected meanwhile gets its
        # entry from its event rather than fall between the two.
        self._nodes = self._ctx.nodes.subscribe(self.name)
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
            self._nodes.close()
            self._nodes = None
            raise
        _log.info(
            "dnsmasq_started",
            pid=self._proc.pid,
            interface=net.interface,
            dhcp_range=f"{net.dhcp_range[0]}-{net.dhcp_range[1]}",
        )
        return self

    async def _hook(self) -> Hook:
        """The Lua hook when dnsmasq runs Lua, else the exec hook (with a warning)."""
        noop = noop_script()
        if noop is not None and await dnsmasq_has_lua(self._ctx.children):
            _log.info("dhcp_hook", kind="lua", script=str(noop))
            return Hook(script=noop, lua=write_lua_hook(self.paths.lua_hook))
        _log.warning(
            "dhcp_hook_slow",
            kind="exec",
            reason="this dnsmasq has no Lua: each lease event starts a program (~10 ms)",
            hint="install a dnsmasq with Lua (Debian: dnsmasq-base-lua)",
        )
        return Hook(script=write_hook(self.paths.hook))

    async def _write_known_hosts(self) -> None:
        """Give every recorded node its host entry and name option.

        Nodes first seen while dnsmasq was not running (from the spool at start, or during
        a restart backoff) got none when they were detected.
        """
        db = self._ctx.db
        try:
            if not db.is_open:
                raise StateError("the state database is not open")
            nodes = await db.list_nodes()
        except (StateError, RuntimeError) as err:
            # DHCP matters more than names: start without them rather than not at all.
            _log.warning("known_hosts_not_written", error=str(err))
            return
        for node in nodes:
            if node.model is None:
                continue  # an unknown device: not a node, no name to give
            try:
                self.add_host(node.mac, node.name)
            except ValueError as err:
                _log.warning("known_host_skipped", mac=node.mac, error=str(err))

    def _install_boot_files(self, config: Config) -> None:
        # dnsmasq serves TFTP as `nobody`: the files are world-readable on purpose.
        install_server_files(config.exports.root, config.boot.http_port)

    async def reload(self, config: Config) -> None:
        """The bootstrap names the HTTP port (`boot.http-port`, reloadable): rewritten."""
        await asyncio.to_thread(self._install_boot_files, config)

    async def serve(self) -> None:
        """Keep known hosts from node events; relay dnsmasq's output to the log.

        dnsmasq's exit is a crash (the supervisor restarts it), whose message carries its
        last words (e.g. an unknown interface).
        """
        assert self._nodes is not None
        relay = asyncio.create_task(self._relay(), name="dnsmasq:output")
        hosts = asyncio.create_task(self._keep_hosts(self._nodes), name="dnsmasq:hosts")
        try:
            done, _ = await asyncio.wait([relay, hosts], return_when=asyncio.FIRST_COMPLETED)
            # neither ends by itself without an error: dnsmasq exited, or a write failed
            done.pop().result()
        finally:
            for task in (relay, hosts):
                task.cancel()
            await asyncio.gather(relay, hosts, return_exceptions=True)

    async def _keep_hosts(self, nodes: Subscription) -> None:
        async for event in nodes:
            if isinstance(event, Resync):
                await self._write_known_hosts()
            elif isinstance(event, NodeSeen) and event.new:
                self.add_host(event.mac, event.name)

    async def _relay(self) -> None:
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
        if self._nodes is not None:
            self._nodes.close()
            self._nodes = None
        if self._proc is not None:
            await self._ctx.children.stop(self._proc, grace=2)
            self._proc = None

    def add_host(self, mac: str, name: str) -> Path:
        """Make `mac` a known host named `name` (inotify: no restart, no lease lost); returns
        its host entry's file.

        Its name option is written first: the tag that gives it is set once dnsmasq reads
        the host entry. Not synced: every start writes each recorded node's files again
        from the database, and a sync per node would stall a storm of new nodes on the disk.
        """
        option = name_option(mac, name)
        file = normalise_mac(mac).replace(":", "-")
        write_atomic(self.paths.options / file, option.encode(), 0o644, durable=False)
        path = self.paths.hosts / file
        write_atomic(path, host_entry(mac).encode(), 0o644, durable=False)
        return path
