"""The provisioning service: moves nodes along their states as node events and fetches come.

Detection records each lease and publishes `NodeSeen`; this service reads those events
(its own subscription) and:

- a node `waiting` whose image is there (its own, or its model's default image, ready) is
  moved to `ready` (`node.ready`);
- otherwise its model's default image is wanted: the first time a model is seen,
  `model.new`; one pursuit per model fetches it (`fetch.Fetcher`) and, after a total
  failure, waits for the next try (or a reload, which retries at once);
- when a default image lands, every node of that model still waiting becomes ready, with
  no new DHCP.

At start, and on a `Resync` (events were dropped), it rebuilds from the database: pinned
default images are checked against the repository (gone: fetched again), interrupted
fetches are resumed, and every waiting node is settled.
"""

from __future__ import annotations

import asyncio
import contextlib

from waltd import config as configuration
from waltd import log
from waltd.context import Context
from waltd.db import ModelStatus, Node
from waltd.images import store
from waltd.images.tools import ToolError
from waltd.node_events import ModelNew, NodeEvent, NodeSeen, emit
from waltd.provision import nodes
from waltd.provision.fetch import AllSourcesFailed, Fetcher, retry_policy, short
from waltd.provision.following import NodeEventService
from waltd.registries.sources import RegistriesNotReady

_log = log.get("provision")


class ProvisioningService(NodeEventService):
    """Node states and default images (see the module docstring)."""

    name = "provision"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._fetcher = Fetcher(ctx)
        self._pursuits: dict[str, asyncio.Task[None]] = {}
        # set (and replaced) on reload: pursuits waiting to retry try again at once
        self._retry_now = asyncio.Event()

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        await self._fetcher.close()

    async def handle(self, event: NodeEvent) -> None:
        """A node seen: settled if it waits."""
        if isinstance(event, NodeSeen) and event.model is not None:
            await self._seen(event)

    def stopped(self) -> None:
        """The pursuits ended with the service's tasks."""
        self._pursuits.clear()

    async def reload(self, config: configuration.Config) -> None:
        """New fetch bounds; every model waiting for a retry is tried again now (its sources
        may have changed)."""
        self._fetcher.reconfigure(config.images)
        wake, self._retry_now = self._retry_now, asyncio.Event()
        wake.set()

    async def _seen(self, event: NodeSeen) -> None:
        node = await self._ctx.db.get_node(event.mac)
        if node is not None and node.state == nodes.WAITING:
            await self._settle(node)

    async def _settle(self, node: Node) -> None:
        """A waiting node: ready when its image is there, else its model's image wanted."""
        assert node.model is not None
        if node.image is not None:
            await self._make_ready(node, node.image)
            return
        status = await self._ctx.db.get_model_status(node.model)
        if status is not None and status.image_status == nodes.IMAGE_READY and status.image:
            await self._make_ready(node, status.image)
            return
        if status is None:
            image = nodes.default_image(node.model)
            await self._ctx.db.set_model_status(node.model, nodes.MISSING, image=image.full)
            emit(self._ctx.nodes, ModelNew(node.model, image.display))
        self._want(node.model)

    async def _make_ready(self, node: Node, image: str) -> None:
        ready = await self._ctx.db.set_node_state(
            node.mac, nodes.READY, image=image, expect=nodes.WAITING
        )
        if ready is not None:  # else it left `waiting` meanwhile (its lease ended)
            emit(self._ctx.nodes, nodes.state_event(ready))

    def _want(self, model: str) -> None:
        """One pursuit per model: started unless one runs."""
        running = self._pursuits.get(model)
        if running is not None and not running.done():
            return
        assert self._tasks is not None
        self._pursuits[model] = self._tasks.create_task(self._pursue(model), name=f"fetch-{model}")

    async def _pursue(self, model: str) -> None:
        """Fetch `model`'s default image until it is there, then make its nodes ready."""
        failures = 0
        while True:
            wake = self._retry_now
            try:
                status = await self._fetcher.fetch(model, failures)
                break
            except AllSourcesFailed as err:
                delay = err.retry_in_s
            except (RegistriesNotReady, ToolError, OSError) as err:
                # the repository or registries are not usable right now (logged once here)
                delay = retry_policy(self._ctx.config.images).delay(failures + 1)
                _log.error("default_image_unavailable", model=model, error=short(err))
            failures += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
        await self._image_ready(model, status)

    async def _image_ready(self, model: str, status: ModelStatus) -> None:
        assert status.image is not None
        # one transaction for all its nodes, not a database round trip each
        db = self._ctx.db
        for node in await db.move_nodes(model, nodes.WAITING, nodes.READY, image=status.image):
            emit(self._ctx.nodes, nodes.state_event(node))

    async def rebuild(self) -> None:
        """Settle everything from the database (at start, and after a Resync)."""
        db = self._ctx.db
        for status in await db.list_models():
            if status.image_status == nodes.IMAGE_READY:
                await self._check_pinned(status)
            elif status.image_status in (nodes.FETCHING, nodes.FAILED):
                self._want(status.model)  # an interrupted or failed fetch goes on
        for node in await db.nodes_in_state(nodes.WAITING):
            if node.model is not None:
                await self._settle(node)

    async def _check_pinned(self, status: ModelStatus) -> None:
        """A ready default image must still be in the repository; gone, it is fetched again
        (a different image under its name is adopted by the fetch, with a warning)."""
        image = nodes.default_image(status.model)
        try:
            held = await store.get(self._ctx.repository, image)
        except ToolError as err:
            _log.warning("default_image_unchecked", model=status.model, error=short(err))
            return
        if held is not None and held.id == status.image_id:
            return
        if held is None:
            _log.warning("default_image_missing", model=status.model, image=image.display)
            await self._ctx.db.set_model_status(status.model, nodes.MISSING, image=image.full)
        self._want(status.model)
