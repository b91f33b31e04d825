"""waltd.aio: merged calls, bounded job runs, retry decisions."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

import pytest

from waltd.aio import (
    Job,
    RetryPolicy,
    SingleFlight,
    cancelled,
    completed,
    gather_all,
    run_jobs,
)
from waltd.registries.base import RegistryError


class Busy(Exception):
    """A failure that says it may pass."""

    retryable = True

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


async def test_single_flight_runs_once_for_every_waiter() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiters = [asyncio.create_task(flight.run("k", fetch)) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 10
    assert calls == 1
    # once done, the next call for the key runs afresh
    assert await flight.run("k", fetch) == 42 and calls == 2


async def test_single_flight_shares_a_failure_then_forgets_it() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        raise ValueError("refused")

    waiters = [asyncio.create_task(flight.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(r) for r in results] == ["refused"] * 3 and calls == 1
    with pytest.raises(ValueError):
        await flight.run("k", failing)
    assert calls == 2


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    first = asyncio.create_task(flight.run("k", slow))
    second = asyncio.create_task(flight.run("k", slow))
    await started.wait()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    release.set()
    assert await second == "done"


async def test_single_flight_cancel_ends_runs_under_way() -> None:
    flight: SingleFlight[str, None] = SingleFlight()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Future()

    waiter = asyncio.create_task(flight.run("k", forever))
    await started.wait()
    await flight.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_run_jobs_bounds_concurrency_and_runs_what_jobs_return() -> None:
    running = peak = 0
    done: list[str] = []

    def job(name: str, children: int) -> Job:
        async def run() -> Iterable[Job]:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001)
            running -= 1
            done.append(name)
            return [job(f"{name}.{i}", 0) for i in range(children)]

        return run

    await run_jobs([job(str(i), 5) for i in range(20)], workers=4)
    assert peak == 4
    assert len(done) == 20 * 6
    # breadth first: every first-level job before any job it returned
    assert all("." not in name for name in done[:20])


async def test_run_jobs_raises_the_first_failure_and_stops_the_rest() -> None:
    started: list[int] = []

    def job(i: int) -> Job:
        async def run() -> Iterable[Job]:
            started.append(i)
            if i == 2:
                raise RuntimeError("job 2 failed")
            await asyncio.sleep(10)
            return []

        return run

    with pytest.raises(RuntimeError, match="job 2 failed"):
        await asyncio.wait_for(run_jobs([job(i) for i in range(100)], workers=3), 5)
    assert len(started) == 3  # the others never started


async def test_gather_all_keeps_order_and_cancels_on_failure() -> None:
    async def value(v: int) -> int:
        await asyncio.sleep(0.001 * (5 - v))
        return v

    assert await gather_all(value(v) for v in range(5)) == [0, 1, 2, 3, 4]
    cancelled = asyncio.Event()

    async def long() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    async def fail() -> int:
        raise KeyError("first")

    with pytest.raises(KeyError):
        await gather_all([long(), fail()])
    assert cancelled.is_set()


def test_retry_policy_doubles_within_bounds_with_jitter() -> None:
    low = RetryPolicy(min_s=1, max_s=8, jitter=lambda: 0.0)
    high = RetryPolicy(min_s=1, max_s=8, jitter=lambda: 0.999999)
    assert [low.delay(a) for a in range(1, 6)] == [1, 1, 2, 4, 4]
    assert [round(high.delay(a), 3) for a in range(1, 6)] == [1, 2, 4, 8, 8]
    real = RetryPolicy(min_s=30, max_s=900)  # images.retry-min-s and retry-max-s
    for attempt in (1, 3, 10, 10_000):  # a fetcher may retry for days: no overflow
        step = min(900, 30 * 2 ** min(attempt - 1, 64))
        assert max(30, step / 2) <= real.delay(attempt) <= step


def test_retry_policy_honours_retry_after() -> None:
    policy = RetryPolicy(min_s=0.25, max_s=2, retries=2, max_retry_after_s=30)
    assert policy.delay(1, retry_after=7.5) == 7.5
    assert policy.delay(1, retry_after=-3) == 0
    assert policy.should_retry(Busy(retry_after=30), 1)
    assert not policy.should_retry(Busy(retry_after=31), 1)  # longer than a search waits


def test_retry_policy_decides_which_errors_retry() -> None:
    policy = RetryPolicy(min_s=0.25, max_s=2, retries=2)
    assert policy.should_retry(Busy(), 1) and policy.should_retry(Busy(), 2)
    assert not policy.should_retry(Busy(), 3)
    assert not policy.should_retry(ValueError("no retryable attribute"), 1)
    assert policy.should_retry(RegistryError("r", "HTTP 503", status=503, retryable=True), 1)
    assert not policy.should_retry(RegistryError("r", "HTTP 404", status=404), 1)
    endless = RetryPolicy(min_s=1, max_s=60)
    assert endless.should_retry(Busy(), 1_000_000)
    assert math.isinf(endless.max_retry_after_s)


async def test_single_flight_can_end_a_run_nobody_waits_for() -> None:
    """With cancel_unwaited, one caller leaving keeps the run for the other; the last one
    leaving cancels it, and the run's clean-up is done when that caller's leaving is."""
    flight: SingleFlight[str, int] = SingleFlight(cancel_unwaited=True)
    started, cleaned = asyncio.Event(), asyncio.Event()

    async def long() -> int:
        started.set()
        try:
            await asyncio.Future()
        finally:
            cleaned.set()
        return 0

    first = asyncio.create_task(flight.run("k", long))
    second = asyncio.create_task(flight.run("k", long))
    await started.wait()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert not cleaned.is_set()  # the second caller still waits
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert cleaned.is_set()


async def test_completed_work_ends_before_its_cancelled_caller_does() -> None:
    """The caller cancelled mid-way: the work goes on to its end, then the caller sees its
    cancellation; not cancelled, the caller gets the work's result."""
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def work() -> str:
        started.set()
        await release.wait()
        finished.append("done")
        return "done"

    caller = asyncio.create_task(completed(work()))
    await started.wait()
    caller.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == ["done"]
    assert await completed(work()) == "done"


async def test_cancelled_ends_a_task_and_drops_its_outcome() -> None:
    """A task under way is cancelled and has ended when `cancelled` returns; one that fails
    while ending has its error taken (never reported as unretrieved); the owner, not
    cancelled itself, goes on."""
    started = asyncio.Event()
    ended: list[str] = []

    async def waits(fail: bool) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("waits")
            if fail:
                raise Busy()  # a clean-up that fails

    running = asyncio.create_task(waits(fail=False))
    await started.wait()
    await cancelled(running)
    assert running.cancelled() and ended == ["waits"]
    started.clear()
    failing = asyncio.create_task(waits(fail=True))
    await started.wait()
    await cancelled(failing)
    assert getattr(failing, "_log_traceback", True) is False  # retrieved: no warning at exit
    assert isinstance(failing.exception(), Busy)
