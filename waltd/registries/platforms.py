"""Node models and the image platforms they run.

Pure functions over manifest list / OCI index entries (the JSON objects of `manifests`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

# Platforms each node model runs, best first.
_RPI_64 = ("linux/arm64", "linux/arm/v7")
MODEL_PLATFORMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "pc-x86-64": ("linux/amd64",),
        "pc-x86-32": ("linux/386",),
        "rpi-b": ("linux/arm/v6",),
        "rpi-b-plus": ("linux/arm/v6",),
        "rpi-2-b": ("linux/arm/v7",),
        "rpi-3-b": _RPI_64,
        "rpi-3-b-plus": _RPI_64,
        "rpi-4-b": _RPI_64,
        "rpi-400": _RPI_64,
        "rpi-5-b": _RPI_64,
    }
)

# Without a model to serve (a search reads labels only), the first of these the list offers.
_DEFAULT_ORDER = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/386")

# Architecture names tools write instead of the OCI ones: name -> (architecture, variant).
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}


class NoPlatform(ValueError):
    """The list offers no platform the given node models run."""


def normalise(os_name: str, architecture: str, variant: str = "") -> str:
    """`os/architecture[/variant]` in OCI's spelling, as containerd normalises it.

    arm64's `v8` is its default and dropped, arm without a variant means `v7`, amd64's `v1`
    is dropped, and common aliases (x86_64, aarch64, armhf...) take their OCI names.
    """
    os_name, arch, variant = os_name.lower(), architecture.lower(), variant.lower()
    if arch in _ARCH_ALIASES:
        arch, alias_variant = _ARCH_ALIASES[arch]
        variant = variant or alias_variant
    if variant.isdigit():
        variant = f"v{variant}"
    if (arch == "arm64" and variant == "v8") or (arch == "amd64" and variant == "v1"):
        variant = ""
    elif arch == "arm" and not variant:
        variant = "v7"
    return f"{os_name}/{arch}/{variant}" if variant else f"{os_name}/{arch}"


def platform_of(entry: Mapping[str, Any]) -> str | None:
    """The normalised platform of a list entry; None for attestations and unknown platforms."""
    annotations = entry.get("annotations")
    if isinstance(annotations, Mapping) and "vnd.docker.reference.type" in annotations:
        return None  # buildx attestation manifests: platform unknown/unknown, not an image
    platform = entry.get("platform")
    if not isinstance(platform, Mapping):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    variant = platform.get("variant") or ""
    if not (isinstance(os_name, str) and isinstance(arch, str) and isinstance(variant, str)):
        return None
    if not os_name or not arch or "unknown" in (os_name, arch):
        return None
    return normalise(os_name, arch, variant)


def platforms(entries: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The distinct platforms a list offers, in its order."""
    found = (platform_of(entry) for entry in entries)
    return tuple(dict.fromkeys(p for p in found if p is not None))


def choose(entries: Sequence[Mapping[str, Any]], models: Iterable[str]) -> Mapping[str, Any]:
    """The entry of a manifest list / OCI index to use for node `models`.

    Models are tried in order, each with its platforms best first (rpi 3/4/400/5: linux/arm64,
    else linux/arm/v7); the first match wins. A list holding a single image is taken as it is
    (its `walt.node.models` label decides compatibility). Without a known model the first of
    amd64, arm64, arm/v7, arm/v6, 386 is taken, else the first image. Raises NoPlatform when
    the list holds no image or none for the known models.
    """
    usable = [(entry, p) for entry in entries if (p := platform_of(entry)) is not None]
    if not usable:
        raise NoPlatform("the manifest list holds no image of a known platform")
    if len(usable) == 1:
        return usable[0][0]
    by_platform: dict[str, Mapping[str, Any]] = {}
    for entry, platform in usable:
        by_platform.setdefault(platform, entry)  # the first one of a platform, as docker does
    known = [m for m in models if m in MODEL_PLATFORMS]
    if not known:
        for platform in _DEFAULT_ORDER:
            if platform in by_platform:
                return by_platform[platform]
        return usable[0][0]
    for model in known:
        for platform in MODEL_PLATFORMS[model]:
            if platform in by_platform:
                return by_platform[platform]
    offered = ", ".join(by_platform)
    raise NoPlatform(f"no image for {', '.join(known)} in the list (it offers {offered})")
