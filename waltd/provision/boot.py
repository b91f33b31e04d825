"""Boot files: an image's `/boot/<model>/` copied out, and the server's own iPXE scripts.

Everything here works on paths under the exports root R (`config.exports.root`) and holds
no daemon state:

- `copy_boot_files`: an image's `/boot/<model>/` into R/boot/<id>/<model>/, server-owned
  regular files and folders only. The image is read with openat-style walking (every
  component opened with O_NOFOLLOW relative to its parent's descriptor), and each symbolic
  link is resolved by this module inside the image root, as a chroot would: nothing outside
  the image is ever opened, whatever its links say or however it changes meanwhile.
- the server's iPXE scripts: `bootstrap_ipxe` (answered by dnsmasq to iPXE) and
  `WAITING_IPXE` (the start.ipxe of a node whose image is not ready).

The nodes' links to these files are `layout`'s. The copy is blocking file work: the daemon
runs it in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from waltd import log
from waltd.atomic import write_atomic
from waltd.names import check_image_id
from waltd.provision.models import is_model

_log = log.get("boot")

# iPXE binaries of Debian's ipxe package, answered to firmware PXE (not yet iPXE).
IPXE_FILES = {"undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe", "ipxe.efi": "/usr/lib/ipxe/ipxe.efi"}

# The folder (under R/boot/) whose start.ipxe every node without a ready image gets.
WAITING = "waiting"
# What a node's TFTP folder, and the server's "wait and retry" one, must hold.
START_SCRIPT = "start.ipxe"
# The URL of a node's own start script, as iPXE expands it (R/tftp is dnsmasq's root).
NODE_START_URL = "tftp://${next-server}/nodes/${mac:hexhyp}/" + START_SCRIPT

# An NFS root prefix written into an iPXE script and a kernel command line: no spaces,
# quotes, `$` or other characters either would read differently.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]*")
# Temporary names of the boot copies and the node layout (`layout`): a leading dot and
# this marker.
TEMP_MARK = ".waltd-tmp-"

FILE_MODE = 0o644
FOLDER_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def bootstrap_ipxe(http_port: int, nfs_root_prefix: Path) -> str:
    """The iPXE script dnsmasq answers to iPXE (before the node says its model).

    It announces the model (`set user-class`, then DHCP again: dnsmasq now tags the node
    `walt` and answers no boot file, so no other iPXE binary is chained), sets the boot
    variables images use (`walt-server`, `walt-http`, `walt-nfsroot`), then chains the
    node's own start.ipxe, retrying every 5 s while that fails. `nfs_root_prefix` is
    R/nodes: a node's NFS root is `<server>:<prefix>/<mac>/fs`.
    """
    if not 0 < http_port < 65536:
        raise ValueError(f"invalid HTTP port {http_port}")
    prefix = str(nfs_root_prefix).rstrip("/")
    if not _SAFE_PATH.fullmatch(prefix) or len(prefix) > 1024:
        raise ValueError(
            f"the NFS root {prefix[:80]!r} must be an absolute path of letters, digits"
            " and . _ - / (it goes into iPXE scripts and kernel command lines)"
        )
    return f"""#!ipxe
# waltd bootstrap: announce the model, then boot this node's own start script.
cpuid --ext 29 && set model pc-x86-64 || set model pc-x86-32
set user-class walt.node.${{model}}
:dhcp
dhcp || goto dhcp
set walt-server ${{next-server}}
set walt-http http://${{next-server}}:{http_port}
set walt-nfsroot ${{next-server}}:{prefix}/${{mac}}/fs
:start
chain --autofree {NODE_START_URL} || goto retry
:retry
sleep 5
goto start
"""


# A node without a ready image: say so, wait, then fetch the node's start.ipxe again (the
# same URL as the bootstrap's: by then it may lead to the image's). iPXE keeps no cache:
# every `chain` downloads anew; `--replace` runs the new script in place of this one, so
# waiting nests no scripts and holds no memory however long it lasts.
WAITING_IPXE = f"""#!ipxe
# waltd: this node has no image ready yet.
echo waltd: no image is ready for this node yet (${{mac}}), trying again in 5 seconds
sleep 5
chain --replace --autofree {NODE_START_URL}
"""


def public_folder(folder: Path) -> None:
    """`folder` as 0755, and the folders it needed created as 0755 too (the daemon's umask
    makes its own files private; boot files are read by dnsmasq as `nobody` and by NFS)."""
    missing = []
    path = folder
    while not path.exists() and path != path.parent:  # above an existing folder, all exist
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile: chmod it all the same
            path.mkdir()
        path.chmod(FOLDER_MODE)
    folder.chmod(FOLDER_MODE)


def install_server_files(root: Path, http_port: int) -> None:
    """The server's own boot files under the exports root `root`: R/tftp/bootstrap.ipxe,
    the iPXE binaries (those installed), R/boot/waiting/start.ipxe; world-readable."""
    tftp = root / "tftp"
    waiting = root / "boot" / WAITING
    for folder in (tftp, tftp / "nodes", waiting, root / "nodes"):
        public_folder(folder)
    script = bootstrap_ipxe(http_port, root / "nodes")
    write_atomic(tftp / "bootstrap.ipxe", script.encode(), FILE_MODE)
    for name, source in IPXE_FILES.items():
        if Path(source).exists():
            write_atomic(tftp / name, Path(source).read_bytes(), FILE_MODE)
    write_atomic(waiting / START_SCRIPT, WAITING_IPXE.encode(), FILE_MODE)


# ---- copying an image's boot files ---------------------------------------------------------


class BootCopyError(Exception):
    """The boot files could not be copied (a bound passed, no such folder, an I/O error)."""


class NoBootFolder(BootCopyError):
    """The image has no `/boot/<model>/` folder: nothing of it can be booted by that model
    (its root may still be exported)."""


@dataclass(frozen=True)
class CopyLimits:
    """Bounds of one copy: entries seen, bytes copied, folder depth, links followed per
    path. Past any, the copy fails."""

    entries: int = 10_000
    bytes: int = 2 * 2**30
    depth: int = 32
    link_hops: int = 40


@dataclass(frozen=True)
class Skipped:
    """An entry left out of a copy: its path below `/boot/<model>/`, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: files and folders made, bytes copied, entries left out."""

    files: int
    folders: int
    bytes: int
    skipped: tuple[Skipped, ...]


class _Unresolvable(Exception):
    """A link that leads nowhere usable inside the image (the reason is the message)."""


@dataclass
class _Copy:
    root_fd: int
    limits: CopyLimits
    entries: int = 0
    files: int = 0
    folders: int = 0
    bytes: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def count(self) -> None:
        self.entries += 1
        if self.entries > self.limits.entries:
            raise BootCopyError(f"more than {self.limits.entries} entries under the boot folder")


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _resolve(root_fd: int, parts: list[str], hops_max: int) -> int:
    """An O_PATH descriptor of what `parts` (from the image root) leads to, every link
    followed inside the root: an absolute target starts again at the root, `..` stops at
    it. The caller closes the descriptor."""
    todo = list(reversed(parts))  # a stack: the next component last
    held: list[int] = []  # descriptors of the folders walked below the root
    hops = 0
    try:
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if held:
                    os.close(held.pop())
                continue
            here = held[-1] if held else root_fd
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=here)
            except FileNotFoundError:
                raise _Unresolvable("it leads to nothing in the image") from None
            except OSError as err:
                raise _Unresolvable(f"it cannot be followed ({err.strerror})") from None
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                os.close(fd)
                hops += 1
                if hops > hops_max:
                    raise _Unresolvable(f"more than {hops_max} links in a row (a loop?)")
                try:
                    target = os.readlink(name, dir_fd=here)
                except OSError as err:  # changed meanwhile
                    raise _Unresolvable(f"it cannot be read ({err.strerror})") from None
                if target.startswith("/"):
                    for opened in held:
                        os.close(opened)
                    held.clear()
                todo.extend(reversed(_components(target)))
                continue
            if not todo:
                return fd
            if not stat.S_ISDIR(mode):
                os.close(fd)
                raise _Unresolvable("a component of its target is not a folder")
            held.append(fd)
        return os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=held[-1] if held else root_fd)
    finally:
        for opened in held:
            os.close(opened)


def _what(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _copy_file(job: _Copy, path_fd: int, dest_dir: int, name: str) -> None:
    """Copy the regular file behind the O_PATH descriptor `path_fd` to `name` in `dest_dir`.

    The file is reopened through its descriptor, not its name: what was checked is what
    is read, and no device or FIFO is ever opened."""
    size = os.fstat(path_fd).st_size
    if job.bytes + size > job.limits.bytes:
        raise BootCopyError(f"the boot files hold more than {job.limits.bytes} bytes")
    src = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(src)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(name, flags, 0o600, dir_fd=dest_dir)
        try:
            os.fchmod(dst, FILE_MODE)
            copied = 0
            # At most the size checked: a file growing meanwhile cannot pass the bound.
            while copied < size:
                sent = os.sendfile(dst, src, copied, min(size - copied, 2**30))
                if sent == 0:
                    break  # shrunk meanwhile
                copied += sent
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    job.bytes += copied
    job.files += 1


def _copy_tree(job: _Copy, src_dir: int, at: list[str], dest_dir: int, depth: int) -> None:
    """Copy the folder open as `src_dir` (the image path `at`) into `dest_dir`."""
    if depth > job.limits.depth:
        raise BootCopyError(f"the boot folder is nested more than {job.limits.depth} deep")
    names = []
    with os.scandir(src_dir) as listing:
        for entry in listing:
            job.count()  # as they are listed: a huge folder fails without being read whole
            names.append(entry.name)
    for name in sorted(names):
        shown = "/".join([*at[2:], name])
        st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=src_dir)
            except OSError as err:  # replaced meanwhile
                job.skipped.append(Skipped(shown, f"it cannot be opened ({err.strerror})"))
                continue
            try:
                os.mkdir(name, 0o700, dir_fd=dest_dir)
                made = os.open(name, _DIR_FLAGS, dir_fd=dest_dir)
                try:
                    os.fchmod(made, FOLDER_MODE)
                    job.folders += 1
                    _copy_tree(job, sub, [*at, name], made, depth + 1)
                finally:
                    os.close(made)
            finally:
                os.close(sub)
            continue
        why = None
        try:
            if stat.S_ISLNK(st.st_mode):
                target = _resolve(job.root_fd, [*at, name], job.limits.link_hops)
            else:
                target = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        except _Unresolvable as err:
            job.skipped.append(Skipped(shown, f"a link: {err}"))
            continue
        try:
            mode = os.fstat(target).st_mode
            if stat.S_ISREG(mode):
                _copy_file(job, target, dest_dir, name)
            else:
                why = _what(mode)
                if stat.S_ISLNK(st.st_mode):
                    why = f"a link to {why}"
        finally:
            os.close(target)
        if why is not None:
            job.skipped.append(Skipped(shown, why))


def copy_boot_files(
    image_root: Path, model: str, dest: Path, limits: CopyLimits | None = None
) -> CopyReport:
    """Copy the image's `/boot/<model>/` (the image mounted at `image_root`) to `dest`.

    Regular files become 0644, folders 0755, owned by the daemon (root). A symbolic link
    is resolved inside the image (`/x` is image_root/x, `..` stops at image_root) and its
    target copied in its place when that is a regular file; anything else (a link leading
    out, nowhere or to a folder, a loop, a FIFO, socket or device) is left out, and named in
    the report and one `boot_files_skipped` warning. Past a bound of `limits` the copy fails
    (BootCopyError) and leaves nothing.

    The copy is made under a temporary name beside `dest`, then renamed into place: `dest`
    only ever holds a complete copy. An existing `dest` is replaced (a reader may miss it
    during the swap; the content of an image id never changes, so a caller may keep it).
    One copy to a given `dest` at a time.
    """
    limits = limits or CopyLimits()
    if not is_model(model):
        raise BootCopyError(f"invalid node model {model[:70]!r}")
    public_folder(dest.parent)
    temp = dest.parent / f"{TEMP_MARK}{dest.name}.{secrets.token_hex(4)}"
    try:
        root_fd = os.open(image_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise BootCopyError(f"cannot open the image root {image_root}: {err.strerror}") from None
    try:
        job = _Copy(root_fd, limits)
        try:
            top = _resolve(root_fd, ["boot", model], limits.link_hops)
        except _Unresolvable as err:
            raise NoBootFolder(f"the image has no /boot/{model}/ folder: {err}") from None
        try:
            if not stat.S_ISDIR(os.fstat(top).st_mode):
                raise NoBootFolder(f"the image's /boot/{model} is not a folder")
            src = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        finally:
            os.close(top)
        try:
            os.mkdir(temp, 0o700)
            made = os.open(temp, _DIR_FLAGS)
            try:
                os.fchmod(made, FOLDER_MODE)
                _copy_tree(job, src, ["boot", model], made, 0)
                os.fsync(made)
            finally:
                os.close(made)
        finally:
            os.close(src)
        _swap_into_place(temp, dest)
    except OSError as err:  # the disk full, a read failing...
        shutil.rmtree(temp, ignore_errors=True)
        raise BootCopyError(f"copying the image's /boot/{model}/ failed: {err}") from err
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        os.close(root_fd)
    report = CopyReport(job.files, job.folders, job.bytes, tuple(job.skipped))
    if report.skipped:
        _log.warning(
            "boot_files_skipped",
            image_root=str(image_root),
            model=model,
            count=len(report.skipped),
            entries=[f"{s.path}: {s.reason}" for s in report.skipped[:20]],
        )
    return report


def _swap_into_place(temp: Path, dest: Path) -> None:
    try:
        os.rename(temp, dest)
        return
    except OSError as err:
        if not dest.is_dir() or dest.is_symlink():
            raise BootCopyError(f"cannot put the boot files at {dest}: {err.strerror}") from None
    old = dest.parent / f"{TEMP_MARK}{dest.name}.old.{secrets.token_hex(4)}"
    os.rename(dest, old)
    os.rename(temp, dest)
    shutil.rmtree(old, ignore_errors=True)


def remove_boot_copies(root: Path, image_id: str) -> None:
    """Remove R/boot/<id>/ (every model's copy of image `image_id`), once no node uses it.

    It is renamed aside first, so no reader sees a half-removed folder; ValueError for an
    invalid image id (never the server's own R/boot/waiting)."""
    check_image_id(image_id)
    folder = root / "boot" / image_id
    doomed = root / "boot" / f"{TEMP_MARK}{image_id}.gone.{secrets.token_hex(4)}"
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def clear_partial_copies(folder: Path) -> list[Path]:
    """Remove the temporary copies an interrupted `copy_boot_files` left in `folder` (an
    R/boot/<id>/ folder); the paths removed. For the start-up reconciliation."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.name.startswith(TEMP_MARK):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
