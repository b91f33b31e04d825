"""Manifests and config blobs by digest, in memory (bounded) and on disk.

Content-addressed: an entry is the exact bytes a registry sent, stored under their digest and
checked against it whenever they are read back from disk, so a corrupt or tampered file is a
miss, never wrong data. Entries never go stale (a digest names one content forever); what
changes is which digest a tag points to, which callers re-ask the registry for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from waltd import log
from waltd.atomic import write_atomic

_log = log.get("registry-cache")

TAGS_FILE = "tags.json"
_MAX_TAGS_FILE = 64 * 2**20
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64})|(sha512:[0-9a-f]{128})")


def is_digest(text: str) -> bool:
    """Whether `text` is a sha256 or sha512 digest (`algorithm:hex`, lower case)."""
    return _DIGEST.fullmatch(text) is not None


def digest_of(data: bytes, like: str = "sha256:") -> str:
    """The digest of `data` with the algorithm of digest `like` (sha256 by default)."""
    algorithm = like.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _read_tags(path: Path, limit: int) -> dict[str, str]:
    """The saved tag map; anything unreadable or malformed is an empty map (a cold start)."""
    try:
        if path.stat().st_size > _MAX_TAGS_FILE:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    tags = {
        k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and is_digest(v)
    }
    return dict(list(tags.items())[-limit:])


def _log_write_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and (err := task.exception()) is not None:
        _log.warning("registry_cache_write_failed", error=f"{type(err).__name__}: {err}")


@dataclass(frozen=True)
class CacheStats:
    """How much a DigestCache holds in memory, and how much waits to be written."""

    memory_entries: int
    memory_bytes: int
    unwritten_bytes: int


class DigestCache:
    """Bytes by digest: memory (least recently used out beyond `max_memory` bytes) and disk.

    With `folder`, every entry is also a file `<algorithm>-<hex>.json` there (written to a
    temporary name, then renamed), so that a new process starts warm. The folder is made 0700:
    labels of a private registry are not for every local user. Disk errors only cost a miss.

    The event loop leaves for a thread as little as it can: the folder is listed once, so a
    miss needs no disk access, and new entries are written together by `flush()` rather than
    one thread hand-off each: in the background when a client closes (`flush_soon`: a search
    never waits for the disk), at once when `put` finds `max_unwritten` bytes waiting, and by
    the cache's owner at shutdown.

    Also remembers the last digest seen for a tag (`remember_tag`): a client then asks the
    registry with a HEAD whether the tag still points there. With `folder` that map is saved
    too (`tags.json`, by `flush()`), so a restarted daemon's first search is a warm one.
    """

    def __init__(
        self,
        folder: Path | None = None,
        *,
        max_memory: int = 32 * 2**20,
        max_tags: int = 100_000,
        max_unwritten: int = 8 * 2**20,
    ) -> None:
        self.folder = folder
        self._max_memory = max_memory
        self._max_tags = max_tags
        self._max_unwritten = max_unwritten
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_size = 0
        self._tags: OrderedDict[str, str] = OrderedDict()
        self._on_disk: set[str] | None = None  # digests with a file, once listed
        self._unwritten: dict[str, bytes] = {}
        self._unwritten_size = 0
        self._tags_changed = False
        # one flush at a time: an older tag map must not be renamed over a newer one
        self._flush_lock = asyncio.Lock()
        self._writer: asyncio.Future[None] | None = None
        if folder is not None:
            self._tags.update(_read_tags(folder / TAGS_FILE, max_tags))

    async def get(self, digest: str) -> bytes | None:
        """The bytes stored under `digest`, or None."""
        data = self._memory.get(digest) or self._unwritten.get(digest)
        if data is not None:
            if digest in self._memory:
                self._memory.move_to_end(digest)
            return data
        if self.folder is None or not is_digest(digest):
            return None
        if self._on_disk is None:
            self._on_disk = await asyncio.to_thread(self._list)
        if digest not in self._on_disk:
            return None
        data = await asyncio.to_thread(self._read, digest)
        if data is None:
            self._on_disk.discard(digest)
        else:
            self._remember(digest, data)
        return data

    async def put(self, digest: str, data: bytes) -> None:
        """Store `data` under `digest`; ValueError when they do not match.

        The disk copy is written by the next `flush()`, at once when too much waits for it.
        """
        if not is_digest(digest) or digest_of(data, digest) != digest:
            raise ValueError(f"content does not match digest {digest}")
        if digest in self._memory or digest in self._unwritten:
            return
        self._remember(digest, data)
        if self.folder is not None and (self._on_disk is None or digest not in self._on_disk):
            self._unwritten[digest] = data
            self._unwritten_size += len(data)
            if self._unwritten_size > self._max_unwritten:
                await self.flush()

    def flush_soon(self) -> None:
        """Write what waits in the background: a search does not wait for the disk.

        The cache owns that write; `flush()` (its owner calls it at shutdown) waits for it.
        """
        if self.folder is None or not (self._unwritten or self._tags_changed):
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self.flush())
            self._writer.add_done_callback(_log_write_failure)

    async def flush(self) -> None:
        """Write the entries not yet on disk and the tag map, all in one thread hand-off;
        a background write under way is waited for first."""
        async with self._flush_lock:
            if self.folder is None or not (self._unwritten or self._tags_changed):
                return
            batch, self._unwritten, self._unwritten_size = self._unwritten, {}, 0
            # a copy: the loop goes on changing the map while the thread serializes it
            tags = dict(self._tags) if self._tags_changed else None
            self._tags_changed = False
            written = await asyncio.to_thread(self._write_all, batch, tags)
            if self._on_disk is not None:
                self._on_disk.update(written)

    def stats(self) -> CacheStats:
        """What the cache holds now (its bounds are checked against these)."""
        return CacheStats(
            memory_entries=len(self._memory),
            memory_bytes=self._memory_size,
            unwritten_bytes=self._unwritten_size,
        )

    def tag_digest(self, key: str) -> str | None:
        """The digest last remembered for `key` (a registry, repository and tag)."""
        return self._tags.get(key)

    def remember_tag(self, key: str, digest: str) -> None:
        """Remember that `key` pointed to `digest`."""
        if self._tags.get(key) != digest:
            self._tags_changed = True
        self._tags[key] = digest
        self._tags.move_to_end(key)
        while len(self._tags) > self._max_tags:
            self._tags.popitem(last=False)

    def _remember(self, digest: str, data: bytes) -> None:
        if digest in self._memory:  # concurrent reads of one digest from disk: counted once
            self._memory.move_to_end(digest)
            return
        if len(data) > self._max_memory // 4:
            return  # one huge entry would evict everything else: disk only
        self._memory[digest] = data
        self._memory_size += len(data)
        while self._memory_size > self._max_memory:
            _, dropped = self._memory.popitem(last=False)
            self._memory_size -= len(dropped)

    def _path(self, name: str) -> Path:
        assert self.folder is not None
        return self.folder / (name if name == TAGS_FILE else name.replace(":", "-") + ".json")

    def _read(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            _log.warning("registry_cache_unreadable", path=str(path), error=str(err))
            return None
        if digest_of(data, digest) != digest:
            _log.warning("registry_cache_corrupt", path=str(path))
            path.unlink(missing_ok=True)
            return None
        return data

    def _list(self) -> set[str]:
        assert self.folder is not None
        try:
            names = os.listdir(self.folder)
        except OSError:
            return set()
        found = {n.removesuffix(".json").replace("-", ":", 1) for n in names if n.endswith(".json")}
        return {d for d in found if is_digest(d)}

    def _write_all(self, batch: dict[str, bytes], tags: dict[str, str] | None) -> list[str]:
        if tags is not None:
            self._write_file(self._path(TAGS_FILE), json.dumps(tags).encode())
        return [
            digest for digest, data in batch.items() if self._write_file(self._path(digest), data)
        ]

    def _write_file(self, path: Path, data: bytes) -> bool:
        assert self.folder is not None
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # a reader sees the old file or the whole new one; not synced: a loss is a miss
            write_atomic(path, data, 0o600, durable=False)
        except OSError as err:
            _log.warning("registry_cache_write_failed", path=str(path), error=str(err))
            return False
        return True
