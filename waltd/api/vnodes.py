"""Virtual nodes: POST /v1/nodes/create and /v1/nodes/remove, GET /v1/nodes/console.

Any local user may create a virtual node (within the per-user bound of
`provision/vnodes.py`); its creator or root may remove it. Consoles are readable by any
local user, as the `vnode.console` records of the event stream are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from waltd.api import wire
from waltd.api.common import Emit, caller, context, error, read_body, stream_operation
from waltd.provision import vnodes

# How often a console stream with nothing to send looks whether its reader is still there.
_CALLER_CHECK_S = 1.0


async def _operation(request: web.Request, create: bool) -> web.StreamResponse:
    try:
        wanted = wire.VNodeRequest.from_json(await read_body(request))
    except ValueError as err:
        return error(400, f"bad request: {err}")
    handle = context(request).vnodes
    uid = caller(request).uid

    async def operation(emit: Emit) -> Mapping[str, Any]:
        try:
            if create:
                done = await handle.create(wanted.name, uid)
                message = f"Node {done.name} created (MAC {done.mac}); it is booting."
            else:
                done = await handle.remove(wanted.name, uid)
                message = f"Node {done.name} removed."
        except vnodes.VNodeError as err:
            return wire.OperationError(str(err)).to_json()
        return wire.VNodeResult(done.name, done.mac, message).to_json()

    return await stream_operation(request, operation)


async def create_node(request: web.Request) -> web.StreamResponse:
    """POST /v1/nodes/create (`wire.VNodeRequest`): a `wire.VNodeResult` once QEMU runs."""
    return await _operation(request, create=True)


async def remove_node(request: web.Request) -> web.StreamResponse:
    """POST /v1/nodes/remove (`wire.VNodeRequest`): a `wire.VNodeResult` once it is gone."""
    return await _operation(request, create=False)


async def console(request: web.Request) -> web.StreamResponse:
    """GET /v1/nodes/console (`wire.ConsoleQuery`): the lines kept, then with `follow` new
    ones until the node is removed, the daemon stops or the reader leaves."""
    try:
        query = wire.ConsoleQuery.from_query(request.query)
        screen = context(request).vnodes.console(query.name)
    except ValueError as err:
        return error(400, f"bad console query: {err}")
    except LookupError as err:
        return error(404, str(err))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    try:
        with screen.follow() as (backlog, follower):
            for line in backlog:
                await resp.write(wire.line(wire.ConsoleLine(line.seq, line.line).to_json()))
            while query.follow:
                try:
                    item = await asyncio.wait_for(follower.get(), _CALLER_CHECK_S)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        return resp
                    continue
                if item is None:
                    break
                if isinstance(item, vnodes.ConsoleDropped):
                    record = wire.ConsoleDropped(item.count).to_json()
                else:
                    record = wire.ConsoleLine(item.seq, item.line).to_json()
                await resp.write(wire.line(record))
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the reader left: nothing more to send
    return resp


def add_routes(app: web.Application) -> None:
    """The routes of `walt node create`, `remove` and `console`."""
    app.router.add_post("/v1/nodes/create", create_node)
    app.router.add_post("/v1/nodes/remove", remove_node)
    app.router.add_get("/v1/nodes/console", console)
