"""What one listing of a source may make the daemon read and hold.

A registry decides how many repositories, tags and pages it answers with, and how large they
are: every such count, size and time is bounded here so that no registry can make a search
endless or exhaust the daemon's memory. `SearchLimits` are the configurable bounds (`images:`
in server.conf); `ImageBudget` hands out the tags a listing inspects.
"""

from __future__ import annotations

from dataclasses import dataclass

from waltd import log
from waltd.config import Images

# What one listing inspects at most: a registry cannot make a search endless.
MAX_TAGS_PER_REPOSITORY = 1000
MAX_IMAGES_PER_SOURCE = 10_000

_log = log.get("registry")


@dataclass(frozen=True)
class SearchLimits:
    """Bounds of one source's part in one search; past any, the source fails with a warning.

    `deadline_s` bounds the whole listing (`images.search-deadline-s`); `max_repositories`
    the repositories a catalog may list (`images.search-max-repositories`); `max_bytes` the
    bytes of the lists a listing reads (`images.search-max-bytes`): catalog and tag-list
    pages, what it keeps while it runs (each manifest or config is bounded on its own). The
    defaults are those of server.conf.
    """

    deadline_s: float = Images.search_deadline_s
    max_repositories: int = Images.search_max_repositories
    max_bytes: int = Images.search_max_bytes

    @classmethod
    def of(cls, images: Images) -> SearchLimits:
        """The limits the `images` section of a configuration sets."""
        return cls(
            images.search_deadline_s, images.search_max_repositories, images.search_max_bytes
        )


class ImageBudget:
    """How many tags one listing inspects: `per_repository` per repository, `total` in all.

    `take` gives the tags of a repository to inspect and logs a record when a cap leaves
    some out (`registry_tags_capped` per repository, `registry_images_capped` once).
    """

    def __init__(
        self,
        source: str,
        per_repository: int = MAX_TAGS_PER_REPOSITORY,
        total: int = MAX_IMAGES_PER_SOURCE,
    ) -> None:
        self.source = source
        self.per_repository = per_repository
        self.left = total
        self._total = total
        self._capped = False

    def full(self) -> bool:
        """True once `total` tags were handed out: the repositories left need no listing."""
        if self.left > 0:
            return False
        self._capped_once()
        return True

    def take(self, repository: str, tags: list[str]) -> list[str]:
        """The first of `tags` within both caps."""
        kept = tags[: self.per_repository]
        if len(kept) < len(tags):
            _log.warning(
                "registry_tags_capped",
                registry=self.source,
                repository=repository,
                tags=len(tags),
                inspected=len(kept),
            )
        if len(kept) > self.left:
            self._capped_once()
            kept = kept[: self.left]
        self.left -= len(kept)
        return kept

    def _capped_once(self) -> None:
        if not self._capped:  # one record, not one per repository left out
            self._capped = True
            _log.warning("registry_images_capped", registry=self.source, inspected=self._total)
