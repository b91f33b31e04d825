"""The internal repository as the daemon's services see it: the tools run on its storage.

`Repository` is the handle on the context; `RepositoryService` writes the storage's
configuration files at start and again on reload (the registries may have changed), and
at start removes the staging images a crash left (`store.cleanup_staging`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from waltd import config as configuration
from waltd import log
from waltd.images import store, tools
from waltd.images.mounts import Holds
from waltd.images.storage import Storage
from waltd.process import Children
from waltd.supervisor import RunningConfig, Service

_log = log.get("images")


class Repository:
    """Runs podman, buildah and skopeo on the configured storage (`daemon.image-storage`)."""

    def __init__(self, children: Children, running: RunningConfig) -> None:
        self._children = children
        self._running = running
        # the images mounted for the nodes (under exports.root) outlive any deletion
        self.holds = Holds(self, self._exports_root)

    def _exports_root(self) -> Path:
        return self._running.current.exports.root

    @property
    def storage(self) -> Storage:
        """The storage of the running configuration."""
        return Storage.of(self._running.current)

    async def run(
        self, argv: Sequence[str], *, input: bytes | None = None, secrets: Iterable[str] = ()
    ) -> bytes:
        """One tool command's stdout; ToolError carrying its message when it fails."""
        return await tools.run(self._children, self.storage, argv, input=input, secrets=secrets)

    async def run_streaming(
        self,
        argv: Sequence[str],
        on_output: Callable[[bytes], None],
        *,
        secrets: Iterable[str] = (),
    ) -> None:
        """One tool command whose terminal output reaches `on_output` as it comes."""
        await tools.run_streaming(self._children, self.storage, argv, on_output, secrets=secrets)

    async def run_json(self, argv: Sequence[str], *, secrets: Iterable[str] = ()) -> Any:
        """One tool command's JSON output."""
        return await tools.run_json(self._children, self.storage, argv, secrets=secrets)

    def deleting(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A block that may delete images: the images mounted for the nodes are kept
        (`Holds.deleting`)."""
        return self.holds.deleting()


class RepositoryService(Service):
    """Prepares the repository's storage and tool configuration."""

    name = "repository"

    def __init__(self, repository: Repository, running: RunningConfig) -> None:
        self._repository = repository
        self._running = running

    async def __aenter__(self) -> Self:
        storage = self._repository.storage
        await asyncio.to_thread(storage.prepare, self._running.current)
        # what a crash left half made (no operation runs yet: the API starts after this)
        try:
            used = await asyncio.to_thread(storage.written)
            # a storage never written holds nothing to clean: no tool run, a quicker start
            removed = await store.cleanup_staging(self._repository) if used else 0
        except (tools.ToolError, OSError) as err:
            # the daemon still serves what needs no tool (search, nodes); image commands
            # report the same failure to their callers
            _log.warning("repository_cleanup_failed", error=str(err))
            removed = 0
        await asyncio.to_thread(storage.remove_work_left)
        _log.info("repository_ready", storage=str(storage.graphroot), staging_removed=removed)
        return self

    async def reload(self, config: configuration.Config) -> None:
        """Rewrite the tools' registries file for the new registries."""
        await asyncio.to_thread(self._repository.storage.prepare, config)
