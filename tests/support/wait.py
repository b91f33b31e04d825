"""Waiting for an event in a test: a log record, a file, a socket, a process state.

Every wait of the suite goes through `until` (async) or `until_sync` (tests without an event
loop): the condition is polled until it holds, the wait fails at once when what should produce
the event is gone, and the failure says what was awaited. A test never sleeps a fixed time in
the hope that something happened meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# How often a condition is checked: short next to every time-out, long next to the checks.
POLL_S = 0.02


def _rounds(
    what: str, timeout_s: float, alive: Callable[[], bool] | None, details: Callable[[], str] | None
) -> Iterator[None]:
    """One item per check; fails when the producer is gone or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        yield
        why = None
        if alive is not None and not alive():
            why = "the process ended"
        elif time.monotonic() > deadline:
            why = f"{timeout_s} s passed"
        if why is not None:
            text = f"{why} waiting for {what}"
            raise AssertionError(f"{text}\n{details()}" if details else text)


async def until(
    check: Callable[[], T | Awaitable[T | None] | None],
    *,
    what: str,
    timeout_s: float = 10.0,
    alive: Callable[[], bool] | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """The first true value of `check()` (a function or a coroutine function).

    Fails after `timeout_s`, or as soon as `alive()` (the process that should produce the
    event) is false; the message names `what` and ends with `details()` (a log tail).
    """
    rounds = _rounds(what, timeout_s, alive, details)
    while True:
        next(rounds)
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        await asyncio.sleep(POLL_S)


def until_sync(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout_s: float = 10.0,
    alive: Callable[[], bool] | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """`until` for a test without an event loop (a blocking check, a subprocess.Popen daemon)."""
    rounds = _rounds(what, timeout_s, alive, details)
    while True:
        next(rounds)
        found = check()
        if found:
            return found
        time.sleep(POLL_S)
