"""A real repository (podman storage) in a test's own folder, and images built into it with
buildah through the repository's one runner (offline: `buildah from scratch`)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tests.conftest import require_tool
from tests.support.daemon import remove, short_dir
from waltd import config as configuration
from waltd.images.repository import Repository
from waltd.images.store import LocalRef
from waltd.process import Children
from waltd.supervisor import RunningConfig


def repository_at(folder: Path) -> Repository:
    """A repository whose storage and tool configuration live in `folder` (prepared), its
    exports root `folder/exports` (where the images it keeps while mounted are mounted)."""
    for tool in ("podman", "buildah"):
        require_tool(tool)
    config = configuration.default_config()
    state = folder / "state"
    state.mkdir(parents=True, exist_ok=True)
    daemon = replace(config.daemon, state_dir=state, image_storage=folder / "images")
    exports = replace(config.exports, root=folder / "exports")
    config = replace(config, daemon=daemon, exports=exports)
    repo = Repository(Children(state / "children.json"), RunningConfig(config, None))
    repo.storage.prepare(config)
    return repo


def release_storage(graphroot: Path) -> None:
    """Unmount what podman left mounted under `graphroot` (its overlay folder is a mount of
    its own while the storage is in use), deepest first, so the folder can be removed."""
    root = str(graphroot.resolve())
    with open("/proc/self/mountinfo") as table:
        points = [line.split()[4] for line in table]
    for point in sorted({p for p in points if p == root or p.startswith(root + "/")}, reverse=True):
        subprocess.run(["umount", point], check=True, capture_output=True)


@contextmanager
def storage_folder() -> Iterator[Path]:
    """A fresh test folder (`short_dir`) for a daemon whose image storage is its `images`:
    the storage released, then the folder removed, at the end."""
    path = short_dir()
    try:
        yield path
    finally:
        release_storage(path / "images")
        remove(path)


async def build(
    repo: Repository,
    image: LocalRef | str,
    *,
    models: str | None = "pc-x86-64",
    layers: int = 1,
    base: str = "scratch",
    content: str | None = None,
) -> str:
    """Commit an image of `layers` new layers (one file each) on `base` under `image` (a
    LocalRef or a full name); its id. `models` is the walt.node.models label (None: none)."""
    name = image.full if isinstance(image, LocalRef) else image
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(layers):
            # a commit of a container is one layer over its image: one container per layer
            container = (await repo.run(["buildah", "from", base])).decode().strip()
            try:
                path = Path(tmp) / f"layer-{number}"
                text = f"{name} {number} {content or ''}\n"
                await asyncio.to_thread(path.write_text, text)
                await repo.run(["buildah", "add", "--quiet", container, str(path), "/"])
                last = number == layers - 1
                if last and models is not None:
                    label = f"walt.node.models={models}"
                    await repo.run(["buildah", "config", "--label", label, container])
                commit = ["buildah", "commit", "--quiet", container, *([name] if last else [])]
                base = (await repo.run(commit)).decode().strip()
            finally:
                await repo.run(["buildah", "rm", container])
    return base
