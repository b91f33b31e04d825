"""Generic async helpers: merged concurrent calls, bounded job runs, and retry decisions.

`SingleFlight` runs one call per key however many callers wait for it; `gather_all` and
`run_jobs` run work concurrently, `run_jobs` with a fixed number of workers; `completed`
runs work to its end even when its caller is cancelled; `RetryPolicy` decides (purely)
whether a failure is worth another attempt and how long to wait first.
Nothing here knows about registries or images.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class SingleFlight(Generic[K, T]):
    """At most one run per key: callers asking for a key already under way share its result.

    The run is a task of this object, shielded from its callers: one caller cancelled does
    not cancel the run the others wait for. With `cancel_unwaited`, the run is cancelled
    (and awaited: it cleans up) once its last caller has gone. A failure reaches every caller
    of that run; the next call for the key starts afresh. `cancel` ends every run (the
    owner's clean-up).
    """

    def __init__(self, *, cancel_unwaited: bool = False) -> None:
        self._runs: dict[K, asyncio.Task[T]] = {}
        self._waiting: dict[asyncio.Task[T], int] = {}
        self._cancel_unwaited = cancel_unwaited

    async def run(self, key: K, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of `make()` for `key`, started only if no run of `key` is under way."""
        task = self._runs.get(key)
        if task is None:
            task = asyncio.create_task(make())
            self._runs[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiting[task] -= 1
            if not self._waiting[task]:
                del self._waiting[task]
                if self._cancel_unwaited and not task.done():
                    task.cancel()  # nobody waits any longer: the run cleans up and ends
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    def _done(self, key: K, task: asyncio.Task[T]) -> None:
        if self._runs.get(key) is task:
            del self._runs[key]
        if not task.cancelled():
            task.exception()  # retrieved: its callers may all have been cancelled

    async def cancel(self) -> None:
        """Cancel every run under way and wait for them to end."""
        runs = list(self._runs.values())
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run `aws` concurrently; on the first failure cancel the rest and raise that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(aw)) for aw in aws]
    except BaseExceptionGroup as errors:
        raise _first_error(errors) from None
    return [task.result() for task in tasks]


async def completed(work: Awaitable[T]) -> T:
    """The result of `work`, run to its end even when the caller is cancelled meanwhile (the
    cancellation goes on once it is done): a clean-up or a change never left half done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await task
        raise


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel `task` (nothing when it is done), wait until it has ended and drop its outcome:
    for an owner that no longer wants the task's work."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # an error it ended with is retrieved: its owner does not want it


# A piece of work that returns the pieces it found to do (a repository: one per tag).
Job = Callable[[], Awaitable[Iterable["Job"]]]


async def run_jobs(jobs: Iterable[Job], workers: int) -> None:
    """Run `jobs`, and the jobs they return, `workers` at a time (never a task per job).

    The jobs a job returns come after those already queued (breadth first). On the first
    failure the other workers are cancelled and that failure is raised.
    """
    queue: deque[Job] = deque(jobs)
    running = 0  # jobs under way: they may queue more
    changed = asyncio.Condition()

    def ready() -> bool:
        return bool(queue) or running == 0

    async def worker() -> None:
        nonlocal running
        while True:
            async with changed:
                await changed.wait_for(ready)
                if not queue:
                    return  # nothing queued, nothing running that could queue more
                job = queue.popleft()
                running += 1
            more = list(await job())
            async with changed:
                running -= 1
                queue.extend(more)
                changed.notify_all()

    await gather_all(worker() for _ in range(max(1, workers)))


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are attempted again, and after how long (pure decisions).

    A failure is retried when it says so (a true `retryable` attribute) and fewer than
    `retries` retries were made (None: no limit). A failure carrying `retry_after` (seconds
    the other side asked for) is waited for exactly that long, unless it asks for more than
    `max_retry_after_s`, which is not retried at all. Otherwise the wait before retry
    `attempt` (1 for the first retry) is a step doubling from `min_s` up to `max_s`, jittered
    to between half and all of that step so that clients failing together do not retry
    together, and never below `min_s`: every wait lies within [min_s, max_s].
    """

    min_s: float
    max_s: float
    retries: int | None = None
    max_retry_after_s: float = math.inf
    jitter: Callable[[], float] = field(default=random.random, compare=False)  # in [0, 1)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether retry number `attempt` (1 for the first) is worth making after `error`."""
        if not getattr(error, "retryable", False):
            return False
        if self.retries is not None and attempt > self.retries:
            return False
        asked = getattr(error, "retry_after", None)
        return asked is None or asked <= self.max_retry_after_s

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt`; `retry_after` wins when given."""
        if retry_after is not None:
            return max(0.0, retry_after)
        doublings = min(max(0, attempt - 1), 64)  # beyond, the step is max_s anyway
        step = min(self.max_s, self.min_s * 2.0**doublings)
        return max(self.min_s, step / 2 + self.jitter() * step / 2)
