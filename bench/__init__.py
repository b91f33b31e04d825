"""Benchmarks: each `bench/<name>` runs from the repository root, as root, and prints its figures
as one JSON object on its last line (see bench/README.md).

What the lab benchmarks' entry points share: `run_as_root` (refused without root) and
`within` (a run cut at the time limit, its failure said on stderr).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_as_root(name: str, run: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Exit with the status of `run()` (bench/`name`'s whole run); refused without root."""
    if os.geteuid() != 0:
        sys.exit(f"bench/{name}: run it as root (the lab uses network namespaces)")
    sys.exit(asyncio.run(run()))


async def within(name: str, limit_s: float, work: Awaitable[T]) -> T | None:
    """What `work` gives within `limit_s` seconds; None, said on stderr, when it does not."""
    try:
        async with asyncio.timeout(limit_s):
            return await work
    except TimeoutError:
        print(f"{name} bench FAILED: no result after {limit_s} s", file=sys.stderr)
        return None
