"""Docker Registry HTTP API v2 client on aiohttp, and the source of `docker-registry-v2` entries.

The client reads what `walt image search` and `clone` need without pulling: the catalog and tag
lists (with `Link` pagination), manifests (Docker schema 2, OCI manifest, manifest list and OCI
index, a platform chosen by `platforms.py`) and config blobs (labels, creation date).

Every request has a timeout, every body a size limit read as it streams, and at most
`concurrency` requests of a source run at once, whichever client sends them. 429 waits for
`Retry-After`; 5xx and broken connections are retried a couple of times with jittered backoff;
401/403/404 never are. Content addressed by digest is checked against it, and kept in a
`DigestCache`, so a warm listing asks each tag for its digest (HEAD) and reads only what
changed. A listing runs `concurrency` jobs at a time over a queue, with caps on the tags and
images it inspects; one image that cannot be read is left out (a log record says why).

Authentication follows the `/v2/` challenge a registry answers with: none, Basic (credentials
on each request), or Bearer (a token per scope from the realm, as Docker Hub does, kept until it
expires). Error messages name the source and the problem, never a password or a token.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from waltd import config, log
from waltd.registries import platforms
from waltd.registries.base import (
    LOCATION_REGISTRY,
    AuthError,
    BadImage,
    Credentials,
    ImageInfo,
    NotFound,
    RegistryError,
    Unsupported,
)
from waltd.registries.cache import DigestCache, digest_of, is_digest

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST_V2 = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_IMAGE_MANIFESTS = (MANIFEST_V2, OCI_MANIFEST)
_LISTS = (MANIFEST_LIST_V2, OCI_INDEX)
_ACCEPT = ", ".join((*_IMAGE_MANIFESTS, *_LISTS))
_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
_IMAGE_CONFIGS = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)

_RETRIES = 2  # after the first attempt, for 5xx and broken connections
_RATE_RETRIES = 3  # 429 answers waited for
_BACKOFF_S = 0.25  # first backoff step, doubling
_MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After fails at once: a search would not wait that long
_MAX_REDIRECTS = 5
_MAX_PAGES = 10_000
# What one listing inspects at most: a registry cannot make a search endless.
MAX_TAGS_PER_REPOSITORY = 1000
MAX_IMAGES_PER_SOURCE = 10_000
_ERROR_BODY = 64 * 1024  # how much of an error answer is read (for its error code)
_REDIRECTS = (301, 302, 303, 307, 308)
# Docker's reference grammar: what may go into a request path.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,63}")
_LINK_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?', re.I)
_CHALLENGE_PARAM = re.compile(r'([A-Za-z]+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')
_SCOPE_PATH = re.compile(r"/v2/(.+)/(?:tags/list|manifests/[^/]+|blobs/[^/]+)")
_IMAGE_OBJECT_PATH = re.compile(r"/v2/.+/(?:manifests|blobs)/[^/]+")  # one image's, not a list

T = TypeVar("T")
_log = log.get("registry")


@dataclass(frozen=True)
class ResolvedImage:
    """What a tag or digest designates, read without pulling.

    `digest` and `media_type` are those of the manifest the reference names (a list, for a
    multi-platform image); `labels`, `created` and `platform` come from the image chosen in it;
    `platforms` lists what a list offers (empty for a single-platform image).
    """

    digest: str
    media_type: str
    labels: MappingProxyType[str, str]
    created: str | None
    platforms: tuple[str, ...] = ()
    platform: str | None = None

    def info(self, location: str, kind: str, user: str, name: str, tag: str) -> ImageInfo:
        """The image as a source reports it (location and kind are the source's)."""
        return ImageInfo(
            location=location,
            kind=kind,
            user=user,
            name=name,
            tag=tag,
            digest=self.digest,
            labels=dict(self.labels),
            created=self.created,
            platforms=tuple(self.platforms),
        )


@dataclass
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: URL


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float  # time.monotonic()


class _Broken(Exception):
    """A connection failed (refused, reset, cut mid-body): worth another attempt."""


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def _mime(headers: CIMultiDictProxy[str]) -> str:
    return headers.get("Content-Type", "").split(";")[0].strip().lower()


def _error_code(body: bytes) -> str | None:
    """The first `errors[].code` of a registry's error answer, when it is a plain code."""
    try:
        code = json.loads(body)["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """`Retry-After` in seconds (a number or an HTTP date); None when absent or unreadable."""
    raw = headers.get("Retry-After", "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _challenge(headers: CIMultiDictProxy[str]) -> tuple[str, dict[str, str]] | None:
    """The scheme ("bearer" preferred, or "basic") and parameters of `WWW-Authenticate`."""
    found: dict[str, dict[str, str]] = {}
    for value in headers.getall("WWW-Authenticate", []):
        scheme, _, rest = value.strip().partition(" ")
        params = {k.lower(): quoted or bare for k, quoted, bare in _CHALLENGE_PARAM.findall(rest)}
        if scheme.lower() in ("bearer", "basic"):
            found.setdefault(scheme.lower(), params)
    for scheme in ("bearer", "basic"):
        if scheme in found:
            return scheme, found[scheme]
    return None


def _manifest_type(header_type: str | None, data: Any) -> str | None:
    """A manifest's media type: its own `mediaType`, else the answer's, else by its shape."""
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if header_type in (*_IMAGE_MANIFESTS, *_LISTS, *_SCHEMA1):
        return header_type
    if isinstance(data.get("manifests"), list):
        return OCI_INDEX
    if isinstance(data.get("config"), dict):
        return OCI_MANIFEST
    if data.get("schemaVersion") == 1:
        return _SCHEMA1[0]
    return None


def _join(base: URL, reference: str) -> URL | None:
    """`reference` (from a header) resolved against `base`; None when it is no URL."""
    try:
        return base.join(URL(reference))
    except ValueError:
        return None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run `aws` concurrently; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(aw)) for aw in aws]
    except BaseExceptionGroup as errors:
        raise _first_error(errors) from None
    return [task.result() for task in tasks]


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


# A piece of a listing: it returns the pieces it found to do (a repository: one per tag).
Job = Callable[[], Awaitable[Iterable["Job"]]]


async def run_jobs(jobs: Iterable[Job], workers: int) -> None:
    """Run `jobs`, and the jobs they return, `workers` at a time (never a task per job).

    The jobs a job returns come after those already queued: every repository's tags are
    asked for first, so that no worker waits for a tag list while others read images. On
    the first failure the others are cancelled and that failure is raised.
    """
    queue: deque[Job] = deque(jobs)
    running = 0  # jobs under way: they may queue more
    changed = asyncio.Condition()

    def ready() -> bool:
        return bool(queue) or running == 0

    async def worker() -> None:
        nonlocal running
        while True:
            async with changed:
                await changed.wait_for(ready)
                if not queue:
                    return  # nothing queued, nothing running that could queue more
                job = queue.popleft()
                running += 1
            more = list(await job())
            async with changed:
                running -= 1
                queue.extend(more)
                changed.notify_all()

    await gather_all(worker() for _ in range(max(1, workers)))


class ImageBudget:
    """How many tags one listing inspects: `per_repository` per repository, `total` in all.

    `take` gives the tags of a repository to inspect and logs a record when a cap leaves
    some out (`registry_tags_capped` per repository, `registry_images_capped` once).
    """

    def __init__(
        self,
        source: str,
        per_repository: int = MAX_TAGS_PER_REPOSITORY,
        total: int = MAX_IMAGES_PER_SOURCE,
    ) -> None:
        self.source = source
        self.per_repository = per_repository
        self.left = total
        self._total = total
        self._capped = False

    def full(self) -> bool:
        """True once `total` tags were handed out: the repositories left need no listing."""
        if self.left > 0:
            return False
        self._capped_once()
        return True

    def take(self, repository: str, tags: list[str]) -> list[str]:
        """The first of `tags` within both caps."""
        kept = tags[: self.per_repository]
        if len(kept) < len(tags):
            _log.warning(
                "registry_tags_capped",
                registry=self.source,
                repository=repository,
                tags=len(tags),
                inspected=len(kept),
            )
        if len(kept) > self.left:
            self._capped_once()
            kept = kept[: self.left]
        self.left -= len(kept)
        return kept

    def _capped_once(self) -> None:
        if not self._capped:  # one record, not one per repository left out
            self._capped = True
            _log.warning("registry_images_capped", registry=self.source, inspected=self._total)


def new_session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    """An aiohttp session for the clients of one registry.

    TLS is verified by default: a client turns the check off, per request, only for its own
    registry's origin (`https-no-verify`), never for servers it is redirected to.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    # asyncio.timeout bounds each exchange; these only end a stalled socket early
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    headers = {"User-Agent": "waltd"}
    return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)


class V2Client:
    """A client of one registry's API v2, for one set of credentials (or none).

    `source` names the registry in error messages. `path_prefix` is a repository path every
    request goes under (Artifactory's repository-path layout: `/v2/<prefix>/_catalog`,
    `/v2/<prefix>/<name>/...`); repository names given to and returned by the client are then
    relative to it. Use it as an async context manager; it owns its aiohttp session unless it
    was given one. `semaphore`, when given, bounds its requests together with those of the
    other clients sharing it (else the bound is `concurrency` of its own).
    """

    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        creds: Credentials | None = None,
        verify_tls: bool = True,
        timeout_s: float = 30,
        max_body: int = 8 * 2**20,
        concurrency: int = 32,
        cache: DigestCache | None = None,
        path_prefix: str = "",
        session: aiohttp.ClientSession | None = None,
        page_size: int = 1000,
        semaphore: asyncio.Semaphore | None = None,
    ) -> None:
        self.source = source
        self._base = URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError(f"{source}: invalid registry URL {base_url!r}")
        prefix = path_prefix.strip("/")
        if prefix and not _REPOSITORY.fullmatch(prefix):
            raise ValueError(f"{source}: invalid repository path {path_prefix!r}")
        self._origin = self._base.origin()
        self._base_path = self._base.raw_path.rstrip("/")
        # request URLs are built as text: every part is checked against the reference grammar
        self._v2 = f"{self._origin}{self._base_path}/v2/" + (f"{prefix}/" if prefix else "")
        self._creds = creds
        self._ssl: bool = verify_tls
        self._timeout_s = timeout_s
        self._max_body = max_body
        self._concurrency = concurrency
        self._semaphore = semaphore or asyncio.Semaphore(concurrency)
        # without a shared cache, one of its own still merges the fetches of one digest
        self._cache = cache if cache is not None else DigestCache()
        self._session = session
        self._owns_session = session is None
        self._page_size = page_size
        self._basic = False  # the registry asked for Basic
        self._realm: tuple[URL, str | None] | None = None  # Bearer realm and service
        self._tokens: dict[str, _Token] = {}
        self._token_tasks: dict[str, asyncio.Task[str]] = {}
        self._fetches: dict[str, asyncio.Task[bytes]] = {}

    # ---- life cycle ---------------------------------------------------------------------

    async def __aenter__(self) -> V2Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop pending token and blob fetches; close the session if the client made it."""
        pending = [*self._token_tasks.values(), *self._fetches.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._cache.flush()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session(self._concurrency, self._timeout_s)
        return self._session

    # ---- public API ---------------------------------------------------------------------

    async def catalog(self) -> list[str]:
        """Every repository of the registry (under `path_prefix`), all pages."""
        return await self._paged(self._url("_catalog"), "repositories", "the catalog")

    async def tags(self, repo: str) -> list[str]:
        """Every tag of `repo`, all pages."""
        self._check_repo(repo)
        what = f"the tags list of {repo}"
        return await self._paged(self._url(f"{repo}/tags/list"), "tags", what)

    async def digest(self, repo: str, ref: str) -> str:
        """The digest of the manifest `ref` (a tag or digest) designates, by a HEAD request."""
        self._check_repo(repo)
        self._check_ref(ref)
        reply = await self._call(
            "HEAD", self._url(f"{repo}/manifests/{ref}"), what=f"image {repo}:{ref}", accept=_ACCEPT
        )
        digest = reply.headers.get("Docker-Content-Digest", "")
        if is_digest(digest):
            return digest
        if digest:
            raise BadImage(self.source, f"invalid digest in the answer about {repo}:{ref}")
        return (await self._manifest_by_ref(repo, ref))[0]  # a registry that does not say

    async def image(self, repo: str, ref: str, models: Sequence[str] = ()) -> ResolvedImage:
        """Digest, media type, labels, creation date and platforms of `repo:ref`.

        `ref` is a tag or a digest. For a manifest list or OCI index, the image read is the
        one `platforms.choose` picks for node `models` (any, without models).
        """
        self._check_repo(repo)
        self._check_ref(ref)
        digest, media_type, manifest = await self._top_manifest(repo, ref)
        offered: tuple[str, ...] = ()
        image = manifest
        if media_type in _LISTS:
            entries = manifest.get("manifests")
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise BadImage(self.source, f"invalid manifest list for {repo}:{ref}")
            offered = platforms.platforms(entries)
            try:
                entry = platforms.choose(entries, models)
            except platforms.NoPlatform as err:
                raise Unsupported(self.source, f"{repo}:{ref}: {err}") from None
            child = entry.get("digest")
            if not isinstance(child, str) or not is_digest(child):
                raise BadImage(self.source, f"invalid digest in the list of {repo}:{ref}")
            child_type, image = await self._manifest_by_digest(repo, child)
            if child_type not in _IMAGE_MANIFESTS:
                raise Unsupported(self.source, f"{repo}:{ref}: list entry of type {child_type}")
        labels, created, platform = await self._config(repo, ref, image)
        return ResolvedImage(digest, media_type, labels, created, offered, platform)

    # ---- manifests and blobs ------------------------------------------------------------

    def _url(self, path: str) -> URL:
        return URL(self._v2 + path, encoded=True)

    def _check_repo(self, repo: str) -> None:
        if not _REPOSITORY.fullmatch(repo):
            raise NotFound(self.source, f"invalid repository name {repo!r}")

    def _check_ref(self, ref: str) -> None:
        if not (_TAG.fullmatch(ref) or is_digest(ref)):
            raise NotFound(self.source, f"invalid tag or digest {ref!r}")

    def _tag_key(self, repo: str, tag: str) -> str:
        return f"{self._v2}{repo}:{tag}"

    async def _top_manifest(self, repo: str, ref: str) -> tuple[str, str, dict[str, Any]]:
        """Digest, media type and content of the manifest `ref` names.

        A tag whose last digest is cached is asked about with a HEAD, and read again only when
        it moved; an unknown tag is read at once (one request, not two).
        """
        if is_digest(ref):
            return (ref, *await self._manifest_by_digest(repo, ref))
        key = self._tag_key(repo, ref)
        known = self._cache.tag_digest(key)
        if known is not None and await self._cache.get(known) is not None:
            digest = await self.digest(repo, ref)
            self._cache.remember_tag(key, digest)
            return (digest, *await self._manifest_by_digest(repo, digest))
        return await self._manifest_by_ref(repo, ref)

    async def _manifest_by_ref(self, repo: str, ref: str) -> tuple[str, str, dict[str, Any]]:
        what = f"image {repo}:{ref}"
        url = self._url(f"{repo}/manifests/{ref}")
        reply = await self._call("GET", url, what=what, accept=_ACCEPT)
        claimed = reply.headers.get("Docker-Content-Digest", "")
        if claimed and not is_digest(claimed):
            raise BadImage(self.source, f"invalid digest in the answer about {what}")
        digest = digest_of(reply.body, claimed or "sha256:")
        if claimed and digest != claimed:
            raise self._mismatch("GET", url, claimed, digest)
        header_type = _mime(reply.headers)
        media_type, data = self._parse_manifest(reply.body, header_type, what)
        await self._cache.put(digest, reply.body)
        if not is_digest(ref):
            self._cache.remember_tag(self._tag_key(repo, ref), digest)
        return digest, media_type, data

    async def _manifest_by_digest(self, repo: str, digest: str) -> tuple[str, dict[str, Any]]:
        url = self._url(f"{repo}/manifests/{digest}")
        body = await self._verified(url, digest, f"manifest {repo}@{digest}", _ACCEPT)
        return self._parse_manifest(body, None, f"manifest {repo}@{digest}")

    def _parse_manifest(
        self, body: bytes, header_type: str | None, what: str
    ) -> tuple[str, dict[str, Any]]:
        if header_type in _SCHEMA1:
            raise Unsupported(self.source, f"{what} is a Docker schema 1 manifest (unsupported)")
        readable = (*_IMAGE_MANIFESTS, *_LISTS, "application/json", "application/octet-stream")
        if header_type and header_type not in readable:
            raise BadImage(
                self.source, f"unexpected content type {header_type} for {what} (not a manifest)"
            )
        data = self._decode(body, what, BadImage)
        if not isinstance(data, dict):
            raise BadImage(self.source, f"invalid manifest for {what}")
        media_type = _manifest_type(header_type, data)
        if media_type in _SCHEMA1:
            raise Unsupported(self.source, f"{what} is a Docker schema 1 manifest (unsupported)")
        if media_type not in (*_IMAGE_MANIFESTS, *_LISTS):
            raise Unsupported(self.source, f"{what} is not an image manifest ({media_type})")
        return media_type, data

    async def _config(
        self, repo: str, ref: str, manifest: dict[str, Any]
    ) -> tuple[MappingProxyType[str, str], str | None, str | None]:
        """Labels, creation date and platform from the config blob of an image manifest."""
        descriptor = manifest.get("config")
        digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
        if not isinstance(digest, str) or not is_digest(digest):
            raise BadImage(self.source, f"invalid config reference in {repo}:{ref}")
        config_type = descriptor.get("mediaType") if isinstance(descriptor, dict) else None
        if config_type not in (None, *_IMAGE_CONFIGS):
            raise Unsupported(self.source, f"{repo}:{ref} is not a container image ({config_type})")
        what = f"the config of {repo}:{ref}"
        body = await self._verified(self._url(f"{repo}/blobs/{digest}"), digest, what, None)
        data = self._decode(body, what, BadImage)
        if not isinstance(data, dict):
            raise BadImage(self.source, f"invalid content in {what}")
        inner = data.get("config")
        raw_labels = inner.get("Labels") if isinstance(inner, dict) else None
        labels = (
            {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, dict) else {}
        )
        created = data.get("created")
        os_name, arch, variant = data.get("os"), data.get("architecture"), data.get("variant") or ""
        platform = None
        if os_name and arch and all(isinstance(v, str) for v in (os_name, arch, variant)):
            platform = platforms.normalise(os_name, arch, variant)
        return MappingProxyType(labels), created if isinstance(created, str) else None, platform

    async def _verified(self, url: URL, digest: str, what: str, accept: str | None) -> bytes:
        """Content addressed by `digest`: from the cache, else fetched once and checked."""
        cached = await self._cache.get(digest)
        if cached is not None:
            return cached
        task = self._fetches.get(digest)
        if task is None:
            task = asyncio.create_task(self._fetch_verified(url, digest, what, accept))
            self._fetches[digest] = task
            task.add_done_callback(lambda done: self._fetch_done(digest, done))
        return await asyncio.shield(task)  # one caller cancelled does not cancel the others

    def _fetch_done(self, digest: str, task: asyncio.Task[bytes]) -> None:
        if self._fetches.get(digest) is task:
            del self._fetches[digest]
        if not task.cancelled():
            task.exception()  # retrieved: awaiters may all have been cancelled

    async def _fetch_verified(self, url: URL, digest: str, what: str, accept: str | None) -> bytes:
        reply = await self._call("GET", url, what=what, accept=accept)
        actual = digest_of(reply.body, digest)
        if actual != digest:
            raise self._mismatch("GET", url, digest, actual)
        await self._cache.put(digest, reply.body)
        return reply.body

    def _mismatch(self, method: str, url: URL, expected: str, actual: str) -> BadImage:
        return BadImage(
            self.source,
            f"digest mismatch: {method} {url.path} should be {expected} but its content is "
            f"{actual} (content refused)",
        )

    def _decode(self, body: bytes, what: str, error: type[RegistryError] = RegistryError) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise error(self.source, f"invalid JSON in {what}") from None

    async def _paged(self, url: URL, key: str, what: str) -> list[str]:
        """The `key` lists of every page, following `Link: <...>; rel="next"`."""
        url = url.with_query(n=self._page_size)
        items: list[str] = []
        seen = {url}
        for _ in range(_MAX_PAGES):
            reply = await self._call("GET", url, what=what)
            mime = _mime(reply.headers)
            if mime and mime != "application/json" and not mime.endswith("+json"):
                raise RegistryError(
                    self.source, f"unexpected content type {mime} for {what} (expected JSON)"
                )
            data = self._decode(reply.body, what)
            values = data.get(key) if isinstance(data, dict) else None
            if values is None and isinstance(data, dict) and key in data:
                values = []  # distribution's "tags": null for a repository without tags
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise RegistryError(self.source, f"invalid content in {what} (no {key} list)")
            items.extend(values)
            match = _LINK_NEXT.search(", ".join(reply.headers.getall("Link", [])))
            if match is None:
                return list(dict.fromkeys(items))
            url = _join(reply.url, match.group(1))
            if url is None or url.origin() != self._origin:
                raise RegistryError(self.source, f"the next page of {what} is on another server")
            if url in seen:
                return list(dict.fromkeys(items))  # a registry sending us round in circles
            seen.add(url)
        raise RegistryError(self.source, f"{what} has over {_MAX_PAGES} pages")

    # ---- requests -----------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: URL,
        *,
        what: str,
        accept: str | None = None,
        token_service: bool = False,
    ) -> _Reply:
        """One request with authentication and retries; a 2xx reply or a RegistryError.

        The token service's own requests (`token_service`) carry the Basic credentials, if
        any, and go through no challenge of their own.
        """
        scope = self._scope(url)
        broken = rate_limited = challenges = 0
        while True:
            headers = {"Accept": accept} if accept else {}
            if token_service:
                authorization = self._basic_header()
            else:
                authorization = await self._authorization(scope)
            if authorization:
                headers["Authorization"] = authorization
            try:
                reply = await self._exchange(method, url, headers)
            except _Broken as err:
                broken += 1
                if broken > _RETRIES:
                    raise RegistryError(self.source, str(err), retryable=True) from None
                await self._backoff(broken)
                continue
            status = reply.status
            if 200 <= status < 300:
                return reply
            if status == 401 and not token_service and reply.url.origin() != self._origin:
                # a server the registry redirected to: its challenge would send the
                # credentials (or a token request with them) wherever it says
                where = _host_port(reply.url.host or "", reply.url.port or 0)
                raise AuthError(
                    self.source,
                    f"authentication required (401) by {where}, where the registry redirected "
                    f"the request for {what}: no credentials are sent there",
                    status=401,
                )
            if status == 401 and not token_service and challenges < 2:
                challenges += 1
                if await self._challenged(reply, scope, authorization):
                    continue
            if status == 429:
                rate_limited += 1
                wait = _retry_after(reply.headers)
                if wait is None:
                    wait = _BACKOFF_S * 2**rate_limited
                if rate_limited > _RATE_RETRIES or wait > _MAX_RETRY_AFTER_S:
                    raise RegistryError(
                        self.source,
                        f"rate limited (429) on {method} {url.path}; asked to wait {wait:g} s",
                        status=429,
                        retryable=True,
                    )
                await asyncio.sleep(wait)
                continue
            if 500 <= status < 600 and status != 501:
                broken += 1
                if broken <= _RETRIES:
                    await self._backoff(broken)
                    continue
            raise self._status_error(method, url, status, reply.body, what, token_service)

    def _status_error(
        self, method: str, url: URL, status: int, body: bytes, what: str, token_service: bool
    ) -> RegistryError:
        code = _error_code(body)
        detail = f" ({code})" if code else ""
        if status == 401:
            by = " by the token service" if token_service else f" for {what}"
            if self._creds is None:
                return AuthError(
                    self.source,
                    f"authentication required (401){by}: no credentials given",
                    status=401,
                )
            return AuthError(self.source, f"authentication refused (401){by}", status=401)
        if status == 403:
            return AuthError(self.source, f"access denied (403) to {what}{detail}", status=403)
        if status == 404:
            return NotFound(self.source, f"{what} not found (404){detail}", status=404)
        retryable = status >= 500
        return RegistryError(
            self.source,
            f"HTTP {status} from {method} {url.path}{detail}",
            status=status,
            retryable=retryable,
        )

    async def _backoff(self, attempt: int) -> None:
        step = _BACKOFF_S * 2 ** (attempt - 1)
        await asyncio.sleep(step / 2 + random.uniform(0, step / 2))  # jitter: no herd

    async def _exchange(self, method: str, url: URL, headers: dict[str, str]) -> _Reply:
        """One HTTP exchange (redirects followed), under the bound, the timeout and the limit."""
        async with self._semaphore:
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await self._follow(method, url, headers)
            except TimeoutError:
                raise RegistryError(
                    self.source,
                    f"no answer within {self._timeout_s:g} s to {method} {url.path}",
                    retryable=True,
                ) from None
            except aiohttp.ClientSSLError as err:
                raise self._tls_error(err) from None
            except aiohttp.ClientConnectorDNSError:
                raise RegistryError(
                    self.source, f"cannot resolve host name {url.host}", retryable=True
                ) from None
            except aiohttp.ClientConnectorError as err:
                errno = err.os_error.errno
                reason = os.strerror(errno).lower() if errno else "connection failed"
                raise _Broken(f"cannot connect to {url.host}:{url.port} ({reason})") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, OSError):
                raise _Broken(f"connection reset during {method} {url.path}") from None
            except aiohttp.ClientResponseError as err:
                raise RegistryError(
                    self.source, f"invalid HTTP answer to {method} {url.path} ({err.message})"
                ) from None
            except aiohttp.ClientError as err:
                raise RegistryError(
                    self.source, f"{type(err).__name__} during {method} {url.path}"
                ) from None

    def _tls_error(self, err: aiohttp.ClientSSLError) -> RegistryError:
        """What went wrong in a TLS handshake, with advice only where it applies."""
        where = _host_port(err.host, err.port)
        own = (err.host, err.port) == (self._base.host, self._base.port)
        if isinstance(err, aiohttp.ClientConnectorCertificateError):
            cause = err.certificate_error
            detail = getattr(cause, "verify_message", None) or str(cause)
            advice = "; protocol https-no-verify skips the check" if own else ""
            return RegistryError(
                self.source, f"TLS certificate of {where} not trusted ({detail}){advice}"
            )
        reason = getattr(err.os_error, "reason", None) or type(err.os_error).__name__
        advice = "; a plain-HTTP registry needs protocol http" if own else ""
        return RegistryError(
            self.source,
            f"TLS handshake with {where} failed ({reason.replace('_', ' ').lower()}){advice}",
        )

    async def _follow(self, method: str, url: URL, headers: dict[str, str]) -> _Reply:
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            send = headers
            if current.origin() != self._origin and current.origin() != url.origin():
                # credentials stay with their server (blobs may redirect to a storage service)
                send = {k: v for k, v in headers.items() if k != "Authorization"}
            # https-no-verify is about the registry: elsewhere, certificates are checked
            verify = self._ssl if current.origin() == self._origin else True
            request = self._http().request(
                method, current, headers=send, allow_redirects=False, ssl=verify
            )
            async with request as response:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    target = _join(current, location)
                    if target is None or target.scheme not in ("http", "https"):
                        raise RegistryError(self.source, f"invalid redirect from {url.path}")
                    current = target
                    continue
                body = await self._body(response, method, url)
                return _Reply(response.status, response.headers, body, current)
        raise RegistryError(self.source, f"too many redirects from {method} {url.path}")

    async def _body(self, response: aiohttp.ClientResponse, method: str, url: URL) -> bytes:
        """The body of the answer to `url`, read as it streams; over the limit is an error
        (error answers: cut)."""
        if method == "HEAD":
            return b""
        ok = 200 <= response.status < 300
        limit = self._max_body if ok else _ERROR_BODY
        if ok and response.content_length is not None and response.content_length > limit:
            raise self._too_big(method, url)
        data = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                if ok:
                    raise self._too_big(method, url)
                break
        return bytes(data)

    def _too_big(self, method: str, url: URL) -> RegistryError:
        one_image = url.origin() == self._origin and _IMAGE_OBJECT_PATH.fullmatch(
            url.raw_path.removeprefix(self._base_path)
        )
        error = BadImage if one_image else RegistryError
        return error(
            self.source,
            f"response body over {_size(self._max_body)} limit ({method} {url.path})",
        )

    # ---- authentication -----------------------------------------------------------------

    def _scope(self, url: URL) -> str:
        """The token scope a request needs (pull on its repository, or the catalog)."""
        match = _SCOPE_PATH.fullmatch(url.raw_path.removeprefix(self._base_path))
        if match:
            return f"repository:{match.group(1)}:pull"
        return "registry:catalog:*"

    def _basic_header(self) -> str | None:
        if self._creds is None:
            return None
        return aiohttp.encode_basic_auth(self._creds.username, self._creds.password)

    async def _authorization(self, scope: str) -> str | None:
        if self._realm is not None:
            token = self._tokens.get(scope)
            if token is None or token.expires <= time.monotonic():
                return f"Bearer {await self._token(scope, scope)}"
            return f"Bearer {token.value}"
        if self._basic:
            return self._basic_header()
        return None

    async def _challenged(self, reply: _Reply, scope: str, sent: str | None) -> bool:
        """Learn from a 401's challenge; True when the request is worth sending again."""
        challenge = _challenge(reply.headers)
        if challenge is None:
            return False
        scheme, params = challenge
        if scheme == "basic":
            self._basic = True
            return sent is None and self._creds is not None  # else: refused, or none to send
        realm = _join(URL(), params.get("realm", ""))
        if realm is None or realm.scheme not in ("http", "https") or not realm.host:
            raise AuthError(self.source, "invalid Bearer challenge (no usable realm)", status=401)
        self._realm = (realm, params.get("service"))
        stale = self._tokens.get(scope)
        if stale is not None and sent == f"Bearer {stale.value}":
            del self._tokens[scope]  # expired or revoked early: ask for a new one
        elif sent is not None and sent.startswith("Bearer "):
            return True  # a newer token than the one refused is already there
        await self._token(scope, params.get("scope") or scope)
        return True

    async def _token(self, scope: str, asked: str) -> str:
        """A token for `scope`, fetched once however many requests wait for it."""
        task = self._token_tasks.get(scope)
        if task is None:
            task = asyncio.create_task(self._fetch_token(scope, asked))
            self._token_tasks[scope] = task
            task.add_done_callback(lambda done: self._token_done(scope, done))
        return await asyncio.shield(task)

    def _token_done(self, scope: str, task: asyncio.Task[str]) -> None:
        if self._token_tasks.get(scope) is task:
            del self._token_tasks[scope]
        if not task.cancelled():
            task.exception()

    async def _fetch_token(self, scope: str, asked: str) -> str:
        assert self._realm is not None
        realm, service = self._realm
        if self._creds is not None and realm.scheme == "http" and self._base.scheme == "https":
            raise AuthError(
                self.source,
                f"the token service {realm.host} is plain HTTP: credentials not sent",
                status=401,
            )
        query = {"scope": asked, **({"service": service} if service else {})}
        reply = await self._call(
            "GET", realm.update_query(query), what="the token service", token_service=True
        )
        data = self._decode(reply.body, "the token service's answer")
        value = None
        if isinstance(data, dict):
            value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(self.source, "the token service's answer holds no token", status=401)
        expires_in = data.get("expires_in", 60)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
        # renew a little early: a token must not expire between check and use
        margin = min(30.0, lifetime / 10)
        self._tokens[scope] = _Token(value, time.monotonic() + max(0.0, lifetime - margin))
        return value


# ---- configured registries ------------------------------------------------------------------


# What leaves a repository or a tag out of a listing instead of failing it: deleted since it
# was listed, not readable with these credentials (the catalog was), not a usable image, or
# one whose manifest or config is broken.
_SKIPPED = (NotFound, AuthError, Unsupported, BadImage)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RegistryV2Source:
    """A `docker-registry-v2` entry of the configuration as an image source.

    Repositories named `user/name` (exactly two components) holding images labelled
    `walt.node.models` are WalT images. Each operation uses a client of its own with the
    caller's credentials; the digest cache, the `session` (when given) and the bound of
    `concurrency` requests at once are shared by them all. A listing inspects at most
    `max_tags` tags per repository and `max_images` images in all.
    """

    kind = LOCATION_REGISTRY

    def __init__(
        self,
        entry: config.Registry,
        *,
        cache: DigestCache | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30,
        max_body: int = 8 * 2**20,
        concurrency: int = 32,
        max_tags: int = MAX_TAGS_PER_REPOSITORY,
        max_images: int = MAX_IMAGES_PER_SOURCE,
    ) -> None:
        if entry.host is None or entry.port is None:
            raise ValueError(f"registry {entry.label}: host and port are required")
        self.label = entry.label
        self.entry = entry
        self.registry_host = _host_port(entry.host, entry.port)
        scheme = "http" if entry.protocol == "http" else "https"
        self.base_url = f"{scheme}://{self.registry_host}"
        self.tls_verify = entry.protocol == "https"
        self._cache = cache
        self._session = session
        self._timeout_s = timeout_s
        self._max_body = max_body
        self._concurrency = concurrency
        self._semaphore = asyncio.Semaphore(concurrency)
        self._max_tags = max_tags
        self._max_images = max_images

    def client(self, creds: Credentials | None = None) -> V2Client:
        """A client of this registry with `creds` (use it with `async with`)."""
        return V2Client(
            self.label,
            self.base_url,
            creds=creds,
            verify_tls=self.tls_verify,
            timeout_s=self._timeout_s,
            max_body=self._max_body,
            concurrency=self._concurrency,
            cache=self._cache,
            path_prefix=self._path_prefix(),
            session=self._session,
            semaphore=self._semaphore,
        )

    def _path_prefix(self) -> str:
        return ""

    def _split(self, repo: str) -> tuple[str, str] | None:
        """(user, name) of a catalog entry, None when it is not named `user/name`."""
        parts = repo.split("/")
        return (parts[0], parts[1]) if len(parts) == 2 else None

    def _repo(self, user: str, name: str) -> str:
        """The client's repository name of `user/name`."""
        return f"{user}/{name}"

    async def list_images(self, creds: Credentials | None = None) -> list[ImageInfo]:
        """Every WalT image: catalog, then tags, then images, `concurrency` at a time."""
        budget = ImageBudget(self.label, self._max_tags, self._max_images)
        found: dict[tuple[int, int], ImageInfo] = {}  # by (repository, tag) index: their order
        async with self.client(creds) as client:
            catalog = await client.catalog()
            named = [(repo, split) for repo in catalog if (split := self._split(repo))]
            await run_jobs(
                (
                    functools.partial(self._repository, client, budget, found, index, repo, *split)
                    for index, (repo, split) in enumerate(named)
                ),
                self._concurrency,
            )
        return [info for _, info in sorted(found.items()) if info.is_walt]

    async def _repository(
        self,
        client: V2Client,
        budget: ImageBudget,
        found: dict[tuple[int, int], ImageInfo],
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
        except _SKIPPED as err:
            self._skipped(f"{user}/{name}", err)
            return []

        async def one(position: int, tag: str) -> list[Job]:
            try:
                image = await client.image(repo, tag)
            except _SKIPPED as err:
                self._skipped(f"{user}/{name}:{tag}", err)
                return []
            found[index, position] = image.info(self.label, self.kind, user, name, tag)
            return []

        kept = budget.take(f"{user}/{name}", tags)
        return [functools.partial(one, position, tag) for position, tag in enumerate(kept)]

    async def resolve(
        self,
        user: str,
        name: str,
        tag: str,
        creds: Credentials | None = None,
        *,
        models: Sequence[str] = (),
    ) -> ImageInfo:
        """One image's digest and labels (of the platform for `models`, in a list)."""
        async with self.client(creds) as client:
            image = await client.image(self._repo(user, name), tag, models)
        return image.info(self.label, self.kind, user, name, tag)

    def transport(self, user: str, name: str, tag: str) -> str:
        """`docker://host:port/user/name:tag` for skopeo."""
        return f"docker://{self.registry_host}/{self._repo_path(user, name)}:{tag}"

    def skopeo_options(self) -> list[str]:
        """skopeo options for `transport`: TLS checks off for `http` and `https-no-verify`."""
        return [] if self.tls_verify else ["--src-tls-verify=false"]

    def _repo_path(self, user: str, name: str) -> str:
        return f"{user}/{name}"

    def _skipped(self, image: str, err: RegistryError) -> None:
        _log.info("registry_image_skipped", registry=self.label, image=image, error=str(err))
