"""Child processes that never outlive the daemon.

Each child starts in its own session (so its whole process group can be signalled) under
`setpriv --pdeathsig SIGKILL`, so the kernel kills it if the daemon dies without cleaning up
(no `preexec_fn`: it is unsafe once the daemon has threads). Every live child is recorded in
a file of the runtime folder with its start time; the next daemon kills what a crashed one
left behind (a child whose setpriv had not armed the signal yet when the daemon died among
them), and the start time keeps it from killing an unrelated process that reused a PID.

PDEATHSIG does not survive a change of uid: a child that drops privileges (dnsmasq becomes
`nobody`) is started under a small root keeper shell instead, which holds the death signal and
kills the child when it fires.

The daemon learns of its children's exits through pidfds polled by its event loop
(`pidfd_child_watcher`), not through a thread per child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from waltd import log
from waltd.atomic import write_atomic

_log = log.get("process")

# The keeper of a child that drops privileges: it stays root, so the kernel's death signal
# (SIGTERM here) still reaches it, and it kills the child. `term` covers a signal arriving
# before `pid` is set; the child's own arguments arrive as "$@", never as shell text.
_KEEPER = (
    'trap \'term=1; [ -n "$pid" ] && kill -KILL "$pid"\' TERM; '
    '"$@" & pid=$!; '
    '[ -n "$term" ] && kill -KILL "$pid"; '
    'wait "$pid"'
)


@contextlib.contextmanager
def pidfd_child_watcher() -> Iterator[bool]:
    """Within this block (entered with the event loop running), asyncio learns of its
    children's exits through pidfds that loop polls; whether it does (False on a kernel
    before 5.3, which has no pidfd: the default watcher stays).

    Python 3.11's default watcher starts a thread per child and waits, event loop blocked,
    until that thread runs: on a busy machine (a storm of nodes and their image downloads)
    each start holds the loop for milliseconds. Python 3.12 picks pidfds by itself. The
    watcher there before is put back at the end.
    """
    if sys.version_info >= (3, 12):
        yield _has_pidfd()
        return
    if not _has_pidfd():
        yield False
        return
    previous = asyncio.get_child_watcher()
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    try:
        yield True
    finally:
        asyncio.set_child_watcher(previous)  # closes ours


def _has_pidfd() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def proc_state(pid: int) -> tuple[str, int] | None:
    """`pid`'s state letter and kernel start time (clock ticks since boot); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if it is gone."""
    state = proc_state(pid)
    return state[1] if state else None


def kill_recorded(record_file: Path) -> list[int]:
    """Kill the children a previous daemon recorded in `record_file`; return their PIDs."""
    try:
        records = json.loads(record_file.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        _log.warning("child_record_unreadable", path=str(record_file), error=str(err))
        records = []
    killed = []
    for rec in records if isinstance(records, list) else []:
        if not _valid_record(rec):
            _log.warning("child_record_invalid", path=str(record_file), record=str(rec)[:200])
            continue
        pid, started = rec["pid"], rec["start_time"]
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            _log.warning("stale_child_killed", pid=pid, argv0=rec.get("argv0"))
    record_file.unlink(missing_ok=True)
    return killed


def _valid_record(rec: object) -> bool:
    """A record as `Children` writes it: an object with an int PID above 1 and start time."""
    if not isinstance(rec, dict):
        return False
    pid, started = rec.get("pid"), rec.get("start_time")
    # bool is an int to Python but never a PID.
    return type(pid) is int and pid > 1 and type(started) is int


class Children:
    """Spawns and tracks the daemon's child processes."""

    def __init__(self, record_file: Path) -> None:
        self._record_file = record_file
        self._live: dict[int, tuple[asyncio.subprocess.Process, int | None, str]] = {}

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        stdout: int | None = None,
        stderr: int | None = None,
        cwd: str | Path | None = None,
        pass_fds: Sequence[int] = (),
        drops_privileges: bool = False,
    ) -> asyncio.subprocess.Process:
        """Start `argv` (a list, never a shell string) as a tracked child.

        `pass_fds`: descriptors the child inherits (a listening socket handed over).
        `drops_privileges`: the child changes its uid, which clears PDEATHSIG; a root keeper
        shell then holds it and kills the child when the daemon dies.
        """
        if not argv:
            raise ValueError("empty command")
        guard = ["setpriv", "--pdeathsig", "SIGKILL", "--"]
        if drops_privileges:
            guard = ["setpriv", "--pdeathsig", "SIGTERM", "--", "sh", "-c", _KEEPER, "sh"]
        proc = await asyncio.create_subprocess_exec(
            *guard,
            *argv,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        self._live[proc.pid] = (proc, start_time(proc.pid), argv[0])
        self._save()
        return proc

    async def wait(self, proc: asyncio.subprocess.Process) -> int:
        """Wait for a child started by `spawn` and forget it."""
        try:
            return await proc.wait()
        finally:
            self._forget(proc)

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        cwd: str | Path | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run `argv` to completion; returns (status, stdout, stderr). Killed if cancelled."""
        proc = await self.spawn(
            argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(input)
        except asyncio.CancelledError:
            await self.stop(proc, grace=0)
            raise
        finally:
            self._forget(proc)
        return proc.returncode if proc.returncode is not None else -1, out, err

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        """SIGTERM the child's group, then SIGKILL after `grace` seconds; reap it."""
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), grace if grace > 0 else 5)
            except TimeoutError:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        # The child may be gone while grandchildren of its session linger.
        _signal_group(proc.pid, signal.SIGKILL)
        self._forget(proc)

    async def stop_all(self, grace: float = 5.0) -> None:
        """Stop every live child (shutdown)."""
        procs = [entry[0] for entry in self._live.values()]
        await asyncio.gather(*(self.stop(p, grace) for p in procs))

    def pids(self) -> list[int]:
        """PIDs of the live children."""
        return list(self._live)

    def _forget(self, proc: asyncio.subprocess.Process) -> None:
        if self._live.pop(proc.pid, None) is not None:
            self._save()

    def _save(self) -> None:
        records = [
            {"pid": pid, "start_time": started, "argv0": argv0}
            for pid, (_, started, argv0) in self._live.items()
        ]
        self._record_file.parent.mkdir(parents=True, exist_ok=True)
        # Atomic, not synced: it serves the next start after a crash of the daemon, when the
        # kernel still has the file; a power loss takes the children with it.
        write_atomic(self._record_file, json.dumps(records).encode(), 0o600, durable=False)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
