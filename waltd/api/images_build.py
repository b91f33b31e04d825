"""POST /v1/images/build (`wire.BuildRequest`): build one of the caller's images from a tar
the client sends, or from a git repository; buildah's output as `wire.BuildProgress`
records, then `wire.BuildResult` or an error record (NDJSON).

The tar is received into the build's private folder, bounded in size and time, before any of
it is unpacked (waltd/images/build.py checks each member). The image name is the caller's:
`name` without a user builds `<caller>/<name>`, and another user's name is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from waltd import log
from waltd.api import wire
from waltd.api.common import Emit, caller, context, error, stream_operation
from waltd.api.identity import Identity
from waltd.images import build, ownership
from waltd.images.store import LocalRef
from waltd.names import check_git_url, parse_sub_dir
from waltd.process import Children

_log = log.get("api")
# The build context's upload: no data for this long, or the whole upload longer, is refused.
UPLOAD_IDLE_S = 60.0
UPLOAD_TIMEOUT_S = 1800.0
_CHUNK = 1024**2


async def receive_tar(request: web.Request, path: Path, limit: int) -> None:
    """The request body into `path`, at most `limit` bytes, within the time bounds;
    ValueError saying which bound failed or that the upload broke off."""
    received = 0
    with path.open("wb") as out:
        try:
            async with asyncio.timeout(UPLOAD_TIMEOUT_S):
                while True:
                    async with asyncio.timeout(UPLOAD_IDLE_S):
                        chunk = await request.content.read(_CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > limit:
                        raise ValueError(
                            f"the build context is over {limit // 1024**2} MiB, the limit"
                        )
                    await asyncio.to_thread(out.write, chunk)
        except TimeoutError:
            raise ValueError(
                f"the build context did not arrive in time (nothing for {UPLOAD_IDLE_S:g} s, "
                f"or more than {UPLOAD_TIMEOUT_S:g} s in all)"
            ) from None
        except (aiohttp.ClientError, OSError) as err:
            raise ValueError(f"the build context broke off ({err})") from None


async def _context(
    children: Children,
    who: Identity,
    url: str | None,
    sub_dir: str,
    work: Path,
    line: Callable[[str], None],
) -> Path:
    """The build context in `work`: the received tar unpacked, or the repository fetched."""
    if url is None:
        folder = work / "context"
        folder.mkdir(mode=0o700)
        await asyncio.to_thread(build.unpack, work / "context.tar", folder)
        (work / "context.tar").unlink()
        return folder
    line(f"fetching {url}")
    fetched = await build.fetch_git(children, url, work, who.uid, who.gid)
    return build.inside(fetched, sub_dir)


async def build_image(request: web.Request) -> web.StreamResponse:
    """POST /v1/images/build."""
    ctx = context(request)
    who = caller(request)
    try:
        wanted = wire.BuildRequest.from_query(request.query)
        ref = LocalRef.parse(wanted.name, who.walt_user)
        url = None if wanted.url is None else check_git_url(wanted.url)
        sub_dir = parse_sub_dir(wanted.sub_dir or "")
    except ValueError as err:
        return error(400, f"bad build request: {err}")
    refusal = ownership.may_change(who.walt_user, who.uid == 0, ref)
    if refusal:
        return error(403, refusal)
    if url is None and request.content_type != "application/x-tar":
        return error(400, "bad build request: send the build context as application/x-tar")
    async with build.work_folder(ctx.repository) as work:
        if url is None:
            try:
                await receive_tar(request, work / "context.tar", wire.MAX_BUILD_CONTEXT_BYTES)
            except ValueError as err:
                return error(400, str(err))

        async def operation(emit: Emit) -> Mapping[str, Any]:
            def line(text: str) -> None:
                emit(wire.BuildProgress(text).to_json())

            try:
                folder = await _context(ctx.children, who, url, sub_dir, work, line)
                built = await build.build(
                    ctx.repository,
                    ctx.image_locks,
                    ctx.db,
                    caller=who.walt_user,
                    ref=ref,
                    force=wanted.force,
                    context=folder,
                    work=work,
                    on_line=line,
                )
            except ValueError as err:
                _log.info("image_build_failed", image=ref.display, error=str(err))
                raise
            shown = built.ref.local if ref.user == who.walt_user else built.ref.display
            return wire.BuildResult(shown, built.id, built.models, built.replaced).to_json()

        return await stream_operation(request, operation)


def add_routes(app: web.Application) -> None:
    """The build route."""
    app.router.add_post("/v1/images/build", build_image)
