"""WalT default images in the lab's registries, how often a registry served them, node storms.

A model's default image is `waltplatform/<model>-default:latest`: a few files and, on request,
a payload of random (incompressible) bytes, all in one layer, labelled
`walt.node.models=<model>`; its content differs from model to model, so images never share a
blob. It is built offline with buildah in the lab's storage and pushed with skopeo (a login
through an auth file, never on the command line).

Downloads are counted from a registry's access log (`Lab.start_registry(access_log=True)`):
one download of an image is one GET of its layer blob that the registry answered with
success. HEAD requests (skopeo asking whether a blob is there) and the config blob (read
when an image is resolved) are not downloads.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from lab import dhcp_client
from lab.images import build_image, push_image
from lab.lab import Lab, LabError, Node, Registry
from waltd.aio import gather_all

PLATFORM_USER = "waltplatform"
TAG = "latest"
# How the node says which model it is: its DHCP vendor class.
CLASS_PREFIX = "walt.node."
# One line of the access log: the request line and the status answered.
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/\S*) HTTP/[0-9.]+" (?P<status>\d{3}) ')
_BLOB = re.compile(r"/v2/(?P<repository>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def repository(model: str) -> str:
    """The repository of `model`'s default image: `waltplatform/<model>-default`."""
    return f"{PLATFORM_USER}/{model}-default"


def reference(model: str) -> str:
    """`model`'s default image as a registry names it: `waltplatform/<model>-default:latest`."""
    return f"{repository(model)}:{TAG}"


def vendor_class(model: str) -> str:
    """The DHCP vendor class a node of `model` sends: `walt.node.<model>`."""
    return CLASS_PREFIX + model


@dataclass(frozen=True)
class DefaultImage:
    """A default image built in the lab's storage (`local`, its full name there)."""

    model: str
    local: str
    payload_bytes: int

    @property
    def reference(self) -> str:
        """`waltplatform/<model>-default:latest`."""
        return reference(self.model)


async def build_default_image(lab: Lab, model: str, *, payload_mb: float = 0) -> DefaultImage:
    """Build `model`'s default image in the lab's storage, with `payload_mb` MiB of random
    bytes in `/payload` (none by default)."""
    files: dict[str, bytes | str] = {
        "etc/hostname": f"{model}\n",
        "etc/walt/model": f"{model}\n",
        "etc/os-release": f'NAME="WalT default image for {model}"\n',
    }
    size = int(payload_mb * 2**20)
    if size:
        files["payload"] = await asyncio.to_thread(os.urandom, size)
    local = f"docker.io/{reference(model)}"
    await build_image(lab, local, [model], files)
    return DefaultImage(model, local, size)


async def publish(
    lab: Lab,
    image: DefaultImage,
    registry: Registry,
    *,
    credentials: tuple[str, str] | None = None,
) -> str:
    """Push `image` to `registry` as `waltplatform/<model>-default:latest` (with the
    registry's own login unless `credentials` are given); returns the remote reference."""
    return await push_image(lab, image.local, registry, image.reference, credentials=credentials)


async def build_and_publish(
    lab: Lab, models: Iterable[str], registry: Registry, *, payload_mb: float = 0
) -> list[DefaultImage]:
    """Build the default image of each of `models` and push it to `registry`."""
    images = []
    for model in models:
        image = await build_default_image(lab, model, payload_mb=payload_mb)
        await publish(lab, image, registry)
        images.append(image)
    return images


# ---- counting downloads ------------------------------------------------------------------


def blob_gets(log: str) -> Counter[tuple[str, str]]:
    """(repository, digest) -> how many GETs of that blob were answered with success, from
    the text of a registry's access log (lines that are not requests are skipped)."""
    found: Counter[tuple[str, str]] = Counter()
    for line in log.splitlines():
        access = _ACCESS.search(line)
        if access is None or access["method"] != "GET" or not access["status"].startswith("2"):
            continue
        blob = _BLOB.fullmatch(access["path"].partition("?")[0])
        if blob is not None:
            found[blob["repository"], blob["digest"]] += 1
    return found


def _read_link(path: Path) -> str:
    digest = path.read_text().strip()
    if not _DIGEST.fullmatch(digest):
        raise LabError(f"{path}: not a digest")
    return digest


def stored_layers(storage: Path) -> dict[str, tuple[str, ...]]:
    """`waltplatform/*-default:latest` of a registry's filesystem storage -> its layers.

    Read from the registry's own files (the tag's link, then the manifest blob), so no
    request reaches the registry and its access log stays the fetcher's alone.
    """
    v2 = storage / "docker" / "registry" / "v2"
    found: dict[str, tuple[str, ...]] = {}
    for tag in sorted((v2 / "repositories" / PLATFORM_USER).glob(f"*/_manifests/tags/{TAG}")):
        name = f"{PLATFORM_USER}/{tag.parents[2].name}"
        digest = _read_link(tag / "current" / "link")
        algorithm, _, hexa = digest.partition(":")
        blob = v2 / "blobs" / algorithm / hexa[:2] / hexa / "data"
        manifest = json.loads(blob.read_bytes())
        found[f"{name}:{TAG}"] = tuple(layer["digest"] for layer in manifest["layers"])
    return found


def count_downloads(lab: Lab, registry: Registry) -> dict[str, int]:
    """How many times `registry` served each default image it holds:
    {`waltplatform/<model>-default:latest`: downloads}.

    A download is a successful GET of the image's layer (of its most fetched layer when it
    has several). The registry must have been started with `access_log=True`; its log
    covers every process it had (a restart appends to it).
    """
    if not registry.process.log.exists():
        raise LabError(f"registry {registry.role} has no log")
    gets = blob_gets(registry.process.log.read_text(errors="replace"))
    counts = {}
    for image, layers in stored_layers(lab.registry_data(registry)).items():
        name = image.rpartition(":")[0]
        counts[image] = max((gets[name, layer] for layer in layers), default=0)
    return counts


# ---- node storms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StormNode:
    """A simulated node and the model it announces."""

    node: Node
    model: str


async def add_nodes(lab: Lab, count: int, models: Sequence[str]) -> list[StormNode]:
    """`count` new simulated nodes, their models taken from `models` in turn.

    Made one after the other (namespaces and links), before any storm: their creation is
    never part of what a storm measures.
    """
    if not models:
        raise ValueError("no model given")
    return [StormNode(await lab.add_node(), models[i % len(models)]) for i in range(count)]


async def dhcp_storm(
    lab: Lab, nodes: Sequence[StormNode], *, configure: bool = True
) -> list[IPv4Address]:
    """Every node of `nodes` asks for a lease at once, with its model's vendor class; the
    addresses they got, in the same order, set on their interfaces unless not `configure`.
    The first node that gets none ends the others' requests and raises its LabError.

    The lab's in-process client (`dhcp_client.lease`), not one udhcpc per node: a storm
    benchmark charges the clients' CPU to the server it measures.
    """
    return await gather_all(
        dhcp_client.lease(lab, n.node, vendor_class=vendor_class(n.model), configure=configure)
        for n in nodes
    )
