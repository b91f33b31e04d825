"""JFrog Artifactory (`jfrog-artifactory` entries): the registry v2 API, repository-path layout.

An image of Artifactory repository `<repository>` is `<host>:<port>/<repository>/<name>:<tag>`;
its API lives under `/v2/<repository>/`, and the catalog is `/v2/<repository>/_catalog` (none at
the root), listing names relative to the repository.

WalT names images `user/name`. An Artifactory repository holds the images of whoever may push to
it, and the remote name keeps no user (WalT publishes to `<repository>/<name>:<tag>`), so
the repository takes the user's place, as the reference does: the image `walt/foo:1` of a
registry labelled `jfrog` is listed with user `walt` and cloned from `jfrog:walt/foo:1`, which
names the very path it was published at.
"""

from __future__ import annotations

from typing import Any

from waltd import config
from waltd.registries.base import NotFound
from waltd.registries.v2.source import RegistryV2Source


class ArtifactorySource(RegistryV2Source):
    """A `jfrog-artifactory` entry as an image source: one Artifactory repository.

    Images are `<repository>/<name>` with a single-component name; the repository fills the
    `user` of ImageInfo and of clone URLs.
    """

    def __init__(self, entry: config.Registry, **options: Any) -> None:
        """`options` are RegistryV2Source's (cache, session, bounds)."""
        if not entry.repository:
            raise ValueError(f"registry {entry.label}: an Artifactory entry needs a repository")
        super().__init__(entry, **options)
        self.repository = entry.repository

    def _path_prefix(self) -> str:
        return self.repository

    def _split(self, repo: str) -> tuple[str, str] | None:
        return (self.repository, repo) if "/" not in repo else None

    def _repo(self, user: str, name: str) -> str:
        if user != self.repository:
            raise NotFound(
                self.label,
                f"no image {user}/{name}: images of this registry are {self.repository}/<name>",
            )
        return name

    def _repo_path(self, user: str, name: str) -> str:
        return f"{self.repository}/{name}"
