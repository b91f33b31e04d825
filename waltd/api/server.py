"""The API: aiohttp on a unix socket; the caller is known by SO_PEERCRED."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

from waltd import SERVER_VERSION, __version__, log
from waltd.api.identity import Identity, RefusedCaller, identify, peer_credentials
from waltd.registries.base import Credentials, ImageInfo
from waltd.registries.search import SearchResult, search
from waltd.supervisor import Service

if TYPE_CHECKING:
    from waltd.daemon import Context

_log = log.get("api")
CONTEXT = web.AppKey("context", object)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return _error(403, "the API only answers local callers on its unix socket")
    try:
        # The passwd lookups may go to a directory service: not on the event loop.
        request["identity"] = await asyncio.to_thread(identify, *peer_credentials(sock))
    except RefusedCaller as err:
        return _error(403, str(err))
    return await handler(request)


def _caller(request: web.Request) -> Identity:
    identity: Identity = request["identity"]
    return identity


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]  # type: ignore[return-value]


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: the daemon, its services, and who is asking."""
    ctx = _ctx(request)
    config = ctx.config
    caller = _caller(request)
    body: dict[str, Any] = {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - ctx.started_monotonic, 3),
        "caller": {"unix_user": caller.unix_user, "walt_user": caller.walt_user, "uid": caller.uid},
        "services": [s.as_dict() for s in ctx.statuses()],
        "node_network": config.walt_net.interface if config.walt_net else None,
        "registries": [{"label": r.label, "api": r.api, "auth": r.auth} for r in config.registries],
        "nodes": await ctx.db.count_nodes() if ctx.db else None,
    }
    return web.json_response(body)


def _int_query(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not raw.isdigit():
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{key} must be a non-negative integer, not {raw!r}"}),
            content_type="application/json",
        )
    return int(raw)


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: the log's events as newline-delimited JSON.

    `since=N` skips events up to number N, `limit=N` keeps the last N kept ones,
    `follow=1` keeps the stream open for new events.
    """
    bus = _ctx(request).bus
    since = _int_query(request, "since", 0)
    limit = _int_query(request, "limit", 0)
    follow = request.query.get("follow") in ("1", "true", "yes")
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    backlog = bus.recent(since, limit or None)
    for event in backlog:
        await resp.write(_line(event))
    if follow:
        last = backlog[-1]["seq"] if backlog else max(since, bus.last_seq())
        async for event in bus.follow(last):
            await resp.write(_line(event))
    await resp.write_eof()
    return resp


# Logins are for registries: their number and size are bounded, so that a request cannot
# make the log redactor (which hides every password it is given) blank ordinary words.
_MAX_LOGIN_CHARS = 1024
_MIN_PASSWORD_CHARS = 6


def _caller_credentials(body: Any, labels: set[str]) -> dict[str, Credentials]:
    """The caller's registry logins from a request body, for this request only.

    Only configured registries that take a login (`labels`) are kept; a password shorter
    than a few characters is refused, since redacting it would blank ordinary text.
    """
    raw = body.get("credentials") if isinstance(body, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("credentials must map registry labels to {username, password}")
    creds = {}
    for label, value in raw.items():
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("username"), str)
            or not isinstance(value.get("password"), str)
        ):
            raise ValueError(f"credentials for {str(label)[:40]!r} need a username and password")
        if label not in labels:
            continue  # not a registry of this server that takes a login: never used
        username, password = value["username"], value["password"]
        if len(username) + len(password) > _MAX_LOGIN_CHARS:
            raise ValueError(f"the login for {label!r} is too long")
        if len(password) < _MIN_PASSWORD_CHARS:
            raise ValueError(
                f"the password for {label!r} is too short (at least {_MIN_PASSWORD_CHARS} "
                "characters)"
            )
        creds[label] = Credentials(username, password)
    return creds


def image_record(image: ImageInfo) -> dict[str, Any]:
    """An image as the API sends it."""
    return {
        "location": image.location,
        "kind": image.kind,
        "user": image.user,
        "name": image.name,
        "tag": image.tag,
        "digest": image.digest,
        "labels": dict(image.labels),
        "created": image.created,
        "platforms": list(image.platforms),
        "clone_url": image.clone_url,
    }


async def search_images(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/search: progress records, then the result, as NDJSON.

    Body: {"keyword": str | null, "credentials": {label: {username, password}}}; the
    credentials serve this search only and are never stored or logged.
    """
    ctx = _ctx(request)
    try:
        body = await request.json()
        keyword = body.get("keyword") if isinstance(body, dict) else None
        if keyword is not None and (not isinstance(keyword, str) or len(keyword) > 255):
            raise ValueError("keyword must be a string of at most 255 characters")
        logins = {
            r.label for r in ctx.config.registries if r.auth == "basic" or r.api == "docker-hub"
        }
        creds = _caller_credentials(body, logins)
    except ValueError as err:
        return _error(400, f"bad search request: {err}")
    registries = ctx.registry_sources
    if registries is None:
        return _error(503, "the registries are not ready (the daemon is starting or stopping)")
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    pending: list[bytes] = []

    def progress(source: str, status: str, count: int | None) -> None:
        pending.append(
            _line({"type": "progress", "source": source, "status": status, "count": count})
        )

    began = time.monotonic()
    registered: list[str] = []
    task: asyncio.Future[SearchResult] | None = None
    # entered at once: a reload cannot close these sources before the search takes them
    async with registries.using() as sources:
        try:
            for c in creds.values():
                log.redactor.register(c.password)
                registered.append(c.password)
            await resp.prepare(request)
            task = asyncio.ensure_future(search(sources, keyword, creds, progress))
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
            record = {
                "type": "result",
                "server_version": SERVER_VERSION,
                "images": [image_record(i) for i in result.images],
                "warnings": list(result.warnings),
            }
            await resp.write(_line(record))
        finally:
            try:
                # the search must not outlive its request, nor log after its secrets are gone
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            finally:
                for password in registered:
                    log.redactor.forget(password)
    await resp.write_eof()
    return resp


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, default=str).encode() + b"\n"


def make_app(ctx: Context) -> web.Application:
    """The API application for a daemon context."""
    app = web.Application(middlewares=[_identify])
    app[CONTEXT] = ctx
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/images/search", search_images)

    async def end_streams(app: web.Application) -> None:
        ctx.bus.end_followers()

    app.on_shutdown.append(end_streams)
    return app


class ApiService(Service):
    """Serves the API on the configured unix socket (mode 0666: identity is per peer)."""

    name = "api"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._runner: web.AppRunner | None = None
        self._path: Path = ctx.config.api.socket

    async def __aenter__(self) -> Self:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        _claim_socket_path(self._path)
        budget = self._ctx.config.daemon.shutdown_budget_s
        self._runner = web.AppRunner(
            make_app(self._ctx), access_log=None, shutdown_timeout=budget, handle_signals=False
        )
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(self._path), shutdown_timeout=budget)
        await site.start()
        os.chmod(self._path, 0o666)
        _log.info("api_listening", socket=str(self._path))
        return self

    async def drain(self) -> None:
        """Stop listening, end event streams, let running requests finish."""
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
