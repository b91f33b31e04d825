"""POST /v1/images/clone and /v1/images/publish: NDJSON copy progress, then the result.

The caller is the connection's identity; the logins in the request serve that operation only.
A caller who leaves cancels its operation (a clone that another request joined goes on for
that one), which then removes what it staged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from waltd import names
from waltd.api import wire
from waltd.api.common import (
    Emit,
    caller,
    caller_credentials,
    context,
    error,
    read_body,
    stream_operation,
)
from waltd.images.clone import CloneOrder, Clones, clone, destination
from waltd.images.copy import Progress
from waltd.images.publish import PublishOrder, publish
from waltd.registries.base import Credentials

CLONES = web.AppKey("clones", Clones)


def _progress(emit: Emit) -> Any:
    def send(event: Progress) -> None:
        emit(
            wire.CopyProgress(event.step, event.id, event.state, event.done, event.total).to_json()
        )

    return send


def _logins(request: web.Request, logins: Mapping[str, wire.Login]) -> dict[str, Credentials]:
    labels = {r.label for r in context(request).config.registries if r.takes_login}
    return caller_credentials(logins, labels)


async def clone_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/clone (`wire.CloneRequest`): `wire.CopyProgress` records, then a
    `wire.CloneResult` or an error record."""
    ctx = context(request)
    who = caller(request)
    try:
        wanted = wire.CloneRequest.from_json(await read_body(request))
        creds = _logins(request, wanted.logins)
        labels = [r.label for r in ctx.config.registries]
        url = names.parse_clone_url(wanted.url, labels)
        dest = destination(url, wanted.name, who.walt_user, who.uid == 0)
    except PermissionError as err:
        return error(403, str(err))
    except ValueError as err:
        return error(400, str(err))
    order = CloneOrder(url, dest, wanted.force, who.walt_user, who.uid == 0, creds)
    clones = request.app[CLONES]

    async def operation(emit: Emit) -> Mapping[str, Any]:
        done = await clones.run(
            order.key, lambda broadcast: clone(ctx, order, broadcast), _progress(emit)
        )
        return wire.CloneResult(
            done.dest.local, str(done.url), done.id, done.models, done.replaced
        ).to_json()

    return await stream_operation(request, operation)


async def publish_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/publish (`wire.PublishRequest`): `wire.CopyProgress` records, then a
    `wire.PublishResult` or an error record."""
    ctx = context(request)
    who = caller(request)
    try:
        wanted = wire.PublishRequest.from_json(await read_body(request))
        creds = _logins(request, wanted.logins)
    except ValueError as err:
        return error(400, str(err))
    order = PublishOrder(wanted.image, wanted.registry, who.walt_user, creds)

    async def operation(emit: Emit) -> Mapping[str, Any]:
        done = await publish(ctx, order, _progress(emit))
        return wire.PublishResult(str(done.url), done.reference).to_json()

    return await stream_operation(request, operation)


def add_routes(app: web.Application) -> None:
    """The clone and publish routes, and the clones under way."""
    app[CLONES] = Clones()
    app.router.add_post("/v1/images/clone", clone_image)
    app.router.add_post("/v1/images/publish", publish_image)
