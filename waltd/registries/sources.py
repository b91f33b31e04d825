"""The image sources of a configuration: its registries in order, then the docker daemon."""

from __future__ import annotations

from waltd import config as configuration
from waltd.registries.artifactory import ArtifactorySource
from waltd.registries.base import Source
from waltd.registries.cache import DigestCache
from waltd.registries.docker_daemon import DockerDaemonSource
from waltd.registries.hub import HubSource
from waltd.registries.v2 import RegistryV2Source


def registry_source(entry: configuration.Registry, cache: DigestCache | None) -> Source:
    """The client of one configured registry."""
    if entry.api == "docker-hub":
        urls = {"registry_url": entry.registry_url, "hub_url": entry.hub_url}
        return HubSource(cache=cache, **{k: v for k, v in urls.items() if v})
    if entry.api == "jfrog-artifactory":
        return ArtifactorySource(entry, cache=cache)
    return RegistryV2Source(entry, cache=cache)


def sources(config: configuration.Config, cache: DigestCache | None) -> list[Source]:
    """Every source, in the order default images are looked for (REFERENCE.md)."""
    found = [registry_source(entry, cache) for entry in config.registries]
    # No socket: no docker on this server, which is normal, not worth a warning each time.
    if config.images.docker_socket.exists():
        found.append(DockerDaemonSource(str(config.images.docker_socket)))
    return found
