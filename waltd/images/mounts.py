"""What a mount of an image needs from the repository: its layer folders, and a hold.

podman's own `podman image mount` is a read-only overlay without an upper folder, which NFS
servers cannot export (no file handles); the caller mounts an overlay of its own over the
image's layers instead. `layer_dirs` names them by the short links the storage keeps for
them (`l/<link>` in its overlay folder, podman's own way to fit many layers in the one page
a mount's options take), top first, read from the storage's own records, as its overlay
driver does when it mounts: the image's top layer in `overlay-images/images.json`, that
layer's `link` and `lower` files (the links of the layers below, top first). No tool
starts (a podman start costs about 20 ms of CPU). When those records do not give a
consistent answer, `podman image inspect` does (GraphDriver: the top layer's folder, then
the lower ones), each folder named by its short link where it has one.

The layers must outlive that overlay. Only a deletion takes them away: podman removes an
image only once no name holds it, and the repository deletes nothing but through
`Holds.deleting` (`store.drop_if_unnamed`, `store.drop_dangling`, a staging name's
removal). There, first, every image mounted under the exports' images folder (the kernel's
mount table says which, those a previous daemon left included) gets a name of its own,
`localhost/waltd-mounted/<id>` (`hold`), and no image is mounted or unmounted until the
deletion is through (`Holds.changing`). A mount itself starts no tool: most mounted images
never meet a deletion, and a hold costs a buildah start (about 20 ms of CPU). The name is
never listed (`store.list_images` shows `docker.io/...` names only); `Holds.release` removes
it once the image is unmounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from waltd import log
from waltd.aio import completed
from waltd.images.store import Repository, image_absent
from waltd.images.tools import ToolError
from waltd.names import check_image_id, is_image_id

_log = log.get("images")

HOLD_PREFIX = "localhost/waltd-mounted/"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
# Characters the overlay option parser or mount(8) would read as separators in a path.
UNSAFE_IN_OPTIONS = re.compile(r"[,:\\\s\x00-\x1f\x7f]")
# A storage's short layer name, and where its link leads (`l/<link>` -> ../<id>/diff).
_SHORT_LINK = re.compile(r"l/[A-Za-z0-9]{1,64}")
_LINK_TARGET = re.compile(r"\.\./[0-9a-f]{64}/diff")
# A podman call of this module is quick (no copy); past this it is stuck.
TOOL_TIMEOUT_S = 120.0


class LayersError(RuntimeError):
    """The layers of an image could not be read from podman."""


def unescape_mount_field(text: str) -> str:
    r"""A field of /proc/*/mounts or mountinfo, where the kernel writes space, tab, newline,
    backslash (and, in options, comma and equals) as `\ooo` octal escapes."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), text)


def image_overlays(text: str, root: Path) -> list[tuple[str, Path]]:
    """(image id, mount point) of each overlay mounted at `<root>/images/<id>/fs` in mount
    table `text` (/proc/self/mounts format), in mount order (a stacked one comes twice)."""
    images = str(root).rstrip("/") + "/images/"
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[2] != "overlay":
            continue
        point = unescape_mount_field(fields[1])
        if not point.startswith(images):
            continue
        image, slash, rest = point.removeprefix(images).partition("/")
        if slash and rest == "fs" and is_image_id(image):
            found.append((image, Path(point)))
    return found


def parse_mounts(text: str, root: Path) -> dict[str, Path]:
    """The images mounted under `root` (its real path: the kernel lists real paths) in mount
    table `text`: image id -> mount point `<root>/images/<id>/fs`. Other mounts are left out."""
    return dict(image_overlays(text, root))


def mount_table() -> str:
    """The kernel's mount table as this process sees it."""
    return Path("/proc/self/mounts").read_text()


def mounted_under(root: Path) -> set[str]:
    """The ids of the images mounted at `<root>/images/<id>/fs` now (blocking: it resolves
    `root`, as the kernel lists real paths, and reads the mount table)."""
    return set(parse_mounts(mount_table(), Path(os.path.realpath(root))))


def image_layers(inspected: Mapping[str, Any]) -> list[Path]:
    """The layer folders of an image as `podman image inspect` shows it, the top one first
    (pure). LayersError when its storage is not an overlay one or shows no layer."""
    driver = inspected.get("GraphDriver")
    if not isinstance(driver, dict) or driver.get("Name") != "overlay":
        name = driver.get("Name") if isinstance(driver, dict) else None
        raise LayersError(f"the image's storage driver is {name!r}, not overlay")
    data = driver.get("Data")
    upper = data.get("UpperDir") if isinstance(data, dict) else None
    if not isinstance(upper, str) or not upper.startswith("/"):
        raise LayersError("podman shows no layer folder for the image")
    lower = data.get("LowerDir") if isinstance(data, dict) else None
    below = lower.split(":") if isinstance(lower, str) and lower else []
    if not all(path.startswith("/") for path in below):
        raise LayersError(f"podman shows layer folders that are not absolute paths: {lower!r}")
    return [Path(upper), *map(Path, below)]


def short_name(layer: Path, overlay: Path) -> str:
    """`l/<link>`, the storage's short name of `layer` (`<overlay>/<id>/diff`), relative to
    `overlay`; its full path when the storage keeps no valid link for it (the length of the
    options then tells whether it fits)."""
    if layer.name == "diff" and layer.parent.parent == overlay:
        try:
            link = (layer.parent / "link").read_text(encoding="ascii").strip()
            target = f"../{layer.parent.name}/diff"
            if link.isalnum() and os.readlink(overlay / "l" / link) == target:
                return f"l/{link}"
        except (OSError, UnicodeDecodeError):
            pass
    return str(layer)


def top_layer(images: bytes, image_id: str) -> str:
    """The id of the top layer of image `image_id` in the storage's `images.json` (pure).
    LayersError when the record is not there or not as expected."""
    try:
        records = json.loads(images)
    except ValueError as err:
        raise LayersError(f"the storage's image records are not JSON: {err}") from None
    for record in records if isinstance(records, list) else ():
        if isinstance(record, dict) and record.get("id") == image_id:
            layer = record.get("layer")
            if not isinstance(layer, str) or not is_image_id(layer):
                raise LayersError(f"the storage's record of {image_id[:12]} names no top layer")
            return layer
    raise LayersError(f"the storage's records hold no image {image_id[:12]}")


def lower_links(lower: str) -> list[str]:
    """The entries of a layer's `lower` file, `l/<link>` each, top first (pure); none for
    an empty file. LayersError for anything else."""
    entries = lower.strip().split(":") if lower.strip() else []
    for entry in entries:
        if not _SHORT_LINK.fullmatch(entry):
            raise LayersError(f"a layer's lower file holds {entry[:80]!r}, not a short link")
    return entries


def stored_layers(graphroot: Path, image_id: str) -> list[str]:
    """The short names of the image's layers, top first, from the storage's own records
    (see the module docstring); each checked to lead to a layer's folder. LayersError when
    the records do not give them. Blocking file reads."""
    overlay = graphroot / "overlay"
    try:
        top = top_layer((graphroot / "overlay-images" / "images.json").read_bytes(), image_id)
        try:
            lower = (overlay / top / "lower").read_text(encoding="ascii")
        except FileNotFoundError:
            lower = ""  # the bottom layer: none below
        names = [short_name(overlay / top / "diff", overlay), *lower_links(lower)]
        for name in names:
            target = os.readlink(overlay / name) if name.startswith("l/") else ""
            if not _LINK_TARGET.fullmatch(target):
                raise LayersError(f"the layer link {name[:80]!r} leads to no layer's folder")
    except (OSError, UnicodeDecodeError) as err:
        raise LayersError(f"the storage's layer records cannot be read: {err}") from None
    return names


async def layer_dirs(repo: Repository, image_id: str) -> tuple[str, Path]:
    """The overlay `lowerdir` value of the image's layers (top first, short names where the
    storage keeps them) and the folder its relative entries are relative to (the storage's
    `overlay` folder). From the storage's records, else from `podman image inspect`.
    LayersError, or ToolError (the image is absent: podman's message)."""
    check_image_id(image_id)
    overlay = repo.storage.graphroot / "overlay"
    try:
        names = await asyncio.to_thread(stored_layers, repo.storage.graphroot, image_id)
    except LayersError as err:
        _log.info("image_layers_inspected", image=image_id[:12], reason=str(err))
        names = await _inspected_layers(repo, image_id, overlay)
    unusable = [name for name in names if UNSAFE_IN_OPTIONS.search(name)]
    if unusable:
        raise LayersError(f"a layer folder cannot be named in mount options: {unusable[0]!r}")
    return ":".join(names), overlay


async def _inspected_layers(repo: Repository, image_id: str, overlay: Path) -> list[str]:
    """The image's layers as `podman image inspect` shows them, by short name where the
    storage keeps one."""
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        listed = await repo.run_json(["podman", "image", "inspect", image_id])
    if not isinstance(listed, list) or len(listed) != 1 or not isinstance(listed[0], dict):
        raise LayersError(f"podman image inspect {image_id[:12]} gave no single image")
    found = image_layers(listed[0])
    return await asyncio.to_thread(lambda: [short_name(layer, overlay) for layer in found])


def hold_name(image_id: str) -> str:
    """The name that keeps a mounted image in storage."""
    return f"{HOLD_PREFIX}{check_image_id(image_id)}:latest"


async def hold(repo: Repository, image_id: str) -> None:
    """Give the image its hold name (again: nothing changes when it has it). ToolError when
    the image is not in storage.

    buildah's tag names an image as podman's does, in the same storage, for about half the
    CPU: it sets up no container runtime (podman probes conmon and opens its container
    database at every start)."""
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        await repo.run(["buildah", "tag", check_image_id(image_id), hold_name(image_id)])


async def release(repo: Repository, image_id: str) -> None:
    """Remove the hold name (the image stays: only the name goes); nothing when absent.
    Finished even when the caller is cancelled meanwhile."""
    name = hold_name(image_id)

    async def untag() -> None:
        try:
            await repo.run(["podman", "untag", name, name])
        except ToolError as err:
            if not image_absent(err):
                # the image stays held until the next start's reconciliation releases it
                _log.warning("image_hold_kept", image=image_id[:12], error=err.message)

    await completed(asyncio.wait_for(untag(), TOOL_TIMEOUT_S))


def held_in(images: bytes) -> set[str]:
    """The ids of the images holding a hold name in the storage's `images.json` (pure).
    LayersError when it is not the list of records it should be."""
    try:
        records = json.loads(images)
    except ValueError as err:
        raise LayersError(f"the storage's image records are not JSON: {err}") from None
    if not isinstance(records, list):
        raise LayersError("the storage's image records are not a list")
    names = (record.get("names") if isinstance(record, dict) else None for record in records)
    return _held_by(name for listed in names if isinstance(listed, list) for name in listed)


def _held_by(names: Iterable[object]) -> set[str]:
    """The image ids of the hold names among `names` (pure)."""
    found = set()
    for name in map(str, names):
        image = name.removeprefix(HOLD_PREFIX).removesuffix(":latest")
        if name.startswith(HOLD_PREFIX) and is_image_id(image):
            found.add(image)
    return found


def _stored_holds(graphroot: Path) -> set[str]:
    """`held_in` the storage's records; none in a storage never written. Blocking."""
    try:
        images = (graphroot / "overlay-images" / "images.json").read_bytes()
    except FileNotFoundError:
        return set()  # no image was ever written there
    except OSError as err:
        raise LayersError(f"the storage's image records cannot be read: {err}") from None
    return held_in(images)


async def held(repo: Repository) -> set[str]:
    """The ids of the images that have a hold name (a crash may have left some).

    Read from the storage's own records, as `layer_dirs` reads layers: only this daemon gives
    and removes hold names, under the `Holds` lock. `podman images` answers when the records
    cannot be read (a tool start: about 40 ms of CPU, and a failed one leaves the storage's
    own overlay mount behind)."""
    try:
        return await asyncio.to_thread(_stored_holds, repo.storage.graphroot)
    except LayersError as err:
        _log.info("image_holds_listed", reason=str(err))
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        listed = await repo.run_json(["podman", "images", "--format", "json"])
    return _held_by(name for entry in listed or () for name in entry.get("Names") or ())


class Holds:
    """Hold names given when a deletion could need them (see the module docstring).

    `exports_root` gives the folder whose `images/<id>/fs` the exports mount images at. One
    lock orders the changes of that mount table (`changing`) and the deletions (`deleting`):
    a deletion never meets an image mounted after it looked.
    """

    def __init__(self, repo: Repository, exports_root: Callable[[], Path]) -> None:
        self._repo = repo
        self._exports_root = exports_root
        self._lock = asyncio.Lock()
        # ids known to have a hold name; None until listed (a previous daemon may have left
        # some): `known` at the start's reconciliation, else the first deletion lists them
        self._held: set[str] | None = None

    def known(self, ids: set[str]) -> None:
        """The images holding a hold name now, as listed (`held`)."""
        self._held = set(ids)

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[None]:
        """A block that mounts or unmounts images (no deletion runs meanwhile)."""
        async with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def deleting(self) -> AsyncIterator[None]:
        """A block that may delete images: every image mounted now has its hold name, and no
        image is mounted until the block ends. ToolError when a hold cannot be given."""
        async with self._lock:
            mounted = await asyncio.to_thread(mounted_under, self._exports_root())
            if mounted:
                holds = await self._holds()
                for image_id in sorted(mounted - holds):
                    try:
                        await hold(self._repo, image_id)
                    except ToolError as err:
                        if not image_absent(err):
                            raise
                        continue  # not in storage: no layers of its to keep
                    holds.add(image_id)
            yield

    async def release(self, image_id: str) -> None:
        """Remove the hold name of an image no longer mounted; no tool starts when it has
        none. The caller is in a `changing` block."""
        holds = await self._holds()
        if image_id in holds:
            await release(self._repo, image_id)
            holds.discard(image_id)

    async def _holds(self) -> set[str]:
        """The ids known to hold a hold name, listed the first time they are needed."""
        if self._held is None:
            self._held = await held(self._repo)
        return self._held
