"""GET /v1/images (`walt image show`) and POST /v1/images/{rename,duplicate,remove,squash}.

The caller is the connection's identity (root is uid 0); the rules are those of
`images/manage.py`. A malformed body is answered 400; the operations stream NDJSON
(`common.stream_operation`): steps, then the result or an error record, which says why
(a name the grammar refuses and what it allows, someone else's image, no such image, an
image in use and by which nodes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from waltd.api import wire
from waltd.api.common import Emit, caller, context, error, read_body, stream_operation
from waltd.api.listener import ROOT_UID
from waltd.images import manage
from waltd.images.manage import Actor, Handles, Outcome
from waltd.images.tools import ToolError


def _actor(request: web.Request) -> Actor:
    who = caller(request)
    return Actor(who.walt_user, who.uid == ROOT_UID)


def _handles(request: web.Request) -> Handles:
    ctx = context(request)
    return Handles(ctx.repository, ctx.db, ctx.image_locks)


def _row(shown: manage.ShownImage) -> wire.StoredImageRow:
    image = shown.image
    return wire.StoredImageRow(
        user=image.ref.user,
        name=image.ref.name,
        tag=image.ref.tag,
        id=image.id,
        created=image.created,
        size=image.size,
        layers=image.layers,
        models=image.models,
        nodes=shown.nodes,
        mine=shown.mine,
        default=shown.default,
        clone_url=image.ref.clone_url,
    )


async def list_images(request: web.Request) -> web.Response:
    """GET /v1/images[?all=1]: `wire.ImageListing` of the caller's images, or every image."""
    everyone = request.query.get("all") in ("1", "true", "yes")
    try:
        shown = await manage.show(_handles(request), _actor(request), everyone)
    except ToolError as err:
        return error(500, f"cannot read the image repository: {err}")
    return web.json_response(wire.ImageListing(tuple(_row(s) for s in shown)).to_json())


def _result(outcome: Outcome) -> Mapping[str, Any]:
    return wire.OperationResult(
        outcome.image, outcome.id, outcome.layers, outcome.nodes, outcome.message
    ).to_json()


Operation = Callable[[Handles, Actor, wire.ImageOperation, Emit], Awaitable[Outcome]]


def _operation(run: Operation, needs_new: bool) -> Callable[[web.Request], Awaitable[Any]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            wanted = wire.ImageOperation.from_json(await read_body(request))
        except ValueError as err:
            return error(400, f"bad request: {err}")
        if needs_new != (wanted.new is not None):
            what = "a new name is required" if needs_new else "no new name is taken"
            return error(400, f"bad request: {what}")
        handles, actor = _handles(request), _actor(request)

        async def operation(emit: Emit) -> Mapping[str, Any]:
            return _result(await run(handles, actor, wanted, emit))

        return await stream_operation(request, operation)

    return handler


async def _rename(h: Handles, a: Actor, op: wire.ImageOperation, emit: Emit) -> Outcome:
    return await manage.rename(h, a, op.image, op.new or "", op.force)


async def _duplicate(h: Handles, a: Actor, op: wire.ImageOperation, emit: Emit) -> Outcome:
    return await manage.duplicate(h, a, op.image, op.new or "", op.force)


async def _remove(h: Handles, a: Actor, op: wire.ImageOperation, emit: Emit) -> Outcome:
    return await manage.remove(h, a, op.image, op.force)


async def _squash(h: Handles, a: Actor, op: wire.ImageOperation, emit: Emit) -> Outcome:
    def step(text: str) -> None:
        emit(wire.OperationStep(text).to_json())

    return await manage.squash(h, a, op.image, op.force, step)


def add_routes(app: web.Application) -> None:
    """The routes of `walt image show, rename, duplicate, remove, squash`."""
    app.router.add_get("/v1/images", list_images)
    app.router.add_post("/v1/images/rename", _operation(_rename, needs_new=True))
    app.router.add_post("/v1/images/duplicate", _operation(_duplicate, needs_new=True))
    app.router.add_post("/v1/images/remove", _operation(_remove, needs_new=False))
    app.router.add_post("/v1/images/squash", _operation(_squash, needs_new=False))
