"""Lab records: written atomically, read back, and cleared once their owner is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from lab.record import (
    LabRecord,
    clear_stale_labs,
    lab_records,
    process_start_time,
    records_locked,
)


def _record(tmp_path: Path, prefix: str, owner_pid: int, owner_start: int) -> LabRecord:
    root = tmp_path / f"lab-{prefix}"
    (root / "sub").mkdir(parents=True)
    return LabRecord(prefix, str(root), "10.200.1.0/24", owner_pid, owner_start)


def test_start_time_tells_a_live_process_from_a_gone_one() -> None:
    assert process_start_time(os.getpid()) == process_start_time(os.getpid()) is not None
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert process_start_time(int(done.stdout)) is None


def test_record_round_trip(tmp_path: Path) -> None:
    record = _record(tmp_path, "wlaaaa", os.getpid(), process_start_time(os.getpid()) or 0)
    record.netns.append("wlaaaa-srv")
    record.mounts.append("/x/fs")
    record.save(tmp_path)
    assert lab_records(tmp_path) == [record]
    assert not list(tmp_path.glob("*.tmp"))
    assert record.owner_alive()


def test_only_labs_of_dead_owners_are_cleared(tmp_path: Path) -> None:
    me = os.getpid()
    alive = _record(tmp_path, "wllive", me, process_start_time(me) or 0)
    # same PID, other start time: the PID was reused by another process
    dead = _record(tmp_path, "wldead", me, (process_start_time(me) or 0) + 1)
    for record in (alive, dead):
        record.save(tmp_path)
    with records_locked(tmp_path):
        assert clear_stale_labs(tmp_path) == ["wldead"]
    assert lab_records(tmp_path) == [alive]
    assert Path(alive.root).is_dir() and not Path(dead.root).exists()


def test_a_dead_labs_recorded_children_are_killed(tmp_path: Path) -> None:
    me = os.getpid()
    dead = _record(tmp_path, "wlkids", me, (process_start_time(me) or 0) + 1)
    dead.save(tmp_path)
    # a child the lab's Children recorded, as if PDEATHSIG had not reached it
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        start = process_start_time(child.pid)
        entry = {"pid": child.pid, "start_time": start, "argv0": "sleep"}
        dead.children_file.write_text(json.dumps([entry]))
        with records_locked(tmp_path):
            assert clear_stale_labs(tmp_path) == ["wlkids"]
        assert child.wait(timeout=5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
