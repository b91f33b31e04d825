"""Default images: each node model's `waltplatform/<model>-default:latest`, fetched once.

`plan` (pure) says which sources are tried, in which order, with which of the server's
logins, and which are skipped without being contacted (a registry that needs a login the
server has none for). `Fetcher.fetch` makes sure a model's default image is in the
repository:

- one download per image however many callers ask (`aio.SingleFlight` keyed by image);
- at most `images.fetch-concurrency` downloads at once, so several models come in parallel;
  one waiting for its turn has its first source asked already (the check below, an HTTP
  exchange, no download), and copies as soon as its turn comes;
- an image already in the repository (a restart, a crash after the install) is adopted,
  not fetched again;
- sources in configuration order, then the docker daemon, each within
  `images.fetch-timeout-s`: resolved over its API first (absent, or not supporting the
  model: the next source, before any layer is copied), copied by manifest digest (the image
  checked is the image copied). A single-platform image is then fully known (its config,
  labels included, is verified by that digest) and is copied straight under its name, which
  skopeo gives it only once it is whole; any other (a multi-platform image: the model's
  platform; the docker daemon's) goes under a staging name, is checked (`walt.node.models`
  lists the model; the layer bound), then tagged into place (`images/store.py`): never a
  half image under the real name;
- the result is pinned in the database (image, image id, source); when every source fails,
  the status says why and when the next try comes (`images.retry-min-s`, doubling, jittered,
  up to `retry-max-s`), and one error record names each source with its error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from waltd import config as configuration
from waltd import log
from waltd.aio import RetryPolicy, SingleFlight, cancelled
from waltd.context import Context
from waltd.db import ModelStatus
from waltd.images import store
from waltd.images.copy import Side, checked_copy, copy
from waltd.images.store import LocalRef
from waltd.images.tools import ToolError
from waltd.node_events import FetchDone, FetchFailed, FetchSourceFailed, FetchStarted, emit
from waltd.provision import nodes
from waltd.registries.base import Credentials, ImageInfo, NotFound, RegistryError, Source
from waltd.registries.docker_daemon import DockerDaemonSource
from waltd.registries.v2.source import RegistryApiSource

_log = log.get("fetch")
DOCKER = "docker"
# An error shown in a record or the model's status is cut to this (a registry's message is
# outside text).
_ERROR_MAX = 300


@dataclass(frozen=True)
class Attempt:
    """One source to try (`label`: a registry's, or `docker`), with the server's login for it,
    or the reason it is skipped without being contacted."""

    label: str
    creds: Credentials | None = field(default=None, repr=False)
    skip: str | None = None


def plan(
    registries: Sequence[configuration.Registry],
    logins: Mapping[str, Credentials],
    docker_present: bool,
) -> list[Attempt]:
    """The sources of a default image, in order: registries as configured, then the docker
    daemon when there is one. A registry with `auth: basic` is tried only with a login of the
    server's (server.secrets); the hub's login is optional."""
    attempts = []
    for entry in registries:
        login = logins.get(entry.label) if entry.takes_login else None
        if entry.auth == "basic" and login is None:
            reason = (
                f"it needs a login and server.secrets has none for {entry.label!r} "
                "(add one with walt-server-setup)"
            )
            attempts.append(Attempt(entry.label, skip=reason))
        else:
            attempts.append(Attempt(entry.label, creds=login))
    if docker_present:
        attempts.append(Attempt(DOCKER))
    return attempts


def _source_of(step: Attempt, by_label: Mapping[str, Source]) -> Source | None:
    """The source `step` tries; None when it is skipped or not available."""
    return by_label.get(step.label) if step.skip is None else None


def retry_policy(images: configuration.Images) -> RetryPolicy:
    """When a default image is tried again after every source failed."""
    return RetryPolicy(min_s=images.retry_min_s, max_s=images.retry_max_s)


def short(error: BaseException) -> str:
    """An error as one bounded line for records and statuses."""
    if isinstance(error, TimeoutError) and not str(error):
        text = "timed out"
    else:
        text = " ".join((str(error) or type(error).__name__).split())
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 3] + "..."


class SourceFailed(Exception):
    """One source could not give the image (the message says why)."""


# How a source fails: the next one is tried (ValueError: too many layers, a malformed answer).
_SOURCE_ERRORS = (SourceFailed, RegistryError, ToolError, OSError, TimeoutError, ValueError)


class AllSourcesFailed(Exception):
    """Every source failed: `errors` pairs each source with its error; the next try is
    `retry_in_s` away."""

    def __init__(self, image: str, errors: list[tuple[str, str]], retry_in_s: float) -> None:
        listed = "; ".join(f"{source}: {error}" for source, error in errors) or "no source"
        super().__init__(f"no source could give {image}: {listed}")
        self.errors = errors
        self.retry_in_s = retry_in_s


def _same_id(expected: str | None, image_id: str) -> bool:
    return expected is None or expected.removeprefix("sha256:") == image_id.removeprefix("sha256:")


class Fetcher:
    """Fetches default images (see the module docstring); one per daemon."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._flights: SingleFlight[str, ModelStatus] = SingleFlight()
        self._gate = asyncio.Semaphore(ctx.config.images.fetch_concurrency)
        self._gate_size = ctx.config.images.fetch_concurrency

    def reconfigure(self, images: configuration.Images) -> None:
        """Take a new `fetch-concurrency` (downloads under way finish under the old bound)."""
        if images.fetch_concurrency != self._gate_size:
            self._gate = asyncio.Semaphore(images.fetch_concurrency)
            self._gate_size = images.fetch_concurrency

    async def fetch(self, model: str, attempt: int = 0) -> ModelStatus:
        """The ready status of `model`'s default image, fetched unless it is in the repository
        already; AllSourcesFailed when no source could give it (`attempt`: how many tries
        failed before, which sets the next delay)."""
        image = nodes.default_image(model)
        return await self._flights.run(image.full, lambda: self._fetch(model, image, attempt))

    async def close(self) -> None:
        """Cancel the fetches under way (their staging names are discarded)."""
        await self._flights.cancel()

    async def _fetch(self, model: str, image: LocalRef, attempt: int) -> ModelStatus:
        ctx = self._ctx
        async with ctx.image_locks.hold(image.full):
            held = await store.get(ctx.repository, image)
            if held is not None and model in held.models:
                return await self._pin(model, image, held.id, "repository")
            if held is not None:
                # not this model's: fetching would replace what root put there on purpose
                error = f"{image.display} does not list {model} in walt.node.models"
                await self._give_up(model, image, [("repository", error)], attempt)
            async with ctx.registries.using() as sources:
                by_label = {source.label: source for source in sources}
                attempts = plan(ctx.config.registries, ctx.secrets.logins, DOCKER in by_label)
                # while the download bound keeps this one waiting, its first source is asked
                # already: the answer is there when its turn comes
                early = self._early_check(attempts, by_label, model, image)
                try:
                    async with self._gate:
                        await ctx.db.set_model_status(model, nodes.FETCHING, image=image.full)
                        return await self._download(
                            model, image, attempt, attempts, by_label, early
                        )
                finally:
                    if early is not None:
                        await cancelled(early)

    async def _pin(self, model: str, image: LocalRef, image_id: str, source: str) -> ModelStatus:
        status = await self._ctx.db.get_model_status(model)
        if status is not None and status.image_status == nodes.IMAGE_READY:
            if status.image_id == image_id:
                return status
            _log.warning(
                "default_image_changed",
                model=model,
                image=image.display,
                pinned=(status.image_id or "")[:12],
                image_id=image_id[:12],
            )
        return await self._ctx.db.set_model_status(
            model, nodes.IMAGE_READY, image=image.full, image_id=image_id, source=source
        )

    def _early_check(
        self,
        attempts: Sequence[Attempt],
        by_label: Mapping[str, Source],
        model: str,
        image: LocalRef,
    ) -> asyncio.Task[ImageInfo] | None:
        """The first source's answer, asked now when the download bound is reached (the
        caller owns the task: it takes its result or cancels it); None when there is no
        wait or no source to ask."""
        if not self._gate.locked():
            return None
        for step in attempts:
            source = _source_of(step, by_label)
            if source is not None:
                check = self._resolve(source, step, model, image)
                return asyncio.create_task(check, name=f"fetch:check:{model}")
        return None

    @staticmethod
    def _resolve(
        source: Source, step: Attempt, model: str, image: LocalRef
    ) -> Awaitable[ImageInfo]:
        return source.resolve(image.user, image.name, image.tag, step.creds, models=(model,))

    async def _download(
        self,
        model: str,
        image: LocalRef,
        attempt: int,
        attempts: Sequence[Attempt],
        by_label: Mapping[str, Source],
        early: asyncio.Task[ImageInfo] | None,
    ) -> ModelStatus:
        ctx = self._ctx
        errors: list[tuple[str, str]] = []
        for step in attempts:
            source = _source_of(step, by_label)
            if source is None:
                error = step.skip or "not available"
            else:
                emit(ctx.nodes, FetchStarted(model, image.display, step.label))
                started = time.monotonic()
                # the first source tried may have its answer asked already (`_early_check`)
                check = early or self._resolve(source, step, model, image)
                early = None
                try:
                    async with asyncio.timeout(ctx.config.images.fetch_timeout_s):
                        image_id = await self._from(source, step, model, image, check)
                except _SOURCE_ERRORS as err:
                    error = short(err)
                else:
                    status = await self._pin(model, image, image_id, step.label)
                    seconds = round(time.monotonic() - started, 3)
                    emit(ctx.nodes, FetchDone(model, image.display, step.label, image_id, seconds))
                    return status
            errors.append((step.label, error))
            emit(ctx.nodes, FetchSourceFailed(model, image.display, step.label, error))
        await self._give_up(model, image, errors, attempt)

    async def _give_up(
        self, model: str, image: LocalRef, errors: list[tuple[str, str]], attempt: int
    ) -> NoReturn:
        """No source gave the image: the model's status says why and when the next try
        comes, one record names each source's error; AllSourcesFailed."""
        delay = retry_policy(self._ctx.config.images).delay(attempt + 1)
        failed = AllSourcesFailed(image.display, errors, delay)
        await self._ctx.db.set_model_status(
            model,
            nodes.FAILED,
            last_error=short(failed),
            next_retry=time.time() + delay,
            image=image.full,
        )
        emit(self._ctx.nodes, FetchFailed(model, image.display, tuple(errors), round(delay, 3)))
        raise failed

    async def _from(
        self,
        source: Source,
        step: Attempt,
        model: str,
        image: LocalRef,
        check: Awaitable[ImageInfo],
    ) -> str:
        """Copy `image` from one source into the repository once `check` (the source's answer
        about it) allows; its image id. SourceFailed (or the source's own error) when this
        source cannot give it."""
        repo = self._ctx.repository
        user, name, tag = image.user, image.name, image.tag
        try:
            info = await check
        except NotFound as err:
            raise SourceFailed(f"no image {user}/{name}:{tag} there ({err})") from None
        if model not in info.models:
            supported = ", ".join(info.models) or "no node model (no walt.node.models label)"
            raise SourceFailed(f"its {user}/{name}:{tag} supports {supported}, not {model}")
        known: str | None = None  # the image id, when the check tells it before the copy
        if isinstance(source, DockerDaemonSource):
            side = Side(source.transport(user, name, tag), daemon_host=source.socket)
        elif isinstance(source, RegistryApiSource):
            # pinned to the manifest checked; one image's config (labels included) is
            # verified by its digest, which is its id
            ref, known = checked_copy(source.transport(user, name, tag), tag, info)
            side = Side(
                ref,
                tls_verify=source.tls_verified,
                registry_host=source.registry_host,
                creds=step.creds,
            )
        else:
            raise SourceFailed(f"{step.label} cannot be copied from")
        if known is not None:
            # checked already, and the name is free (the caller holds its lock and looked):
            # skopeo names the image only once it is whole
            async with store.filling(repo, image) as full:
                await copy(repo, side, Side(f"containers-storage:{full}"))
            return known
        async with store.staging(repo, image) as staged:
            await copy(repo, side, Side(f"containers-storage:{staged}"), platform=info.platform)
            data = await store.inspect_id(repo, staged)
            if data is None:
                raise SourceFailed(f"the copy left no image under {staged}")
            if model not in data.models:
                raise SourceFailed(f"the image copied does not list {model} in walt.node.models")
            if isinstance(source, DockerDaemonSource) and not _same_id(info.digest, data.id):
                # the daemon's image changed between the check and the copy
                raise SourceFailed("the docker daemon's image changed during the copy")
            store.check_layers(data, image.display)
            await store.install(repo, staged, image, previous=store.Previous(None))
        return data.id
