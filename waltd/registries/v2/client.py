"""A Docker Registry HTTP API v2 client on aiohttp (`V2Client`).

It reads what `walt image search` and `clone` need without pulling: the catalog and tag
lists (with `Link` pagination), manifests (Docker schema 2, OCI manifest, manifest list and OCI
index, a platform chosen by `platforms.py`) and config blobs (labels, creation date).

Every request has a timeout, every body a size limit read as it streams, and at most
`concurrency` requests of a source run at once, whichever client sends them; the lists one
client reads are bounded in count and bytes (`SearchLimits`). 429 waits for `Retry-After`;
5xx and broken connections are retried a couple of times with jittered backoff; 401/403/404
never are (`RETRY`). Content addressed by digest is checked against it, and kept in a
`DigestCache`, so a warm listing asks each tag for its digest (HEAD) and reads only what
changed.

Authentication follows the `/v2/` challenge a registry answers with: none, Basic (credentials
on each request), or Bearer (a token per scope from the realm, as Docker Hub does, kept until it
expires). Credentials go to a realm only over https or on the registry's own host. Error
messages name the source and the problem, never a password or a token.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from waltd import names
from waltd.aio import RetryPolicy, SingleFlight
from waltd.registries import platforms
from waltd.registries.base import (
    AuthError,
    BadImage,
    Credentials,
    DigestMismatch,
    ImageInfo,
    LimitExceeded,
    NotFound,
    RegistryError,
    Unsupported,
)
from waltd.registries.cache import DigestCache, digest_of, is_digest
from waltd.registries.limits import SearchLimits
from waltd.registries.v2 import protocol
from waltd.registries.v2.protocol import ACCEPT, IMAGE_CONFIGS, IMAGE_MANIFESTS, LISTS, SCHEMA1

# 5xx and broken connections: two more attempts; a Retry-After over 30 s fails at once, as a
# search would not wait that long. Timeouts are not retried: the wait was already long.
RETRY = RetryPolicy(min_s=0.25, max_s=2.0, retries=2, max_retry_after_s=30.0)
_MAX_REDIRECTS = 5
_MAX_PAGES = 10_000
_ERROR_BODY = 64 * 1024  # how much of an error answer is read (for its error code)
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class ResolvedImage:
    """What a tag or digest designates, read without pulling.

    `digest` and `media_type` are those of the manifest the reference names (a list, for a
    multi-platform image); `labels`, `created`, `platform` and `config_digest` (its config
    blob's) come from the image chosen in it; `platforms` lists what a list offers (empty for
    a single-platform image).
    """

    digest: str
    media_type: str
    labels: MappingProxyType[str, str]
    created: str | None
    platforms: tuple[str, ...] = ()
    platform: str | None = None
    config_digest: str | None = None

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
            platform=self.platform if self.platforms else None,
            config_digest=self.config_digest,
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
    expires: float  # on the client's clock (time.monotonic)


class _Broken(Exception):
    """A connection failed (refused, reset, cut mid-body): worth another attempt."""


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
    other clients sharing it (else the bound is `concurrency` of its own). `limits` bound the
    lists it reads in its life (a client serves one operation: one listing).
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
        limits: SearchLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._clock = clock  # when a token must be renewed
        self._base = URL(base_url.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ValueError(f"{source}: invalid registry URL {base_url!r}")
        prefix = path_prefix.strip("/")
        if prefix and not names.is_repository(prefix):
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
        self._token_fetches: SingleFlight[str, str] = SingleFlight()  # by scope
        self._blob_fetches: SingleFlight[str, bytes] = SingleFlight()  # by digest
        self._limits = limits or SearchLimits()
        self._list_bytes = 0  # of the catalog and tag-list pages read so far

    # ---- life cycle ---------------------------------------------------------------------

    async def __aenter__(self) -> V2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop pending token and blob fetches; close the session if the client made it."""
        await self._token_fetches.cancel()
        await self._blob_fetches.cancel()
        self._cache.flush_soon()
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
        what = "the catalog"
        return await self._paged(self._url("_catalog"), "repositories", what, self._repositories)

    def _repositories(self, count: int) -> None:
        if count > self._limits.max_repositories:
            raise LimitExceeded(
                self.source,
                f"the catalog lists over {self._limits.max_repositories} repositories "
                "(limit images.search-max-repositories)",
            )

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
            "HEAD", self._url(f"{repo}/manifests/{ref}"), what=f"image {repo}:{ref}", accept=ACCEPT
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
        if media_type in LISTS:
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
            if child_type not in IMAGE_MANIFESTS:
                raise Unsupported(self.source, f"{repo}:{ref}: list entry of type {child_type}")
        labels, created, platform, config = await self._config(repo, ref, image)
        return ResolvedImage(digest, media_type, labels, created, offered, platform, config)

    # ---- manifests and blobs ------------------------------------------------------------

    def _url(self, path: str) -> URL:
        return URL(self._v2 + path, encoded=True)

    def _check_repo(self, repo: str) -> None:
        if not names.is_repository(repo):
            raise NotFound(self.source, f"invalid repository name {repo!r}")

    def _check_ref(self, ref: str) -> None:
        if not (names.is_tag(ref) or is_digest(ref)):
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
        reply = await self._call("GET", url, what=what, accept=ACCEPT)
        claimed = reply.headers.get("Docker-Content-Digest", "")
        if claimed and not is_digest(claimed):
            raise BadImage(self.source, f"invalid digest in the answer about {what}")
        digest = digest_of(reply.body, claimed or "sha256:")
        if claimed and digest != claimed:
            raise self._mismatch("GET", url, claimed, digest)
        header_type = protocol.mime(reply.headers)
        media_type, data = self._parse_manifest(reply.body, header_type, what)
        await self._cache.put(digest, reply.body)
        if not is_digest(ref):
            self._cache.remember_tag(self._tag_key(repo, ref), digest)
        return digest, media_type, data

    async def _manifest_by_digest(self, repo: str, digest: str) -> tuple[str, dict[str, Any]]:
        url = self._url(f"{repo}/manifests/{digest}")
        body = await self._verified(url, digest, f"manifest {repo}@{digest}", ACCEPT)
        return self._parse_manifest(body, None, f"manifest {repo}@{digest}")

    def _parse_manifest(
        self, body: bytes, header_type: str | None, what: str
    ) -> tuple[str, dict[str, Any]]:
        if header_type in SCHEMA1:
            raise Unsupported(self.source, f"{what} is a Docker schema 1 manifest (unsupported)")
        if header_type and header_type not in protocol.READABLE_MANIFESTS:
            raise BadImage(
                self.source, f"unexpected content type {header_type} for {what} (not a manifest)"
            )
        data = self._decode(body, what, BadImage)
        if not isinstance(data, dict):
            raise BadImage(self.source, f"invalid manifest for {what}")
        media_type = protocol.manifest_type(header_type, data)
        if media_type in SCHEMA1:
            raise Unsupported(self.source, f"{what} is a Docker schema 1 manifest (unsupported)")
        if media_type not in (*IMAGE_MANIFESTS, *LISTS):
            raise Unsupported(self.source, f"{what} is not an image manifest ({media_type})")
        return media_type, data

    async def _config(
        self, repo: str, ref: str, manifest: dict[str, Any]
    ) -> tuple[MappingProxyType[str, str], str | None, str | None, str]:
        """Labels, creation date and platform from the config blob of an image manifest, and
        the blob's digest."""
        descriptor = manifest.get("config")
        digest = descriptor.get("digest") if isinstance(descriptor, dict) else None
        if not isinstance(digest, str) or not is_digest(digest):
            raise BadImage(self.source, f"invalid config reference in {repo}:{ref}")
        config_type = descriptor.get("mediaType") if isinstance(descriptor, dict) else None
        if config_type not in (None, *IMAGE_CONFIGS):
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
        when = created if isinstance(created, str) else None
        return MappingProxyType(labels), when, platform, digest

    async def _verified(self, url: URL, digest: str, what: str, accept: str | None) -> bytes:
        """Content addressed by `digest`: from the cache, else fetched once and checked."""
        cached = await self._cache.get(digest)
        if cached is not None:
            return cached
        return await self._blob_fetches.run(
            digest, lambda: self._fetch_verified(url, digest, what, accept)
        )

    async def _fetch_verified(self, url: URL, digest: str, what: str, accept: str | None) -> bytes:
        reply = await self._call("GET", url, what=what, accept=accept)
        actual = digest_of(reply.body, digest)
        if actual != digest:
            raise self._mismatch("GET", url, digest, actual)
        await self._cache.put(digest, reply.body)
        return reply.body

    def _mismatch(self, method: str, url: URL, expected: str, actual: str) -> DigestMismatch:
        return DigestMismatch(
            self.source,
            f"digest mismatch: {method} {url.path} should be {expected} but its content is "
            f"{actual} (content refused)",
        )

    def _decode(self, body: bytes, what: str, error: type[RegistryError] = RegistryError) -> Any:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise error(self.source, f"invalid JSON in {what}") from None

    async def _paged(
        self, url: URL, key: str, what: str, check: Callable[[int], None] | None = None
    ) -> list[str]:
        """The `key` lists of every page, following `Link: <...>; rel="next"`.

        Every page counts towards the client's `max_bytes`; `check` is given the number of
        items read so far after each page (it raises to stop).
        """
        url = url.with_query(n=self._page_size)
        items: list[str] = []
        seen = {url}
        for _ in range(_MAX_PAGES):
            reply = await self._call("GET", url, what=what)
            self._list_bytes += len(reply.body)
            if self._list_bytes > self._limits.max_bytes:
                raise LimitExceeded(
                    self.source,
                    f"the lists read exceed {protocol.size_text(self._limits.max_bytes)} "
                    f"at {what} (limit images.search-max-bytes)",
                )
            mime = protocol.mime(reply.headers)
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
            if check is not None:
                check(len(items))
            link = protocol.next_page(reply.headers)
            if link is None:
                return list(dict.fromkeys(items))
            url = protocol.join(reply.url, link)
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
        attempt = challenges = 0
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
                error = RegistryError(self.source, str(err), retryable=True)
            else:
                status = reply.status
                if 200 <= status < 300:
                    return reply
                if status == 401 and not token_service and reply.url.origin() != self._origin:
                    # a server the registry redirected to: its challenge would send the
                    # credentials (or a token request with them) wherever it says
                    where = names.host_port(reply.url.host or "", reply.url.port or 0)
                    raise AuthError(
                        self.source,
                        f"authentication required (401) by {where}, where the registry "
                        f"redirected the request for {what}: no credentials are sent there",
                        status=401,
                    )
                if status == 401 and not token_service and challenges < 2:
                    challenges += 1
                    if await self._challenged(reply, scope, authorization):
                        continue
                error = self._status_error(method, url, reply, what, token_service)
            attempt += 1
            if not RETRY.should_retry(error, attempt):
                raise error
            await asyncio.sleep(RETRY.delay(attempt, error.retry_after))

    def _status_error(
        self, method: str, url: URL, reply: _Reply, what: str, token_service: bool
    ) -> RegistryError:
        status = reply.status
        code = protocol.error_code(reply.body)
        detail = f" ({code})" if code else ""
        if status == 401:
            by = " by the token service" if token_service else f" for {what}"
            given = "refused (401)" if self._creds else "required (401)"
            missing = "" if self._creds else ": no credentials given"
            return AuthError(
                self.source,
                f"authentication {given}{by}{missing}",
                status=401,
                token_service=token_service,
            )
        if status == 403:
            return AuthError(self.source, f"access denied (403) to {what}{detail}", status=403)
        if status == 404:
            return NotFound(self.source, f"{what} not found (404){detail}", status=404)
        if status == 429:
            wait = protocol.retry_after(reply.headers)
            asked = f"; asked to wait {wait:g} s" if wait is not None else ""
            return RegistryError(
                self.source,
                f"rate limited (429) on {method} {url.path}{asked}",
                status=429,
                retryable=True,
                retry_after=wait,
            )
        return RegistryError(
            self.source,
            f"HTTP {status} from {method} {url.path}{detail}",
            status=status,
            # 501: the registry does not implement it, however often it is asked
            retryable=500 <= status < 600 and status != 501,
        )

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
                where = names.host_port(url.host or "", url.port or 0)
                raise _Broken(f"cannot connect to {where} ({reason})") from None
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
        where = names.host_port(err.host, err.port)
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
                    target = protocol.join(current, location)
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
        one_image = url.origin() == self._origin and protocol.is_image_object(
            url.raw_path.removeprefix(self._base_path)
        )
        error = BadImage if one_image else RegistryError
        return error(
            self.source,
            f"response body over {protocol.size_text(self._max_body)} limit ({method} {url.path})",
        )

    # ---- authentication -----------------------------------------------------------------

    def _scope(self, url: URL) -> str:
        """The token scope a request needs (pull on its repository, or the catalog)."""
        return protocol.scope(url.raw_path.removeprefix(self._base_path))

    def _basic_header(self) -> str | None:
        if self._creds is None:
            return None
        return aiohttp.encode_basic_auth(self._creds.username, self._creds.password)

    async def _authorization(self, scope: str) -> str | None:
        if self._realm is not None:
            token = self._tokens.get(scope)
            if token is None or token.expires <= self._clock():
                return f"Bearer {await self._token(scope, scope)}"
            return f"Bearer {token.value}"
        if self._basic:
            return self._basic_header()
        return None

    async def _challenged(self, reply: _Reply, scope: str, sent: str | None) -> bool:
        """Learn from a 401's challenge; True when the request is worth sending again."""
        challenge = protocol.challenge(reply.headers)
        if challenge is None:
            return False
        scheme, params = challenge
        if scheme == "basic":
            self._basic = True
            return sent is None and self._creds is not None  # else: refused, or none to send
        realm = protocol.join(URL(), params.get("realm", ""))
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
        return await self._token_fetches.run(scope, lambda: self._fetch_token(scope, asked))

    def _realm_refusal(self, realm: URL) -> str | None:
        """Why the credentials may not go to `realm`, or None when they may.

        They go over https, or to the registry's own host over plain HTTP when the registry
        itself is plain HTTP: a registry cannot send them to a third server in clear text
        (Docker Hub's realm is https on another host, which is fine).
        """
        if realm.scheme == "https":
            return None
        where = names.host_port(realm.host or "", realm.port or 80)
        shown = f"{realm.scheme}://{where}{realm.path}"
        if realm.host != self._base.host:
            return (
                f"the token service {shown} is plain HTTP on another host than the registry: "
                "credentials not sent"
            )
        if self._base.scheme == "https":
            return f"the token service {shown} is plain HTTP: credentials not sent"
        return None

    async def _fetch_token(self, scope: str, asked: str) -> str:
        assert self._realm is not None
        realm, service = self._realm
        refusal = self._realm_refusal(realm) if self._creds is not None else None
        if refusal is not None:
            raise AuthError(self.source, refusal, status=401, token_service=True)
        query = {"scope": asked, **({"service": service} if service else {})}
        reply = await self._call(
            "GET", realm.update_query(query), what="the token service", token_service=True
        )
        data = self._decode(reply.body, "the token service's answer")
        value = None
        if isinstance(data, dict):
            value = data.get("token") or data.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(
                self.source,
                "the token service's answer holds no token",
                status=401,
                token_service=True,
            )
        expires_in = data.get("expires_in", 60)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
        # renew a little early: a token must not expire between check and use
        margin = min(30.0, lifetime / 10)
        self._tokens[scope] = _Token(value, self._clock() + max(0.0, lifetime - margin))
        return value
