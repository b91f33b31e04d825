"""What a mount of an image needs from the repository: its layer folders, and a hold.

podman's own `podman image mount` is a read-only overlay without an upper folder, which NFS
servers cannot export (no file handles). `layer_dirs` borrows that mount only to read its
`lowerdir` (the layer folders, in podman's order and form), then gives it back; the caller
mounts an overlay of its own over the same layers.

The layers must outlive that overlay: `hold` gives the image a name of its own,
`localhost/waltd-mounted/<id>`, so that removing or replacing the image's user-visible names
leaves it in storage (podman removes an image only once no name holds it, and the repository
removes unnamed images only: `store.drop_if_unnamed`, `store.drop_dangling`). The name is
never listed (`store.list_images` shows `docker.io/...` names only); `release` removes it.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from waltd import log
from waltd.images.store import Repository
from waltd.images.tools import ToolError
from waltd.names import check_image_id, is_image_id

_log = log.get("images")

HOLD_PREFIX = "localhost/waltd-mounted/"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
# A podman call of this module is quick (no copy); past this it is stuck.
TOOL_TIMEOUT_S = 120.0


class LayersError(RuntimeError):
    """The layers of an image could not be read from podman's mount."""


def unescape_mount_field(text: str) -> str:
    r"""A field of /proc/*/mounts or mountinfo, where the kernel writes space, tab, newline,
    backslash (and, in options, comma and equals) as `\ooo` octal escapes."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), text)


def overlay_lowerdir(mounts: str, mount_point: str) -> str:
    """The lower folders of the overlay mounted at `mount_point`, from /proc/self/mounts text,
    as one `lowerdir` value (`a:b:c`, the top layer first).

    The last overlay mounted there is the one seen. Kernels that list each layer as its own
    `lowerdir+` option (mounts made through the new mount API) are read too.
    """
    found = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "overlay":
            if unescape_mount_field(fields[1]) == mount_point:
                found = fields[3]
    if found is None:
        raise LayersError(f"no overlay mounted at {mount_point}")
    whole: str | None = None
    layers: list[str] = []
    # split before unescaping: a comma inside a path is written \054
    for option in found.split(","):
        if option.startswith("lowerdir="):
            whole = unescape_mount_field(option.removeprefix("lowerdir="))
        elif option.startswith("lowerdir+="):
            layers.append(unescape_mount_field(option.removeprefix("lowerdir+=")))
    if whole is not None:
        return whole
    if layers:
        return ":".join(layers)
    raise LayersError(f"the overlay at {mount_point} shows no lowerdir")


async def _finished(work: asyncio.Future[Any]) -> None:
    """Wait for `work` even when the caller is cancelled meanwhile (then re-raise)."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        await work
        raise


async def layer_dirs(repo: Repository, image_id: str) -> tuple[str, Path]:
    """The overlay `lowerdir` value podman's own mount of the image shows, and the folder its
    relative entries are relative to (the storage's `overlay` folder: podman lists many layers
    as short `l/<link>` names there, so that its options fit in one page).

    podman's mount is given back before this returns, whatever happens (a cancelled caller
    included). LayersError, or ToolError (the image is absent: podman's message).
    """
    check_image_id(image_id)
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        borrowed = (await repo.run(["podman", "image", "mount", image_id])).decode().strip()
    try:
        mounts = await asyncio.to_thread(Path("/proc/self/mounts").read_text)
        lower = overlay_lowerdir(mounts, borrowed)
    finally:
        unmount = repo.run(["podman", "image", "unmount", image_id])
        await _finished(asyncio.ensure_future(asyncio.wait_for(unmount, TOOL_TIMEOUT_S)))
    return lower, repo.storage.graphroot / "overlay"


def hold_name(image_id: str) -> str:
    """The name that keeps a mounted image in storage."""
    return f"{HOLD_PREFIX}{check_image_id(image_id)}:latest"


async def hold(repo: Repository, image_id: str) -> None:
    """Give the image its hold name (again: nothing changes when it has it). ToolError when
    the image is not in storage."""
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        await repo.run(["podman", "tag", check_image_id(image_id), hold_name(image_id)])


async def release(repo: Repository, image_id: str) -> None:
    """Remove the hold name (the image stays: only the name goes); nothing when absent.
    Finished even when the caller is cancelled meanwhile."""
    name = hold_name(image_id)

    async def untag() -> None:
        try:
            await repo.run(["podman", "untag", name, name])
        except ToolError as err:
            if "not known" not in err.message and "no such" not in err.message.lower():
                # the image stays held until the next start's reconciliation releases it
                _log.warning("image_hold_kept", image=image_id[:12], error=err.message)

    await _finished(asyncio.ensure_future(asyncio.wait_for(untag(), TOOL_TIMEOUT_S)))


async def held(repo: Repository) -> set[str]:
    """The ids of the images that have a hold name (a crash may have left some)."""
    if not await asyncio.to_thread(repo.storage.written):
        # nothing held in a storage never written, known without a tool start (a new
        # server's first start reconciles while its first nodes arrive)
        return set()
    async with asyncio.timeout(TOOL_TIMEOUT_S):
        listed = await repo.run_json(["podman", "images", "--format", "json"])
    found = set()
    for entry in listed or ():
        for name in entry.get("Names") or ():
            image = str(name).removeprefix(HOLD_PREFIX).removesuffix(":latest")
            if str(name).startswith(HOLD_PREFIX) and is_image_id(image):
                found.add(image)
    return found
