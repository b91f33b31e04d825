"""One daemon per state folder: an exclusive lock on `<state-dir>/waltd.lock` for its life.

A second daemon on the same folder would kill the first one's children (they are recorded
there) and take over its event socket; it must find the lock held and touch nothing. The
lock is flock(2), so the kernel releases it whatever way the daemon ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "waltd.lock"


class AlreadyRunning(Exception):
    """Another daemon holds the state folder's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.pid = pid
        holder = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"another waltd uses {state_dir} ({holder})")


def lock(state_dir: Path) -> IO[str]:
    """Take the state folder's lock, recording this PID in it; close the file to release.

    Raises AlreadyRunning, naming the holder's PID, when another daemon holds it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    # Opened without truncating: the holder's PID must survive a failed attempt. Python
    # opens it close-on-exec, so no child keeps the lock after the daemon is gone.
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # an older daemon's may be readable by all
    held = os.fdopen(fd, "r+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = held.read(32).strip()
        held.close()
        raise AlreadyRunning(state_dir, int(text) if text.isdigit() else None) from None
    except BaseException:
        held.close()
        raise
    held.truncate(0)
    held.write(f"{os.getpid()}\n")
    held.flush()
    return held
