"""The local docker daemon as an image source (`docker:` clone URLs), through aiodocker.

Works against dockerd and against podman's Docker-compatible service alike. Only images labelled
`walt.node.models` are listed, one ImageInfo per repository tag `user/name:tag`.
"""

from __future__ import annotations

import errno
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiodocker
import aiohttp

from waltd import names
from waltd.registries.base import (
    LOCATION_DOCKER,
    MODELS_LABEL,
    Credentials,
    ImageInfo,
    NotFound,
    RegistryError,
    Warn,
)

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
SOURCE = "docker daemon"
# Names the daemon may give an image of Docker Hub's namespace: dockerd shows `user/name`,
# podman's service `docker.io/user/name`.
_HUB_PREFIXES = ("docker.io/", "index.docker.io/")
# RFC 3339 with up to nanoseconds (Go's format); Python reads at most microseconds.
_FRACTION = re.compile(r"(\.\d{1,6})\d*")
# errno values meaning that nothing listens on the socket (rather than "not allowed").
_NOT_RUNNING = {errno.ENOENT, errno.ECONNREFUSED}


def split_repo_tag(repo_tag: str) -> tuple[str, str, str] | None:
    """`user/name:tag` of a daemon's repository tag, or None when it is not of that form.

    A Docker Hub prefix (`docker.io/`) is dropped; names on any other registry, names of one
    component and `<none>:<none>` are not WalT images of the daemon and give None.
    """
    for prefix in _HUB_PREFIXES:
        if repo_tag.startswith(prefix):
            repo_tag = repo_tag[len(prefix) :]
            break
    repository, sep, tag = repo_tag.rpartition(":")
    split = names.split_user_name(repository)
    if not sep or split is None or not names.is_tag(tag):
        return None
    return (*split, tag)


def _created(value: object) -> str | None:
    """Creation time as ISO 8601 UTC to the second, or None.

    The image list gives seconds, image inspect RFC 3339 text: both give the same result.
    """
    when: datetime
    if isinstance(value, int | float) and value > 0:
        when = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str) and value:
        try:
            when = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    else:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _labels(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items()}


class DockerDaemonSource:
    """The docker daemon at `socket` (`unix:///path`, a bare absolute path, or `tcp://h:p`).

    Every call opens its own connection: the daemon is local, and a daemon started or
    restarted between two searches is found without any state to reset.
    """

    label = "docker"
    kind = LOCATION_DOCKER

    def __init__(self, socket: str = DEFAULT_SOCKET, *, timeout_s: float = 30.0) -> None:
        self.socket = f"unix://{socket}" if socket.startswith("/") else socket
        self.timeout_s = timeout_s

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[aiodocker.Docker]:
        """A client whose failures become RegistryError naming the daemon's socket."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            docker = aiodocker.Docker(url=self.socket, timeout=timeout)
        except ValueError as err:  # an unknown URL scheme
            raise RegistryError(SOURCE, f"invalid socket {self.socket!r}: {err}") from None
        try:
            yield docker
        except aiodocker.DockerError as err:
            raise self._error(err) from None
        except TimeoutError:
            raise RegistryError(
                SOURCE, f"no answer from {self.socket} after {self.timeout_s} s", retryable=True
            ) from None
        except (aiohttp.ClientError, ValueError) as err:
            # ValueError: a body that is not JSON (something else listens there)
            raise RegistryError(SOURCE, f"invalid answer from {self.socket}: {err}") from None
        finally:
            await docker.close()

    def _error(self, err: aiodocker.DockerError) -> RegistryError:
        # aiodocker reports a failed connection as status 900, the cause as the context
        if err.status == 900:
            cause = err.__context__
            os_error = getattr(cause, "os_error", None)
            if isinstance(os_error, OSError) and os_error.errno in _NOT_RUNNING:
                return RegistryError(SOURCE, f"not running at {self.socket}", retryable=True)
            reason = os_error.strerror if isinstance(os_error, OSError) else str(cause)
            return RegistryError(
                SOURCE, f"cannot connect to {self.socket}: {reason}", retryable=True
            )
        message = str(err.message).strip()
        if err.status == 404:
            return NotFound(SOURCE, message, status=404)
        return RegistryError(
            SOURCE, f"{message} (HTTP {err.status})", status=err.status, retryable=err.status >= 500
        )

    async def list_images(
        self, creds: Credentials | None = None, *, warn: Warn | None = None
    ) -> list[ImageInfo]:
        """Every image labelled `walt.node.models`, one entry per `user/name:tag` it carries.

        `creds` is ignored: the daemon's socket is its own access control; so is `warn`: the
        daemon's own images need no check to warn about.
        """
        async with self._client() as docker:
            summaries = await docker.images.list(filters={"label": [MODELS_LABEL]})
        images = []
        for summary in summaries:
            labels = _labels(summary.get("Labels"))
            for repo_tag in summary.get("RepoTags") or ():
                parsed = split_repo_tag(str(repo_tag))
                if parsed is not None:
                    images.append(self._info(*parsed, summary["Id"], labels, summary))
        # the filter matches the label's presence: an empty list of models is not a WalT image
        return [image for image in images if image.is_walt]

    async def resolve(
        self,
        user: str,
        name: str,
        tag: str,
        creds: Credentials | None = None,
        *,
        models: Sequence[str] = (),
    ) -> ImageInfo:
        """The image `user/name:tag` of the daemon (labels as they are); NotFound when absent.

        A daemon holds one platform per name: `models` has nothing to choose.
        """
        async with self._client() as docker:
            data = await docker.images.inspect(f"{user}/{name}:{tag}")
        labels = _labels((data.get("Config") or {}).get("Labels"))
        return self._info(user, name, tag, data["Id"], labels, data)

    def _info(
        self,
        user: str,
        name: str,
        tag: str,
        image_id: str,
        labels: dict[str, str],
        data: Mapping[str, Any],
    ) -> ImageInfo:
        # The digest is the image id (its config's digest): a daemon keeps no manifest for
        # an image built or loaded locally.
        return ImageInfo(
            location=self.label,
            kind=self.kind,
            user=user,
            name=name,
            tag=tag,
            digest=image_id,
            labels=labels,
            created=_created(data.get("Created")),
        )

    def transport(self, user: str, name: str, tag: str) -> str:
        """skopeo's source string: `docker-daemon:user/name:tag` (see `skopeo_options`)."""
        return f"docker-daemon:{user}/{name}:{tag}"

    def skopeo_options(self) -> list[str]:
        """skopeo options that point a `docker-daemon:` source at this daemon.

        Always given, even for the default socket, so that a DOCKER_HOST in skopeo's
        environment cannot send it to another daemon.
        """
        return ["--src-daemon-host", self.socket]
