"""Docker Hub as an image source (`hub:` clone URLs).

Docker Hub's registry API has no catalog, so WalT images are found in two ways, combined:

1. The reference system's convention. Each WalT user who published with it has an image
   `<user>/walt_metadata:latest` whose config label `metadata` is base64 JSON
   `{"walt.user.images": {"<user>/<repo>:<tag>": {"labels": {...}}}}`. Its owners are found, as
   the reference finds them, by searching Hub for `walt_metadata`; their metadata is read over
   the registry API, and their repositories are listed with Hub's repository API.
2. Hub's search for each discovery query (default `walt`), which finds WalT repositories whose
   owners never used the convention.

The repositories so gathered (those named in metadata first, then the walt users' other
repositories, then the search results) are inspected over the registry API, concurrently: tags,
then each tag's manifest and config (cached by digest by the v2 client), `concurrency` at a
time. What the registry says wins: a metadata entry whose repository is gone is dropped. An
entry that could not be inspected (its repository beyond the cap or without pull access, its tag
beyond the cap or answered with 429 or 5xx) is kept with the metadata's labels and no digest, as
the reference shows it. An image whose manifest or config is broken is left out. At most
`max_repositories` repositories are inspected per search, with the tag caps and list bounds of
limits.py; a log record says when a cap cut the list.

Anonymous by default. Credentials, when given, go to the token service of the registry's
Bearer challenge (the v2 client does this); Hub's web API is only read anonymously.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import os
from collections.abc import AsyncIterator, Hashable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from waltd import log, names
from waltd.aio import Job, gather_all, run_jobs
from waltd.registries.base import (
    LOCATION_HUB,
    AuthError,
    BadImage,
    Credentials,
    ImageInfo,
    NotFound,
    RegistryError,
    Unsupported,
    Warn,
)
from waltd.registries.cache import DigestCache
from waltd.registries.limits import ImageBudget, SearchLimits
from waltd.registries.v2 import protocol
from waltd.registries.v2.client import V2Client
from waltd.registries.v2.source import RegistryApiSource, left_out

_log = log.get("hub")
H = TypeVar("H", bound=Hashable)

DEFAULT_REGISTRY_URL = "https://registry-1.docker.io"
DEFAULT_HUB_URL = "https://hub.docker.com"
METADATA_REPO = "walt_metadata"
METADATA_LABEL = "metadata"
METADATA_KEY = "walt.user.images"
SOURCE = "hub"
_PAGE_SIZE = 100  # Hub's largest page
_MAX_PAGES = 100  # per listing: an answer cannot keep the daemon paging forever


class MetadataError(ValueError):
    """A `walt_metadata` label that cannot be read; the message says why."""


@dataclass(frozen=True)
class UserMetadata:
    """A user's `walt_metadata` content: labels by (name, tag), and the entries left out."""

    images: Mapping[tuple[str, str], Mapping[str, str]]
    ignored: tuple[str, ...] = ()  # one reason per entry left out


def parse_walt_metadata(owner: str, encoded: str) -> UserMetadata:
    """Read the `metadata` label of `<owner>/walt_metadata` (pure).

    Raises MetadataError when the label as a whole is unreadable (not base64, not UTF-8, not
    JSON, not the expected shape). A single bad entry, or one naming an image outside the
    owner's namespace (which a user cannot vouch for), is left out with its reason in
    `ignored`. A missing tag means `latest`.
    """
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MetadataError("the metadata label is not base64") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise MetadataError("the metadata label does not decode to UTF-8 text") from None
    except ValueError as err:
        raise MetadataError(f"the metadata label is not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get(METADATA_KEY), dict):
        raise MetadataError(f'the metadata label has no "{METADATA_KEY}" object')
    images: dict[tuple[str, str], dict[str, str]] = {}
    ignored: list[str] = []
    for ref, entry in data[METADATA_KEY].items():
        parsed = _split_reference(ref)
        if parsed is None:
            ignored.append(f"{ref!r}: not a <user>/<repo>:<tag> reference")
            continue
        user, name, tag = parsed
        if user != owner:
            ignored.append(f"{ref!r}: not in {owner}'s namespace")
            continue
        labels = entry.get("labels") if isinstance(entry, dict) else None
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            ignored.append(f'{ref!r}: no "labels" object of strings')
            continue
        images[name, tag] = labels
    return UserMetadata(images, tuple(ignored))


def _split_reference(ref: str) -> tuple[str, str, str] | None:
    """`user/name[:tag]` as (user, name, tag), or None."""
    repository, sep, tag = ref.partition(":")
    split = names.split_user_name(repository)
    tag = tag if sep else "latest"
    if split is None or not names.is_tag(tag):
        return None
    return (*split, tag)


class _HubApi:
    """Hub's web API (search, a user's repositories): anonymous GETs of JSON pages.

    Every request has a timeout and a body limit; `next` links are followed only on the same
    origin as `base_url`, each once, `_MAX_PAGES` at most, and redirects not at all, so that an
    answer cannot send the daemon anywhere else nor keep it paging.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        max_body: int,
        timeout_s: float,
        verify_tls: bool = True,
    ) -> None:
        self._session = session
        self._base = URL(base_url.rstrip("/"))
        self._max_body = max_body
        self._timeout_s = timeout_s
        self._ssl = verify_tls

    async def search(self, query: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` repositories (user, repo) matching `query`."""
        url = (self._base / "v2/search/repositories/").with_query(
            query=query, page_size=str(_PAGE_SIZE)
        )
        found = []
        async for item in self._pages(url, limit, f"search for {query!r}"):
            repository = names.split_user_name(item.get("repo_name"))
            if repository is not None:
                found.append(repository)
        return found

    async def user_repositories(self, user: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` public repositories of `user` (none when Hub has no such user)."""
        url = (self._base / "v2/repositories" / user / "").with_query(page_size=str(_PAGE_SIZE))
        found = []
        try:
            async for item in self._pages(url, limit, f"repositories of {user}"):
                name = item.get("name")
                if isinstance(name, str) and names.is_path_component(name):
                    found.append((user, name))
        except NotFound:
            return []
        return found

    async def _pages(self, url: URL, limit: int, what: str) -> AsyncIterator[dict[str, Any]]:
        """The `results` entries of `url` and of the pages it links to, `limit` at most."""
        count = 0
        next_url = url
        seen = {url}
        for _ in range(_MAX_PAGES):
            page = await self._get(next_url, what)
            results = page.get("results")
            if not isinstance(results, list):
                raise RegistryError(SOURCE, f"{what}: the answer has no list of results")
            for item in results:
                if isinstance(item, dict) and count < limit:
                    count += 1
                    yield item
            following = page.get("next")
            if count >= limit or not results or not following:
                return
            if not isinstance(following, str):
                raise RegistryError(SOURCE, f"{what}: invalid next page link")
            next_url = url.join(URL(following))
            if next_url.origin() != self._base.origin():
                raise RegistryError(SOURCE, f"{what}: next page link leaves {self._base.origin()}")
            if next_url in seen:
                return  # sent round in circles: what was read is all there is
            seen.add(next_url)
        _log.warning("hub_pages_capped", registry=SOURCE, listing=what, pages=_MAX_PAGES)

    async def _get(self, url: URL, what: str) -> dict[str, Any]:
        where = f"{what} at {self._base}"
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._session.get(
                    url,
                    headers={"Accept": "application/json"},
                    allow_redirects=False,
                    ssl=self._ssl,
                ) as resp,
            ):
                if 300 <= resp.status < 400:
                    raise RegistryError(
                        SOURCE, f"{where}: redirected (HTTP {resp.status}), not followed"
                    )
                if resp.status == 404:
                    raise NotFound(SOURCE, f"{where}: not found", status=404)
                if resp.status == 429:
                    wait = protocol.retry_after(resp.headers)
                    after = f", retry after {wait:g} s" if wait is not None else ""
                    raise RegistryError(
                        SOURCE,
                        f"{where}: too many requests{after}",
                        status=429,
                        retryable=True,
                        retry_after=wait,
                    )
                if resp.status != 200:
                    raise RegistryError(
                        SOURCE,
                        f"{where}: HTTP {resp.status}",
                        status=resp.status,
                        retryable=resp.status >= 500,
                    )
                body = await self._read(resp, where)
        except TimeoutError:
            raise RegistryError(
                SOURCE, f"{where}: no answer within {self._timeout_s:g} s", retryable=True
            ) from None
        except aiohttp.ClientConnectorError as err:
            errno = err.os_error.errno
            reason = os.strerror(errno).lower() if errno else "connection failed"
            raise RegistryError(
                SOURCE, f"{where}: cannot connect ({reason})", retryable=True
            ) from None
        except aiohttp.ClientError as err:
            raise RegistryError(
                SOURCE, f"{where}: {type(err).__name__} ({err})", retryable=True
            ) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise RegistryError(SOURCE, f"{where}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise RegistryError(SOURCE, f"{where}: the answer is not a JSON object")
        return data

    async def _read(self, resp: aiohttp.ClientResponse, where: str) -> bytes:
        too_big = RegistryError(SOURCE, f"{where}: the answer exceeds {self._max_body} bytes")
        if (resp.content_length or 0) > self._max_body:
            raise too_big
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_body:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)


@dataclass
class _Found:
    """What the inspection of repositories gathered."""

    # every image read, WalT or not: what the registry says wins over metadata
    images: dict[tuple[str, str, str], ImageInfo] = field(default_factory=dict)
    # repositories the registry answered for (tags listed, or no such repository)
    settled: set[tuple[str, str]] = field(default_factory=set)
    # tags of settled repositories left unread (beyond the cap, or 429/5xx): not known gone
    unread: set[tuple[str, str, str]] = field(default_factory=set)


def _unique(items: Iterable[H]) -> list[H]:
    """`items` in their order, each once."""
    return list(dict.fromkeys(items))


class HubSource(RegistryApiSource):
    """Docker Hub (or a stand-in: base URLs are configurable, e.g. a pull-through mirror).

    `queries` are the Hub searches of discovery 2 (module docstring); `max_repositories` caps
    the repositories inspected per search, and each Hub search's results. `cache` is the v2
    client's cache of manifests and configs by digest, shared by every search; `session` an
    aiohttp session to share (else each operation opens its own); `concurrency` bounds the
    registry requests of every operation together; `limits` bound what one listing reads.

    Hub answers 401 for a repository that is private or absent: that one is skipped. A
    refusal by the token service (of the credentials themselves) would otherwise hide every
    image, so it fails the search.
    """

    kind = LOCATION_HUB

    def __init__(
        self,
        *,
        registry_url: str = DEFAULT_REGISTRY_URL,
        hub_url: str = DEFAULT_HUB_URL,
        queries: Sequence[str] = ("walt",),
        max_repositories: int = 100,
        timeout_s: float = 30.0,
        max_body: int = 8 * 2**20,
        verify_tls: bool = True,
        cache: DigestCache | None = None,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 32,
        limits: SearchLimits | None = None,
    ) -> None:
        self.registry_url = registry_url.rstrip("/")
        super().__init__(
            SOURCE,
            self.registry_url,
            verify_tls=verify_tls,
            cache=cache,
            session=session,
            timeout_s=timeout_s,
            max_body=max_body,
            concurrency=concurrency,
            limits=limits,
        )
        self.hub_url = hub_url.rstrip("/")
        self.queries = tuple(queries)
        self.max_repositories = max_repositories

    @property
    def registry_host(self) -> str:
        """Host of image references and auth files: `docker.io` for Hub itself."""
        if self.registry_url == DEFAULT_REGISTRY_URL:
            return "docker.io"
        return urlsplit(self.registry_url).netloc

    def transport(self, user: str, name: str, tag: str) -> str:
        """skopeo's source string, `docker://docker.io/user/name:tag` (or the configured host)."""
        return f"docker://{self.registry_host}/{user}/{name}:{tag}"

    @asynccontextmanager
    async def _hub_api(self) -> AsyncIterator[_HubApi]:
        if self.session is not None:
            yield _HubApi(
                self.session, self.hub_url, self.max_body, self.timeout_s, self.verify_tls
            )
            return
        async with aiohttp.ClientSession() as session:
            yield _HubApi(session, self.hub_url, self.max_body, self.timeout_s, self.verify_tls)

    async def list_images(
        self, creds: Credentials | None = None, *, warn: Warn | None = None
    ) -> list[ImageInfo]:
        """The WalT images found by both discoveries of the module docstring."""
        limit = self.max_repositories
        async with self._hub_api() as api, self.client(creds) as registry:
            queries = [METADATA_REPO, *self.queries]
            owners, *results = await gather_all(api.search(q, limit) for q in queries)
            users = [u for u, repo in owners if repo == METADATA_REPO]
            if creds is not None and names.is_path_component(creds.username):
                users.append(creds.username)  # the caller's own images
            users = _unique(users)
            per_user = await gather_all(self._user(api, registry, u, limit) for u in users)
            metadata = {
                u: meta for u, (meta, _) in zip(users, per_user, strict=True) if meta is not None
            }
            candidates = _unique(
                [
                    *((u, name) for u, meta in metadata.items() for name, _ in meta.images),
                    *(repo for _, repos in per_user for repo in repos),
                    *(repo for found in results for repo in found if repo[1] != METADATA_REPO),
                ]
            )
            if len(candidates) > limit:
                _log.warning(
                    "hub_search_capped",
                    registry=self.label,
                    repositories=len(candidates),
                    inspected=limit,
                    left_out=[f"{u}/{r}" for u, r in candidates[limit:]],
                )
            found = _Found()
            budget = ImageBudget(self.label)
            await run_jobs(
                (
                    functools.partial(self._inspect, registry, budget, u, r, found, warn)
                    for u, r in candidates[:limit]
                ),
                self.concurrency,
            )
        images = dict(found.images)
        for user, meta in metadata.items():
            for (name, tag), labels in meta.images.items():
                # the reference's way: labels from the metadata, for what could not be checked
                if (user, name) not in found.settled or (user, name, tag) in found.unread:
                    images.setdefault(
                        (user, name, tag),
                        ImageInfo(self.label, self.kind, user, name, tag, None, dict(labels)),
                    )
        return [info for _, info in sorted(images.items()) if info.is_walt]

    async def _user(
        self, api: _HubApi, registry: V2Client, user: str, limit: int
    ) -> tuple[UserMetadata | None, list[tuple[str, str]]]:
        """A walt user's metadata (None when absent or unreadable) and repositories."""
        meta, repos = await gather_all(
            [self._metadata(registry, user), api.user_repositories(user, limit)]
        )
        return meta, [r for r in repos if r[1] != METADATA_REPO]

    async def _metadata(self, registry: V2Client, user: str) -> UserMetadata | None:
        image = f"{user}/{METADATA_REPO}:latest"
        try:
            resolved = await registry.image(f"{user}/{METADATA_REPO}", "latest")
        except NotFound:
            return None
        except AuthError as err:
            if err.token_service:
                raise
            _log.info("hub_metadata_unreadable", registry=self.label, image=image, error=str(err))
            return None
        except (Unsupported, BadImage) as err:
            _log.warning("hub_metadata_invalid", registry=self.label, image=image, error=str(err))
            return None
        try:
            encoded = resolved.labels.get(METADATA_LABEL)
            if encoded is None:
                raise MetadataError(f'the image has no "{METADATA_LABEL}" label')
            meta = parse_walt_metadata(user, encoded)
        except MetadataError as err:
            _log.warning("hub_metadata_invalid", registry=self.label, image=image, error=str(err))
            return None
        for reason in meta.ignored:
            _log.warning(
                "hub_metadata_entry_ignored", registry=self.label, image=image, error=reason
            )
        return meta

    async def _inspect(
        self,
        registry: V2Client,
        budget: ImageBudget,
        user: str,
        repo: str,
        found: _Found,
        warn: Warn | None,
    ) -> list[Job]:
        """List the tags of `user/repo`: a job for each tag to read into `found`."""
        repository = f"{user}/{repo}"
        if budget.full():
            return []
        try:
            tags = await registry.tags(repository)
        except NotFound:
            found.settled.add((user, repo))
            return []
        except AuthError as err:
            if err.token_service:
                raise
            _log.info(
                "hub_repository_skipped", registry=self.label, repository=repository, error=str(err)
            )
            return []
        found.settled.add((user, repo))
        kept = budget.take(repository, tags)
        found.unread.update((user, repo, tag) for tag in tags[len(kept) :])
        return [
            functools.partial(self._inspect_tag, registry, user, repo, tag, found, warn)
            for tag in kept
        ]

    async def _inspect_tag(
        self,
        registry: V2Client,
        user: str,
        repo: str,
        tag: str,
        found: _Found,
        warn: Warn | None,
    ) -> list[Job]:
        """Read `user/repo:tag` into `found` (or leave it out, or unread)."""
        try:
            resolved = await registry.image(f"{user}/{repo}", tag)
        except AuthError as err:
            if err.token_service:
                raise
            return []  # Hub's answer for a tag removed since the list was read
        except (NotFound, Unsupported):
            return []  # removed meanwhile, or not a container image (schema 1, artifact)
        except BadImage as err:
            left_out(self.label, f"{user}/{repo}:{tag}", err, warn)
            return []
        except RegistryError as err:
            if not err.retryable:
                raise
            # Hub busy with this one: not inspected, as beyond the cap (metadata fills in)
            found.unread.add((user, repo, tag))
            image = f"{user}/{repo}:{tag}"
            _log.info("hub_image_not_inspected", registry=self.label, image=image, error=str(err))
            return []
        found.images[user, repo, tag] = resolved.info(self.label, self.kind, user, repo, tag)
        return []
