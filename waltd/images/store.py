"""The images of the internal repository: names, listing, staging and installation.

An image of user U is stored under the full name `docker.io/U/<name>:<tag>` (what podman
stores for `U/<name>:<tag>`). Work in progress (a clone, a build, a squash) is kept under a
staging name `localhost/waltd-staging/U/<name>:<hex>`, never listed, and tagged into place
by `install` once checked: users see the old image or the new one, never a half-made one.
A staging name left by a crash is removed at the next start (`cleanup_staging`).

Every podman/buildah call goes through `Repository.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from waltd import log
from waltd.aio import completed
from waltd.images.storage import Storage
from waltd.images.tools import ToolError
from waltd.names import DEFAULT_TAG, InvalidName, parse_owned_local
from waltd.registries.base import node_models

_log = log.get("images")

# overlay stacks at most 128 layers; a few are kept for the layers a build or a container adds.
MAX_LAYERS = 120
STORED_DOMAIN = "docker.io"
STAGING_PREFIX = "localhost/waltd-staging/"
# buildah working containers of the store (squash) are named so, for the clean-up at start.
CONTAINER_PREFIX = "waltd-staging-"
# images per `podman image inspect`
_INSPECT_BATCH = 200


class Repository(Protocol):
    """What the store needs of `repository.Repository` (which imports this module)."""

    @property
    def storage(self) -> Storage:
        """The storage the tools work on."""
        ...

    async def run(
        self, argv: Sequence[str], *, input: bytes | None = None, secrets: Iterable[str] = ()
    ) -> bytes:
        """One tool command's stdout; ToolError when it fails."""
        ...

    async def run_json(self, argv: Sequence[str], *, secrets: Iterable[str] = ()) -> Any:
        """One tool command's JSON output."""
        ...

    def deleting(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A block that may delete images: the images mounted for the nodes are kept."""
        ...


@dataclass(frozen=True)
class LocalRef:
    """An image of the internal repository: `<user>/<name>:<tag>`."""

    user: str
    name: str
    tag: str = DEFAULT_TAG

    @property
    def full(self) -> str:
        """The name podman stores: `docker.io/<user>/<name>:<tag>`."""
        return f"{STORED_DOMAIN}/{self.user}/{self.name}:{self.tag}"

    @property
    def display(self) -> str:
        """`<user>/<name>[:<tag>]`, a `:latest` tag not shown, as users write it."""
        return f"{self.user}/{self.local}"

    @property
    def local(self) -> str:
        """`<name>[:<tag>]` (how the owner names it), a `:latest` tag not shown."""
        return self.name if self.tag == DEFAULT_TAG else f"{self.name}:{self.tag}"

    @property
    def clone_url(self) -> str:
        """The `walt:` clone URL other users clone it with."""
        return f"walt:{self.display}"

    @classmethod
    def parse(cls, text: str, default_user: str) -> LocalRef:
        """`[<user>/]<name>[:<tag>]` with the grammar of names.py; the user defaults to
        `default_user`. InvalidName (a ValueError) saying what is allowed otherwise."""
        return cls(*parse_owned_local(text, default_user))

    @classmethod
    def of_stored(cls, full: str) -> LocalRef | None:
        """The image a stored name `docker.io/<user>/<name>:<tag>` names; None for any other
        name (staging names, other registries, names outside the local grammar)."""
        domain, slash, rest = full.partition("/")
        if domain != STORED_DOMAIN or not slash or rest.count(":") != 1:
            return None
        try:
            return cls.parse(rest, "")
        except InvalidName:
            return None


def shown(full: str) -> str:
    """A stored image name as users write it (`user/name[:tag]`); another name as stored."""
    ref = LocalRef.of_stored(full)
    return full if ref is None else ref.display


@dataclass(frozen=True)
class ImageData:
    """What storage says of one image (by id or by any of its names)."""

    id: str
    digest: str | None
    created: str | None
    size: int
    labels: Mapping[str, str]
    layers: int
    names: tuple[str, ...]

    @property
    def models(self) -> tuple[str, ...]:
        """Node models of `walt.node.models`, () without the label."""
        return node_models(self.labels)


@dataclass(frozen=True)
class StoredImage:
    """An image of the repository under one of its names."""

    ref: LocalRef
    id: str
    digest: str | None
    created: str | None
    size: int
    labels: Mapping[str, str]
    layers: int

    @property
    def models(self) -> tuple[str, ...]:
        """Node models of `walt.node.models`, () without the label."""
        return node_models(self.labels)


class TooManyLayers(ValueError):
    """An image with more layers than overlay can stack once more is added."""


def check_layers(image: StoredImage | ImageData, name: str | None = None) -> None:
    """TooManyLayers when `image` has more than MAX_LAYERS layers; the message says to squash
    (`name`: how the user names the image, in the squash command shown)."""
    if image.layers <= MAX_LAYERS:
        return
    if name is None:
        name = image.ref.local if isinstance(image, StoredImage) else image.id[:12]
    raise TooManyLayers(
        f"image {name} has {image.layers} layers, more than the {MAX_LAYERS} allowed "
        f"(overlay storage stacks at most 128): squash it first: walt image squash {name}"
    )


def image_absent(err: ToolError) -> bool:
    """Whether a tool failed because the image or name it was given is not in storage."""
    text = err.message.lower()
    return "image not known" in text or "no such image" in text or "not found" in text


def _data(raw: Mapping[str, Any]) -> ImageData:
    labels = raw.get("Labels") or {}
    layers = (raw.get("RootFS") or {}).get("Layers") or []
    return ImageData(
        id=str(raw["Id"]),
        digest=raw.get("Digest") or None,
        created=raw.get("Created") or None,
        size=int(raw.get("Size") or 0),
        labels={str(k): str(v) for k, v in labels.items()},
        layers=len(layers),
        names=tuple(raw.get("RepoTags") or ()),
    )


async def _inspect_some(repo: Repository, wanted: list[str]) -> list[ImageData]:
    try:
        found = await repo.run_json(["podman", "image", "inspect", *wanted])
    except ToolError as err:
        if len(wanted) == 1 or not image_absent(err):
            raise
        # one went away meanwhile (removed by another operation): the others one by one
        found = []
        for image in wanted:
            with contextlib.suppress(ToolError):
                found.extend(await repo.run_json(["podman", "image", "inspect", image]))
    return [_data(raw) for raw in found or ()]


async def _inspect(repo: Repository, images: Iterable[str]) -> list[ImageData]:
    wanted = list(images)
    # a bounded command line (ids are 64 characters) and output per podman run
    batches = [wanted[at : at + _INSPECT_BATCH] for at in range(0, len(wanted), _INSPECT_BATCH)]
    return [data for batch in batches for data in await _inspect_some(repo, batch)]


async def inspect_id(repo: Repository, image: str) -> ImageData | None:
    """What storage says of `image` (an id or a full name, staging names included); None when
    it is absent."""
    if not await asyncio.to_thread(repo.storage.written):
        # a storage never written holds nothing: known without a tool start, which would
        # spend a few tenths of a second setting the storage up
        return None
    try:
        found = await _inspect(repo, [image])
    except ToolError as err:
        if image_absent(err):
            return None
        raise
    return found[0] if found else None


def _stored(ref: LocalRef, data: ImageData) -> StoredImage:
    return StoredImage(ref, data.id, data.digest, data.created, data.size, data.labels, data.layers)


async def list_images(repo: Repository) -> list[StoredImage]:
    """Every image named `docker.io/<user>/<name>:<tag>` (staging names left out), one entry
    per name, sorted by user, name and tag."""
    if not await asyncio.to_thread(repo.storage.written):
        return []  # nothing there, known without a tool start
    listed = await repo.run_json(["podman", "images", "--format", "json"])
    # one entry per name: an image with two names comes twice
    ids = list(dict.fromkeys(str(entry["Id"]) for entry in listed or ()))
    result = [
        _stored(ref, data)
        for data in await _inspect(repo, ids)
        for ref in (LocalRef.of_stored(name) for name in data.names)
        if ref is not None
    ]
    return sorted(result, key=lambda image: (image.ref.user, image.ref.name, image.ref.tag))


async def get(repo: Repository, ref: LocalRef) -> StoredImage | None:
    """The image `ref` names, None when there is none."""
    data = await inspect_id(repo, ref.full)
    if data is None or ref.full not in data.names:
        return None
    return _stored(ref, data)


def staging_ref(ref: LocalRef) -> str:
    """A new staging name for work on `ref`: unique, never listed, removed at the next start
    if left behind."""
    return f"{STAGING_PREFIX}{ref.user}/{ref.name}:{secrets.token_hex(12)}"


async def drop_if_unnamed(repo: Repository, image_id: str) -> None:
    """Remove an image that no name holds any longer (a parent of another image, or one a
    container still uses, stays: podman refuses, and that is right; one mounted for the
    nodes gets a name that keeps it first, `Repository.deleting`)."""
    async with repo.deleting():
        data = await inspect_id(repo, image_id)
        if data is None or data.names:
            return
        try:
            await repo.run(["podman", "rmi", image_id])
        except ToolError as err:
            _log.info("image_kept", image=image_id[:12], reason=err.message)


class Previous:
    """What `target` named before a tag, when the caller knows it already (it holds the name's
    lock since it looked): spares a podman call. `id` None: nothing."""

    def __init__(self, image: StoredImage | None) -> None:
        self.id = None if image is None else image.id


async def tag(
    repo: Repository, source: str, target: LocalRef, *, previous: Previous | None = None
) -> str | None:
    """Give the image `source` (a full name, a staging name or an id) the name `target` too:
    the name moves from the image it held (if any) to this one in one step, with no copy (the
    layers are shared). The id of the image `target` named before, None if none; that image
    stays in storage (`drop_if_unnamed` removes it once the caller is done)."""
    if previous is None:
        previous = Previous(await get(repo, target))
    await repo.run(["podman", "tag", source, target.full])
    return previous.id


async def untag(repo: Repository, ref: LocalRef) -> None:
    """Remove the name `ref` only (its image stays, even with no name left)."""
    await repo.run(["podman", "untag", ref.full, ref.full])


async def install(
    repo: Repository, staged: str, ref: LocalRef, *, previous: Previous | None = None
) -> None:
    """Give the staged image the name `ref` (the name moves from the old image to the new one
    in one step), then drop the old image if nothing else names it. The staging name goes
    when the `staging` block that made it ends (one podman call for both cases)."""
    old_id = await tag(repo, staged, ref, previous=previous)
    if old_id is not None:
        await drop_if_unnamed(repo, old_id)


async def discard(repo: Repository, staged: str) -> None:
    """Remove a staging name (and its image when no other name holds it); nothing when absent.

    Shielded: a cancelled caller still leaves no staging name behind.
    """
    if not staged.startswith(STAGING_PREFIX):
        raise ValueError(f"not a staging name: {staged!r}")
    await _remove_name(repo, staged)


async def _remove_name(repo: Repository, name: str) -> None:
    """`podman rmi` of a full name, nothing when absent; finished even if the caller is
    cancelled."""

    async def untag() -> None:
        try:
            async with repo.deleting():  # its last name goes: maybe the image with it
                await repo.run(["podman", "rmi", name])
        except ToolError as err:
            if not image_absent(err):
                raise

    await completed(untag())


async def image_ids(repo: Repository) -> set[str]:
    """The id of every image of the storage, intermediate ones included."""
    listed = await repo.run_json(["podman", "images", "--all", "--format", "json"])
    return {str(entry["Id"]) for entry in listed or ()}


async def drop_dangling(repo: Repository, keep: set[str]) -> None:
    """Remove the images that no name holds and no image builds on (podman's `dangling`), but
    those of `keep`; podman removes their parents left in the same state with them. Finished
    even when the caller is cancelled meanwhile. An image a container uses stays."""

    async def drop() -> None:
        argv = ["podman", "images", "--all", "--filter", "dangling=true", "--format", "json"]
        async with repo.deleting():
            listed = await repo.run_json(argv)
            left = sorted({str(entry["Id"]) for entry in listed or ()} - keep)
            if not left:
                return
            try:
                await repo.run(["podman", "rmi", *left])
            except ToolError as err:
                _log.info("image_kept", images=[i[:12] for i in left], reason=err.message)

    await completed(drop())


@contextlib.asynccontextmanager
async def staging(repo: Repository, ref: LocalRef) -> AsyncIterator[str]:
    """A staging name for work on `ref`, discarded when the block ends (after `install` it is
    gone already), whether the block succeeds, fails or is cancelled."""
    staged = staging_ref(ref)
    try:
        yield staged
    finally:
        await discard(repo, staged)


@contextlib.asynccontextmanager
async def filling(repo: Repository, ref: LocalRef) -> AsyncIterator[str]:
    """The full name of `ref`, for work written straight under it: the caller holds the name's
    lock and found it free. When the block fails or is cancelled, whatever came to hold the
    name (a tool stopped as it was finishing) is removed: the name is free again."""
    try:
        yield ref.full
    except BaseException:
        await _remove_name(repo, ref.full)
        raise


async def remove(repo: Repository, ref: LocalRef) -> None:
    """Remove the name `ref`, and the image when no other name holds it."""
    image = await get(repo, ref)
    if image is None:
        raise LookupError(f"no image {ref.display}")
    await untag(repo, ref)
    await drop_if_unnamed(repo, image.id)


async def cleanup_staging(repo: Repository) -> int:
    """Remove every staging name and store working container a crash left; how many names."""
    containers = await repo.run_json(["buildah", "containers", "--json"])
    for container in containers or ():
        name = str(container.get("containername", ""))
        if name.startswith(CONTAINER_PREFIX):
            with contextlib.suppress(ToolError):
                await repo.run(["buildah", "rm", name])
    listed = await repo.run_json(["podman", "images", "--all", "--format", "json"])
    left = [
        name
        for entry in listed or ()
        for name in entry.get("Names") or ()
        if str(name).startswith(STAGING_PREFIX)
    ]
    for name in left:
        await discard(repo, name)
    return len(left)
