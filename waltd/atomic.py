"""Atomic replacement of a small file: readers see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

# The mode of a new file written with no mode given.
NEW_MODE = 0o644


def write_atomic(path: Path, data: bytes, mode: int | None = None, *, durable: bool = True) -> None:
    """Replace `path` (through a symlink, its target) with `data`, the file getting `mode`.

    With `mode` None the file keeps its current mode (a new file gets NEW_MODE, 0644).

    The temporary file is created 0600 in the same folder and gets `mode` before any byte is
    written, so a secret is never readable by others even for a moment. A file that exists keeps
    its owner. With `durable` the data and the folder entry are synced (a cache, whose lost
    entry is only a miss, can skip it); on failure the old file is intact and no temporary file
    remains.
    """
    if os.path.islink(path):
        # the link stays; its target is replaced. A link among the folders above changes
        # nothing: the temporary file is made and renamed in the same folder either way, and
        # resolving every component costs a look at each (a storm of nodes writes many files)
        path = Path(os.path.realpath(path))
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            # fchmod is not subject to the umask.
            if mode is None:
                mode = stat.S_IMODE(old.st_mode) if old else NEW_MODE
            os.fchmod(file.fileno(), mode)
            new = os.fstat(file.fileno())
            if old and (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
                os.fchown(file.fileno(), old.st_uid, old.st_gid)
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if not durable:
        return
    # The rename is durable only once the folder's entry is on disk.
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
