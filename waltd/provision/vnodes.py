"""Virtual nodes: PCs emulated by QEMU on the node network, kept running by the daemon.

A virtual node (`walt node create NAME`) is a `pc-x86-64` node with a MAC `52:54:00:xx:xx:xx`
whose network card is a tap in the node network's bridge; QEMU boots it from the network
(its iPXE ROM, then the server's boot answers like any PC). It is recorded twice in the
state database: as a node (before QEMU starts, so its first DHCP request is already a node's)
and as a virtual node (name, MAC, its creator's uid). The daemon restarts every recorded
virtual node when it starts; a QEMU that dies is `node.down` and is started again after a
backoff.

QEMU runs as a supervised child (`process.Children`): `-runas nobody` once its tap and QMP
socket are open, under a root keeper that kills it when the daemon dies (the uid change
clears PDEATHSIG), with `-accel tcg` (`/dev/kvm` is not relied on). Its serial console is its
stdout: decoded into clean lines (`ConsoleDecoder`), kept in a bounded ring per virtual node
(`Console`, which followers read) and logged as `vnode.console` records, at most
`CONSOLE_RECORD_RATE` a second per node (the rest counted in `vnode.console_dropped`). Its
QMP socket takes `system_reset` (boot retries) and `quit` (removal).

Pure parts: MAC allocation, tap names, QEMU's argument list, the console decoder and ring,
the record budget. `VirtualNodes` is the context's handle; `VirtualNodesService` runs it
(only with a node network, after dnsmasq).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from waltd import log
from waltd.db import Database, StateError, VNode
from waltd.names import check_node_name, normalise_mac
from waltd.node_events import NodeEvents, NodeRemoved, emit
from waltd.process import Children
from waltd.provision import nodes
from waltd.supervisor import RunningConfig, Service

_log = log.get("vnodes")

VNODE_MODEL = "pc-x86-64"
# QEMU's own prefix: locally administered, unicast.
MAC_PREFIX = "52:54:00"
TAP_PREFIX = "wv-"
_TAP_RE = re.compile(r"wv-[0-9a-f]{6}")
QEMU = "qemu-system-x86_64"
QEMU_USER = "nobody"
MEMORY_MB = 512
# Each one is a QEMU of MEMORY_MB: bounds for the machine, and for one user among many.
MAX_VNODES = 32
MAX_VNODES_PER_USER = 4
ROOT_UID = 0

# A console line is cut past this many characters (the rest starts the next line).
MAX_LINE_CHARS = 1024
# What a console ring keeps: the last lines, within a total of characters.
CONSOLE_LINES = 2000
CONSOLE_CHARS = 256 * 1024
# An escape sequence longer than this is no terminal's: the text after it is shown.
MAX_ESCAPE_CHARS = 64
# Lines a console follower may hold before it loses some (it is told how many).
FOLLOWER_QUEUE = 1000
# `vnode.console` records: a burst, then so many a second per node (a kernel's boot prints
# hundreds of lines at once; the ring keeps them all, the event log a share).
CONSOLE_RECORD_BURST = 100
CONSOLE_RECORD_RATE = 20.0

# QMP: connect and answer within this; QEMU is ready once its QMP answers.
QMP_TIMEOUT_S = 5.0
QMP_READY_S = 15.0
_QMP_LINE_LIMIT = 64 * 1024
_QMP_MAX_LINES = 256
# A removal waits this long for QEMU to quit by QMP before signals.
QUIT_WAIT_S = 5.0
# A QEMU that dies is started again after a pause doubling from the first to the second,
# back to the first after a stable minute.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
STABLE_AFTER_S = 60.0
# Output kept from `ip` and the last console lines named when QEMU exits.
_TOOL_TEXT_CHARS = 500
_LAST_LINES = 5
# `ip -j link show` of a host with many interfaces.
_IP_OUTPUT_MAX = 16 * 2**20
_UNIX_PATH_MAX = 107


class VNodeError(Exception):
    """A virtual node operation that failed; the message is for the user."""


# --- pure parts -------------------------------------------------------------------------


def allocate_mac(taken: Collection[str], rand: Callable[[int], bytes] = os.urandom) -> str:
    """A random MAC `52:54:00:xx:xx:xx` that is none of `taken` (lower-case colon form).

    The prefix is locally administered and unicast. VNodeError when 64 tries found none free.
    """
    used = {normalise_mac(mac) for mac in taken}
    for _ in range(64):
        suffix = rand(3)
        mac = MAC_PREFIX + "".join(f":{byte:02x}" for byte in suffix)
        if mac not in used:
            return mac
    raise VNodeError("no free MAC address found for a virtual node")


def tap_name(mac: str) -> str:
    """The tap of the virtual node of `mac`: `wv-` and its last 6 hex digits (Linux caps
    interface names at 15 characters; the prefix is shared, so these are unique)."""
    return TAP_PREFIX + normalise_mac(mac).replace(":", "")[-6:]


def _opt(text: str) -> str:
    # QEMU's option syntax: a comma inside a value is written twice.
    return text.replace(",", ",,")


@dataclass(frozen=True)
class QemuSpec:
    """What a virtual node's QEMU is given."""

    name: str
    mac: str
    tap: str
    qmp: Path
    memory_mb: int = MEMORY_MB
    accel: str = "tcg"
    user: str = QEMU_USER


def qemu_argv(spec: QemuSpec) -> list[str]:
    """QEMU's argument list for `spec` (never a shell string).

    `-nographic` makes the BIOS and iPXE print on the serial port, which is stdout; no
    default devices, no user configuration; network boot first, and a failed boot tries
    again after 5 s (no `-no-reboot`: a reset or a guest's reboot must boot again).
    """
    return [
        QEMU,
        "-name",
        _opt(spec.name),
        "-accel",
        spec.accel,
        "-nographic",
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-m",
        str(spec.memory_mb),
        "-smp",
        "1",
        "-boot",
        "order=n,reboot-timeout=5000",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={normalise_mac(spec.mac)}",
        "-netdev",
        f"tap,id=n0,ifname={_opt(spec.tap)},script=no,downscript=no",
        # a guest kernel on TCG may otherwise wait long for entropy
        "-device",
        "virtio-rng-pci",
        "-qmp",
        f"unix:{_opt(str(spec.qmp))},server=on,wait=off",
        "-sandbox",
        "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
        "-runas",
        spec.user,
    ]


class ConsoleDecoder:
    """A serial console's bytes -> lines fit for a log and a terminal.

    UTF-8 decoded incrementally (invalid bytes replaced); ANSI escape sequences (CSI, OSC,
    two-character ones) removed; a backspace erases the character before it, as a terminal
    shows it; carriage returns and other control characters dropped, a tab made a space;
    a line longer than `max_chars` cut. Blank lines are not kept.
    """

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_chars
        self._line: list[str] = []
        self._state = "text"  # text | esc | csi | osc
        self._escape_chars = 0

    def feed(self, data: bytes) -> list[str]:
        """The lines `data` completes."""
        return self._chars(self._decoder.decode(data))

    def flush(self) -> list[str]:
        """The lines left at the end of the output (a last line without a newline)."""
        lines = self._chars(self._decoder.decode(b"", final=True))
        self._end_line(lines)
        return lines

    def _end_line(self, lines: list[str]) -> None:
        text = "".join(self._line).rstrip()
        self._line = []
        if text:
            lines.append(text)

    def _chars(self, text: str) -> list[str]:
        lines: list[str] = []
        line = self._line
        for char in text:
            state = self._state
            if state != "text":
                # A sequence never spans lines nor runs long: a broken or hostile one
                # hides at most that much output.
                self._escape_chars += 1
                if char == "\n" or self._escape_chars > MAX_ESCAPE_CHARS:
                    state = self._state = "text"
            if state == "esc":
                self._state = {"[": "csi", "]": "osc"}.get(char, "text")
            elif state == "csi":
                if "\x40" <= char <= "\x7e":  # the final byte
                    self._state = "text"
            elif state == "osc":
                if char == "\x07":
                    self._state = "text"
                elif char == "\x1b":  # ESC \ ends it: the '\' is eaten as an escape
                    self._state = "esc"
            elif char == "\n":
                self._end_line(lines)
                line = self._line
            elif char == "\x1b":
                self._state = "esc"
                self._escape_chars = 0
            elif char == "\b":
                if line:
                    line.pop()
            elif char == "\t":
                line.append(" ")
            elif char.isprintable():
                line.append(char)
                if len(line) >= self._max:
                    self._end_line(lines)
                    line = self._line
        return lines


@dataclass(frozen=True)
class ConsoleLine:
    """A line of a console, numbered from 1 in its ring's life."""

    seq: int
    line: str


@dataclass(frozen=True)
class ConsoleDropped:
    """A follower lost `count` lines (it read too slowly)."""

    count: int


class ConsoleFollower:
    """One reader of a console's live lines: a bounded queue; `get` gives None at the end."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[ConsoleLine | ConsoleDropped | None] = asyncio.Queue(size)
        self._dropped = 0
        self._ended = False

    def offer(self, line: ConsoleLine) -> None:
        """Queue `line`, or count it lost when the queue is full."""
        if self._ended:
            return
        if self._dropped and self._queue.qsize() < self._queue.maxsize - 1:
            self._queue.put_nowait(ConsoleDropped(self._dropped))
            self._dropped = 0
        try:
            self._queue.put_nowait(line)
        except asyncio.QueueFull:
            self._dropped += 1

    def end(self) -> None:
        """No more lines: the reader gets None after what it holds (or at once when full)."""
        if self._ended:
            return
        self._ended = True
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> ConsoleLine | ConsoleDropped | None:
        """The next line (or loss notice), waiting for one; None once the console ended."""
        return await self._queue.get()


class Console:
    """A virtual node's console: the last lines (bounded in count and characters) and the
    followers reading new ones. Used on the event loop's thread only."""

    def __init__(
        self,
        max_lines: int = CONSOLE_LINES,
        max_chars: int = CONSOLE_CHARS,
        follower_queue: int = FOLLOWER_QUEUE,
    ) -> None:
        self._lines: deque[ConsoleLine] = deque()
        self._max_lines = max_lines
        self._max_chars = max_chars
        self._chars = 0
        self._seq = 0
        self._followers: set[ConsoleFollower] = set()
        self._queue_size = follower_queue
        self.ended = False

    def append(self, text: str) -> ConsoleLine:
        """Keep `text` as the next line and hand it to the followers."""
        self._seq += 1
        line = ConsoleLine(self._seq, text)
        self._lines.append(line)
        self._chars += len(text)
        while self._lines and (len(self._lines) > self._max_lines or self._chars > self._max_chars):
            self._chars -= len(self._lines.popleft().line)
        for follower in self._followers:
            follower.offer(line)
        return line

    def lines(self) -> list[ConsoleLine]:
        """The lines kept, oldest first."""
        return list(self._lines)

    @contextlib.contextmanager
    def follow(self) -> Iterator[tuple[list[ConsoleLine], ConsoleFollower]]:
        """The lines kept and a follower of the lines after them (none missed, none twice)."""
        follower = ConsoleFollower(self._queue_size)
        if self.ended:
            follower.end()
        self._followers.add(follower)
        try:
            yield self.lines(), follower
        finally:
            self._followers.discard(follower)

    def end(self) -> None:
        """End every follower (the node is removed, or the daemon stops)."""
        self.ended = True
        for follower in self._followers:
            follower.end()


class RecordBudget:
    """How many console records may be written: a burst, then `rate` a second (a token
    bucket); what is refused is counted until the next record is allowed."""

    def __init__(
        self,
        rate: float = CONSOLE_RECORD_RATE,
        burst: int = CONSOLE_RECORD_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.refused = 0

    def take(self) -> bool:
        """Whether one more record may be written now."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.refused += 1
        return False

    def take_refused(self) -> int:
        """The count of refused records since the last call (and reset it)."""
        count, self.refused = self.refused, 0
        return count


# --- QMP --------------------------------------------------------------------------------


async def qmp(path: Path, command: str | None, timeout_s: float = QMP_TIMEOUT_S) -> Any:
    """Run QMP `command` (None: only the handshake) on QEMU's socket `path`; its `return`.

    OSError when the socket does not answer, VNodeError when QEMU refuses the command. A
    `quit` may see the connection close before its answer: that is its success.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=_QMP_LINE_LIMIT)
        try:
            greeting = await _qmp_line(reader)
            if "QMP" not in greeting:
                raise VNodeError("the QMP socket did not greet as QEMU does")
            writer.write(b'{"execute": "qmp_capabilities"}\n')
            await _qmp_answer(reader, "qmp_capabilities")
            if command is None:
                return None
            writer.write(json.dumps({"execute": command}).encode() + b"\n")
            try:
                return await _qmp_answer(reader, command)
            except (ConnectionError, asyncio.IncompleteReadError):
                if command == "quit":
                    return None
                raise
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _qmp_line(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as err:
        raise VNodeError("QMP sent a line over 64 KiB") from err
    try:
        obj = json.loads(raw)
    except ValueError as err:
        raise VNodeError(f"QMP sent something else than JSON: {err}") from err
    if not isinstance(obj, dict):
        raise VNodeError("QMP sent something else than a JSON object")
    return obj


async def _qmp_answer(reader: asyncio.StreamReader, command: str) -> Any:
    # Events (RESET, SHUTDOWN...) may come before the answer.
    for _ in range(_QMP_MAX_LINES):
        obj = await _qmp_line(reader)
        if "return" in obj:
            return obj["return"]
        if "error" in obj:
            detail = obj["error"].get("desc") if isinstance(obj["error"], dict) else None
            raise VNodeError(f"QEMU refused {command}: {str(detail)[:_TOOL_TEXT_CHARS]}")
    raise VNodeError(f"QMP sent no answer to {command} in {_QMP_MAX_LINES} lines")


# --- the handle and its service ---------------------------------------------------------


@dataclass(eq=False)
class _Live:
    """A virtual node the daemon runs: its record, console, QEMU and keeper."""

    vnode: VNode
    console: Console = field(default_factory=Console)
    proc: asyncio.subprocess.Process | None = None
    keeper: asyncio.Task[None] | None = None
    # The first start's outcome (create waits for it).
    started: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    stopping: bool = False
    qmp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class VirtualNodes:
    """The context's handle on virtual nodes: create, remove, reset, console.

    Operations need the service running (`VirtualNodesService`, with a node network only);
    otherwise they fail with a VNodeError saying why.
    """

    def __init__(
        self, running: RunningConfig, children: Children, db: Database, events: NodeEvents
    ) -> None:
        self._running = running
        self._children = children
        self._db = db
        self._events = events
        self._group: asyncio.TaskGroup | None = None
        self._live: dict[str, _Live] = {}
        self._lock = asyncio.Lock()

    @property
    def folder(self) -> Path:
        """Where the QMP sockets are (private to the daemon)."""
        return self._running.current.daemon.state_dir / "vnodes"

    def qmp_path(self, mac: str) -> Path:
        """The QMP socket of the virtual node of `mac`."""
        return self.folder / (normalise_mac(mac).replace(":", "") + ".qmp")

    def _bridge(self) -> str:
        net = self._running.current.walt_net
        if net is None:
            raise VNodeError("virtual nodes need a node network (network.walt-net in server.conf)")
        return net.interface

    def _group_or_fail(self) -> asyncio.TaskGroup:
        if self._group is None:
            self._bridge()  # without a node network, say so
            raise VNodeError(
                "virtual nodes are not available now (the daemon is starting or stopping)"
            )
        return self._group

    # -- what the API and the exports service call

    async def create(self, name: str, owner: int) -> VNode:
        """Create and start virtual node `name` for uid `owner`; the record once QEMU answers.

        ValueError for a refused name, VNodeError when it cannot start (nothing is left
        behind then). It completes even if the caller leaves.
        """
        check_node_name(name)
        return await self._owned(self._create(name, owner), f"vnode-create:{name}")

    async def remove(self, name: str, caller: int) -> VNode:
        """Stop virtual node `name` and forget it (its node too); LookupError when there is
        none, PermissionError unless `caller` created it or is root."""
        check_node_name(name)
        return await self._owned(self._remove(name, caller), f"vnode-remove:{name}")

    async def _owned(self, work: Coroutine[Any, Any, VNode], name: str) -> VNode:
        """Run `work` in the service's task group (it completes even if the caller leaves);
        its result, or its exception raised here. The task itself never raises: a failed
        operation must not end the group and every node with it."""
        try:
            group = self._group_or_fail()
        except VNodeError:
            work.close()
            raise

        async def contained() -> VNode | Exception:
            try:
                return await work
            except Exception as err:
                return err

        outcome = await asyncio.shield(group.create_task(contained(), name=name))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def reset(self, mac: str) -> bool:
        """Reset the virtual node of `mac` (QMP system_reset): it boots again. False when
        `mac` is no running virtual node's; VNodeError when QEMU did not take it."""
        mac = normalise_mac(mac)
        live = next((v for v in self._live.values() if v.vnode.mac == mac), None)
        if live is None or live.proc is None or live.stopping:
            return False
        try:
            async with live.qmp_lock:
                await qmp(self.qmp_path(mac), "system_reset")
        except (OSError, TimeoutError) as err:
            raise VNodeError(
                f"virtual node {live.vnode.name} did not take the reset: {err}"
            ) from err
        _log.info("vnode.reset", name=live.vnode.name, mac=mac)
        return True

    def console(self, name: str) -> Console:
        """The console of running virtual node `name`; LookupError when there is none."""
        live = self._live.get(name)
        if live is None:
            raise LookupError(f"there is no virtual node named {name!r}")
        return live.console

    def is_virtual(self, mac: str) -> bool:
        """Whether `mac` is the MAC of a virtual node the daemon runs."""
        mac = normalise_mac(mac)
        return any(v.vnode.mac == mac for v in self._live.values())

    # -- the service's part

    async def run(self, group: asyncio.TaskGroup) -> None:
        """Run every recorded virtual node in `group` until cancelled (the service's body)."""
        self._bridge()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = self.qmp_path("00:00:00:00:00:00")
        if len(str(probe).encode()) > _UNIX_PATH_MAX:
            raise VNodeError(f"the state folder's path is too long for QMP sockets: {probe}")
        recorded = await self._db.list_vnodes()
        await self._clear_taps({tap_name(v.mac) for v in recorded})
        self._group = group
        try:
            for vnode in recorded:
                self._start(vnode, awaited=False)
            await asyncio.Future()
        finally:
            self._group = None
            self.end_consoles()
            self._live.clear()

    def end_consoles(self) -> None:
        """End every console follower (the daemon stops: its streams must end)."""
        for live in self._live.values():
            live.console.end()

    def _start(self, vnode: VNode, *, awaited: bool) -> _Live:
        """Start `vnode`'s keeper. `awaited`: a caller waits for its first start's outcome
        (otherwise a first start that fails is retried like any other)."""
        assert self._group is not None
        live = _Live(vnode)
        if not awaited:
            live.started.set_result(None)
        self._live[vnode.name] = live
        # A context of its own: a keeper started for a request must not carry its caller's
        # uid into every record of the node's life.
        live.keeper = self._group.create_task(
            self._keep(live), name=f"vnode:{vnode.name}", context=contextvars.Context()
        )
        return live

    async def _create(self, name: str, owner: int) -> VNode:
        async with self._lock:
            if not self._db.is_open:
                raise VNodeError("the state database is not open")
            recorded = await self._db.list_vnodes()
            if any(v.name == name for v in recorded):
                raise ValueError(f"a virtual node named {name!r} exists already")
            if len(recorded) >= MAX_VNODES:
                raise VNodeError(f"there are {MAX_VNODES} virtual nodes already (the most allowed)")
            mine = sum(1 for v in recorded if v.owner == owner)
            if owner != ROOT_UID and mine >= MAX_VNODES_PER_USER:
                raise VNodeError(
                    f"you have {mine} virtual nodes already (at most {MAX_VNODES_PER_USER}"
                    " per user): remove one first"
                )
            known = await self._db.list_nodes()
            same = next((n for n in known if n.name == name), None)
            if same is not None:
                raise ValueError(f"a node named {name!r} exists already ({same.mac})")
            mac = allocate_mac([n.mac for n in known] + [v.mac for v in recorded])
            # The node first: its first DHCP request is already a known pc-x86-64 node's.
            await self._db.upsert_node(mac, model=VNODE_MODEL, name=name, state=nodes.WAITING)
            vnode = await self._db.add_vnode(name, mac, owner)
            live = self._start(vnode, awaited=True)
            try:
                await live.started
            except BaseException as err:
                await self._forget(live)
                if isinstance(err, VNodeError | OSError):
                    raise VNodeError(f"virtual node {name} could not start: {err}") from err
                raise
            pid = live.proc.pid if live.proc is not None else None
            _log.info("vnode.created", name=name, mac=mac, owner=owner, pid=pid)
            return vnode

    async def _remove(self, name: str, caller: int) -> VNode:
        async with self._lock:
            live = self._live.get(name)
            if live is None:
                raise LookupError(f"there is no virtual node named {name!r}")
            vnode = live.vnode
            if caller not in (ROOT_UID, vnode.owner):
                raise PermissionError(
                    f"virtual node {name} was created by uid {vnode.owner}: only that user"
                    " or root may remove it"
                )
            await self._forget(live)
            _log.info("vnode.removed", name=name, mac=vnode.mac)
            return vnode

    async def _forget(self, live: _Live) -> None:
        """Stop `live`'s QEMU, then forget the virtual node, its node and its tap."""
        vnode = live.vnode
        await self._stop(live)
        self._live.pop(vnode.name, None)
        live.console.end()
        await self._mark_down(vnode.mac)
        await self._db.remove_vnode(vnode.name)
        await self._db.remove_node(vnode.mac)
        emit(self._events, NodeRemoved(vnode.mac, vnode.name))
        with contextlib.suppress(VNodeError):
            await self._ip("link", "delete", "dev", tap_name(vnode.mac))
        self.qmp_path(vnode.mac).unlink(missing_ok=True)

    async def _stop(self, live: _Live) -> None:
        """QEMU quits by QMP, else its keeper's end stops it by signals."""
        live.stopping = True
        keeper = live.keeper
        if live.proc is not None and live.proc.returncode is None:
            with contextlib.suppress(OSError, TimeoutError, VNodeError):
                async with live.qmp_lock:
                    await qmp(self.qmp_path(live.vnode.mac), "quit")
        if keeper is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(keeper), QUIT_WAIT_S)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep(self, live: _Live) -> None:
        """Run `live`'s QEMU, again after a backoff whenever it dies, until it is removed."""
        vnode = live.vnode
        delay = RESTART_MIN_S
        while True:
            began = time.monotonic()
            try:
                status: int | None = await self._run_qemu(live)
            except Exception as err:
                # Never raised out of the keeper: that would end the service's task group.
                if not live.started.done():
                    live.started.set_exception(err)
                    return
                _log.warning("vnode.start_failed", name=vnode.name, mac=vnode.mac, error=str(err))
                status = None
            if live.stopping:
                return
            if status is not None:
                last = [line.line for line in live.console.lines()[-_LAST_LINES:]]
                _log.warning(
                    "vnode.exited", name=vnode.name, mac=vnode.mac, status=status, last_lines=last
                )
                await self._node_down(vnode)
            if time.monotonic() - began > STABLE_AFTER_S:
                delay = RESTART_MIN_S
            _log.info("vnode.restart_scheduled", name=vnode.name, mac=vnode.mac, in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)

    async def _mark_down(self, mac: str) -> None:
        """Node `mac` goes `down` (its event), unless it is down already or unknown."""
        node = await self._db.get_node(mac)
        if node is None or node.state == nodes.DOWN:
            return
        down = await self._db.set_node_state(mac, nodes.DOWN)
        if down is not None:
            emit(self._events, nodes.state_event(down))

    async def _node_down(self, vnode: VNode) -> None:
        """`_mark_down` for a QEMU that died (a database failure is logged: it restarts)."""
        try:
            await self._mark_down(vnode.mac)
        except (StateError, RuntimeError) as err:
            _log.warning("vnode.state_not_written", name=vnode.name, error=str(err))

    async def _run_qemu(self, live: _Live) -> int:
        """One life of QEMU: its tap made afresh, QEMU started, its console read until it
        exits; its exit status. Cancelled, it stops QEMU."""
        vnode = live.vnode
        tap = tap_name(vnode.mac)
        bridge = self._bridge()
        with contextlib.suppress(VNodeError):
            await self._ip("link", "delete", "dev", tap)  # a previous life's
        await self._ip("tuntap", "add", "dev", tap, "mode", "tap")
        try:
            await self._ip("link", "set", "dev", tap, "master", bridge, "up")
        except VNodeError as err:
            raise VNodeError(f"{err} (is {bridge} a bridge?)") from err
        qmp_path = self.qmp_path(vnode.mac)
        qmp_path.unlink(missing_ok=True)
        spec = QemuSpec(name=vnode.name, mac=vnode.mac, tap=tap, qmp=qmp_path)
        proc = await self._children.spawn(
            qemu_argv(spec),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            drops_privileges=True,  # -runas
        )
        live.proc = proc
        try:
            reading = asyncio.ensure_future(self._read_console(live, proc))
            try:
                await self._until_ready(live, proc, qmp_path)
                if not live.started.done():
                    live.started.set_result(None)
                _log.info("vnode.started", name=vnode.name, mac=vnode.mac, pid=proc.pid, tap=tap)
                await reading
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            return await self._children.wait(proc)
        finally:
            if proc.returncode is None:
                await self._children.stop(proc, grace=2)
            live.proc = None

    async def _until_ready(self, live: _Live, proc: asyncio.subprocess.Process, path: Path) -> None:
        """Wait until QEMU's QMP answers (its devices, tap included, are up)."""
        deadline = time.monotonic() + QMP_READY_S
        while True:
            if proc.returncode is not None:
                last = " | ".join(line.line for line in live.console.lines()[-_LAST_LINES:])
                raise VNodeError(f"QEMU exited with status {proc.returncode}: {last}")
            try:
                await qmp(path, None)
                return
            except (OSError, TimeoutError) as err:
                if time.monotonic() > deadline:
                    raise VNodeError(
                        f"QEMU's QMP did not answer in {QMP_READY_S:g} s: {err}"
                    ) from err
            await asyncio.sleep(0.05)

    async def _read_console(self, live: _Live, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        decoder = ConsoleDecoder()
        budget = RecordBudget()
        name = live.vnode.name
        while chunk := await proc.stdout.read(4096):
            for line in decoder.feed(chunk):
                self._console_line(live, budget, line)
        for line in decoder.flush():
            self._console_line(live, budget, line)
        if dropped := budget.take_refused():
            _log.info("vnode.console_dropped", name=name, count=dropped)

    @staticmethod
    def _console_line(live: _Live, budget: RecordBudget, line: str) -> None:
        live.console.append(line)
        if budget.take():
            if dropped := budget.take_refused():
                _log.info("vnode.console_dropped", name=live.vnode.name, count=dropped)
            _log.info("vnode.console", name=live.vnode.name, line=line)

    async def _ip(self, *args: str) -> str:
        status, out, err = await self._children.run(["ip", *args])
        if status != 0:
            text = err.decode(errors="replace").strip()[:_TOOL_TEXT_CHARS]
            raise VNodeError(f"ip {' '.join(args[:2])} failed: {text}")
        return out[:_IP_OUTPUT_MAX].decode(errors="replace")

    async def _clear_taps(self, wanted: set[str]) -> None:
        """Delete the virtual nodes' taps that no recorded virtual node owns (a removal cut
        short)."""
        try:
            links = json.loads(await self._ip("-j", "link", "show"))
        except (VNodeError, ValueError) as err:
            _log.warning("vnode.taps_not_listed", error=str(err)[:_TOOL_TEXT_CHARS])
            return
        for link in links if isinstance(links, list) else []:
            name = link.get("ifname") if isinstance(link, dict) else None
            if isinstance(name, str) and _TAP_RE.fullmatch(name) and name not in wanted:
                try:
                    await self._ip("link", "delete", "dev", name)
                    _log.info("vnode.tap_removed", tap=name)
                except VNodeError as err:
                    _log.warning("vnode.tap_not_removed", tap=name, error=str(err))


class VirtualNodesService(Service):
    """Runs the recorded virtual nodes and takes the operations of `VirtualNodes`."""

    name = "vnodes"

    def __init__(self, vnodes: VirtualNodes) -> None:
        self._vnodes = vnodes

    async def __aenter__(self) -> Self:
        return self

    async def serve(self) -> None:
        """Every virtual node's keeper, in one task group: cancelled, they stop QEMU."""
        async with asyncio.TaskGroup() as group:
            await self._vnodes.run(group)

    async def drain(self) -> None:
        """End the console streams, so that the API's shutdown does not wait for them."""
        self._vnodes.end_consoles()
