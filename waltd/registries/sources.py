"""The image sources of a configuration: its registries in order, then the docker daemon.

They are built once per configuration (`SourceSet`) and kept while it runs: each registry
source holds a long-lived aiohttp session (connections and TLS sessions reused from one search
to the next) and one bound on its concurrent requests, shared by every search.
`Registries` holds the set of the running configuration; `RegistriesService` keeps it current.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Self

import aiohttp

from waltd import config as configuration
from waltd.registries.artifactory import ArtifactorySource
from waltd.registries.base import Source
from waltd.registries.cache import DigestCache
from waltd.registries.docker_daemon import DockerDaemonSource
from waltd.registries.hub import HubSource
from waltd.registries.limits import SearchLimits
from waltd.registries.v2.client import new_session
from waltd.registries.v2.source import RegistryV2Source
from waltd.supervisor import RunningConfig, Service

_CONCURRENCY = 32  # requests at once per registry
_TIMEOUT_S = 30.0


def registry_source(
    entry: configuration.Registry,
    cache: DigestCache | None,
    session: aiohttp.ClientSession,
    limits: SearchLimits,
) -> Source:
    """The client of one configured registry, its requests sent through `session`."""
    options = {
        "cache": cache,
        "session": session,
        "concurrency": _CONCURRENCY,
        "timeout_s": _TIMEOUT_S,
        "limits": limits,
    }
    if entry.api == "docker-hub":
        urls = {"registry_url": entry.registry_url, "hub_url": entry.hub_url}
        return HubSource(**options, **{k: v for k, v in urls.items() if v})
    make = ArtifactorySource if entry.api == "jfrog-artifactory" else RegistryV2Source
    return make(entry, **options)


class SourceSet:
    """The sources of one configuration, each registry with a session of its own.

    A search takes the sources with `using()`; `close()` ends the sessions once the searches
    using them are over (a reload does not cut a running search short).
    """

    def __init__(self, config: configuration.Config, cache: DigestCache | None) -> None:
        self.registries = config.registries
        self.images = config.images
        # one per registry: each has its own TLS setting and connection pool
        self._sessions = [new_session(_CONCURRENCY, _TIMEOUT_S) for _ in config.registries]
        self._registries = [
            registry_source(entry, cache, session, SearchLimits.of(config.images))
            for entry, session in zip(config.registries, self._sessions, strict=True)
        ]
        self._docker = DockerDaemonSource(str(config.images.docker_socket))
        self._users = 0
        self._closing = False

    def serves(self, config: configuration.Config) -> bool:
        """Whether these are the sources of `config` (its registries and images unchanged)."""
        return config.registries == self.registries and config.images == self.images

    def sources(self) -> list[Source]:
        """Every source, in the order default images are looked for: registries as configured,
        then the docker daemon."""
        # No socket: no docker on this server, which is normal, not worth a warning each time.
        # Looked at each time: a docker daemon may be installed while waltd runs.
        if self.images.docker_socket.exists():
            return [*self._registries, self._docker]
        return list(self._registries)

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[list[Source]]:
        """The sources, kept open until the block ends."""
        self._users += 1
        try:
            yield self.sources()
        finally:
            self._users -= 1
            if self._closing and self._users == 0:
                await self._close_sessions()

    async def close(self) -> None:
        """Close the sessions now, or when the last search using them ends."""
        self._closing = True
        if self._users == 0:
            await self._close_sessions()

    async def _close_sessions(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            await session.close()


class RegistriesNotReady(Exception):
    """The sources are not built yet, or no longer (the daemon is starting or stopping)."""


class Registries:
    """The sources of the running configuration; `RegistriesService` replaces them."""

    def __init__(self, cache: DigestCache | None) -> None:
        self.cache = cache
        self.current: SourceSet | None = None

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[list[Source]]:
        """The sources, kept open until the block ends; RegistriesNotReady without any."""
        sources = self.current
        if sources is None:
            raise RegistriesNotReady(
                "the registries are not ready (the daemon is starting or stopping)"
            )
        async with sources.using() as taken:
            yield taken


class RegistriesService(Service):
    """Keeps `registries` on the running configuration.

    Built at start, rebuilt when a reload changes `registries` or `images` (the old ones
    closed once their searches end), closed at shutdown.
    """

    name = "registries"

    def __init__(self, registries: Registries, running: RunningConfig) -> None:
        self._registries = registries
        self._running = running

    async def __aenter__(self) -> Self:
        self._registries.current = SourceSet(self._running.current, self._registries.cache)
        return self

    async def reload(self, config: configuration.Config) -> None:
        """New sources when `registries` or `images` changed; the old ones closed."""
        old = self._registries.current
        if old is not None and old.serves(config):
            return
        self._registries.current = SourceSet(config, self._registries.cache)
        if old is not None:
            await old.close()

    async def __aexit__(self, *exc: object) -> None:
        old, self._registries.current = self._registries.current, None
        if old is not None:
            await old.close()
        if self._registries.cache is not None:
            await self._registries.cache.flush()  # what searches left to write in the background
