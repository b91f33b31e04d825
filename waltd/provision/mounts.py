"""Images mounted the exportable way, once each, under `<exports.root>/images/<id>/`.

`<id>/fs` is a read-only overlay with `index=on,nfs_export=on` (which NFS servers can export:
its files have file handles) over the image's layers as podman's own image mount lists them
(`images.mounts.layer_dirs`), with an empty `upper` and `work` folder of its own. The daemon
mounts it with mount(2) itself, each layer named by its full path; an image of so many layers
that their full paths do not fit in a page goes to mount(8), run from the storage's overlay
folder so that their short relative names do. Mounting starts no other tool: removing or
replacing the image in the repository leaves its layers in place all the same, since the
repository's deletions give every mounted image a hold name first (`images.mounts.Holds`),
and mounts and deletions take turns.

The mount table is the truth: `mounted()` reads /proc/self/mounts, so an image is never
mounted twice, even over mounts a previous daemon left (`reconcile` at start keeps the
wanted ones and unmounts the others). An exported mount is busy: unmounting it is refused
until the NFS server stops exporting it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from waltd import log
from waltd.images import mounts as layers
from waltd.images.locks import NameLocks
from waltd.images.mounts import image_overlays, parse_mounts, unescape_mount_field
from waltd.images.repository import Repository
from waltd.images.tools import ToolError
from waltd.names import check_image_id, is_image_id
from waltd.process import Children

_log = log.get("mounts")

# mount(2) copies its options from one page, NUL included.
MAX_OPTIONS_BYTES = 4095
# mount and umount of an overlay are quick; past this something is stuck.
MOUNT_TIMEOUT_S = 60.0
# Mounts stacked on one point unmounted at most by `reconcile` (a bound on a loop).
_MAX_STACKED = 16


class MountError(RuntimeError):
    """An image could not be mounted or unmounted; the message says why."""


class MountBusy(MountError):
    """An image's mount is in use (exported, or a process works in it): not unmounted."""


# mount(2)'s flag for a read-only mount; libc's mount, called with the GIL released.
_MS_RDONLY = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int


def full_layers(lower: str, relative_to: Path) -> str:
    """`lower` (a `lowerdir` value) with each relative entry made a full path under
    `relative_to` (pure)."""
    return ":".join(
        entry if entry.startswith("/") else str(relative_to / entry) for entry in lower.split(":")
    )


def _overlay_fields(lower: str, upper: Path, work: Path) -> str:
    return f"index=on,nfs_export=on,lowerdir={lower},upperdir={upper},workdir={work}"


def overlay_data(lower: str, upper: Path, work: Path) -> str | None:
    """The overlay's own options, as mount(2) takes them (read-only is a flag there); None
    when they do not fit in its page."""
    data = _overlay_fields(lower, upper, work)
    return data if len(data.encode()) <= MAX_OPTIONS_BYTES else None


def mount_overlay(point: Path, data: str) -> None:
    """mount(2) of a read-only overlay at `point` with `data` (blocking); OSError naming the
    mount point when the kernel refuses."""
    if _libc.mount(b"overlay", os.fsencode(point), b"overlay", _MS_RDONLY, data.encode()) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(point))


def overlay_options(lower: str, upper: Path, work: Path) -> str:
    """The options of an image's exportable overlay; MountError when they do not fit in what
    mount(2) accepts (a page)."""
    options = f"ro,{_overlay_fields(lower, upper, work)}"
    size = len(options.encode())
    if size > MAX_OPTIONS_BYTES:
        count = lower.count(":") + 1
        raise MountError(
            f"the overlay options of an image of {count} layers take {size} bytes, more than "
            f"the {MAX_OPTIONS_BYTES} a mount accepts: squash the image (walt image squash) "
            "or choose a shorter exports.root"
        )
    return options


@dataclass
class Reconciled:
    """What `reconcile` did: mounts kept, unmounted, left busy, and folders removed."""

    kept: set[str] = field(default_factory=set)
    unmounted: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)


class ImageMounts:
    """The exportable mounts of images under `<root>/images/`."""

    def __init__(self, root: Path, repo: Repository, children: Children) -> None:
        # the kernel lists mounts by real path: resolved once, not at every node exported
        self._root = Path(os.path.realpath(root))
        self._repo = repo
        self._children = children
        self._locks = NameLocks()

    @property
    def images(self) -> Path:
        """`<root>/images`, the root's real path (no symlink in it)."""
        return self._root / "images"

    def mounted(self) -> dict[str, Path]:
        """Image id -> mount point of every image mounted under the root, from the kernel's
        mount table."""
        return parse_mounts(layers.mount_table(), self._root)

    async def mount(self, image_id: str) -> Path:
        """Mount the image (once: when mounted already, nothing is done) and return its mount
        point's real path. MountError saying why it cannot be mounted (ValueError for an id
        that is no id)."""
        check_image_id(image_id)
        async with self._locks.hold(image_id):
            # one look at a folder, on the loop: cheaper than a thread hand-off, and the
            # answer for every node of an image but the first
            point = self._mounted_at(image_id)
            if point is not None:
                return point
            return await self._mount(image_id)

    def _mounted_at(self, image_id: str) -> Path | None:
        """The image's mount point when something is mounted there, else None.

        Only this class mounts at `<root>/images/<id>/fs` (a start reconciles what a crash
        left there), so a mount point there is the image's: one look at the folder instead
        of reading the whole mount table at every node exported.
        """
        point = self.images / image_id / "fs"
        return point if os.path.ismount(point) else None

    async def _mount(self, image_id: str) -> Path:
        images = self.images
        bad = layers.UNSAFE_IN_OPTIONS.search(str(images))
        if bad:
            raise MountError(f"exports.root {str(images.parent)!r} holds {bad[0]!r}: not usable")
        folder = images / image_id
        # no deletion meanwhile: the layers read are there until the image is unmounted
        async with self._repo.holds.changing():
            try:
                lower, relative_to = await layers.layer_dirs(self._repo, image_id)
                await asyncio.to_thread(self._prepare, folder, lower, relative_to)
                upper, work, point = folder / "upper", folder / "work", folder / "fs"
                data = overlay_data(full_layers(lower, relative_to), upper, work)
                if data is not None:
                    # no mount(8) start (about 6 ms of CPU) for an image of few layers
                    await asyncio.to_thread(mount_overlay, point, data)
                else:
                    # the short names must fit; relative `l/<link>` layers resolve from
                    # podman's overlay folder
                    options = overlay_options(lower, upper, work)
                    argv = ["mount", "-t", "overlay", "overlay", "-o", options, str(point)]
                    await self._run(argv, cwd=relative_to, what=f"mount image {image_id[:12]}")
            except BaseException as err:
                await asyncio.to_thread(self._remove_folder, folder)
                if isinstance(err, ToolError | layers.LayersError | OSError):
                    raise MountError(f"image {image_id[:12]} cannot be mounted: {err}") from None
                raise
        _log.info("image_mounted", image=image_id[:12], path=str(folder / "fs"))
        return folder / "fs"

    def _prepare(self, folder: Path, lower: str, relative_to: Path) -> None:
        """Fresh folders for a mount; the upper folder gets the image root's owner and mode
        (the overlay's root shows the upper folder's: a node's `/` must not be 0700)."""
        self.images.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.images.chmod(0o755)
        self._remove_folder(folder)  # what a failed attempt or a crash left
        folder.mkdir(mode=0o755)
        folder.chmod(0o755)  # the daemon's umask is 077
        for sub in ("upper", "work", "fs"):
            (folder / sub).mkdir(mode=0o755)
        top = os.stat(relative_to / lower.split(":", 1)[0])
        os.chown(folder / "upper", top.st_uid, top.st_gid)
        os.chmod(folder / "upper", top.st_mode & 0o7777)

    def _remove_folder(self, folder: Path) -> None:
        """Remove an image's folder unless something is mounted in it (never descend into a
        mount)."""
        if not folder.exists() and not folder.is_symlink():
            return
        prefix = str(folder) + "/"
        if any(point == str(folder) or point.startswith(prefix) for point in _mount_points()):
            return
        shutil.rmtree(folder)

    async def _run(self, argv: list[str], *, cwd: Path | None = None, what: str) -> None:
        try:
            async with asyncio.timeout(MOUNT_TIMEOUT_S):
                status, _, err = await self._children.run(argv, cwd=cwd)
        except FileNotFoundError:
            raise MountError(f"cannot {what}: {argv[0]} is not installed") from None
        except TimeoutError:
            raise MountError(f"cannot {what}: no answer after {MOUNT_TIMEOUT_S} s") from None
        if status != 0:
            text = err.decode(errors="replace").strip()[-500:] or f"status {status}"
            if "busy" in text:
                raise MountBusy(f"cannot {what}: it is in use (still exported?): {text}")
            raise MountError(f"cannot {what}: {text}")

    async def unmount(self, image_id: str) -> None:
        """Unmount the image, remove its folder and its hold; nothing when it is not mounted.
        MountBusy while it is exported or used: stop exporting it first."""
        check_image_id(image_id)
        async with self._locks.hold(image_id), self._repo.holds.changing():
            await self._unmount(image_id)

    async def _unmount(self, image_id: str) -> None:
        point = (await asyncio.to_thread(self.mounted)).get(image_id)
        if point is not None:
            await self._run(["umount", str(point)], what=f"unmount image {image_id[:12]}")
            _log.info("image_unmounted", image=image_id[:12])
        if image_id not in await asyncio.to_thread(self.mounted):
            await asyncio.to_thread(self._remove_folder, self.images / image_id)
            await self._repo.holds.release(image_id)

    async def reconcile(self, wanted: set[str]) -> Reconciled:
        """At start: keep the wanted images that are mounted (one mount each), unmount the
        others, remove the folders of images not mounted and the holds of images not mounted.

        A busy mount (an NFS server still exports it) is left, logged and reported in `busy`.
        """
        done = Reconciled()
        overlays = await asyncio.to_thread(lambda: image_overlays(layers.mount_table(), self._root))
        counts: dict[str, int] = {}
        for image, _ in overlays:
            counts[image] = counts.get(image, 0) + 1
        for image, count in sorted(counts.items()):
            # a wanted image stacked twice keeps its lowest mount; an unwanted one keeps none
            extra = min(count - 1 if image in wanted else count, _MAX_STACKED)
            async with self._locks.hold(image), self._repo.holds.changing():
                try:
                    for _ in range(extra):
                        point = str(self.images / image / "fs")
                        await self._run(["umount", point], what=f"unmount image {image[:12]}")
                except MountError as err:
                    done.busy.add(image)
                    _log.warning("image_mount_left", image=image[:12], error=str(err))
                    continue
            (done.kept if image in wanted else done.unmounted).add(image)
        async with self._repo.holds.changing():
            mounted = set(await asyncio.to_thread(self.mounted))
            done.removed = await asyncio.to_thread(self._remove_unmounted, mounted)
            holds = await layers.held(self._repo)
            for image in sorted(holds - mounted):
                await layers.release(self._repo, image)
                done.released.add(image)
            self._repo.holds.known(holds & mounted)
        _log.info(
            "image_mounts_reconciled",
            kept=len(done.kept),
            unmounted=len(done.unmounted),
            busy=len(done.busy),
            removed=len(done.removed),
            released=len(done.released),
        )
        return done

    def _remove_unmounted(self, mounted: set[str]) -> set[str]:
        """Remove every image folder whose image is not mounted; unknown entries are left (and
        logged): the folder is the daemon's, but only what it makes is removed."""
        removed = set()
        if not self.images.is_dir():
            return removed
        for entry in sorted(self.images.iterdir()):
            if not is_image_id(entry.name) or entry.is_symlink() or not entry.is_dir():
                _log.warning("images_entry_unknown", path=str(entry))
                continue
            if entry.name not in mounted:
                self._remove_folder(entry)
                if not entry.exists():
                    removed.add(entry.name)
        return removed


def _mount_points() -> list[str]:
    """Every mount point of /proc/self/mountinfo (field 5), unescaped."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(unescape_mount_field(fields[4]))
    return points
