"""Child processes: tracked, stopped with their group, killed when the daemon dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import require_root
from tests.support.daemon import ROOT, process_group
from tests.support.wait import until, until_sync
from waltd.process import Children, kill_recorded, pidfd_child_watcher, start_time


def _comm(pid: int) -> str:
    """The name of the program `pid` runs ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie counts: it runs no more)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


async def test_spawn_records_and_run_collects_output(tmp_path: Path) -> None:
    record = tmp_path / "children.json"
    children = Children(record)
    proc = await children.spawn(["sleep", "30"])
    saved = json.loads(record.read_text())
    assert saved == [{"pid": proc.pid, "start_time": start_time(proc.pid), "argv0": "sleep"}]
    await children.stop(proc, grace=1)
    assert json.loads(record.read_text()) == []
    status, out, err = await children.run(["sh", "-c", "echo hi; echo oops >&2; exit 3"])
    assert (status, out, err) == (3, b"hi\n", b"oops\n")


async def test_children_exits_come_through_pidfds_without_a_thread_each(tmp_path: Path) -> None:
    """Under the daemon's watcher a child's start makes no thread (each start would wait for
    one to run) and its exit status arrives; the watcher before it is back afterwards."""
    # Python 3.12 picks pidfds by itself (and deprecates watchers): only 3.11 swaps them
    swapped = sys.version_info < (3, 12)
    before = asyncio.get_child_watcher() if swapped else None
    children = Children(tmp_path / "children.json")
    with pidfd_child_watcher() as in_use:
        assert in_use  # this machine's kernel has pidfds
        threads = threading.active_count()
        status, out, _ = await children.run(["sh", "-c", "echo hi; exit 3"])
        procs = [await children.spawn(["sleep", "0.1"]) for _ in range(5)]
        assert threading.active_count() == threads
        assert [await children.wait(p) for p in procs] == [0] * 5
    assert (status, out) == (3, b"hi\n")
    if swapped:
        assert asyncio.get_child_watcher() is before
    status, _, _ = await children.run(["true"])  # the watcher put back works
    assert status == 0


async def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    children = Children(tmp_path / "c.json")
    proc = await children.spawn(["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    group = await until(
        lambda: g if len(g := process_group(proc.pid)) == 2 else None,
        what="the shell's background sleep",
    )
    began = time.monotonic()
    await children.stop_all(grace=0.5)
    assert time.monotonic() - began < 3
    until_sync(lambda: all(_gone(p) for p in group), what="the group to end", timeout_s=5)


def test_child_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from waltd.process import Children\n"
        "async def main():\n"
        "    c = Children(Path(sys.argv[1]))\n"
        "    p = await c.spawn(['sleep', '300'])\n"
        "    print(p.pid, flush=True)\n"
        "    await asyncio.sleep(300)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "c.json")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not _gone(child)
    # setpriv sets the death signal, then starts the program: once it runs, the signal is
    # armed (a daemon killed in between leaves the child to the next start's record)
    until_sync(lambda: _comm(child) == "sleep", what="the child's program to start", timeout_s=5)
    parent.send_signal(signal.SIGKILL)  # no clean-up code runs: only PDEATHSIG can help
    parent.wait()
    until_sync(lambda: _gone(child), what="the child to end", timeout_s=5)


def test_kill_recorded_spares_reused_pids(tmp_path: Path) -> None:
    record = tmp_path / "children.json"
    stray = subprocess.Popen(["sleep", "300"], start_new_session=True)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record.write_text(
            json.dumps(
                [
                    {"pid": stray.pid, "start_time": start_time(stray.pid), "argv0": "sleep"},
                    {"pid": other.pid, "start_time": 12345, "argv0": "sleep"},
                ]
            )
        )
        assert kill_recorded(record) == [stray.pid]
        assert stray.wait(5) == -signal.SIGKILL
        assert other.poll() is None
        assert not record.exists()
    finally:
        stray.kill()
        other.kill()
        other.wait()


def test_kill_recorded_survives_a_corrupt_record(tmp_path: Path) -> None:
    record = tmp_path / "children.json"
    record.write_text("{not json")
    assert kill_recorded(record) == []
    assert kill_recorded(tmp_path / "absent.json") == []


def test_kill_recorded_skips_malformed_records(tmp_path: Path) -> None:
    record = tmp_path / "children.json"
    stray = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record.write_text(
            json.dumps(
                [
                    1,
                    "dnsmasq",
                    None,
                    [stray.pid],
                    {"pid": str(stray.pid), "start_time": start_time(stray.pid)},
                    {"pid": True, "start_time": 1},
                    {"pid": stray.pid},
                    {"pid": stray.pid, "start_time": start_time(stray.pid), "argv0": "sleep"},
                ]
            )
        )
        assert kill_recorded(record) == [stray.pid]
        assert stray.wait(5) == -signal.SIGKILL
        assert not record.exists()
    finally:
        stray.kill()


_DROPPING_CHILD = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from waltd.process import Children\n"
    "async def main():\n"
    "    c = Children(Path(sys.argv[1]))\n"
    # Like dnsmasq: the child becomes `nobody`, which clears PDEATHSIG.
    "    argv = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups',\n"
    "            'sleep', '300']\n"
    "    p = await c.spawn(argv, drops_privileges=True)\n"
    "    print(p.pid, flush=True)\n"
    "    await asyncio.sleep(300)\n"
    "asyncio.run(main())\n"
)


def test_a_child_that_drops_privileges_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    require_root()
    parent = subprocess.Popen(
        [sys.executable, "-c", _DROPPING_CHILD, str(tmp_path / "c.json")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    group: list[int] = []
    try:
        assert parent.stdout is not None
        keeper = int(parent.stdout.readline())

        def as_nobody() -> bool:
            group[:] = process_group(keeper)
            return _sleeping_as_nobody(group)

        until_sync(as_nobody, what="the child running as nobody", timeout_s=5)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        until_sync(lambda: all(_gone(p) for p in group), what="the group to end", timeout_s=5)
    finally:
        parent.kill()
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _sleeping_as_nobody(pids: list[int]) -> bool:
    nobody = pwd.getpwnam("nobody").pw_uid
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Name") == "sleep" and int(fields["Uid"].split()[0]) == nobody:
            return True
    return False
