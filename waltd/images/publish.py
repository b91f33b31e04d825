"""`walt image publish`: one of the caller's images pushed to a configured registry.

The registry: the one given, else the only one configured. The remote name: on Docker Hub
`<hub user>/<name>:<tag>`; on a v2 registry `<walt user>/<name>:<tag>` without auth and
`<registry user>/<name>:<tag>` with it; on Artifactory `<repository>/<name>:<tag>`. The
caller's login reaches skopeo by a temporary auth file; the manifest is Docker schema 2.
Publishing to the hub also updates `<hub user>/walt_metadata:latest`, whose label `metadata`
(base64 JSON `{"walt.user.images": {"<user>/<name>:<tag>": {"labels": {...}}}}`) is how WalT
clients of the hub find a user's images: the old entries are kept, this image's replaced.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from waltd import config as configuration
from waltd import log, names
from waltd.context import Context
from waltd.images import store
from waltd.images.copy import Progress, Side, copy
from waltd.images.store import LocalRef
from waltd.registries.base import Credentials, NotFound, RegistryError
from waltd.registries.hub import (
    METADATA_KEY,
    METADATA_LABEL,
    METADATA_REPO,
    HubSource,
    MetadataError,
    parse_walt_metadata,
)
from waltd.registries.v2.source import RegistryApiSource

_log = log.get("images")
# The descriptions column of the registry choice's error
_HEADERS = ("Registry", "Description")


@dataclass(frozen=True)
class PublishOrder:
    """Which image (`text`, as the caller wrote it) to publish where (`registry`: a label,
    None for the only one), for whom."""

    text: str
    registry: str | None
    caller: str
    creds: Mapping[str, Credentials] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Published:
    """Where the image went: its clone URL and its registry reference."""

    url: names.CloneURL
    reference: str


def _choices(entries: tuple[configuration.Registry, ...]) -> str:
    width = max([len(_HEADERS[0]), *(len(e.label) for e in entries)])
    lines = [f"{_HEADERS[0]:<{width}} | {_HEADERS[1]}"]
    lines += [f"{e.label:<{width}} | {e.description}" for e in entries]
    return "\n".join(lines)


def choose_registry(
    entries: tuple[configuration.Registry, ...], wanted: str | None
) -> configuration.Registry:
    """The registry to publish to; ValueError listing `Registry | Description` otherwise."""
    if not entries:
        raise ValueError("no registry is configured on this server: there is nowhere to publish")
    if wanted is None:
        if len(entries) == 1:
            return entries[0]
        raise ValueError(
            "several registries are configured: choose one with --registry LABEL\n"
            + _choices(entries)
        )
    for entry in entries:
        if entry.label == wanted:
            return entry
    raise ValueError(f"no registry labelled {wanted!r}; the registries are:\n" + _choices(entries))


def remote_user(entry: configuration.Registry, caller: str, creds: Credentials | None) -> str:
    """The first path component of the published image (see the module docstring)."""
    if entry.api == "jfrog-artifactory":
        assert entry.repository is not None  # the configuration requires it
        return entry.repository
    if entry.api == "docker-hub" or entry.auth == "basic":
        if creds is None:
            where = "Docker Hub" if entry.api == "docker-hub" else f"registry {entry.label}"
            raise PermissionError(
                f"publishing to {where} needs your login for it (~/.walt/config, "
                f"registries.{entry.label}, or a prompt on a terminal)"
            )
        user = creds.username.lower()
        if not names.is_path_component(user):
            raise ValueError(f"the login name {creds.username!r} cannot name an image path")
        return user
    return caller


def _side(source: RegistryApiSource, path: str, tag: str, creds: Credentials | None) -> Side:
    host = source.registry_host
    return Side(
        f"docker://{host}/{path}:{tag}",
        tls_verify=source.tls_verified,
        registry_host=host,
        creds=creds,
    )


async def publish(
    ctx: Context, order: PublishOrder, on_progress: Callable[[Progress], None]
) -> Published:
    """Publish the caller's image (see the module docstring)."""
    ref = LocalRef.parse(order.text, order.caller)
    if ref.user != order.caller:
        raise PermissionError(
            f"{ref.display} is not one of your images: you may publish only your own "
            "(clone it first)"
        )
    entry = choose_registry(ctx.config.registries, order.registry)
    creds = order.creds.get(entry.label)
    user = remote_user(entry, order.caller, creds)
    async with ctx.registries.using() as sources:
        source = next((s for s in sources if s.label == entry.label), None)
    if not isinstance(source, RegistryApiSource):
        raise LookupError(f"registry {entry.label} is not ready (the daemon is reloading)")
    async with ctx.image_locks.hold(ref.full):
        image = await store.get(ctx.repository, ref)
        if image is None:
            raise LookupError(f"you have no image {ref.local}")
        path = f"{user}/{ref.name}"
        dest = _side(source, path, ref.tag, creds)
        await copy(
            ctx.repository,
            Side(f"containers-storage:{ref.full}"),
            dest,
            on_progress=on_progress,
            manifest_format="v2s2",
        )
    if isinstance(source, HubSource):
        await _update_hub_metadata(ctx, source, user, ref, image.labels, creds)
    url = names.CloneURL(entry.label, user, ref.name, ref.tag)
    reference = dest.ref.removeprefix("docker://")
    _log.info("image_published", image=ref.display, registry=entry.label, reference=reference)
    return Published(url, reference)


def render_metadata(images: Mapping[tuple[str, str], Mapping[str, str]], owner: str) -> str:
    """The `metadata` label value for `owner`'s images, labels by (name, tag) (pure)."""
    entries = {
        f"{owner}/{name}:{tag}": {"labels": dict(labels)}
        for (name, tag), labels in sorted(images.items())
    }
    text = json.dumps({METADATA_KEY: entries}, sort_keys=True)
    return base64.b64encode(text.encode()).decode()


async def _update_hub_metadata(
    ctx: Context,
    source: HubSource,
    user: str,
    ref: LocalRef,
    labels: Mapping[str, str],
    creds: Credentials | None,
) -> None:
    """`<user>/walt_metadata:latest` listing this image too (see the module docstring)."""
    images: dict[tuple[str, str], Mapping[str, str]] = {}
    try:
        info = await source.resolve(user, METADATA_REPO, "latest", creds)
        images.update(parse_walt_metadata(user, info.labels.get(METADATA_LABEL, "")).images)
    except NotFound:
        pass  # the first image this user publishes
    except MetadataError as err:
        # unreadable: rewritten from this image alone rather than left broken
        _log.warning("hub_metadata_replaced", user=user, error=str(err))
    except RegistryError as err:
        raise LookupError(f"cannot read {user}/{METADATA_REPO} on the hub: {err}") from None
    images[ref.name, ref.tag] = dict(labels)
    value = render_metadata(images, user)
    repo = ctx.repository
    staging_ref = LocalRef(user, METADATA_REPO.replace("_", "-"))
    container = f"{store.CONTAINER_PREFIX}{secrets.token_hex(8)}"
    async with store.staging(repo, staging_ref) as staged:
        await repo.run(["buildah", "from", "--name", container, "scratch"])
        try:
            label = ["--label", f"{METADATA_LABEL}={value}"]
            await repo.run(["buildah", "config", *label, container])
            await repo.run(
                ["buildah", "commit", "--quiet", "--format", "docker", container, staged]
            )
        finally:
            await repo.run(["buildah", "rm", container])
        dest = _side(source, f"{user}/{METADATA_REPO}", "latest", creds)
        await copy(repo, Side(f"containers-storage:{staged}"), dest, manifest_format="v2s2")
