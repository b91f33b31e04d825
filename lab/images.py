"""WalT images in the lab's container storage: built offline, pushed and pulled, mounted for NFS."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from lab.lab import Lab, LabError, Registry
from waltd import config
from waltd.images.repository import Repository
from waltd.provision.mounts import ImageMounts, MountError
from waltd.registries.base import Credentials, authfile
from waltd.supervisor import RunningConfig

FileContent = bytes | str | Path


async def build_image(
    lab: Lab,
    name: str,
    models: Sequence[str] | None,
    files: Mapping[str, FileContent] | Path,
    *,
    labels: Mapping[str, str] | None = None,
    arch: str | None = None,
    variant: str = "",
) -> str:
    """Build an image from scratch with buildah, offline, and return its id.

    `files` is a folder copied to `/`, or a mapping of relative paths to contents (a Path
    value is a file copied with its mode; an empty mapping makes an image without a
    layer). The image is labelled `walt.node.models` (not at
    all when `models` is None: a non-WalT image), made for linux/`arch`[/`variant`] (by
    default this machine's platform), and committed as `name`, e.g.
    docker.io/waltplatform/pc-x86-64-default:latest (give the full name, else buildah stores
    it as localhost/...).
    """
    env = lab.containers_env
    staging = None
    source: Path | None = None
    if isinstance(files, Path):
        source = files
    elif files:
        source = staging = lab.root / "build" / secrets.token_hex(4)
        _write_tree(staging, files)
    try:
        container = (await lab.run(["buildah", "from", "scratch"], env=env)).stdout.strip()
        try:
            if source is not None:
                await lab.run(["buildah", "add", "--quiet", container, str(source), "/"], env=env)
            config = ["--os", "linux", "--arch", arch] if arch else []
            if variant:
                config += ["--variant", variant]
            if models is not None:
                config += ["--label", f"walt.node.models={','.join(models)}"]
            for key, value in (labels or {}).items():
                config += ["--label", f"{key}={value}"]
            if config:
                await lab.run(["buildah", "config", *config, container], env=env)
            commit = ["buildah", "commit", "--quiet", container, name]
            return (await lab.run(commit, env=env)).stdout.strip()
        finally:
            await lab.run(["buildah", "rm", container], env=env)
    finally:
        if staging is not None:
            shutil.rmtree(staging)


def _write_tree(folder: Path, files: Mapping[str, FileContent]) -> None:
    for relative, content in files.items():
        path = folder / relative.lstrip("/")
        if ".." in Path(relative).parts:
            raise ValueError(f"path outside the image: {relative!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy2(content, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


async def image_id(lab: Lab, image: str) -> str:
    """Full id of an image of the lab's storage."""
    inspect = ["podman", "image", "inspect", "--format", "{{.Id}}", image]
    return (await lab.run(inspect, env=lab.containers_env)).stdout.strip()


def _repository(image: str) -> str:
    """`image` without its registry host (docker.io/a/b:c -> a/b:c)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return rest
    return image


async def push_image(
    lab: Lab,
    image: str,
    registry: Registry,
    name: str | None = None,
    *,
    credentials: tuple[str, str] | None = None,
) -> str:
    """Push `image` to `registry` as `name` (default: `image` without its host), schema 2.

    `credentials` default to the registry's own. Returns the remote reference.
    """
    remote = f"{registry.host}/{name or _repository(image)}"
    options = ["--dest-tls-verify=false", "--format", "v2s2"]
    source, dest = f"containers-storage:{image}", f"docker://{remote}"
    await _copy(lab, registry, credentials, [*options, source, dest])
    return remote


async def pull_image(
    lab: Lab,
    registry: Registry,
    name: str,
    image: str | None = None,
    *,
    credentials: tuple[str, str] | None = None,
) -> str:
    """Copy `name` from `registry` into the lab's storage as `image`; return the image id.

    `image` defaults to `<registry host>/<name>`, `credentials` to the registry's own.
    """
    image = image or f"{registry.host}/{name}"
    source, dest = f"docker://{registry.host}/{name}", f"containers-storage:{image}"
    await _copy(lab, registry, credentials, ["--src-tls-verify=false", source, dest])
    return await image_id(lab, image)


async def _copy(
    lab: Lab,
    registry: Registry,
    credentials: tuple[str, str] | None,
    arguments: Sequence[str],
) -> None:
    """`skopeo copy ARGUMENTS` between the lab's storage and `registry`.

    The login (`credentials`, else the registry's own) goes through a temporary auth file of
    mode 0600, never the command line.
    """
    login = credentials or registry.auth
    creds = Credentials(*login) if login else None
    async with authfile(registry.host, creds) as path:
        auth = ["--authfile", str(path)] if path else []
        # skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF (podman and buildah honour it)
        argv = ["skopeo", "copy", "--quiet", *auth, *arguments]
        await lab.run(argv, env=lab.containers_env)


def image_mounts(lab: Lab) -> ImageMounts:
    """waltd's image mounts over the lab's storage, under `<lab root>/images/`."""
    # waltd's repository with the lab's root as state folder: its tools' configuration is
    # `<root>/containers`, the files `Lab.containers_env` names
    defaults = config.default_config()
    daemon = replace(defaults.daemon, state_dir=lab.root, image_storage=lab.graphroot)
    running = RunningConfig(replace(defaults, daemon=daemon), None)
    return ImageMounts(lab.root, Repository(lab.children, running), lab.children)


@asynccontextmanager
async def exportable_mount(lab: Lab, image: str) -> AsyncIterator[Path]:
    """Mount `image` at `<root>/images/<id>/fs` as waltd does (`ImageMounts`: a read-only
    overlay NFS servers can export); yield its real path. Stop exporting it before leaving
    the block: an exported mount cannot be unmounted."""
    mounts = image_mounts(lab)
    image = await image_id(lab, image)
    fs = mounts.images / image / "fs"
    if image in mounts.mounted():
        raise LabError(f"{image} is already mounted at {fs}")
    lab.track_mount(fs)  # recorded first: a killed lab's mount is cleared by the next one
    try:
        path = await mounts.mount(image)
    except BaseException:
        lab.untrack_mount(fs)
        raise
    try:
        yield path
    except BaseException:
        # keep the block's own error; if still exported, the lab unmounts it after its processes
        with contextlib.suppress(MountError):
            await mounts.unmount(image)
            lab.untrack_mount(fs)
        raise
    await mounts.unmount(image)
    lab.untrack_mount(fs)
