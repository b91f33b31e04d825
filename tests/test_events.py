"""The event bus: numbering, history, followers, slow followers, shutdown."""

from __future__ import annotations

import asyncio

from waltd.events import EventBus


def test_numbering_history_and_limits() -> None:
    bus = EventBus(history=3)
    for i in range(5):
        bus.publish({"event": f"e{i}"})
    assert [e["seq"] for e in bus.recent()] == [3, 4, 5]
    assert [e["event"] for e in bus.recent(since=4)] == ["e4"]
    assert [e["seq"] for e in bus.recent(limit=2)] == [4, 5]
    assert bus.last_seq() == 5


async def test_follow_gives_backlog_then_live_events() -> None:
    bus = EventBus()
    bus.publish({"event": "old"})
    got: list[str] = []

    async def reader() -> None:
        async for e in bus.follow():
            got.append(e["event"])

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    bus.publish({"event": "new"})
    await asyncio.sleep(0.01)
    bus.end_followers()
    await asyncio.wait_for(task, 1)
    assert got == ["old", "new"]


async def test_slow_follower_loses_events_and_is_told() -> None:
    bus = EventBus(follower_queue=4)
    stream = bus.follow()
    first = await anext_with(stream, lambda: bus.publish({"event": "e0"}))
    assert first["event"] == "e0"
    for i in range(1, 20):
        bus.publish({"event": f"e{i}"})
    kept = [await stream.__anext__() for _ in range(4)]
    assert [e["event"] for e in kept] == ["e1", "e2", "e3", "e4"]
    bus.publish({"event": "after"})
    bus.end_followers()
    rest = [e async for e in stream]
    assert rest[0] == {
        "event": "events_dropped",
        "level": "warning",
        "count": 15,
        "timestamp": None,
    }
    assert rest[1]["event"] == "after" and len(rest) == 2


async def anext_with(stream, action):  # type: ignore[no-untyped-def]
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)
    action()
    return await asyncio.wait_for(task, 1)
