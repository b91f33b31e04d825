"""`walt image clone`: an image of a clone URL copied into the caller's images, all or nothing.

The image is copied under a staging name (`store.staging`), checked (it must carry
`walt.node.models`; replacing an image nodes use, the new models must cover theirs), then
tagged into place (`store.install`). On any failure or cancellation the staging name is
discarded: the caller's previous image is as it was. A registry image is checked over the
registry API before the copy, which is pinned to the manifest digest checked; a
single-platform one is then known (id, models) before any byte is copied, and when its name
is free it is copied straight under it (`store.filling`: skopeo names the image only once it
is whole; a failure or cancellation removes it). Sources:

- `walt:user/name[:tag]`: another user's image of the internal repository, copied within
  storage (every layer is held already: nothing is transferred);
- `hub:` and every configured registry label: the registry's images, with the caller's
  login for it (by a temporary auth file);
- `docker:`: the docker daemon at `images.docker-socket`.

Two operations on one destination name are serialised (`ctx.image_locks`); a second request
for the same clone (same source, same destination) joins the one under way (`Clones`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from waltd import log, names
from waltd.aio import SingleFlight
from waltd.context import Context
from waltd.db import Node
from waltd.images import ownership, replacing, store
from waltd.images.copy import Progress, Side, checked_copy, copy
from waltd.images.store import LocalRef
from waltd.registries.base import Credentials, ImageInfo, NotFound, RegistryError, Source
from waltd.registries.docker_daemon import DockerDaemonSource
from waltd.registries.v2.source import RegistryApiSource

_log = log.get("images")

NO_MODELS = "This remote image does not indicate compatible node models."


@dataclass(frozen=True)
class CloneOrder:
    """What to clone (`url`) into which image (`dest`), for whom."""

    url: names.CloneURL
    dest: LocalRef
    force: bool
    caller: str  # walt user
    is_root: bool
    creds: Mapping[str, Credentials] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """Same source, same destination: the same clone."""
        return (str(self.url), self.dest.full)


@dataclass(frozen=True)
class CloneDone:
    """A clone installed: the image, its id and models, whether it replaced one."""

    dest: LocalRef
    url: names.CloneURL
    id: str
    models: tuple[str, ...]
    replaced: bool


@dataclass(frozen=True)
class _Known:
    """What a clone makes, known before the copy: storage id and node models."""

    id: str
    models: tuple[str, ...]


def destination(url: names.CloneURL, name: str | None, caller: str, is_root: bool) -> LocalRef:
    """The image a clone of `url` makes: `name` (`[<user>/]<name>[:<tag>]`), by default the
    URL's name and tag made local names. InvalidName or PermissionError saying why not."""
    if name is None:
        tag = url.tag.lower()
        try:
            dest = LocalRef.parse(f"{names.to_local(url.name)}:{tag}", caller)
        except names.InvalidName as err:
            raise names.InvalidName(
                f"{err}; give the image a name: walt image clone URL NAME"
            ) from None
    else:
        dest = LocalRef.parse(name, caller)
    refusal = ownership.may_change(caller, is_root, dest)
    if refusal is not None:
        raise PermissionError(refusal)
    if url.location == "walt" and url.user == caller:
        raise ValueError(
            f"{url} is one of your own images: cloning it is refused; "
            f"to copy it under another name use: walt image duplicate {url.name} NEW_NAME"
        )
    return dest


async def _source_side(ctx: Context, order: CloneOrder) -> tuple[Side, _Known | None]:
    """Where skopeo reads the image of `order.url`, and the image it makes when known before
    the copy; NotFound, LookupError or ValueError (no compatible node models) when the source
    says so before any copy."""
    url = order.url
    if url.location == "walt":
        ref = LocalRef(url.user, url.name, url.tag)
        if await store.get(ctx.repository, ref) is None:
            raise LookupError(f"no image {ref.display} in the internal repository")
        return Side(f"containers-storage:{ref.full}"), None
    if url.location == "docker":
        socket = ctx.config.images.docker_socket
        if not socket.exists():
            raise LookupError(f"no docker daemon on this server (no socket at {socket})")
        docker = DockerDaemonSource(str(socket))
        await _precheck(docker, order)
        side = Side(docker.transport(url.user, url.name, url.tag), daemon_host=docker.socket)
        return side, None
    async with ctx.registries.using() as sources:
        source = next((s for s in sources if s.label == url.location), None)
    if not isinstance(source, RegistryApiSource):
        raise LookupError(f"no registry {url.location!r} is configured on this server")
    info = await _precheck(source, order)
    ref, image_id = checked_copy(source.transport(url.user, url.name, url.tag), url.tag, info)
    known = _Known(image_id, info.models) if info is not None and image_id is not None else None
    side = Side(
        ref,
        tls_verify=source.tls_verified,
        registry_host=source.registry_host,
        creds=order.creds.get(url.location),
    )
    return side, known


async def _precheck(source: Source, order: CloneOrder) -> ImageInfo | None:
    """Refuse an image the registry shows to be absent or without node models, before any
    byte of it is copied; what the registry said of it, None when it could not say (anything
    else the registry API says is left to the copy itself)."""
    url = order.url
    try:
        info = await source.resolve(url.user, url.name, url.tag, order.creds.get(url.location))
    except NotFound as err:
        raise LookupError(f"no image {url}: {err}") from None
    except RegistryError as err:
        _log.info("clone_precheck_skipped", url=str(url), error=str(err))
        return None
    if not info.is_walt:
        raise ValueError(NO_MODELS)
    return info


def _overwrite_refusal(order: CloneOrder, users: list[Node]) -> str:
    text = f"Image {order.dest.local} already exists: cloning would overwrite it"
    if users:
        text += f" (and reboot the {len(users)} node(s) using it: "
        text += replacing.node_names(users) + ")"
    shown = "" if order.dest.user == order.caller else f"{order.dest.user}/"
    return (
        f"{text}. If this is what you want, use: "
        f"walt image clone --force {order.url} {shown}{order.dest.local}"
    )


async def clone(
    ctx: Context, order: CloneOrder, on_progress: Callable[[Progress], None]
) -> CloneDone:
    """Clone `order.url` into `order.dest` (see the module docstring)."""
    try:
        return await _clone(ctx, order, on_progress)
    except asyncio.CancelledError:
        _log.info("image_clone_cancelled", url=str(order.url), image=order.dest.display)
        raise
    except Exception as err:
        _log.info(
            "image_clone_failed", url=str(order.url), image=order.dest.display, error=str(err)
        )
        raise


async def _clone(
    ctx: Context, order: CloneOrder, on_progress: Callable[[Progress], None]
) -> CloneDone:
    repo = ctx.repository
    async with ctx.image_locks.hold(order.dest.full):
        # both before any copy; independent, so side by side (each is a tool start or a
        # registry round trip)
        looking = asyncio.ensure_future(_source_side(ctx, order))
        try:
            existing = await store.get(repo, order.dest)
            users = await ctx.db.nodes_using_image(order.dest.full) if existing is not None else []
            if existing is not None and not order.force:
                raise FileExistsError(_overwrite_refusal(order, users))
        except BaseException:
            looking.cancel()
            await asyncio.gather(looking, return_exceptions=True)
            raise
        source, known = await looking
        if known is not None and existing is None:
            # checked already, nothing to replace: no staging name to tag and remove
            async with store.filling(repo, order.dest) as name:
                into = Side(f"containers-storage:{name}")
                await copy(repo, source, into, on_progress=on_progress)
        else:
            async with store.staging(repo, order.dest) as staged:
                into = Side(f"containers-storage:{staged}")
                await copy(repo, source, into, on_progress=on_progress)
                if known is None:
                    known = await _inspected(repo, staged)
                missing = replacing.unsupported(users, known.models)
                if missing:
                    raise ValueError(
                        f"refused: {order.dest.local} is used by nodes of model(s) "
                        f"{', '.join(missing)}, which the image of {order.url} does not support "
                        f"(it supports {', '.join(known.models)})"
                    )
                await store.install(repo, staged, order.dest, previous=store.Previous(existing))
    _log.info(
        "image_cloned",
        url=str(order.url),
        image=order.dest.display,
        id=known.id[:12],
        replaced=existing is not None,
    )
    return CloneDone(order.dest, order.url, known.id, known.models, existing is not None)


async def _inspected(repo: store.Repository, staged: str) -> _Known:
    """The staged image's id and node models; ValueError without models."""
    data = await store.inspect_id(repo, staged)
    if data is None:
        raise RuntimeError(f"the copy left no image under {staged}")
    if not data.models:
        raise ValueError(NO_MODELS)
    return _Known(data.id, data.models)


class Clones:
    """The clones under way: a request for a clone under way joins it (its progress from
    then on, its result); the clone is cancelled, and cleans up, once no request waits."""

    def __init__(self) -> None:
        self._flights: SingleFlight[tuple[str, str], CloneDone] = SingleFlight(cancel_unwaited=True)
        self._listeners: dict[tuple[str, str], list[Callable[[Progress], None]]] = {}

    async def run(
        self,
        key: tuple[str, str],
        make: Callable[[Callable[[Progress], None]], Coroutine[Any, Any, CloneDone]],
        on_progress: Callable[[Progress], None],
    ) -> CloneDone:
        """The result of the clone `key`, started with `make(broadcast)` unless under way."""
        listeners = self._listeners.setdefault(key, [])
        listeners.append(on_progress)

        def broadcast(event: Progress) -> None:
            for listener in list(self._listeners.get(key, ())):
                listener(event)

        try:
            return await self._flights.run(key, lambda: make(broadcast))
        finally:
            listeners.remove(on_progress)
            if not listeners and self._listeners.get(key) is listeners:
                del self._listeners[key]
