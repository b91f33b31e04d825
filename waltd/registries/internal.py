"""The internal repository as an image source: other users' images, location `walt`.

Made per request, for one caller: `walt image search` lists the images of every other user
(the caller's own are what `walt image show` lists), and a `walt:` clone copies from it.
"""

from __future__ import annotations

from collections.abc import Sequence

from waltd.images import store
from waltd.images.store import LocalRef, Repository, StoredImage
from waltd.images.tools import ToolError
from waltd.registries.base import (
    LOCATION_WALT,
    Credentials,
    ImageInfo,
    NotFound,
    RegistryError,
    Warn,
)

LOCATION = "walt"


def image_info(image: StoredImage) -> ImageInfo:
    """A stored image as a source describes it."""
    ref = image.ref
    return ImageInfo(
        location=LOCATION,
        kind=LOCATION_WALT,
        user=ref.user,
        name=ref.name,
        tag=ref.tag,
        digest=image.digest,
        labels=dict(image.labels),
        created=image.created,
    )


class InternalSource:
    """The images of the internal repository that are not `caller`'s."""

    label = LOCATION
    kind = LOCATION_WALT

    def __init__(self, repo: Repository, caller: str) -> None:
        self._repo = repo
        self._caller = caller

    async def list_images(
        self, creds: Credentials | None = None, *, warn: Warn | None = None
    ) -> list[ImageInfo]:
        """Every WalT image of another user (images without `walt.node.models` left out)."""
        try:
            images = await store.list_images(self._repo)
        except ToolError as err:
            raise RegistryError(LOCATION, f"cannot read the internal repository: {err}") from err
        return [
            image_info(image) for image in images if image.ref.user != self._caller and image.models
        ]

    async def resolve(
        self,
        user: str,
        name: str,
        tag: str,
        creds: Credentials | None = None,
        *,
        models: Sequence[str] = (),
    ) -> ImageInfo:
        """The image `walt:<user>/<name>:<tag>`; NotFound when absent (or the caller's own:
        cloning your own image is refused)."""
        if user == self._caller:
            raise NotFound(LOCATION, f"{user}/{name}:{tag} is your own image: it needs no clone")
        try:
            image = await store.get(self._repo, LocalRef(user, name, tag))
        except ToolError as err:
            raise RegistryError(LOCATION, f"cannot read the internal repository: {err}") from err
        if image is None:
            raise NotFound(LOCATION, f"no image {user}/{name}:{tag} in the internal repository")
        return image_info(image)

    def transport(self, user: str, name: str, tag: str) -> str:
        """skopeo's name of the image in the repository's own storage."""
        return f"containers-storage:{LocalRef(user, name, tag).full}"

    def skopeo_options(self) -> list[str]:
        """None: the storage is the repository's own."""
        return []
