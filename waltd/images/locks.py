"""Per image name locks: two operations on one name run one after the other, operations on
different names run in parallel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class NameLocks:
    """One asyncio lock per name, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        # name -> (lock, holders and waiters): the entry goes when the count drops to 0, so
        # the table is as large as the operations under way, never the names ever seen.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold the lock of `name` for the block (waiting for the operation that has it)."""
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold_all(self, *names: str) -> AsyncIterator[None]:
        """Hold several names' locks (always taken in sorted order: no deadlock between two
        operations taking the same pair, e.g. a rename A->B and a rename B->A)."""
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                await stack.enter_async_context(self.hold(name))
            yield

    def held(self, name: str) -> bool:
        """Whether an operation holds or waits for `name` (for tests and status)."""
        return name in self._locks
