"""Node events: what detection learns about nodes, told to the services that act on it.

A typed in-process channel, apart from the log: the log is what operators read, these are
what services act on, and no service parses log text. The lifecycle events (`Lifecycle`:
a node detected, a new model, a default image fetched, a node's state changed) are both:
`emit` writes the record named by the event's `EVENT` and publishes the event, so the log
and the channel never disagree. Each subscriber has its own bounded
queue. A subscriber that falls behind (or a burst larger than its queue) does not grow
memory or block the publisher: its queue is cleared and it receives one `Resync`, which
tells it to rebuild its view from the state database, the source of truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

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
class Resync:
    """Events were dropped for this subscriber: rebuild from the state database."""

    dropped: int


@dataclass(frozen=True)
class ModelNew:
    """A node model seen for the first time on this server."""

    EVENT: ClassVar[str] = "model.new"
    model: str
    image: str  # its default image, `waltplatform/<model>-default:latest`


@dataclass(frozen=True)
class FetchStarted:
    """A default image is being fetched from `source` (a registry label or `docker`)."""

    EVENT: ClassVar[str] = "image.fetch.started"
    model: str
    image: str
    source: str


@dataclass(frozen=True)
class FetchSourceFailed:
    """One source could not give the default image; the next one is tried."""

    EVENT: ClassVar[str] = "image.fetch.source_failed"
    LEVEL: ClassVar[str] = "warning"
    model: str
    image: str
    source: str
    error: str


@dataclass(frozen=True)
class FetchDone:
    """A default image is in the repository: `image_id` (its config digest) is pinned."""

    EVENT: ClassVar[str] = "image.fetch.done"
    model: str
    image: str
    source: str
    image_id: str
    duration_s: float


@dataclass(frozen=True)
class FetchFailed:
    """Every source failed: each source with its error; the next try in `retry_in_s`."""

    EVENT: ClassVar[str] = "image.fetch.failed"
    LEVEL: ClassVar[str] = "error"
    model: str
    image: str
    errors: tuple[tuple[str, str], ...]
    retry_in_s: float


@dataclass(frozen=True)
class NodeState:
    """A node (or unknown device) entered `state`; its record is `node.<state>`."""

    mac: str
    name: str
    model: str | None
    ip: str | None
    state: str
    image: str | None

    @property
    def EVENT(self) -> str:  # an instance's name, the others' is a class constant
        return f"node.{self.state}"


@dataclass(frozen=True)
class NodeRemoved:
    """A node forgotten (a virtual node removed): nothing of it is served any longer."""

    EVENT: ClassVar[str] = "node.removed"
    mac: str
    name: str


Lifecycle = (
    ModelNew | FetchStarted | FetchSourceFailed | FetchDone | FetchFailed | NodeState | NodeRemoved
)
NodeEvent = NodeSeen | Lifecycle


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


def fields(event: Lifecycle) -> dict[str, Any]:
    """An event's fields as a record's keys (`errors` as a list of {source, error})."""
    data = asdict(event)
    if isinstance(event, FetchFailed):
        data["errors"] = [{"source": s, "error": e} for s, e in event.errors]
    return data


def emit(channel: NodeEvents, event: Lifecycle) -> None:
    """Write `event`'s record (named by its EVENT, at its LEVEL) and publish it, with no
    await between them."""
    level = getattr(event, "LEVEL", "info")
    getattr(_log, level)(event.EVENT, **fields(event))
    channel.publish(event)
