"""The event stream: every log record, numbered, kept in a ring and fanned out to followers.

The API's `GET /v1/events` and `walt log show` read from here, so they show exactly what
the log shows. Records may come from worker threads (`asyncio.to_thread`, the database's
thread): numbering and history are guarded by a lock, and followers, which are asyncio
objects, are only ever fed on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

Event = dict[str, Any]


class EventBus:
    """Numbered events in a bounded history, with bounded per-follower queues.

    A follower that cannot keep up loses events rather than growing memory without bound;
    it is told how many it lost by an `events_dropped` record.
    """

    def __init__(self, history: int = 2000, follower_queue: int = 1000) -> None:
        self._history: deque[Event] = deque(maxlen=history)
        self._followers: set[_Follower] = set()
        self._seq = itertools.count(1)
        self._queue_size = follower_queue
        self._lock = threading.Lock()
        # The loop that owns the followers, remembered when the bus is first used from one.
        self._loop: asyncio.AbstractEventLoop | None = None

    def publish(self, event: Event) -> Event:
        """Number `event`, keep it, hand it to every follower; returns the numbered event.

        Safe from any thread: off the loop's thread, followers get it through the loop.
        """
        with self._lock:
            event = {"seq": next(self._seq), **event}
            self._history.append(event)
        loop = self._owner()
        if loop is None:
            self._offer(event)
        else:
            try:
                loop.call_soon_threadsafe(self._offer, event)
            except RuntimeError:
                pass  # the loop is closed: its followers are gone with it
        return event

    def _owner(self) -> asyncio.AbstractEventLoop | None:
        """The loop to hand events over to, or None when the caller may offer them itself."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (self._loop is None or self._loop.is_closed()):
            self._loop = running
        if self._loop is None or running is self._loop:
            return None
        return self._loop

    def _offer(self, event: Event) -> None:
        for follower in self._followers:
            follower.offer(event)

    def last_seq(self) -> int:
        """Number of the newest kept event (0 when none)."""
        with self._lock:
            return self._history[-1]["seq"] if self._history else 0

    def recent(self, since: int = 0, limit: int | None = None) -> list[Event]:
        """Kept events with a number above `since` (the last `limit` of them)."""
        with self._lock:
            events = [e for e in self._history if e["seq"] > since]
        return events[-limit:] if limit else events

    async def follow(self, since: int = 0) -> AsyncIterator[Event]:
        """Kept events after `since`, then live ones until `end_followers()`."""
        self._owner()
        follower = _Follower(self._queue_size)
        self._followers.add(follower)
        try:
            backlog = self.recent(since)
            for event in backlog:
                yield event
            # Live events kept before the backlog was read were in it. Events from other
            # threads may arrive a little out of order, so only this number filters.
            seen = backlog[-1]["seq"] if backlog else since
            while True:
                event = await follower.get()
                if event is None:
                    return
                seq = event.get("seq")
                if seq is None or seq > seen:
                    yield event
        finally:
            self._followers.discard(follower)

    def end_followers(self) -> None:
        """End the follow() streams open now (shutdown); later ones work as usual."""
        for follower in self._followers:
            follower.end()


class _Follower:
    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(size)
        self._dropped = 0

    def offer(self, event: Event) -> None:
        if self._dropped and self._queue.qsize() < self._queue.maxsize - 1:
            # No number of its own: it must not hide the events that follow it.
            notice = {"event": "events_dropped", "level": "warning", "count": self._dropped}
            notice["timestamp"] = event.get("timestamp")
            self._queue.put_nowait(notice)
            self._dropped = 0
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._dropped += 1

    def end(self) -> None:
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    async def get(self) -> Event | None:
        return await self._queue.get()
