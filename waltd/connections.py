"""What the daemon's servers share to bound their connections: counts per key (a user, an
address) and in all, and aiohttp's protocol wrapped so that a connection's place is given
back once, when it ends. The policy (which limits, what a refusal says) is each server's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyCounts(Generic[K]):
    """Connections held per key and in all."""

    def __init__(self) -> None:
        self._by_key: dict[K, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        """Connections held now."""
        return self._total

    def held(self, key: K) -> int:
        """Connections `key` holds now."""
        return self._by_key.get(key, 0)

    def add(self, key: K) -> None:
        """One more connection of `key`."""
        self._by_key[key] = self._by_key.get(key, 0) + 1
        self._total += 1

    def release(self, key: K) -> None:
        """One connection of `key` ended."""
        left = self._by_key.get(key, 0) - 1
        if left > 0:
            self._by_key[key] = left
        else:
            self._by_key.pop(key, None)
        self._total -= 1


class Counted(asyncio.Protocol):
    """`inner` (aiohttp's protocol for one connection), calling `release` when the connection
    ends (asyncio reports that once)."""

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._release()
