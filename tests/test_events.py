"""The event bus: numbering, history, followers, slow followers, shutdown."""

from __future__ import annotations

import asyncio

from tests.support.wait import until
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
    await until(lambda: got == ["old", "new"], what="the live event")
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


def test_publishing_from_a_worker_thread_reaches_followers_on_the_loop() -> None:
    # A loop of its own in debug mode: asyncio then refuses loop calls from other threads
    # rather than losing wake-ups, and a loop left broken is not the suite's.
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    try:
        loop.run_until_complete(asyncio.wait_for(_publish_from_a_thread(), 2))
    finally:
        loop.close()


async def _publish_from_a_thread() -> None:
    bus = EventBus()
    stream = bus.follow()
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)
    numbered = await asyncio.to_thread(bus.publish, {"event": "from_thread"})
    got = await asyncio.wait_for(first, 1)
    assert got == numbered and got["event"] == "from_thread"
    bus.end_followers()
    assert [e async for e in stream] == []


async def test_threads_and_the_loop_publishing_together_lose_nothing() -> None:
    bus = EventBus(history=5000, follower_queue=5000)
    got: list[int] = []

    async def reader() -> None:
        async for e in bus.follow():
            got.append(e["seq"])

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)

    def burst() -> None:
        for i in range(500):
            bus.publish({"event": f"t{i}"})

    threads = [asyncio.to_thread(burst) for _ in range(4)]
    for i in range(500):
        bus.publish({"event": f"l{i}"})
        if i % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*threads)
    await until(lambda: len(got) == 2500, what="every event at the follower")
    bus.end_followers()
    await asyncio.wait_for(task, 2)
    assert sorted(got) == list(range(1, 2501))
    assert [e["seq"] for e in bus.recent()] == list(range(1, 2501))
