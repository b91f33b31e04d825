"""A service that follows the node-event channel.

What the channel asks of each subscriber, in one place: subscribe when the service starts,
before it reads the database (no event falls between the two); rebuild from the database
then, and again on every `Resync` (events were dropped); handle the other events in order.
The tasks the service starts belong to one TaskGroup that ends with it.
"""

from __future__ import annotations

import asyncio
from typing import Self

from waltd.context import Context
from waltd.node_events import NodeEvent, Resync, Subscription
from waltd.supervisor import Service


class NodeEventService(Service):
    """Subclasses give `rebuild` and `handle`; `caught_up` runs whenever the queue is
    empty after an event, `stopped` when `serve` ends."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._sub: Subscription | None = None
        self._tasks: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._sub = self._ctx.nodes.subscribe(self.name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    async def serve(self) -> None:
        """Rebuild from the database, then follow the events."""
        assert self._sub is not None
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self.rebuild()
                async for event in self._sub:
                    if isinstance(event, Resync):
                        await self.rebuild()
                    else:
                        await self.handle(event)
                    if self._sub.pending() == 0:
                        await self.caught_up()
        finally:
            self._tasks = None
            self.stopped()

    async def rebuild(self) -> None:
        """Set everything from the database (at start, and after a Resync)."""
        raise NotImplementedError

    async def handle(self, event: NodeEvent) -> None:
        """One event, in the order published."""
        raise NotImplementedError

    async def caught_up(self) -> None:
        """No event waits: work batched over the events handled may be done now."""

    def stopped(self) -> None:
        """`serve` ended: forget what its tasks were (they are gone with it)."""
