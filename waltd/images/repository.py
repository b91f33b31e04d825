"""The internal repository as the daemon's services see it: the tools run on its storage.

`Repository` is the handle on the context; `RepositoryService` writes the storage's
configuration files at start and again on reload (the registries may have changed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Self

from waltd import config as configuration
from waltd import log
from waltd.images import tools
from waltd.images.storage import Storage
from waltd.process import Children
from waltd.supervisor import RunningConfig, Service

_log = log.get("images")


class Repository:
    """Runs podman, buildah and skopeo on the configured storage (`daemon.image-storage`)."""

    def __init__(self, children: Children, running: RunningConfig) -> None:
        self._children = children
        self._running = running

    @property
    def storage(self) -> Storage:
        """The storage of the running configuration."""
        return Storage.of(self._running.current)

    async def run(
        self, argv: Sequence[str], *, input: bytes | None = None, secrets: Iterable[str] = ()
    ) -> bytes:
        """One tool command's stdout; ToolError carrying its message when it fails."""
        return await tools.run(self._children, self.storage, argv, input=input, secrets=secrets)

    async def run_json(self, argv: Sequence[str], *, secrets: Iterable[str] = ()) -> Any:
        """One tool command's JSON output."""
        return await tools.run_json(self._children, self.storage, argv, secrets=secrets)


class RepositoryService(Service):
    """Prepares the repository's storage and tool configuration."""

    name = "repository"

    def __init__(self, repository: Repository, running: RunningConfig) -> None:
        self._repository = repository
        self._running = running

    async def __aenter__(self) -> Self:
        storage = self._repository.storage
        await asyncio.to_thread(storage.prepare, self._running.current)
        _log.info("repository_ready", storage=str(storage.graphroot))
        return self

    async def reload(self, config: configuration.Config) -> None:
        """Rewrite the tools' registries file for the new registries."""
        await asyncio.to_thread(self._repository.storage.prepare, config)
