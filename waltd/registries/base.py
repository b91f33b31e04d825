"""What every image source offers, and the records they exchange.

A source lists the WalT images it holds, resolves one reference to its digest and labels
without pulling it, and tells the image store how to copy it (a skopeo transport string
and, where credentials apply, a temporary authfile of mode 0600 removed after use).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

MODELS_LABEL = "walt.node.models"
MINVERSION_LABEL = "walt.server.minversion"
PREFERRED_NAME_LABEL = "walt.image.preferred-name"

# The Location column of `walt image search` for each kind of source.
LOCATION_HUB = "docker hub"
LOCATION_REGISTRY = "custom registry"
LOCATION_DOCKER = "docker daemon"
LOCATION_WALT = "walt (other user)"

# A node model name: anything else in the label (escape sequences, spaces) is left out.
_MODEL = re.compile(r"[a-z0-9][a-z0-9._-]*")
# A plain decimal number ("²".isdigit() is true, yet int() refuses it); 18 digits at most,
# as int() refuses very long numbers too.
_MINVERSION = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class Credentials:
    """A registry login. The password never appears in repr, logs or messages."""

    username: str
    password: str = field(repr=False)


class RegistryError(Exception):
    """A source failed; the message names the source and the problem, never a secret.

    `status` is the HTTP status that said so, if any; `retryable` whether the same request
    may succeed later (a busy or unreachable server), and `retry_after` how many seconds the
    server asked to wait first (`RetryPolicy` reads both).
    """

    def __init__(
        self,
        source: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class NotFound(RegistryError):
    """The repository, tag or manifest does not exist (never retried)."""


class AuthError(RegistryError):
    """401/403: missing or refused credentials (never retried).

    `token_service` is True when the registry's token service refused (the credentials
    themselves, whatever is asked for), False when one repository or request was refused.
    """

    def __init__(
        self, source: str, message: str, *, status: int | None = None, token_service: bool = False
    ) -> None:
        super().__init__(source, message, status=status)
        self.token_service = token_service


class Unsupported(RegistryError):
    """An image the client cannot use (schema 1, not a container image, no platform fits)."""


class LimitExceeded(RegistryError):
    """A bound of the daemon (a count, a size, a deadline) stopped the source: its answer is
    incomplete, so it is not used at all."""


class BadImage(RegistryError):
    """One image's manifest or config is unusable: over the size limit, not matching its
    digest, or invalid. A listing leaves that image out instead of failing."""


class DigestMismatch(BadImage):
    """Content that does not match its digest: the registry, or what stands between it and
    the daemon, changed it. Refused; a listing leaves the image out and warns the user."""


def node_models(labels: Mapping[str, str]) -> tuple[str, ...]:
    """Node models from the `walt.node.models` label (entries not named like one left out)."""
    raw = labels.get(MODELS_LABEL, "")
    return tuple(m for m in (e.strip() for e in raw.split(",")) if _MODEL.fullmatch(m))


@dataclass(frozen=True)
class ImageInfo:
    """A WalT image as a source holds it."""

    location: str  # clone URL location: "hub", "docker", or a registry label
    kind: str  # LOCATION_* (the Location column)
    user: str
    name: str
    tag: str
    digest: str | None
    labels: Mapping[str, str]
    created: str | None = None
    platforms: tuple[str, ...] = ()  # "linux/arm64", ... when the image is a manifest list
    platform: str | None = None  # the one chosen in a list (`resolve`'s models), "os/arch[/v]"
    # the config blob's digest of the image read (in a list, of the one chosen), when known
    config_digest: str | None = None

    @property
    def models(self) -> tuple[str, ...]:
        """Node models from the `walt.node.models` label (entries not named like one left out)."""
        return node_models(self.labels)

    @property
    def is_walt(self) -> bool:
        """True when the image declares compatible node models."""
        return bool(self.models)

    @property
    def minversion(self) -> int | None:
        """`walt.server.minversion` as an int (None when absent or not a plain decimal number)."""
        raw = self.labels.get(MINVERSION_LABEL, "").strip()
        return int(raw) if _MINVERSION.fullmatch(raw) else None

    @property
    def clone_url(self) -> str:
        """`<location>:<user>/<name>[:<tag>]`, the trailing `:latest` hidden."""
        tag = "" if self.tag == "latest" else f":{self.tag}"
        return f"{self.location}:{self.user}/{self.name}{tag}"


# Receives a line for the user about a listing that goes on (a search shows it as a warning).
Warn = Callable[[str], None]


class Source(Protocol):
    """An image source (registry or docker daemon)."""

    label: str  # clone URL location
    kind: str  # LOCATION_*

    async def list_images(
        self, creds: Credentials | None = None, *, warn: Warn | None = None
    ) -> list[ImageInfo]:
        """Every WalT image the source holds (images without `walt.node.models` left out).

        `warn` receives one line per problem the user should see that did not stop the
        listing (an image refused because its content does not match its digest).
        """
        ...

    async def resolve(
        self,
        user: str,
        name: str,
        tag: str,
        creds: Credentials | None = None,
        *,
        models: Sequence[str] = (),
    ) -> ImageInfo:
        """One image's digest and labels without pulling it; NotFound when absent.

        `models` picks the platform of a multi-platform image (see `platforms.py`).
        """
        ...

    def transport(self, user: str, name: str, tag: str) -> str:
        """skopeo's source string for the image, e.g. `docker://host:port/user/name:tag`."""
        ...

    def skopeo_options(self) -> list[str]:
        """Extra skopeo options for this source (TLS, daemon host)."""
        ...


@contextlib.asynccontextmanager
async def authfile(registry_host: str, creds: Credentials | None) -> AsyncIterator[Path | None]:
    """A temporary containers-auth.json (mode 0600) for `--authfile`, removed on exit.

    Yields None without credentials. The file is created 0600 before anything is written.
    """
    if creds is None:
        yield None
        return
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    fd, name = tempfile.mkstemp(prefix="waltd-auth-", suffix=".json")
    path = Path(name)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {registry_host: {"auth": token}}}, f)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)  # a tiny local file: not worth a thread
