"""NFS exports of images to nodes: the exports as data, two exporters, and their service.

One export per node: the node's IP (`client`) reads, read-only and with root kept root
(no_root_squash: a node's root file system has root-owned files), its image's mount point
(`path`: the real path of `<exports.root>/images/<id>/fs`) at the path it asks for (`pseudo`:
`<exports.root>/nodes/<mac>/fs`), over NFSv3 and v4. `fsid` is stable per image
(`fsid_of`): a node's file handles stay valid across remounts of its image and restarts of
the server.

- `GaneshaExporter`: nfs-ganesha (`ganesha.nfsd -F`) and, unless one answers already, rpcbind
  (NFSv3 clients find mountd through it; ganesha exits without one), as supervised children.
  Exports live in a file the configuration `%include`s; `apply` rewrites it and sends SIGHUP.
  ganesha serves `pseudo` itself (NFSv4 pseudo file system, and NFSv3 MOUNT by pseudo path:
  `Mount_Path_Pseudo`), so the node never sees the symlinks of `<exports.root>/nodes/`.
- `KernelExporter`: the kernel's nfsd, `/etc/exports.d/walt.exports` then `exportfs -ra`.
  The kernel resolves symlinks, so each node gets two lines (see `kernel_exports`).

`NfsExports` is the handle the exports service uses (on the Context); `NfsService` runs the
exporter that `exports.nfs` names and keeps the last exports, so a restarted ganesha serves
them again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import signal
import socket
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from waltd import log
from waltd.atomic import write_atomic
from waltd.config import Config
from waltd.names import check_image_id
from waltd.process import Children
from waltd.supervisor import RunningConfig, Service

_log = log.get("nfs")

RPCBIND_SOCKET = Path("/run/rpcbind.sock")
KERNEL_EXPORTS = Path("/etc/exports.d/walt.exports")
# ganesha's line (level EVENT) once a SIGHUP has re-read the exports, and once it serves.
RELOADED = "Reread exports complete"
# ...and the line that starts a reload: ganesha logs some of a reload's errors after its
# "complete" line, so errors belong to the reload begun last, not to the one waited for.
RELOAD_BEGUN = "initiating export list reload"
INITIALIZED = "NFS SERVER INITIALIZED"
# Levels of ganesha's lines that report a refused export during a reload.
_RELOAD_ERRORS = re.compile(r" :(CONFIG|EXPORT)[A-Z ]* :(FATAL|MAJ|CRIT|WARN) :")
START_TIMEOUT_S = 30.0
RELOAD_TIMEOUT_S = 10.0
EXPORTFS_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0
# Lines of ganesha's output kept for the message of its exit or of a failed reload.
_KEPT_LINES = 8
_LINE_CHARS = 1000
# Characters a ganesha quoted string may hold: it has no escapes, and a newline ends the block.
_GANESHA_SAFE = re.compile(r'[^"\\\n\r\x00]*')
# Characters an exports(5) path may hold unquoted (others would need escapes and quoting).
_EXPORTS_SAFE = re.compile(r"/[A-Za-z0-9._/:@+-]*")


class NfsError(RuntimeError):
    """The NFS server failed or refused the exports; the message says why."""


@dataclass(frozen=True)
class NfsExport:
    """A node's export: the image mount `path` (a real path) seen by `client` at `pseudo`."""

    pseudo: Path
    path: Path
    client: str
    fsid: int


def fsid_of(image_id: str) -> int:
    """The file system id of an image's exports: the first 128 bits of its id (an id is a
    sha256 digest, so two images never share one), stable across mounts and restarts."""
    return int(check_image_id(image_id)[:32], 16)


def export_id_of(client: str) -> int:
    """ganesha's Export_Id of a node's export: the low 16 bits of its IPv4 address. ganesha
    writes it in file handles, so it must not change while the node runs: derived from the
    address, it survives reloads and restarts, and is unique in a node network of /16 or
    smaller (ValueError otherwise, see `check_exports`)."""
    address = ipaddress.ip_address(client)
    if address.version != 4:
        raise ValueError(f"nodes are IPv4 clients: {client!r}")
    return int(address) & 0xFFFF


def check_exports(exports: Iterable[NfsExport]) -> tuple[NfsExport, ...]:
    """The exports, checked: absolute paths, one export per client and per pseudo path, IPv4
    clients with distinct export ids, 128-bit fsids. ValueError naming the first problem."""
    checked = tuple(exports)
    pseudos: set[Path] = set()
    ids: dict[int, str] = {}
    for export in checked:
        for path in (export.pseudo, export.path):
            if not path.is_absolute() or ".." in path.parts:
                raise ValueError(f"export paths must be absolute: {str(path)!r}")
        if export.pseudo in pseudos:
            raise ValueError(f"two exports at {export.pseudo}")
        pseudos.add(export.pseudo)
        number = export_id_of(export.client)
        if number == 0 or number in ids:
            other = ids.get(number, "the pseudo root")
            raise ValueError(
                f"client {export.client} would share export id {number} with {other}: the "
                "node network must be a /16 or smaller"
            )
        ids[number] = export.client
        if not 0 <= export.fsid < 2**128:
            raise ValueError(f"fsid out of range: {export.fsid}")
    return checked


def ganesha_str(value: str) -> str:
    """`value` as a quoted ganesha string; ValueError when it cannot be written as one."""
    if not _GANESHA_SAFE.fullmatch(value):
        raise ValueError(f"cannot be written in a ganesha configuration: {value!r}")
    # quoted: node paths hold ':' (a MAC), which ganesha's parser rejects bare
    return f'"{value}"'


def ganesha_conf(recovery_root: Path, exports_file: Path) -> str:
    """ganesha.nfsd main configuration: NFS v3 and v4 over TCP, exports in `exports_file`.

    The exports are `%include`d so that rewriting that file and sending SIGHUP changes them.
    NFSv3 MOUNT takes the pseudo path (`Mount_Path_Pseudo`), as v4 does; no grace period
    (nodes hold no locks worth recovering: their root is read-only).
    """
    return (
        "NFS_CORE_PARAM {\n"
        "    Protocols = 3, 4;\n"
        "    Enable_UDP = false;\n"
        "    Enable_NLM = false;\n"
        "    Enable_RQUOTA = false;\n"
        "    Mount_Path_Pseudo = true;\n"
        "}\n"
        "NFSV4 {\n"
        "    Graceless = true;\n"
        "    RecoveryBackend = fs;\n"
        f"    RecoveryRoot = {ganesha_str(str(recovery_root))};\n"
        "}\n"
        "NFS_KRB5 { Active_krb5 = false; }\n"
        f"%include {ganesha_str(str(exports_file))}\n"
    )


def ganesha_exports(exports: Iterable[NfsExport]) -> str:
    """The `%include`d exports file: one EXPORT block per node, read-only to its client only,
    no_root_squash, NFS v3 and v4 over TCP, AUTH_SYS, the image's fsid."""
    blocks = []
    for export in check_exports(exports):
        client = str(ipaddress.ip_address(export.client))
        major, minor = export.fsid >> 64, export.fsid & (2**64 - 1)
        blocks.append(
            "EXPORT {\n"
            f"    Export_Id = {export_id_of(export.client)};\n"
            f"    Path = {ganesha_str(str(export.path))};\n"
            f"    Pseudo = {ganesha_str(str(export.pseudo))};\n"
            "    Access_Type = NONE;\n"
            "    Squash = No_Root_Squash;\n"
            "    Protocols = 3, 4;\n"
            "    Transports = TCP;\n"
            "    SecType = sys;\n"
            f"    Filesystem_id = {major}.{minor};\n"
            "    FSAL { Name = VFS; }\n"
            f"    CLIENT {{ Clients = {client}; Access_Type = RO; }}\n"
            "}\n"
        )
    return "".join(blocks)


def _exports_path(path: Path) -> str:
    text = str(path)
    if not _EXPORTS_SAFE.fullmatch(text):
        raise ValueError(f"cannot be written in an exports file: {text!r}")
    return text


def kernel_exports(exports: Iterable[NfsExport]) -> str:
    """/etc/exports.d/walt.exports: two lines per path, each listing its nodes.

    The kernel's nfsd exports dentries: it resolves `pseudo` (a symlink to the image's mount)
    and asks for the export of the real mount point, so `path` is exported to the node. rpc.mountd
    authorises an NFSv3 MOUNT by the text of the path asked for, `pseudo`, so that is exported
    too; and it makes NFSv4's pseudo root of the folders above each export, so a v4 client can
    walk `<exports.root>/nodes/<mac>/`, read the symlink and follow it to the mount. Both carry
    the image's fsid (as a UUID: 128 bits), ro, no_root_squash, no_subtree_check (the export is
    a whole file system) and sec=sys. A node mounts `pseudo` whichever the NFS version.
    """
    clients: dict[str, list[tuple[str, int]]] = {}
    for export in check_exports(exports):
        client = str(ipaddress.ip_address(export.client))
        for path in (export.path, export.pseudo):
            clients.setdefault(_exports_path(path), []).append((client, export.fsid))
    lines = []
    for path in sorted(clients):
        entries = [
            f"{client}(ro,no_root_squash,no_subtree_check,sec=sys,fsid={fsid:032x})"
            for client, fsid in sorted(set(clients[path]))
        ]
        lines.append(f"{path} {' '.join(entries)}\n")
    return "# written by waltd: every change is lost at its next apply\n" + "".join(lines)


class Exporter(Protocol):
    """An NFS server the exports go to."""

    async def apply(self, exports: Sequence[NfsExport]) -> None:
        """Export exactly `exports` (none: nothing exported); NfsError when refused."""
        ...


class KernelExporter:
    """The kernel's nfsd: the exports file, then `exportfs -ra` (nfs-kernel-server runs)."""

    def __init__(self, children: Children, path: Path = KERNEL_EXPORTS) -> None:
        self._children = children
        self.path = path
        self._lock = asyncio.Lock()

    async def apply(self, exports: Sequence[NfsExport]) -> None:
        """Write the exports file atomically and have exportfs apply it."""
        text = kernel_exports(exports)
        exportfs = shutil.which("exportfs") or shutil.which("exportfs", path="/usr/sbin:/sbin")
        if exportfs is None:
            raise NfsError(
                "exportfs is not installed (Debian package nfs-kernel-server), which "
                "exports.nfs = kernel needs"
            )
        async with self._lock:
            await asyncio.to_thread(self._write, text)
            try:
                async with asyncio.timeout(EXPORTFS_TIMEOUT_S):
                    status, _, err = await self._children.run([exportfs, "-ra"])
            except TimeoutError:
                raise NfsError(f"exportfs -ra: no result after {EXPORTFS_TIMEOUT_S} s") from None
        if status != 0:
            said = err.decode(errors="replace").strip()[-1000:]
            raise NfsError(f"exportfs -ra failed (status {status}): {said}")

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(self.path, text.encode(), 0o644)


def rpcbind_answers(path: Path = RPCBIND_SOCKET) -> bool:
    """Whether an rpcbind listens on its local socket (a socket file may outlive its server)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class GaneshaExporter:
    """rpcbind (unless one answers) and `ganesha.nfsd -F` as supervised children, files in
    `folder`; `async with` starts them (ganesha serving `initial`) and stops them.

    `wrap` prefixes both command lines (the lab runs them in its server namespace with
    `nsenter --net=...`). ganesha writes its log to its stderr, which is read here: at debug
    level into the daemon's log, and for the line of each reload.
    """

    def __init__(
        self,
        folder: Path,
        children: Children,
        *,
        initial: Sequence[NfsExport] = (),
        wrap: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self._children = children
        self._initial = check_exports(initial)
        self._wrap = list(wrap)
        self._rpcbind: asyncio.subprocess.Process | None = None
        self._ganesha: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last: deque[str] = deque(maxlen=_KEPT_LINES)
        self._initialized = asyncio.Event()
        self._exited = asyncio.Event()
        self._reloads = 0
        self._reload_seen = asyncio.Event()
        self._reload_errors: list[str] = []  # of the reload begun last
        self._lock = asyncio.Lock()
        # what ganesha serves, by export id: it refuses to change an export's Path in place
        self._applied = {export_id_of(e.client): e for e in self._initial}
        # whether ganesha confirmed it serves `_applied` (the first apply always reloads)
        self._in_sync = False

    @property
    def exports_file(self) -> Path:
        """The `%include`d exports file."""
        return self.folder / "exports.conf"

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _start(self) -> None:
        recovery = self.folder / "recovery"
        await asyncio.to_thread(recovery.mkdir, mode=0o700, parents=True, exist_ok=True)
        conf = self.folder / "ganesha.conf"
        write_atomic(self.exports_file, ganesha_exports(self._initial).encode(), 0o600)
        write_atomic(conf, ganesha_conf(recovery, self.exports_file).encode(), 0o600)
        for tool in ("ganesha.nfsd", "rpcbind"):
            if shutil.which(tool) is None:
                raise NfsError(
                    f"{tool} is not installed (Debian packages nfs-ganesha-vfs, rpcbind)"
                )
        if not await asyncio.to_thread(rpcbind_answers):
            self._rpcbind = await self._children.spawn([*self._wrap, "rpcbind", "-f"])
            await self._wait_rpcbind()
        argv = ["ganesha.nfsd", "-F", "-L", "STDERR", "-f", str(conf)]
        argv += ["-p", str(self.folder / "ganesha.pid"), "-N", "NIV_EVENT"]
        self._ganesha = await self._children.spawn(
            [*self._wrap, *argv], stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        self._reader = asyncio.create_task(self._read(self._ganesha), name="ganesha:output")
        waits = [asyncio.ensure_future(e.wait()) for e in (self._initialized, self._exited)]
        try:
            await asyncio.wait(waits, timeout=START_TIMEOUT_S, return_when="FIRST_COMPLETED")
        finally:
            for wait in waits:
                wait.cancel()
        if not self._initialized.is_set():
            why = "exited" if self._exited.is_set() else f"not serving after {START_TIMEOUT_S} s"
            raise NfsError(f"ganesha {why}: {self._said()}")
        _log.info("ganesha_started", pid=self._ganesha.pid, own_rpcbind=self._rpcbind is not None)

    async def _wait_rpcbind(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not await asyncio.to_thread(rpcbind_answers):
            assert self._rpcbind is not None
            if self._rpcbind.returncode is not None:
                # another rpcbind may hold /run/rpcbind.lock without answering yet
                raise NfsError(f"rpcbind exited with status {self._rpcbind.returncode}")
            if loop.time() > deadline:
                raise NfsError(f"rpcbind not answering after {START_TIMEOUT_S} s")
            await asyncio.sleep(0.02)

    def _said(self) -> str:
        return " | ".join(self._last) or "no output"

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """ganesha's output, line by line, until it exits."""
        assert proc.stdout is not None
        try:
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line past the stream's limit, dropped
                    continue
                if not raw:
                    break
                self._line(raw.decode(errors="replace").rstrip()[:_LINE_CHARS])
        finally:
            self._exited.set()
            self._reload_seen.set()  # a waiting apply learns of the exit

    def _line(self, line: str) -> None:
        if not line:
            return
        self._last.append(line)
        _log.debug("ganesha_output", line=line)
        if INITIALIZED in line:
            self._initialized.set()
        elif RELOAD_BEGUN in line:
            self._reload_errors.clear()  # what came after the last reload's end was its own
        elif RELOADED in line:
            self._reloads += 1
            self._reload_seen.set()
        elif _RELOAD_ERRORS.search(line) and len(self._reload_errors) < _KEPT_LINES:
            self._reload_errors.append(line.rpartition(" :")[2] or line)

    async def wait(self) -> None:
        """Return never: NfsError once ganesha (or the rpcbind started here) exits."""
        assert self._ganesha is not None
        waits = [asyncio.ensure_future(self._exited.wait())]
        if self._rpcbind is not None:
            waits.append(asyncio.ensure_future(self._rpcbind.wait()))
        try:
            await asyncio.wait(waits, return_when="FIRST_COMPLETED")
        finally:
            for wait in waits:
                wait.cancel()
        if self._exited.is_set():
            status = await self._ganesha.wait()
            raise NfsError(f"ganesha exited with status {status}: {self._said()}")
        raise NfsError("rpcbind exited: NFSv3 clients cannot find the server")

    async def apply(self, exports: Sequence[NfsExport]) -> None:
        """Export exactly `exports`; return once ganesha has re-read them. NfsError when it
        does not within RELOAD_TIMEOUT_S, exits, or reports a refused export.

        ganesha keeps an export's Path and Filesystem_id for the life of its Export_Id: an
        export that changes (its node boots another image) is removed by a first reload and
        made again by a second.
        """
        wanted = {export_id_of(e.client): e for e in check_exports(exports)}
        async with self._lock:
            if wanted == self._applied and self._in_sync:
                return  # what ganesha serves already: no reload
            changed = {n for n, e in wanted.items() if self._applied.get(n, e) != e}
            if changed:
                await self._reload({n: e for n, e in wanted.items() if n not in changed})
            await self._reload(wanted)
        _log.info("nfs_exports_applied", server="ganesha", exports=len(wanted))

    async def _reload(self, exports: dict[int, NfsExport]) -> None:
        """Write the exports file, SIGHUP, wait for ganesha's line saying it re-read it."""
        text = ganesha_exports(exports.values())
        if self._ganesha is None or self._exited.is_set():
            raise NfsError("ganesha is not running")
        # from here ganesha may serve any part of these: the next apply compares with them
        self._applied = dict(exports)
        self._in_sync = False  # until ganesha says it re-read them, without complaint
        before = self._reloads
        self._reload_seen.clear()
        # ganesha never reads half a file
        await asyncio.to_thread(write_atomic, self.exports_file, text.encode(), 0o600)
        self._ganesha.send_signal(signal.SIGHUP)
        try:
            async with asyncio.timeout(RELOAD_TIMEOUT_S):
                while self._reloads == before and not self._exited.is_set():
                    await self._reload_seen.wait()
                    self._reload_seen.clear()
        except TimeoutError:
            raise NfsError(
                f"ganesha did not re-read its exports within {RELOAD_TIMEOUT_S} s: {self._said()}"
            ) from None
        if self._reloads == before:
            raise NfsError(f"ganesha exited while re-reading its exports: {self._said()}")
        if self._reload_errors:
            raise NfsError("ganesha refused exports: " + " | ".join(self._reload_errors))
        self._in_sync = True

    async def _stop(self) -> None:
        if self._ganesha is not None:
            await self._children.stop(self._ganesha, grace=STOP_GRACE_S)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._rpcbind is not None:
            await self._children.stop(self._rpcbind, grace=STOP_GRACE_S)
            self._rpcbind = None
        self._ganesha = None


class NfsExports:
    """The exports service's handle on the NFS server: the exports last asked for, applied
    to the exporter in force (kept while it restarts, and served by it once it is back)."""

    def __init__(self) -> None:
        self._exporter: Exporter | None = None
        self._last: tuple[NfsExport, ...] = ()
        self._lock = asyncio.Lock()

    @property
    def last(self) -> tuple[NfsExport, ...]:
        """The exports last asked for."""
        return self._last

    async def apply(self, exports: Iterable[NfsExport]) -> None:
        """Export exactly `exports` (ValueError when they cannot be written, NfsError when the
        server refuses them). While no server runs (ganesha restarting) they are kept, and
        the server serves them once it is back."""
        wanted = check_exports(exports)
        async with self._lock:
            self._last = wanted
            if self._exporter is None:
                _log.info("nfs_exports_pending", exports=len(wanted))
                return
            await self._exporter.apply(wanted)

    def attach(self, exporter: Exporter | None) -> None:
        """The exporter in force (None: none runs); the NFS service sets it."""
        self._exporter = exporter


class NfsService(Service):
    """Runs the NFS server `exports.nfs` names and hands it to `NfsExports`.

    ganesha is a supervised child: its exit is a crash, and the restart serves the last
    exports again. The kernel's server runs by itself (nfs-kernel-server); its exports stay in
    force across restarts of the daemon.
    """

    name = "nfs"

    def __init__(self, exports: NfsExports, children: Children, running: RunningConfig) -> None:
        self._exports = exports
        self._children = children
        self._running = running
        self._ganesha: GaneshaExporter | None = None

    def _folder(self, config: Config) -> Path:
        return config.daemon.state_dir / "nfs"

    async def __aenter__(self) -> Self:
        config = self._running.current
        if config.exports.nfs == "ganesha":
            folder = self._folder(config)
            await asyncio.to_thread(folder.mkdir, mode=0o700, parents=True, exist_ok=True)
            ganesha = GaneshaExporter(folder, self._children, initial=self._exports.last)
            self._ganesha = await ganesha.__aenter__()
            self._exports.attach(ganesha)
        else:
            self._exports.attach(KernelExporter(self._children))
        _log.info("nfs_ready", server=config.exports.nfs, exports=len(self._exports.last))
        return self

    async def serve(self) -> None:
        """Wait while ganesha runs (NfsError when it exits); forever for the kernel's."""
        if self._ganesha is None:
            await asyncio.Future()
        else:
            await self._ganesha.wait()

    async def __aexit__(self, *exc: object) -> None:
        self._exports.attach(None)
        if self._ganesha is not None:
            await self._ganesha.__aexit__(None, None, None)
            self._ganesha = None
