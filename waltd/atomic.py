"""Atomic replacement of a small file: readers see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def write_atomic(
    path: Path, data: bytes, mode: int | None = None, *, new_mode: int = 0o644
) -> None:
    """Replace `path` (through a symlink, its target) with `data`, the file getting `mode`.

    With `mode` None the file keeps its current mode (a new file gets `new_mode`).

    The temporary file is created 0600 in the same folder and gets `mode` before any byte is
    written, so a secret is never readable by others even for a moment. A file that exists keeps
    its owner. The data and the folder entry are synced; on failure the old file is intact and no
    temporary file remains.
    """
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
                mode = stat.S_IMODE(old.st_mode) if old else new_mode
            os.fchmod(file.fileno(), mode)
            new = os.fstat(file.fileno())
            if old and (old.st_uid, old.st_gid) != (new.st_uid, new.st_gid):
                os.fchown(file.fileno(), old.st_uid, old.st_gid)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    # The rename is durable only once the folder's entry is on disk.
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
