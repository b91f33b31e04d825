"""The lab: a server network namespace with a node bridge, simulated nodes and test registries.

Layout: every server process (the registries here; waltd, dnsmasq, rpcbind and ganesha
for the tests that start them) runs in one server namespace with `lo` up, started with
`nsenter --net` so that all of them share the host's mounts. A bridge in that namespace carries
the node network; each simulated node is a namespace holding one end of a veth pair (`eth0`, with
the node's MAC), the other end sitting on the bridge. Every process of the lab is a child of
`waltd.process.Children`, so the kernel kills it when the lab's owner dies.

Registries listen on 127.0.0.1:PORT of the server namespace, where the daemon under test finds
them; the lab also listens on the host's 127.0.0.1:PORT (same number) and forwards each connection
there (`forward.py`), so tests, skopeo and the `walt` client use the same URL from the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import socket
import string
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from lab import configs, forward
from lab import record as rec
from waltd import config, podman_registries
from waltd.images.storage import render_containers_conf, render_storage_conf
from waltd.process import Children

# Lab folders go into mount options and ganesha files: keep to characters neither needs to escape.
_SAFE_ROOT = re.compile(r"/[A-Za-z0-9_./-]*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_ROLE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]*")
_PREFIX_CHARS = string.ascii_lowercase + string.digits
# Node networks are drawn from 10.SUBNET_FIRST.0.0 .. 10.255.255.0 (/24 each).
_SUBNET_FIRST = 100
_MAX_NODES = 250


class LabError(RuntimeError):
    """A lab step failed; the message carries the tool's own words."""


@dataclass
class LabProcess:
    """A long-running process of the lab, stopped at the latest when the lab ends."""

    name: str
    process: asyncio.subprocess.Process
    netns: str | None
    log: Path

    @property
    def pid(self) -> int:
        """Process id."""
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        """The end of its output (stdout and stderr), for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Node:
    """A simulated node: namespace `netns` whose `ifname` (MAC `mac`) is linked to the bridge."""

    name: str
    netns: str
    mac: str
    ifname: str = "eth0"
    ip: ipaddress.IPv4Address | None = None
    # the host name the server gave with its last lease (`node_dhcp`), None when none
    host_name: str | None = None


@dataclass(frozen=True)
class Registry:
    """A real Docker registry v2 of the lab, at `url` from the host and the server namespace."""

    role: str
    port: int
    auth: tuple[str, str] | None
    process: LabProcess

    @property
    def host(self) -> str:
        """`host:port`, as in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the registry API (plain HTTP)."""
        return f"http://{self.host}"

    def entry(self) -> config.Registry:
        """The registry as a server.conf entry (`docker-registry-v2`, plain HTTP), label `role`."""
        auth = "basic" if self.auth else "none"
        description = f"lab registry {self.role}"
        return config.Registry(
            self.role, "docker-registry-v2", description, "127.0.0.1", self.port, "http", auth=auth
        )


class Lab:
    """A lab run: `async with Lab() as lab:` builds it, leaving the block removes all of it.

    `root` is the lab's folder: absent or empty, removed at the end. By default a new folder in
    the temporary directory, mode 0755 all the way, so that dnsmasq (user nobody) can serve TFTP
    from it. Starting a lab first clears every lab left by a process that died.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self._root_arg = Path(root).absolute() if root is not None else None
        self._record: rec.LabRecord | None = None
        self._children: Children | None = None
        self._processes: list[LabProcess] = []
        self.nodes: list[Node] = []
        self.registries: dict[str, Registry] = {}
        self._taps = 0

    # ---- identity -------------------------------------------------------------------------

    @property
    def record(self) -> rec.LabRecord:
        """What this lab made; raises LabError outside the `async with` block."""
        if self._record is None:
            raise LabError("the lab is not running (use `async with Lab() as lab`)")
        return self._record

    @property
    def processes(self) -> list[LabProcess]:
        """The long-running processes started by `spawn` and not stopped yet, oldest first."""
        return list(self._processes)

    @property
    def prefix(self) -> str:
        """Per-run name prefix of namespaces and links (6 characters)."""
        return self.record.prefix

    @property
    def root(self) -> Path:
        """The lab's folder."""
        return Path(self.record.root)

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        """The node network, a /24 in 10.0.0.0/8 chosen per run."""
        return ipaddress.IPv4Network(self.record.subnet)

    @property
    def server_ip(self) -> ipaddress.IPv4Address:
        """Server address on the node network (first host of the subnet)."""
        return self.subnet.network_address + 1

    @property
    def server_interface(self) -> ipaddress.IPv4Interface:
        """Server address with the prefix length, as `network.walt-net.ip` wants it."""
        return ipaddress.IPv4Interface(f"{self.server_ip}/{self.subnet.prefixlen}")

    @property
    def dhcp_range(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """A DHCP pool for the node network (.50 to .250)."""
        base = self.subnet.network_address
        return base + 50, base + 250

    @property
    def server_netns(self) -> str:
        """Name of the server namespace (in /run/netns)."""
        return f"{self.prefix}-srv"

    @property
    def bridge(self) -> str:
        """The node network's bridge, in the server namespace."""
        return f"{self.prefix}-br"

    @property
    def graphroot(self) -> Path:
        """The lab's container storage."""
        return self.root / "containers" / "storage"

    @property
    def containers_env(self) -> dict[str, str]:
        """Environment for podman, buildah and skopeo to use the lab's storage and registries.

        REGISTRY_AUTH_FILE points at an empty auth file of the lab's: no credential of the
        machine's own auth.json leaks into the lab.
        """
        folder = self.root / "containers"
        return {
            "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
            "CONTAINERS_CONF": str(folder / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(folder / "auth.json"),
        }

    @staticmethod
    def netns_path(netns: str) -> str:
        """Path of a namespace for `nsenter --net=`."""
        return str(rec.NETNS_DIR / netns)

    # ---- life cycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Lab:
        self._record = await asyncio.to_thread(self._reserve)
        self._children = Children(self._record.children_file)
        try:
            await self._build()
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._teardown()

    def _reserve(self) -> rec.LabRecord:
        """Clear dead labs, then choose a prefix, a subnet and a folder, and record them."""
        with rec.records_locked():
            rec.clear_stale_labs()
            live = rec.lab_records()
            prefix = _new_prefix({r.prefix for r in live})
            taken = [ipaddress.IPv4Network(r.subnet) for r in live] + _host_routes()
            subnet = _new_subnet(taken)
            root = self._root_arg or Path(tempfile.gettempdir()) / f"waltd-lab-{prefix}"
            _check_root(root)
            record = rec.LabRecord(
                prefix=prefix,
                root=str(root),
                subnet=str(subnet),
                owner_pid=os.getpid(),
                owner_start=rec.process_start_time(os.getpid()) or 0,
            )
            record.save()
            try:
                root.mkdir(parents=True, exist_ok=True)
                root.chmod(0o755)
            except BaseException:
                rec.clear_lab(record)
                raise
            return record

    async def _build(self) -> None:
        srv = self.server_netns
        await self._add_netns(srv)
        await self._ip("-n", srv, "link", "set", "lo", "up")
        await self._ip("-n", srv, "link", "add", self.bridge, "type", "bridge")
        await self._ip("-n", srv, "addr", "add", str(self.server_interface), "dev", self.bridge)
        # an IPv6 prefix of its own: dnsmasq sends router adverts only on an interface that
        # has one, and without adverts iPXE waits ~30 s at each DHCP for an IPv6 router
        b, c = self.subnet.network_address.packed[1:3]
        ula = f"fd77:{b:02x}{c:02x}::1/64"
        await self._ip("-n", srv, "addr", "add", ula, "dev", self.bridge, "nodad")
        await self._ip("-n", srv, "link", "set", self.bridge, "up")
        (self.root / "logs").mkdir()
        folder = self.root / "containers"
        for sub in ("storage", "run", "tmp"):
            (folder / sub).mkdir(parents=True)
        (folder / "storage.conf").write_text(render_storage_conf(self.graphroot, folder / "run"))
        (folder / "containers.conf").write_text(render_containers_conf(folder / "tmp"))
        self._write_registries_conf()
        # must exist: buildah refuses an auth file path that does not
        (folder / "auth.json").write_text('{"auths": {}}')
        busybox = shutil.which("busybox")
        if busybox is None:
            raise LabError("busybox is not installed (Debian package busybox-static)")
        script = self.root / "udhcpc.sh"
        script.write_text(configs.udhcpc_script(busybox))
        script.chmod(0o755)

    async def _teardown(self) -> None:
        """Stop the processes in reverse order of start, then clear all the rest."""
        if self._record is None:
            return
        try:
            for proc in reversed(list(self._processes)):
                await self.stop(proc)
        finally:
            # synchronous: it completes even when the task is being cancelled
            rec.clear_lab(self._record)
            self._record = self._children = None
            self._processes.clear()
            self.nodes.clear()
            self.registries.clear()

    # ---- processes ------------------------------------------------------------------------

    def _command(self, argv: Sequence[str], netns: str | None) -> list[str]:
        if netns is None:
            return list(argv)
        return ["nsenter", f"--net={self.netns_path(netns)}", "--", *argv]

    @staticmethod
    def _environ(env: Mapping[str, str] | None) -> dict[str, str] | None:
        return {**os.environ, **env} if env else None

    @property
    def children(self) -> Children:
        """The keeper of the lab's processes; raises LabError outside the `async with` block."""
        if self._children is None:
            raise LabError("the lab is not running (use `async with Lab() as lab`)")
        return self._children

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> LabProcess:
        """Start a server process (in namespace `netns`), output to `<root>/logs/<name>.log`.

        It gets its own session, so that a Ctrl-C on the terminal leaves the lab to stop it in
        order. It is stopped by `stop` or at the end of the lab.
        """
        log = self.root / "logs" / f"{name}.log"
        with _open_log(log) as out:
            process = await self.children.spawn(
                self._command(argv, netns),
                stdout=out.fileno(),
                stderr=subprocess.STDOUT,
                env=self._environ(env),
                cwd=cwd,
                pass_fds=pass_fds,
            )
        proc = LabProcess(name, process, netns, log)
        self._processes.append(proc)
        return proc

    async def stop(self, proc: LabProcess, *, grace_s: float = 5.0) -> int:
        """Stop `proc` (SIGTERM to its group, SIGKILL after `grace_s`); return its exit status."""
        await self.children.stop(proc.process, grace_s)
        if proc in self._processes:
            self._processes.remove(proc)
        assert proc.process.returncode is not None
        return proc.process.returncode

    async def run(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        cwd: Path | None = None,
        check: bool = True,
        timeout_s: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion (in namespace `netns`) and return its output.

        With `check`, a non-zero exit raises LabError with the end of stderr. Secrets go through
        `input` or files, never `argv`: the command line appears in error messages.
        """
        command = self._command(argv, netns)
        running = self.children.run(command, env=self._environ(env), input=input, cwd=cwd)
        try:
            # on time-out the run is cancelled, which kills the command
            status, out, err = await asyncio.wait_for(running, timeout_s)
        except TimeoutError:
            raise LabError(f"{shlex.join(argv)}: no result after {timeout_s} s") from None
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        result = subprocess.CompletedProcess(list(argv), status, stdout, stderr)
        if check and result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-10:])
            raise LabError(f"{shlex.join(argv)} exited with {result.returncode}: {tail}")
        return result

    async def wait_listening(
        self, proc: LabProcess, port: int, *, udp: bool = False, timeout_s: float = 10.0
    ) -> None:
        """Wait until `proc` listens on TCP `port` (or has UDP `port` bound) in its namespace.

        Read from /proc/PID/net: no connection, so no namespace to enter. Until nsenter has
        switched namespace, /proc/PID/net is the host's, where a forwarder may hold the port:
        the process's namespace is checked first.
        """
        want = rec.netns_inode(self.netns_path(proc.netns) if proc.netns else "/proc/self/ns/net")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if proc.process.returncode is not None:
                raise LabError(
                    f"{proc.name} exited with {proc.process.returncode}:\n{proc.log_tail()}"
                )
            in_place = rec.netns_inode(f"/proc/{proc.pid}/ns/net") == want
            if in_place and _listening(proc.pid, port, udp):
                return
            if loop.time() > deadline:
                raise LabError(f"{proc.name} not listening on port {port} after {timeout_s} s")
            await asyncio.sleep(0.02)

    # ---- network --------------------------------------------------------------------------

    async def _ip(self, *args: str) -> None:
        await self.run(["ip", *args])

    async def _add_netns(self, name: str) -> None:
        self.record.netns.append(name)  # recorded first: a crash right after leaves no orphan
        self.record.save()
        try:
            await self._ip("netns", "add", name)
        except BaseException:
            # not made, perhaps someone else's: clearing the lab must not delete it
            self.record.netns.remove(name)
            self.record.save()
            raise

    async def add_node(self, mac: str | None = None, *, name: str | None = None) -> Node:
        """Add a simulated node: its namespace, and a veth from its `eth0` to the bridge.

        The default MAC is 52:54:00 followed by the subnet's 2nd and 3rd bytes and the node's
        number, unique across concurrent labs.
        """
        index = len(self.nodes) + 1
        if index > _MAX_NODES:
            raise LabError(f"a lab holds at most {_MAX_NODES} nodes")
        if mac is None:
            b, c = self.subnet.network_address.packed[1:3]
            mac = f"52:54:00:{b:02x}:{c:02x}:{index:02x}"
        mac = mac.lower()
        if not _MAC.fullmatch(mac):
            raise ValueError(f"invalid MAC address {mac!r}")
        node = Node(name or f"node{index}", f"{self.prefix}-n{index}", mac)
        port = f"{self.prefix}-v{index}"
        await self._add_netns(node.netns)
        await self._ip("-n", node.netns, "link", "set", "lo", "up")
        await self._ip(
            *("-n", self.server_netns, "link", "add", port, "master", self.bridge, "type", "veth"),
            *("peer", "name", node.ifname, "address", mac, "netns", node.netns),
        )
        await self._ip("-n", self.server_netns, "link", "set", port, "up")
        await self._ip("-n", node.netns, "link", "set", node.ifname, "up")
        self.nodes.append(node)
        return node

    async def add_tap(self) -> str:
        """A tap device on the bridge, in the server namespace, for a virtual machine there
        (QEMU's `-netdev tap,ifname=NAME,script=no,downscript=no`); returns its name. It
        goes with the server namespace."""
        self._taps += 1
        tap = f"{self.prefix}-t{self._taps}"
        await self._ip("-n", self.server_netns, "tuntap", "add", tap, "mode", "tap")
        await self._ip("-n", self.server_netns, "link", "set", tap, "master", self.bridge, "up")
        return tap

    async def node_dhcp(
        self,
        node: Node,
        *,
        vendor_class: str | None = None,
        user_class: str | None = None,
        tries: int = 5,
    ) -> ipaddress.IPv4Address:
        """Have `node` ask for a lease with `busybox udhcpc`; return the address it got
        (also in `node.ip`, and the host name the answer gave in `node.host_name`).

        `vendor_class` is DHCP option 60 (else busybox sends `udhcp VERSION`), `user_class`
        option 77 as plain text, which dnsmasq's hook sees as DNSMASQ_USER_CLASS0.
        """
        argv = ["busybox", "udhcpc", "-i", node.ifname, "-f", "-q", "-n"]
        argv += ["-t", str(tries), "-T", "1", "-s", str(self.root / "udhcpc.sh")]
        if vendor_class is not None:
            argv += ["-V", vendor_class]
        if user_class is not None:
            if '"' in user_class:
                raise ValueError(f"invalid user class {user_class!r}")
            # quoted, busybox sends the text as it is (unquoted it expects hex)
            argv += ["-x", f'77:"{user_class}"']
        result = await self.run(argv, netns=node.netns, check=False, timeout_s=tries + 10)
        said = dict(line.partition(" ")[::2] for line in result.stdout.splitlines())
        if configs.LEASE_MARKER in said:
            node.ip = ipaddress.IPv4Interface(said[configs.LEASE_MARKER]).ip
            node.host_name = said.get(configs.HOSTNAME_MARKER)
            return node.ip
        raise LabError(f"{node.name} got no DHCP lease: {result.stderr.strip()[-500:]}")

    async def expose(self, port: int = 0) -> int:
        """Forward the host's 127.0.0.1:`port` to 127.0.0.1:`port` of the server namespace.

        With 0, a port free on the host is chosen (the server namespace holds only the lab's
        own servers). Returns the port.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
            port = listener.getsockname()[1]
            fd = listener.fileno()
            argv = [sys.executable, "-I", forward.__file__, str(fd), str(port)]
            await self.spawn(f"forward-{port}", argv, netns=self.server_netns, pass_fds=(fd,))
        finally:
            listener.close()  # the forwarder holds its own copy
        return port

    # ---- registries -----------------------------------------------------------------------

    def _write_registries_conf(self) -> None:
        """podman's registries.conf: what waltd's own drop-in says for these registries."""
        entries = tuple(r.entry() for r in self.registries.values())
        podman_registries.write(
            self.root / "containers" / "registries.conf",
            replace(config.default_config(), registries=entries),
        )

    async def start_registry(
        self, role: str, *, auth: tuple[str, str] | None = None, access_log: bool = False
    ) -> Registry:
        """Start a Docker registry v2 named `role` (e.g. "hub", "local").

        With `auth` (user, password) it wants basic authentication, checked against a bcrypt
        htpasswd file; the password reaches htpasswd on stdin. With `access_log` its log
        (`Registry.process.log`) has a line for every request it answered.
        """
        if not _ROLE.fullmatch(role) or role in self.registries:
            raise ValueError(f"invalid or duplicate registry role {role!r}")
        folder = self.root / "registries" / role
        folder.mkdir(parents=True)
        htpasswd = None
        if auth is not None:
            user, password = auth
            if not _USER.fullmatch(user):
                raise ValueError(f"invalid registry user name {user!r}")
            htpasswd = folder / "htpasswd"
            await self.run(["htpasswd", "-iBc", str(htpasswd), user], input=password.encode())
        port = await self.expose()
        config = folder / "registry.yml"
        secret = secrets.token_hex(16)
        text = configs.registry_config(
            folder / "data", port, secret=secret, htpasswd=htpasswd, access_log=access_log
        )
        config.write_text(text)
        registry = Registry(role, port, auth, await self._serve_registry(role, port))
        self.registries[role] = registry
        self._write_registries_conf()
        return registry

    async def restart_registry(self, registry: Registry) -> Registry:
        """Start again a registry stopped by `stop(registry.process)`: same port, same
        content and logins, its log appended to the same file. Returns it with its new
        process (also in `registries`)."""
        if registry.process.process.returncode is None:
            raise LabError(f"registry {registry.role} is still running")
        restarted = replace(
            registry, process=await self._serve_registry(registry.role, registry.port)
        )
        self.registries[registry.role] = restarted
        return restarted

    def registry_data(self, registry: Registry) -> Path:
        """Where `registry` keeps its content (docker-registry's filesystem storage)."""
        return self.root / "registries" / registry.role / "data"

    async def _serve_registry(self, role: str, port: int) -> LabProcess:
        """`docker-registry serve` of registry `role`'s configuration, once it listens."""
        config = self.root / "registries" / role / "registry.yml"
        argv = ["docker-registry", "serve", str(config)]
        proc = await self.spawn(f"registry-{role}", argv, netns=self.server_netns)
        await self.wait_listening(proc, port)
        return proc

    # ---- mounts ---------------------------------------------------------------------------

    def track_mount(self, path: Path) -> None:
        """Record a mount point before mounting it, so that a stale lab is unmounted."""
        self.record.mounts.append(str(path))
        self.record.save()

    def untrack_mount(self, path: Path) -> None:
        """Forget a mount point after unmounting it."""
        if str(path) in self.record.mounts:
            self.record.mounts.remove(str(path))
            self.record.save()

    async def mount_tmpfs(self, path: Path, options: str) -> None:
        """A memory file system at `path` (an existing folder) with mount `options`, tracked:
        a stale lab unmounts it."""
        self.track_mount(path)
        await self.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])

    async def unmount(self, path: Path) -> None:
        """Unmount what `mount_tmpfs` mounted at `path`, and forget it."""
        await self.run(["umount", str(path)])
        self.untrack_mount(path)


def _open_log(path: Path) -> BinaryIO:
    # a local file, opened once per process start: not worth a thread
    return open(path, "ab")


def _listening(pid: int, port: int, udp: bool) -> bool:
    """Whether the namespace of `pid` has a TCP socket listening on `port` (UDP: bound to it)."""
    suffix = f":{port:04X}"
    # socket states of /proc/net/{tcp,udp}: 0A is TCP LISTEN, 07 an unconnected UDP socket
    state = "07" if udp else "0A"
    for table in ("udp", "udp6") if udp else ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] == state:
                return True
    return False


def _new_prefix(taken: set[str]) -> str:
    """`wl` and 4 random characters: `<prefix>-v250` still fits in 15 characters."""
    while True:
        prefix = "wl" + "".join(secrets.choice(_PREFIX_CHARS) for _ in range(4))
        if prefix not in taken and not (rec.NETNS_DIR / f"{prefix}-srv").exists():
            return prefix


def _new_subnet(taken: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random /24 in 10.100.0.0-10.255.255.0 overlapping no route and no other lab."""
    while True:
        b = _SUBNET_FIRST + secrets.randbelow(256 - _SUBNET_FIRST)
        subnet = ipaddress.IPv4Network(f"10.{b}.{secrets.randbelow(256)}.0/24")
        if not any(subnet.overlaps(net) for net in taken):
            return subnet


def _host_routes() -> list[ipaddress.IPv4Network]:
    """Destinations of the host's IPv4 routes, default route excluded."""
    nets = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        # little-endian hex words
        dest, mask = (int.from_bytes(bytes.fromhex(f), "little") for f in (fields[1], fields[7]))
        if mask:
            nets.append(ipaddress.IPv4Network((dest, bin(mask).count("1")), strict=False))
    return nets


def _check_root(root: Path) -> None:
    if not _SAFE_ROOT.fullmatch(str(root)) or root == Path("/"):
        raise ValueError(f"lab folder {root}: use an absolute path of [A-Za-z0-9_./-]")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"lab folder {root} exists and is not empty (the lab removes it)")
