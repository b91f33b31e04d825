"""`walt image search`: sources queried concurrently, WalT images kept (the client draws
the table).

The merge and filter are pure; `search` is the thin concurrent shell. A failing
source, or one past its deadline, becomes a one-line warning naming it while the others
answer; so does an image a source refused (its content did not match its digest).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from waltd.registries.base import Credentials, ImageInfo, LimitExceeded, RegistryError, Source
from waltd.registries.limits import SearchLimits


@dataclass(frozen=True)
class SearchResult:
    """What a search found, and the sources that failed."""

    images: tuple[ImageInfo, ...]
    warnings: tuple[str, ...]


def keep(images: Iterable[ImageInfo], keyword: str | None) -> list[ImageInfo]:
    """WalT images whose clone URL contains `keyword`, sorted, each clone URL once."""
    seen: dict[str, ImageInfo] = {}
    for image in images:
        if not image.is_walt or not image.user or not image.name:
            continue
        if keyword and keyword not in image.clone_url:
            continue
        seen.setdefault(image.clone_url, image)
    return sorted(seen.values(), key=lambda i: (i.user, i.name, i.tag, i.location))


Progress = Callable[[str, str, int | None], None]  # (source label, "done"|"failed", count)


def _without(text: str, secrets: Iterable[str]) -> str:
    """`text` with each of `secrets` replaced (longest first, so none shows through)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


async def search(
    sources: Sequence[Source],
    keyword: str | None,
    creds: Mapping[str, Credentials] | None = None,
    on_progress: Progress | None = None,
    *,
    deadline_s: float = SearchLimits.deadline_s,
) -> SearchResult:
    """Query every source at once, each for `deadline_s` at most; keep the WalT images
    matching `keyword`.

    The caller's passwords (`creds`) are kept out of the warnings: sources never put them in
    their errors, and this checks it for this search's own texts only.
    """
    creds = creds or {}
    notes: list[str] = []  # what sources had to say while they went on

    async def one(source: Source) -> list[ImageInfo]:
        deadline = asyncio.timeout(deadline_s)
        try:
            try:
                async with deadline:
                    found = await source.list_images(creds.get(source.label), warn=notes.append)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise LimitExceeded(
                    source.label,
                    f"no complete answer within {deadline_s:g} s (limit images.search-deadline-s)",
                ) from None
        except RegistryError as err:
            if on_progress:
                on_progress(source.label, "failed", None)
            raise err
        if on_progress:
            on_progress(source.label, "done", len(found))
        return found

    results = await asyncio.gather(*(one(s) for s in sources), return_exceptions=True)
    images: list[ImageInfo] = []
    warnings = [f"Warning: {note}" for note in notes]
    for source, res in zip(sources, results, strict=True):
        if isinstance(res, RegistryError):
            warnings.append(f"Warning: {res}")
        elif isinstance(res, BaseException):
            if isinstance(res, asyncio.CancelledError):
                raise res
            warnings.append(f"Warning: {source.label}: unexpected failure: {res}")
        else:
            images.extend(res)
    passwords = [c.password for c in creds.values()]
    return SearchResult(
        tuple(keep(images, keyword)), tuple(_without(w, passwords) for w in warnings)
    )
