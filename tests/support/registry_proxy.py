"""Thin aiohttp servers on 127.0.0.1 in front of a real registry, for the registry tests.

Only the part a test is about is fake. `Proxy` forwards every request unchanged, counts them,
tracks how many are in flight and lets a test inject a fault (`fault`); the helpers below make
the usual faults. The token-issuing and path-rewriting proxies build on it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.local_server import LocalServer

Fault = Callable[[web.Request], Awaitable[web.StreamResponse | None]]

# Headers that belong to one hop, recomputed by the server that answers.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class Proxy(LocalServer):
    """An aiohttp server on 127.0.0.1 forwarding to `upstream` (a registry's base URL).

    With `tls` it serves HTTPS with that context.

    `requests` lists (method, path) of every request and `max_in_flight` the most handled at
    once since the last `reset`; `fault`, when set, sees each request first and answers it by
    returning a response (None lets it through).
    """

    def __init__(self, upstream: str, *, tls: ssl.SSLContext | None = None) -> None:
        # a hanging handler must not hold the end of the test for aiohttp's default 60 s
        super().__init__(tls=tls, shutdown_timeout=0.1)
        self.upstream = upstream
        self.requests: list[tuple[str, str]] = []
        self.fault: Fault | None = None
        self.max_in_flight = 0
        # requests in flight by generation: those of an earlier test may still hang there
        self._generation = 0
        self._in_flight: Counter[int] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self.app.on_startup.append(self._open)
        self.app.on_cleanup.append(self._close)

    async def _open(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def reset(self) -> None:
        """Forget the requests seen so far and the fault."""
        self.requests.clear()
        self.fault = None
        self.max_in_flight = 0
        self._generation += 1

    def count(self, method: str, pattern: str) -> int:
        """How many requests `method` had a path matching regular expression `pattern`."""
        return sum(1 for m, p in self.requests if m == method and re.fullmatch(pattern, p))

    def counts(self) -> Counter[tuple[str, str]]:
        """Requests by (method, kind): kind is catalog, tags, manifests, blobs or other."""
        kinds: Counter[tuple[str, str]] = Counter()
        for method, path in self.requests:
            match = re.search(r"/(_catalog|tags|manifests|blobs)(/|$|\?)", path)
            kinds[method, match.group(1).lstrip("_") if match else "other"] += 1
        return kinds

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        generation = self._generation
        self._in_flight[generation] += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight[generation])
        try:
            if self.fault is not None:
                answer = await self.fault(request)
                if answer is not None:
                    return answer
            return await self.answer(request)
        finally:
            self._in_flight[generation] -= 1

    async def answer(self, request: web.Request) -> web.StreamResponse:
        """What the proxy answers when no fault applies: the upstream's answer."""
        return await self.forward(request)

    async def forward(
        self,
        request: web.Request,
        path_qs: str | None = None,
        *,
        keep_authorization: bool = True,
    ) -> web.Response:
        """Send `request` upstream (at `path_qs`, default its own) and relay the answer."""
        assert self._session is not None
        dropped = {*_HOP, "host", *(() if keep_authorization else ("authorization",))}
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in dropped
        )
        data = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + (path_qs or request.path_qs),
            headers=headers,
            data=data or None,
            allow_redirects=False,
        ) as upstream:
            body = await upstream.read()
            relayed = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP
            )
            if request.method == "HEAD":
                return web.Response(status=upstream.status, headers=relayed)
            return web.Response(status=upstream.status, body=body, headers=relayed)


# ---- faults ----------------------------------------------------------------------------------


def when(pattern: str, fault: Fault, *, times: int | None = None) -> Fault:
    """`fault` for requests whose path matches `pattern`, the first `times` of them at most."""
    left = [times]

    async def apply(request: web.Request) -> web.StreamResponse | None:
        if not re.fullmatch(pattern, request.path) or left[0] == 0:
            return None
        if left[0] is not None:
            left[0] -= 1
        return await fault(request)

    return apply


def status(
    code: int, body: bytes | str = b"", *, content_type: str = "application/json", **headers: str
) -> Fault:
    """Answer with HTTP `code` (header names with underscores: Retry_After=...)."""

    async def apply(request: web.Request) -> web.StreamResponse:
        named = {k.replace("_", "-"): v for k, v in headers.items()}
        data = body.encode() if isinstance(body, str) else body
        return web.Response(status=code, body=data, content_type=content_type, headers=named)

    return apply


def reset_mid_body(size: int = 100_000) -> Fault:
    """Announce `size` bytes, send a few, then cut the connection."""

    async def apply(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = size
        await response.prepare(request)
        await response.write(b'{"tags": ["' + b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        raise ConnectionResetError("cut on purpose")

    return apply


def hang() -> Fault:
    """Never answer."""

    async def apply(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return apply


def stall_body() -> Fault:
    """Send the headers and a little of the body, then nothing more."""

    async def apply(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b'{"tags": [')
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return apply


def endless_body(sent: list[int], ended: asyncio.Event) -> Fault:
    """A 200 JSON answer without length whose body never ends; `sent[0]` counts its bytes.

    `ended` is set once the client has cut the answer off (the next write failed).
    """

    async def apply(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)  # chunked: the client learns no length in advance
        await response.write(b'{"repositories": [')
        chunk = b'"x/y",' * 10_000
        try:
            while True:
                await response.write(chunk)
                sent[0] += len(chunk)
        finally:
            ended.set()

    return apply


def rewrite_body(proxy: Proxy, change: Callable[[bytes], bytes]) -> Fault:
    """Forward upstream, then alter the body (a registry that lies about content)."""

    async def apply(request: web.Request) -> web.StreamResponse:
        answer = await proxy.forward(request)
        assert isinstance(answer.body, bytes)
        answer.body = change(answer.body)
        return answer

    return apply


def fan_out(proxy: Proxy, repositories: list[str], tags: int, image: str) -> Fault:
    """A registry of `repositories` with `tags` tags each (`t0000`, ...), all the one image
    `image` (`repo:tag`) of the upstream: the catalog and tag lists are made up, manifests and
    blobs asked of the upstream's `image`."""
    repo, _, tag = image.partition(":")
    names = [f"t{i:04d}" for i in range(tags)]
    path = re.compile(r"/v2/(.+)/(tags/list|manifests/[^/]+|blobs/[^/]+)")

    async def apply(request: web.Request) -> web.StreamResponse | None:
        if request.path == "/v2/_catalog":
            return web.json_response({"repositories": repositories})
        match = path.fullmatch(request.path)
        if match is None or match.group(1) not in repositories:
            return None
        what = match.group(2)
        if what == "tags/list":
            return web.json_response({"name": match.group(1), "tags": names})
        if what.startswith("manifests/t"):
            what = f"manifests/{tag}"
        return await proxy.forward(request, f"/v2/{repo}/{what}")

    return apply
