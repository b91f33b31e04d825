"""What the API's handler modules share: the context key, the caller, bounded bodies, error
answers, the caller's logins, and the NDJSON stream of a long operation.

server.py and the handler modules (images_*.py, nodes.py) import it; it imports none of
them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from waltd.api import wire
from waltd.api.identity import Identity
from waltd.context import Context
from waltd.images.tools import ToolError
from waltd.registries.base import Credentials

CONTEXT = web.AppKey("context", Context)
# The caller of a request, set by the server's identity middleware.
IDENTITY = web.RequestKey("identity", Identity)
# A request body must have arrived within this many seconds.
BODY_TIMEOUT_S = 10.0
# A password too short to be a real one is refused, as the operations' own messages are
# scrubbed of the passwords they used (search.py, images/tools.py).
MIN_PASSWORD_CHARS = 6
# How often a streaming handler looks whether its caller is still there.
_CALLER_CHECK_S = 0.2


def error(status: int, message: str) -> web.Response:
    """A JSON error answer `{"error": message}`."""
    return web.json_response({"error": message}, status=status)


def caller(request: web.Request) -> Identity:
    """Who asked (SO_PEERCRED, set by the server's middleware)."""
    identity = request[IDENTITY]
    return identity


def context(request: web.Request) -> Context:
    """The daemon's context."""
    return request.app[CONTEXT]


async def read_body(request: web.Request) -> Any:
    """The request's JSON body, bounded in size, nesting and time; ValueError otherwise."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ValueError(f"the request body is over {wire.MAX_BODY_BYTES} bytes") from None
    except TimeoutError:
        raise ValueError(f"the request body took more than {BODY_TIMEOUT_S:g} s") from None
    return wire.decode_body(data)


def caller_credentials(
    logins: Mapping[str, wire.Login], labels: set[str]
) -> dict[str, Credentials]:
    """The caller's registry logins, for this request only.

    Only configured registries that take a login (`labels`) are kept; a password shorter
    than a few characters is refused, since scrubbing it would blank ordinary text.
    """
    creds = {}
    for label, login in logins.items():
        if label not in labels:
            continue  # not a registry of this server that takes a login: never used
        if len(login.password) < MIN_PASSWORD_CHARS:
            raise ValueError(
                f"the password for {label!r} is too short (at least {MIN_PASSWORD_CHARS} "
                "characters)"
            )
        creds[label] = Credentials(login.username, login.password)
    return creds


Emit = Callable[[Mapping[str, Any]], None]


async def stream_operation(
    request: web.Request, operation: Callable[[Emit], Awaitable[Mapping[str, Any]]]
) -> web.StreamResponse:
    """Run `operation` for the caller as an NDJSON stream: each record it emits (progress),
    then its result record, or `{"type": "error", "error": ...}` when it raises a ValueError,
    LookupError, PermissionError, OSError or ToolError (their messages are for the user).

    A caller who leaves (the connection closing) cancels the operation, which cleans up.
    """
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    pending: list[bytes] = []
    task = asyncio.ensure_future(operation(lambda record: pending.append(wire.line(record))))
    try:
        while not task.done():
            await asyncio.wait([task], timeout=_CALLER_CHECK_S)
            if request.transport is None or request.transport.is_closing():
                return resp  # the caller went away: the operation ends (finally)
            while pending:
                await resp.write(pending.pop(0))
        while pending:
            await resp.write(pending.pop(0))
        try:
            result = task.result()
        except (ValueError, LookupError, PermissionError, OSError, ToolError) as err:
            result = {"type": "error", "error": str(err)}
        await resp.write(wire.line(result))
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await resp.write_eof()
    return resp
