"""Choosing the image of a manifest list / OCI index for node models (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waltd.registries.platforms import (
    MODEL_PLATFORMS,
    NoPlatform,
    choose,
    normalise,
    platform_of,
    platforms,
)


def entry(platform: str, **extra: Any) -> dict[str, Any]:
    """A list entry for `os/arch[/variant]`."""
    os_name, arch, *variant = platform.split("/")
    spec = {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})}
    return {"digest": f"sha256:{platform}", "platform": spec, **extra}


ALL = [entry(p) for p in ("linux/amd64", "linux/386", "linux/arm/v6", "linux/arm/v7")]
ALL.append(entry("linux/arm64/v8"))
ATTESTATION = {
    "digest": "sha256:att",
    "platform": {"os": "unknown", "architecture": "unknown"},
    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
}


@pytest.mark.parametrize(
    ("model", "platform"),
    [
        ("pc-x86-64", "linux/amd64"),
        ("pc-x86-32", "linux/386"),
        ("rpi-b", "linux/arm/v6"),
        ("rpi-b-plus", "linux/arm/v6"),
        ("rpi-2-b", "linux/arm/v7"),
        ("rpi-3-b", "linux/arm64"),
        ("rpi-3-b-plus", "linux/arm64"),
        ("rpi-4-b", "linux/arm64"),
        ("rpi-400", "linux/arm64"),
        ("rpi-5-b", "linux/arm64"),
    ],
)
def test_reference_table(model: str, platform: str) -> None:
    assert platform_of(choose(ALL, [model])) == platform


@pytest.mark.parametrize("model", ["rpi-3-b", "rpi-3-b-plus", "rpi-4-b", "rpi-400", "rpi-5-b"])
def test_64_bit_boards_fall_back_to_arm_v7(model: str) -> None:
    offered = [entry("linux/amd64"), entry("linux/arm/v7"), entry("linux/arm/v6")]
    assert platform_of(choose(offered, [model])) == "linux/arm/v7"
    with pytest.raises(NoPlatform, match=rf"no image for {model} .*linux/amd64, linux/arm/v6"):
        choose([entry("linux/amd64"), entry("linux/arm/v6")], [model])


def test_single_image_taken_as_it_is_and_attestations_ignored() -> None:
    only = entry("linux/amd64")
    assert choose([only], ["rpi-4-b"]) is only
    assert choose([only, ATTESTATION], ["rpi-2-b"]) is only
    assert platforms([only, ATTESTATION]) == ("linux/amd64",)
    with pytest.raises(NoPlatform, match="no image of a known platform"):
        choose([ATTESTATION], ["pc-x86-64"])
    with pytest.raises(NoPlatform):
        choose([], [])


def test_without_known_model_a_default_order_applies() -> None:
    offered = [entry("linux/arm/v7"), entry("linux/arm64"), entry("linux/amd64")]
    assert platform_of(choose(offered, [])) == "linux/amd64"
    assert platform_of(choose(offered, ["some-future-board"])) == "linux/amd64"
    assert platform_of(choose(offered[:2], [])) == "linux/arm64"
    exotic = [entry("linux/riscv64"), entry("linux/s390x")]
    assert choose(exotic, []) is exotic[0]


def test_models_are_tried_in_order() -> None:
    offered = [entry("linux/amd64"), entry("linux/arm64")]
    assert platform_of(choose(offered, ["rpi-b", "rpi-4-b", "pc-x86-64"])) == "linux/arm64"
    assert platform_of(choose(offered, ["pc-x86-64", "rpi-4-b"])) == "linux/amd64"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (("linux", "arm64", "v8"), "linux/arm64"),
        (("linux", "aarch64", ""), "linux/arm64"),
        (("linux", "arm", ""), "linux/arm/v7"),
        (("linux", "arm", "6"), "linux/arm/v6"),
        (("linux", "armhf", ""), "linux/arm/v7"),
        (("linux", "armel", ""), "linux/arm/v6"),
        (("Linux", "x86_64", ""), "linux/amd64"),
        (("linux", "amd64", "v1"), "linux/amd64"),
        (("linux", "amd64", "v3"), "linux/amd64/v3"),
        (("linux", "i686", ""), "linux/386"),
    ],
)
def test_normalise(raw: tuple[str, str, str], expected: str) -> None:
    assert normalise(*raw) == expected


def test_platform_of_rejects_malformed_entries() -> None:
    assert platform_of({"digest": "x"}) is None
    assert platform_of({"platform": "linux/amd64"}) is None
    assert platform_of({"platform": {"os": "linux", "architecture": 64}}) is None
    assert platform_of({"platform": {"os": "", "architecture": "amd64"}}) is None


_PLATFORMS = sorted({p for ps in MODEL_PLATFORMS.values() for p in ps} | {"linux/s390x"})


@given(
    offered=st.lists(st.sampled_from(_PLATFORMS), min_size=1, max_size=6),
    models=st.lists(st.sampled_from([*MODEL_PLATFORMS, "unknown-board"]), max_size=3),
)
def test_choice_is_an_offered_image_the_models_run(offered: list[str], models: list[str]) -> None:
    entries = [entry(p) for p in offered]
    known = [m for m in models if m in MODEL_PLATFORMS]
    try:
        chosen = choose(entries, models)
    except NoPlatform:
        # only a list of several images none of which any known model runs
        assert len(entries) > 1 and known
        assert not any(p in offered for m in known for p in MODEL_PLATFORMS[m])
        return
    assert any(chosen is e for e in entries)
    if len(entries) > 1 and known:
        runnable = [p for m in known for p in MODEL_PLATFORMS[m] if p in offered]
        assert platform_of(chosen) == runnable[0]
