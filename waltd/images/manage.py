"""The commands on images of the internal repository: show, rename, duplicate, remove and
squash, with their rules.

- Ownership (`ownership.may_change`): a user changes only their own images, root the
  `waltplatform` ones; anyone may read (show, duplicate from) any image.
- Nodes: an image a node uses (the state database's `nodes.image` holds its full name
  `docker.io/<user>/<name>:<tag>`) is not removed or replaced without `force`, and the refusal
  names the nodes; replacing it is refused even then when the new image does not support the
  models of those nodes. A renamed image takes its nodes with it; a removed one leaves them
  without an image.
- Names are checked by names.py; two operations on one name run one after the other
  (`ctx.image_locks`); each operation is all-or-nothing, and once it has started to change
  storage it completes even if its caller leaves.

A refusal is a `Refused` (ValueError, a conflict the user can resolve), a PermissionError
(ownership) or a LookupError (no such image): their messages are for the user.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from waltd import log
from waltd.aio import completed
from waltd.db import Database, Node
from waltd.images import replacing, store
from waltd.images.locks import NameLocks
from waltd.images.ownership import PLATFORM_USER, may_change, may_read
from waltd.images.store import LocalRef, Repository, StoredImage

_log = log.get("images")
Progress = Callable[[str], None]


class Refused(ValueError):
    """An operation refused for a reason the user can act on (the message says how)."""


@dataclass(frozen=True)
class Actor:
    """Who asks: their walt user, and whether they are root (uid 0)."""

    user: str
    is_root: bool

    def shown(self, ref: LocalRef) -> str:
        """`ref` as this user writes it: `<name>[:<tag>]` for their own images."""
        return ref.local if ref.user == self.user else ref.display


@dataclass(frozen=True)
class Handles:
    """What the commands work on (from the daemon's context)."""

    repo: Repository
    db: Database
    locks: NameLocks


@dataclass(frozen=True)
class ShownImage:
    """One line of `walt image show`."""

    image: StoredImage
    nodes: tuple[str, ...]  # names of the nodes using it
    mine: bool
    default: bool  # the default image of a node model (`waltplatform/<model>-default`)


@dataclass(frozen=True)
class Outcome:
    """What an operation did: the image it leaves (as the caller names it), its id and layer
    count, and the nodes it changed (moved to the new name, left without an image, or now
    booting other content)."""

    image: str
    id: str | None
    layers: int | None
    nodes: tuple[str, ...]
    message: str


def is_default_image(ref: LocalRef) -> bool:
    """Whether `ref` is the default image of a node model: `waltplatform/<model>-default`."""
    return ref.user == PLATFORM_USER and ref.name.endswith("-default") and ref.tag == "latest"


async def _nodes_by_image(db: Database) -> dict[str, list[Node]]:
    using: dict[str, list[Node]] = {}
    for node in await db.list_nodes():
        if node.image:
            using.setdefault(node.image, []).append(node)
    return using


def _check_may_change(actor: Actor, ref: LocalRef) -> None:
    refusal = may_change(actor.user, actor.is_root, ref)
    if refusal:
        raise PermissionError(refusal)


async def _existing(repo: Repository, actor: Actor, ref: LocalRef) -> StoredImage:
    image = await store.get(repo, ref)
    if image is None:
        hint = (
            "`walt image show` lists yours"
            if ref.user == actor.user
            else "`walt image show --all` lists every image"
        )
        raise LookupError(f"there is no image {actor.shown(ref)} ({hint})")
    return image


def _check_replace(
    actor: Actor,
    target: LocalRef,
    nodes: list[Node],
    models: tuple[str, ...],
    force: bool,
    command: str,
) -> None:
    """Refused unless `target`, which exists and which `nodes` use, may be replaced by an
    image supporting `models` (`replacing.refusal`)."""
    refusal = replacing.refusal(actor.shown(target), nodes, models, force, command)
    if refusal:
        raise Refused(refusal)


async def show(handles: Handles, actor: Actor, everyone: bool) -> list[ShownImage]:
    """The caller's images; with `everyone`, every image of the repository."""
    images = await store.list_images(handles.repo)
    using = await _nodes_by_image(handles.db)
    return [
        ShownImage(
            image,
            tuple(sorted(node.name for node in using.get(image.ref.full, ()))),
            image.ref.user == actor.user,
            is_default_image(image.ref),
        )
        for image in images
        if everyone or image.ref.user == actor.user
    ]


async def rename(
    handles: Handles, actor: Actor, old_text: str, new_text: str, force: bool
) -> Outcome:
    """Give image OLD the name NEW; the nodes that used OLD follow it."""
    old = LocalRef.parse(old_text, actor.user)
    new = LocalRef.parse(new_text, actor.user)
    _check_may_change(actor, old)
    _check_may_change(actor, new)
    if old == new:
        raise Refused(f"{actor.shown(old)} already has that name")
    command = f"walt image rename --force {actor.shown(old)} {actor.shown(new)}"
    async with handles.locks.hold_all(old.full, new.full):
        image = await _existing(handles.repo, actor, old)
        moving = await handles.db.nodes_using_image(old.full)
        if moving and not force:
            raise Refused(
                f"image {actor.shown(old)} is used by node(s) {replacing.node_names(moving)}: "
                f"renaming it moves them to {actor.shown(new)} (what they boot does not change); "
                f"to do it: {command}"
            )
        if await store.get(handles.repo, new) is not None:
            nodes = await handles.db.nodes_using_image(new.full)
            _check_replace(actor, new, nodes, image.models, force, command)
        return await completed(_rename(handles, actor, image, new))


async def _rename(handles: Handles, actor: Actor, image: StoredImage, new: LocalRef) -> Outcome:
    repo, old = handles.repo, image.ref
    previous = await store.tag(repo, old.full, new)
    try:
        moved = await handles.db.replace_node_image(old.full, new.full)
        try:
            await store.untag(repo, old)
        except BaseException:
            await handles.db.replace_node_image(new.full, old.full)
            raise
    except BaseException:
        # back as it was: `new` names its previous image again, or nothing
        if previous is not None:
            await repo.run(["podman", "tag", previous, new.full])
        else:
            await store.untag(repo, new)
        raise
    if previous is not None and previous != image.id:
        await store.drop_if_unnamed(repo, previous)
    _log.info("image_renamed", image=old.display, new=new.display, nodes=moved)
    moved_text = f"; node(s) {', '.join(moved)} now use it" if moved else ""
    return Outcome(
        actor.shown(new),
        image.id,
        image.layers,
        tuple(moved),
        f"image {actor.shown(old)} is now {actor.shown(new)}{moved_text}",
    )


async def duplicate(
    handles: Handles, actor: Actor, src_text: str, new_text: str, force: bool
) -> Outcome:
    """Give image SRC (anyone's) a second name NEW (the caller's): no copy, the layers are
    shared, and no layer is added."""
    src = LocalRef.parse(src_text, actor.user)
    new = LocalRef.parse(new_text, actor.user)
    refusal = may_read(actor.user, src)
    if refusal:
        raise PermissionError(refusal)
    _check_may_change(actor, new)
    if src == new:
        raise Refused(f"{actor.shown(src)} and {actor.shown(new)} are the same image name")
    command = f"walt image duplicate --force {actor.shown(src)} {actor.shown(new)}"
    async with handles.locks.hold_all(src.full, new.full):
        image = await _existing(handles.repo, actor, src)
        nodes = await handles.db.nodes_using_image(new.full)
        if await store.get(handles.repo, new) is not None:
            _check_replace(actor, new, nodes, image.models, force, command)
        return await completed(_duplicate(handles, actor, image, new, nodes))


async def _duplicate(
    handles: Handles, actor: Actor, image: StoredImage, new: LocalRef, nodes: list[Node]
) -> Outcome:
    previous = await store.tag(handles.repo, image.id, new)
    if previous is not None and previous != image.id:
        await store.drop_if_unnamed(handles.repo, previous)
    _log.info("image_duplicated", image=image.ref.display, new=new.display)
    changed = tuple(sorted(n.name for n in nodes)) if previous not in (None, image.id) else ()
    return Outcome(
        actor.shown(new),
        image.id,
        image.layers,
        changed,
        f"image {actor.shown(image.ref)} duplicated as {actor.shown(new)}",
    )


async def remove(handles: Handles, actor: Actor, text: str, force: bool) -> Outcome:
    """Remove image NAME (the layers go when no other image uses them)."""
    ref = LocalRef.parse(text, actor.user)
    _check_may_change(actor, ref)
    async with handles.locks.hold(ref.full):
        image = await _existing(handles.repo, actor, ref)
        nodes = await handles.db.nodes_using_image(ref.full)
        if nodes and not force:
            raise Refused(
                f"image {actor.shown(ref)} is used by node(s) {replacing.node_names(nodes)}; to "
                f"remove it anyway, leaving them without an image: walt image remove --force "
                f"{actor.shown(ref)}"
            )
        return await completed(_remove(handles, actor, image))


async def _remove(handles: Handles, actor: Actor, image: StoredImage) -> Outcome:
    await store.untag(handles.repo, image.ref)
    try:
        left = await handles.db.replace_node_image(image.ref.full, None)
    except BaseException:
        await handles.repo.run(["podman", "tag", image.id, image.ref.full])
        raise
    await store.drop_if_unnamed(handles.repo, image.id)
    _log.info("image_removed", image=image.ref.display, nodes=left)
    left_text = f"; node(s) {', '.join(left)} have no image now" if left else ""
    return Outcome(
        actor.shown(image.ref),
        None,
        None,
        tuple(left),
        f"image {actor.shown(image.ref)} removed{left_text}",
    )


async def squash(
    handles: Handles, actor: Actor, text: str, force: bool, progress: Progress
) -> Outcome:
    """Make image NAME one layer (same files, same configuration and labels)."""
    ref = LocalRef.parse(text, actor.user)
    _check_may_change(actor, ref)
    repo = handles.repo
    async with handles.locks.hold(ref.full):
        image = await _existing(repo, actor, ref)
        shown = actor.shown(ref)
        if image.layers <= 1:
            return Outcome(
                shown, image.id, image.layers, (), f"image {shown} has one layer already"
            )
        nodes = await handles.db.nodes_using_image(ref.full)
        if nodes:
            command = f"walt image squash --force {shown}"
            _check_replace(actor, ref, nodes, image.models, force, command)
        progress(f"squashing the {image.layers} layers of {shown} into one")
        async with store.staging(repo, ref) as staged:
            container = f"{store.CONTAINER_PREFIX}{secrets.token_hex(8)}"
            await repo.run(["buildah", "from", "--quiet", "--name", container, image.id])
            try:
                await repo.run(["buildah", "commit", "--quiet", "--squash", container, staged])
            finally:
                await repo.run(["buildah", "rm", container])
            made = await store.inspect_id(repo, staged)
            if made is None or made.models != image.models:
                raise Refused(
                    f"the squashed image of {shown} lost its walt.node.models label; "
                    "the image is unchanged"
                )
            progress(f"installing the squashed {shown}")
            await completed(store.install(repo, staged, ref))
    _log.info("image_squashed", image=ref.display, layers=image.layers)
    return Outcome(
        shown,
        made.id,
        made.layers,
        tuple(sorted(n.name for n in nodes)),
        f"image {shown} squashed: {image.layers} layers became {made.layers}",
    )
