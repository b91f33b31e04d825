"""The API: aiohttp on a unix socket; the caller is known by SO_PEERCRED.

Requests and answers have the shapes of `wire.py`, which the client shares. Connections are
accepted by `listener.py` (per-uid counts, a reserve for root). Every log record produced
while a request is served carries the caller's `uid`; GET /v1/events shows a non-root caller
only the records without a uid (the daemon's own) and its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Self

import structlog
from aiohttp import web

from waltd import SERVER_VERSION, __version__, log
from waltd.api import images_build, images_store, images_transfer, nodes, vnodes, wire
from waltd.api.common import CONTEXT, IDENTITY
from waltd.api.common import caller as _caller
from waltd.api.common import caller_credentials as _caller_credentials
from waltd.api.common import context as _ctx
from waltd.api.common import error as _error
from waltd.api.common import read_body as _body
from waltd.api.identity import RefusedCaller, identify, peer_credentials
from waltd.api.listener import ROOT_UID, Listener
from waltd.context import Context
from waltd.registries.base import ImageInfo
from waltd.registries.internal import InternalSource
from waltd.registries.search import SearchResult, search
from waltd.supervisor import Service

_log = log.get("api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A connection must send its request headers within this many seconds of being accepted,
# and is closed after as long without a request between two (aiohttp's keepalive_timeout,
# an hour by default, which let idle connections pile up).
IDLE_TIMEOUT_S = 10.0


@web.middleware
async def _identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return _error(403, "the API only answers local callers on its unix socket")
    try:
        # The passwd lookups may go to a directory service: not on the event loop.
        identity = await asyncio.to_thread(identify, *peer_credentials(sock))
    except RefusedCaller as err:
        return _error(403, str(err))
    request[IDENTITY] = identity
    # Every record logged for this request (and the tasks it starts) names its caller.
    with structlog.contextvars.bound_contextvars(uid=identity.uid):
        return await handler(request)


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: the daemon, its services, and who is asking."""
    ctx = _ctx(request)
    config = ctx.config
    caller = _caller(request)
    body = wire.Status(
        version=__version__,
        pid=os.getpid(),
        uptime_s=round(time.monotonic() - ctx.started_monotonic, 3),
        caller=wire.Caller(caller.unix_user, caller.walt_user, caller.uid),
        services=tuple(
            wire.ServiceState(s.name, s.state, s.restarts, s.last_error)
            for s in ctx.statuses.values()
        ),
        node_network=config.walt_net.interface if config.walt_net else None,
        registries=tuple(wire.RegistryInfo(r.label, r.api, r.auth) for r in config.registries),
        nodes=await ctx.db.count_nodes() if ctx.db.is_open else None,
    )
    return web.json_response(body.to_json())


def visible_to(uid: int) -> Callable[[Mapping[str, Any]], bool]:
    """Which log records a caller may read: root all, others the daemon's and their own."""
    if uid == ROOT_UID:
        return lambda event: True
    return lambda event: event.get("uid", uid) == uid


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: the log's events as newline-delimited JSON (`wire.EventsQuery`)."""
    bus = _ctx(request).bus
    try:
        query = wire.EventsQuery.from_query(request.query)
    except ValueError as err:
        return _error(400, f"bad events query: {err}")
    visible = visible_to(_caller(request).uid)
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    recent = bus.recent(query.since)
    backlog = [e for e in recent if visible(e)]
    try:
        for event in backlog[-query.limit :] if query.limit else backlog:
            await resp.write(wire.line(event))
        if query.follow:
            last = recent[-1]["seq"] if recent else max(query.since, bus.last_seq())
            async for event in bus.follow(last):
                if visible(event):
                    await resp.write(wire.line(event))
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the follower left: nothing more to send, nothing to report
    return resp


def image_row(image: ImageInfo) -> wire.ImageRow:
    """An image as the API sends it."""
    return wire.ImageRow(
        location=image.location,
        kind=image.kind,
        user=image.user,
        name=image.name,
        tag=image.tag,
        digest=image.digest,
        labels=dict(image.labels),
        created=image.created,
        platforms=tuple(image.platforms),
        clone_url=image.clone_url,
        models=image.models,
        minversion=image.minversion,
    )


async def search_images(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/search (`wire.SearchRequest`): `wire.SearchProgress` records, then
    the `wire.SearchResult`, as NDJSON. The logins serve this search only and are never
    stored or logged.
    """
    ctx = _ctx(request)
    try:
        wanted = wire.SearchRequest.from_json(await _body(request))
        logins = {r.label for r in ctx.config.registries if r.takes_login}
        creds = _caller_credentials(wanted.logins, logins)
    except ValueError as err:
        return _error(400, f"bad search request: {err}")
    keyword = wanted.keyword
    registries = ctx.registries
    if registries.current is None:
        return _error(503, "the registries are not ready (the daemon is starting or stopping)")
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    pending: list[bytes] = []

    def progress(source: str, status: str, count: int | None) -> None:
        pending.append(wire.line(wire.SearchProgress(source, status, count).to_json()))

    began = time.monotonic()
    task: asyncio.Future[SearchResult] | None = None
    # entered at once: a reload cannot close these sources before the search takes them
    async with registries.using() as sources:
        try:
            await resp.prepare(request)
            deadline_s = ctx.config.images.search_deadline_s
            # the internal repository first, without the caller's own images
            internal = InternalSource(ctx.repository, _caller(request).walt_user)
            task = asyncio.ensure_future(
                search([internal, *sources], keyword, creds, progress, deadline_s=deadline_s)
            )
            while not task.done():
                await asyncio.wait([task], timeout=0.2)
                if request.transport is None or request.transport.is_closing():
                    return resp  # the caller went away: nobody to answer
                while pending:
                    await resp.write(pending.pop(0))
            result = task.result()
            _log.info(
                "image_search",
                user=_caller(request).walt_user,
                keyword=keyword,
                found=len(result.images),
                failed_sources=len(result.warnings),
                duration_s=round(time.monotonic() - began, 3),
            )
            answer = wire.SearchResult(
                SERVER_VERSION, tuple(image_row(i) for i in result.images), result.warnings
            )
            await resp.write(wire.line(answer.to_json()))
        finally:
            # the search must not outlive its request
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    await resp.write_eof()
    return resp


def make_app(ctx: Context) -> web.Application:
    """The API application for a daemon context."""
    app = web.Application(middlewares=[_identify], client_max_size=wire.MAX_BODY_BYTES)
    app[CONTEXT] = ctx
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/images/search", search_images)
    images_build.add_routes(app)
    images_transfer.add_routes(app)
    images_store.add_routes(app)
    nodes.add_routes(app)
    vnodes.add_routes(app)

    async def end_streams(app: web.Application) -> None:
        ctx.bus.end_followers()
        ctx.vnodes.end_consoles()

    app.on_shutdown.append(end_streams)
    return app


class ApiService(Service):
    """Serves the API on the configured unix socket (mode 0666: identity is per peer)."""

    name = "api"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self._path: Path = ctx.config.api.socket

    async def __aenter__(self) -> Self:
        if not self._path.parent.exists():
            self._path.parent.mkdir(parents=True)
            # every local user reaches the socket (identity is per connection)
            self._path.parent.chmod(0o755)
        _claim_socket_path(self._path)
        self._runner = web.AppRunner(
            make_app(self._ctx),
            access_log=None,
            shutdown_timeout=self._ctx.config.daemon.shutdown_budget_s,
            handle_signals=False,
            keepalive_timeout=IDLE_TIMEOUT_S,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        listener = Listener(self._path, self._runner.server)
        try:
            listener.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._listener = listener
        _log.info("api_listening", socket=str(self._path))
        return self

    async def drain(self) -> None:
        """Stop listening, end event streams, let running requests finish."""
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aexit__(self, *exc: object) -> None:
        await self.drain()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def _claim_socket_path(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse to steal a live one's."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another waltd is already listening on {path}")
