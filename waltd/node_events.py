"""Node events: what detection learns about nodes, told to the services that act on it.

A typed in-process channel, apart from the log: the log is what operators read, these are
what services act on, and no service parses log text. Each subscriber has its own bounded
queue. A subscriber that falls behind (or a burst larger than its queue) does not grow
memory or block the publisher: its queue is cleared and it receives one `Resync`, which
tells it to rebuild its view from the state database, the source of truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from waltd import log

_log = log.get("node_events")

# Events a subscriber may hold before it is told to resync instead.
DEFAULT_QUEUE = 1000


@dataclass(frozen=True)
class NodeSeen:
    """A node holds a lease (`new`: recorded for the first time)."""

    mac: str
    name: str
    ip: str
    model: str | None
    new: bool


@dataclass(frozen=True)
class NodeReleased:
    """A node's lease ended."""

    mac: str
    name: str


@dataclass(frozen=True)
class Resync:
    """Events were dropped for this subscriber: rebuild from the state database."""

    dropped: int


NodeEvent = NodeSeen | NodeReleased


class Subscription:
    """One subscriber's bounded queue of node events; iterate it, close it when done."""

    def __init__(self, channel: NodeEvents, name: str, size: int) -> None:
        self.name = name
        self._channel = channel
        self._queue: asyncio.Queue[NodeEvent | Resync] = asyncio.Queue(size)
        self._dropped = 0

    def offer(self, event: NodeEvent) -> None:
        """Queue `event`; a full queue is replaced by one Resync (never blocks)."""
        try:
            self._queue.put_nowait(event)
            return
        except asyncio.QueueFull:
            pass
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._dropped += item.dropped if isinstance(item, Resync) else 1
        self._dropped += 1
        _log.warning("node_events_dropped", subscriber=self.name, count=self._dropped)
        self._queue.put_nowait(Resync(self._dropped))
        self._dropped = 0

    async def get(self) -> NodeEvent | Resync:
        """The next event, waiting for one."""
        return await self._queue.get()

    def pending(self) -> int:
        """How many events wait in the queue."""
        return self._queue.qsize()

    async def __aiter__(self) -> AsyncIterator[NodeEvent | Resync]:
        while True:
            yield await self.get()

    def close(self) -> None:
        """Stop receiving events."""
        self._channel.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NodeEvents:
    """The channel: publishers call `publish`, each subscriber reads its own queue.

    Events published while a service is not subscribed (not started, restarting) are not
    kept for it: a service rebuilds its state from the database when it (re)starts.
    """

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self, name: str, size: int = DEFAULT_QUEUE) -> Subscription:
        """A new subscription named for its service (the name appears in warnings)."""
        sub = Subscription(self, name, size)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove `sub` (closing twice is harmless)."""
        self._subscribers.discard(sub)

    def publish(self, event: NodeEvent) -> None:
        """Hand `event` to every subscriber; never blocks (must run on the event loop)."""
        for sub in list(self._subscribers):
            sub.offer(event)
