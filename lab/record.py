"""What a lab leaves on the machine, and how to clear it, even after its owner was killed.

Each lab keeps `/run/waltd-lab/<prefix>.json` (that folder is the index of labs): its owner
process, folder, network namespaces and mounts, each recorded before it is made. Its processes are
`waltd.process.Children`, recorded in `<folder>/children.json` (PID and start time, so that a
reused PID is never killed) and killed by the kernel when their owner dies (PDEATHSIG). Links need
no entry: every link is made inside a lab namespace and goes with it. Clearing is synchronous, so
that it also runs while an event loop is being torn down.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from waltd.atomic import write_atomic
from waltd.images.mounts import unescape_mount_field
from waltd.process import kill_recorded, proc_state

RECORD_DIR = Path("/run/waltd-lab")
NETNS_DIR = Path("/run/netns")
# Seconds a process gets between SIGTERM and SIGKILL when a lab is cleared.
TERM_GRACE_S = 3.0


def process_start_time(pid: int) -> int | None:
    """Start time of a live process (/proc/PID/stat field 22), None when gone or a zombie."""
    state = proc_state(pid)
    return None if state is None or state[0] in ("Z", "X") else state[1]


def netns_inode(path: Path | str) -> tuple[int, int] | None:
    """Identity (device, inode) of a network namespace file, None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class LabRecord:
    """Everything a lab made that must go when it ends."""

    prefix: str
    root: str
    subnet: str
    owner_pid: int
    owner_start: int
    netns: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)

    @property
    def children_file(self) -> Path:
        """Where the lab's `Children` record its processes."""
        return Path(self.root) / "children.json"

    def owner_alive(self) -> bool:
        """Whether the process that made the lab still runs (same PID and start time)."""
        return process_start_time(self.owner_pid) == self.owner_start

    def save(self, directory: Path = RECORD_DIR) -> None:
        """Write the record atomically: a reader never sees half of it."""
        write_atomic(directory / f"{self.prefix}.json", json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, path: Path) -> LabRecord:
        """Read a record written by `save`."""
        return cls(**json.loads(path.read_text()))


def lab_records(directory: Path = RECORD_DIR) -> list[LabRecord]:
    """Every lab recorded in `directory`."""
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            records.append(LabRecord.load(path))
        except (ValueError, TypeError, KeyError) as err:
            # written atomically, so only a hand edit gets here: nothing is cleared on a guess
            message = f"unreadable lab record {path} ({err}): check and remove it"
            raise RuntimeError(message) from err
    return records


@contextmanager
def records_locked(directory: Path = RECORD_DIR) -> Iterator[None]:
    """Hold the index lock, so that two labs starting at once never clear the same one."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def clear_stale_labs(directory: Path = RECORD_DIR) -> list[str]:
    """Clear every recorded lab whose owner process is gone; return their prefixes.

    Call it with `records_locked` held.
    """
    cleared = []
    for record in lab_records(directory):
        if not record.owner_alive():
            clear_lab(record, directory)
            cleared.append(record.prefix)
    return cleared


def clear_lab(record: LabRecord, directory: Path = RECORD_DIR) -> None:
    """Stop the lab's processes, unmount its mounts, delete its namespaces, folder and record.

    Processes go first (an exported mount cannot be unmounted): the recorded ones, then every
    process left in the lab's namespaces (those no record lists, such as a daemon's children);
    namespaces go last.
    """
    kill_recorded(record.children_file)
    _terminate(_namespace_pidfds(record))
    root = Path(record.root)
    for mount in mount_points(root, record.mounts):
        _unmount(mount)
    for name in record.netns:
        if (NETNS_DIR / name).exists():
            subprocess.run(["ip", "netns", "delete", name], check=True, capture_output=True)
    left = mount_points(root, record.mounts)
    if left:
        # removing the folder now would delete files inside a mount
        raise RuntimeError(f"lab {record.prefix}: still mounted: {', '.join(left)}")
    if root.exists():
        shutil.rmtree(root)
    (directory / f"{record.prefix}.json").unlink(missing_ok=True)


def _namespace_pidfds(record: LabRecord) -> dict[int, int]:
    """pidfds (by PID) of every process in the lab's namespaces.

    The pidfd is opened before the namespace check: if the PID is reused after the open, the
    pidfd still names the old (dead) process and a signal through it reaches nobody.
    """
    found: dict[int, int] = {}
    namespaces = {ino for name in record.netns if (ino := netns_inode(NETNS_DIR / name))}
    if not namespaces:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fd = os.pidfd_open(int(entry))
        except OSError:
            continue  # gone meanwhile
        if netns_inode(f"/proc/{entry}/ns/net") in namespaces:
            found[int(entry)] = fd
        else:
            os.close(fd)
    return found


def _terminate(pidfds: dict[int, int]) -> None:
    """SIGTERM each process, SIGKILL what is left after TERM_GRACE_S, wait until all are gone."""
    try:
        for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 10.0)):
            left = _running(pidfds.values())
            for fd in left:
                with suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, sig)
            deadline = time.monotonic() + wait_s
            while left and time.monotonic() < deadline:
                time.sleep(0.02)
                left = _running(left)
    finally:
        for fd in pidfds.values():
            os.close(fd)


def _running(pidfds: Iterable[int]) -> list[int]:
    """The pidfds whose process has not exited (a pidfd becomes readable at exit)."""
    poller = select.poll()
    fds = list(pidfds)
    for fd in fds:
        poller.register(fd, select.POLLIN)
    exited = {fd for fd, _ in poller.poll(0)}
    return [fd for fd in fds if fd not in exited]


def mount_points(root: Path, extra: Iterable[str] = ()) -> list[str]:
    """Mount points strictly below `root` or listed in `extra`, the most recent first."""
    wanted = set(extra)
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = unescape_mount_field(line.split()[4])
        if point.startswith(prefix) or point in wanted:
            points.append(point)
    # mountinfo lists in mount order: unmounting from the end undoes stacks and nesting
    return points[::-1]


def _unmount(point: str) -> None:
    if subprocess.run(["umount", point], capture_output=True).returncode != 0:
        # still busy after its processes are gone (a shell sitting in it): detach it
        subprocess.run(["umount", "-l", point], capture_output=True)
