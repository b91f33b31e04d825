"""`walt image search`: sources queried concurrently, WalT images kept, rows formatted.

The merge, filter and table are pure; `search` is the thin concurrent shell. A failing
source becomes a one-line warning naming it while the others answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from waltd.registries.base import Credentials, ImageInfo, RegistryError, Source

NO_MATCH = "Sorry, no image could match your request."
HEADERS = ("User", "Image name", "Location", "Compatibility", "Clonable link")


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


def row(image: ImageInfo, server_version: int) -> tuple[str, str, str, str, str]:
    """One table row; an image needing a newer server shows that instead of its link."""
    needed = image.minversion
    link = (
        f"[Need server upgrade, version>={needed}]"
        if needed is not None and needed > server_version
        else image.clone_url
    )
    tag = "" if image.tag == "latest" else f":{image.tag}"
    return (image.user, f"{image.name}{tag}", image.kind, ",".join(image.models), link)


def _printable(text: str) -> str:
    """`text` with each non-printable character escaped (`\\x1b`, `\\u202e`, ...)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def table(rows: Sequence[Sequence[str]], headers: Sequence[str] = HEADERS) -> str:
    """A plain text table with a header line and a rule, columns padded.

    Cells come from registries: control characters are escaped, never sent to a terminal.
    """
    cells = [[_printable(str(c)) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def render(result: SearchResult, server_version: int) -> str:
    """What `walt image search` prints (warnings excluded: they go to stderr)."""
    if not result.images:
        return NO_MATCH
    return table([row(i, server_version) for i in result.images])


Progress = Callable[[str, str, int | None], None]  # (source label, "done"|"failed", count)


async def search(
    sources: Sequence[Source],
    keyword: str | None,
    creds: Mapping[str, Credentials] | None = None,
    on_progress: Progress | None = None,
) -> SearchResult:
    """Query every source at once; keep the WalT images matching `keyword`."""
    creds = creds or {}

    async def one(source: Source) -> list[ImageInfo]:
        try:
            found = await source.list_images(creds.get(source.label))
        except RegistryError as err:
            if on_progress:
                on_progress(source.label, "failed", None)
            raise err
        if on_progress:
            on_progress(source.label, "done", len(found))
        return found

    results = await asyncio.gather(*(one(s) for s in sources), return_exceptions=True)
    images: list[ImageInfo] = []
    warnings: list[str] = []
    for source, res in zip(sources, results, strict=True):
        if isinstance(res, RegistryError):
            warnings.append(f"Warning: {res}")
        elif isinstance(res, BaseException):
            if isinstance(res, asyncio.CancelledError):
                raise res
            warnings.append(f"Warning: {source.label}: unexpected failure: {res}")
        else:
            images.extend(res)
    return SearchResult(tuple(keep(images, keyword)), tuple(warnings))
