"""`docker-registry-v2` entries of the configuration as image sources (`RegistryV2Source`).

A listing reads the catalog, then each repository's tags, then each tag's image, running
`concurrency` jobs at a time over a queue, with caps on the tags and images it inspects and
the bounds of `SearchLimits` on what it reads. One image that cannot be read is left out (a
log record says why; the user sees a warning when its content did not match its digest).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

import aiohttp

from waltd import config, log, names
from waltd.aio import Job, run_jobs
from waltd.registries.base import (
    LOCATION_REGISTRY,
    AuthError,
    BadImage,
    Credentials,
    DigestMismatch,
    ImageInfo,
    NotFound,
    RegistryError,
    Unsupported,
    Warn,
)
from waltd.registries.cache import DigestCache
from waltd.registries.limits import (
    MAX_IMAGES_PER_SOURCE,
    MAX_TAGS_PER_REPOSITORY,
    ImageBudget,
    SearchLimits,
)
from waltd.registries.v2.client import V2Client

_log = log.get("registry")

# What leaves a repository or a tag out of a listing instead of failing it: deleted since it
# was listed, not readable with these credentials (the catalog was), not a usable image, or
# one whose manifest or config is broken.
SKIPPED = (NotFound, AuthError, Unsupported, BadImage)


def left_out(source: str, image: str, err: RegistryError, warn: Warn | None) -> None:
    """Record that `image` is left out of a listing because of `err`.

    A digest mismatch also goes to the user (`warn`): the registry, or something on the
    way, changed content, which they should know of as they would of a failed source.
    """
    _log.info("registry_image_skipped", registry=source, image=image, error=str(err))
    if isinstance(err, DigestMismatch) and warn is not None:
        warn(f"{err}; image {image} left out")


class RegistryApiSource:
    """What the sources read over the registry API share: client options, `resolve`.

    Each operation uses a client of its own with the caller's credentials; the digest
    `cache`, the `session` (when given) and one bound of `concurrency` requests at once are
    shared by them all; `limits` bound what one listing reads. A subclass gives
    `_path_prefix` (repositories under a path) and `_repo` (its repository of `user/name`).
    """

    kind: str
    # Host (and port) of image references and auth files; each subclass sets it.
    registry_host: str

    def __init__(
        self,
        label: str,
        base_url: str,
        *,
        verify_tls: bool = True,
        cache: DigestCache | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30,
        max_body: int = 8 * 2**20,
        concurrency: int = 32,
        limits: SearchLimits | None = None,
    ) -> None:
        self.label = label
        self.base_url = base_url
        self.verify_tls = verify_tls
        self.cache = cache
        self.session = session
        self.timeout_s = timeout_s
        self.max_body = max_body
        self.concurrency = concurrency
        self.limits = limits
        self._semaphore = asyncio.Semaphore(concurrency)

    @property
    def tls_verified(self) -> bool:
        """Whether copies from and to the registry keep TLS checks on: https with its
        certificate verified (not plain HTTP, not https-no-verify)."""
        return self.base_url.startswith("https://") and self.verify_tls

    def skopeo_options(self) -> list[str]:
        """skopeo options for `transport`: TLS checks off unless `tls_verified`."""
        return [] if self.tls_verified else ["--src-tls-verify=false"]

    def client(self, creds: Credentials | None = None) -> V2Client:
        """A client of the registry with `creds` (use it with `async with`)."""
        return V2Client(
            self.label,
            self.base_url,
            creds=creds,
            verify_tls=self.verify_tls,
            timeout_s=self.timeout_s,
            max_body=self.max_body,
            concurrency=self.concurrency,
            cache=self.cache,
            path_prefix=self._path_prefix(),
            session=self.session,
            semaphore=self._semaphore,
            limits=self.limits,
        )

    def _path_prefix(self) -> str:
        return ""

    def _repo(self, user: str, name: str) -> str:
        return f"{user}/{name}"

    async def resolve(
        self,
        user: str,
        name: str,
        tag: str,
        creds: Credentials | None = None,
        *,
        models: Sequence[str] = (),
    ) -> ImageInfo:
        """One image's digest and labels (of the platform for `models`, in a list); NotFound
        when absent."""
        async with self.client(creds) as client:
            image = await client.image(self._repo(user, name), tag, models)
        return image.info(self.label, self.kind, user, name, tag)


class RegistryV2Source(RegistryApiSource):
    """A `docker-registry-v2` entry of the configuration as an image source.

    Repositories named `user/name` (exactly two components) holding images labelled
    `walt.node.models` are WalT images. A listing inspects at most `max_tags` tags per
    repository and `max_images` images in all. `options` are RegistryApiSource's.
    """

    kind = LOCATION_REGISTRY

    def __init__(
        self,
        entry: config.Registry,
        *,
        max_tags: int = MAX_TAGS_PER_REPOSITORY,
        max_images: int = MAX_IMAGES_PER_SOURCE,
        **options: Any,
    ) -> None:
        if entry.host is None or entry.port is None:
            raise ValueError(f"registry {entry.label}: host and port are required")
        self.entry = entry
        self.registry_host = names.host_port(entry.host, entry.port)
        scheme = "http" if entry.protocol == "http" else "https"
        super().__init__(
            entry.label,
            f"{scheme}://{self.registry_host}",
            verify_tls=entry.protocol == "https",
            **options,
        )
        self._max_tags = max_tags
        self._max_images = max_images

    def _split(self, repo: str) -> tuple[str, str] | None:
        """(user, name) of a catalog entry, None when it is not named `user/name`."""
        return names.split_user_name(repo)

    async def list_images(
        self, creds: Credentials | None = None, *, warn: Warn | None = None
    ) -> list[ImageInfo]:
        """Every WalT image: catalog, then tags, then images, `concurrency` at a time."""
        budget = ImageBudget(self.label, self._max_tags, self._max_images)
        found: dict[tuple[int, int], ImageInfo] = {}  # by (repository, tag) index: their order
        async with self.client(creds) as client:
            catalog = await client.catalog()
            named = [(repo, split) for repo in catalog if (split := self._split(repo))]
            await run_jobs(
                (
                    functools.partial(
                        self._repository, client, budget, found, warn, index, repo, *split
                    )
                    for index, (repo, split) in enumerate(named)
                ),
                self.concurrency,
            )
        return [info for _, info in sorted(found.items()) if info.is_walt]

    async def _repository(
        self,
        client: V2Client,
        budget: ImageBudget,
        found: dict[tuple[int, int], ImageInfo],
        warn: Warn | None,
        index: int,
        repo: str,
        user: str,
        name: str,
    ) -> list[Job]:
        """List the tags of `repo`: a job for each tag to read."""
        if budget.full():
            return []
        try:
            tags = await client.tags(repo)
        except SKIPPED as err:
            left_out(self.label, f"{user}/{name}", err, warn)
            return []

        async def one(position: int, tag: str) -> list[Job]:
            try:
                image = await client.image(repo, tag)
            except SKIPPED as err:
                left_out(self.label, f"{user}/{name}:{tag}", err, warn)
                return []
            found[index, position] = image.info(self.label, self.kind, user, name, tag)
            return []

        kept = budget.take(f"{user}/{name}", tags)
        return [functools.partial(one, position, tag) for position, tag in enumerate(kept)]

    def transport(self, user: str, name: str, tag: str) -> str:
        """`docker://host:port/user/name:tag` for skopeo."""
        return f"docker://{self.registry_host}/{self._repo_path(user, name)}:{tag}"

    def _repo_path(self, user: str, name: str) -> str:
        return f"{user}/{name}"
