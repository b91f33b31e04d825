"""What a DHCP client is: node models from classes and MAC prefixes, PC boot stages, and a
model grammar that only ever gives names fit for an image, a path and a host name."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waltd.names import parse_local
from waltd.provision.models import (
    CLASS_PREFIX,
    FIRMWARE_PXE,
    IPXE_BOOTSTRAP,
    MODEL_MAX,
    RPI_UNKNOWN_MODEL,
    Classification,
    classify,
    is_model,
    model_from_class,
    shown_class,
)

MAC = "52:54:00:12:34:56"
RPI_MAC = "B8-27-EB-00-00-01"


@pytest.mark.parametrize(
    ("mac", "vendor", "users", "expected"),
    [
        (MAC, "walt.node.pc-x86-64", [], Classification("pc-x86-64")),
        # iPXE's bootstrap: the user class names the model, the vendor class is still PXE's
        (MAC, "PXEClient:Arch:00000", ["iPXE", "walt.node.rpi-3-b"], Classification("rpi-3-b")),
        (MAC, "walt.node.a", ["walt.node.b"], Classification("b")),
        (RPI_MAC, None, [], Classification(RPI_UNKNOWN_MODEL)),
        # a Raspberry Pi's boot ROM sends PXE's vendor class too: its MAC says what it is
        (RPI_MAC, "PXEClient:Arch:00000:UNDI:002001", [], Classification(RPI_UNKNOWN_MODEL)),
        (RPI_MAC, "walt.node.rpi-4-b", [], Classification("rpi-4-b")),
        # a PC on its way: firmware PXE (BIOS, UEFI x86-64), then iPXE without a walt class
        (MAC, "PXEClient:Arch:00000:UNDI:002001", [], Classification(None, FIRMWARE_PXE)),
        (MAC, "PXEClient:Arch:00007:UNDI:003016", [], Classification(None, FIRMWARE_PXE)),
        (MAC, "PXEClient:Arch:00009", [], Classification(None, FIRMWARE_PXE)),
        (MAC, "PXEClient:Arch:00000:UNDI:002001", ["iPXE"], Classification(None, IPXE_BOOTSTRAP)),
        # other architectures get no iPXE binary: unknown devices
        (MAC, "PXEClient:Arch:00011:UNDI:003000", [], Classification(None)),
        (MAC, "PXEClient:Arch:000000", [], Classification(None)),
        (MAC, "udhcp 1.35.0", [], Classification(None)),
        (MAC, None, [], Classification(None)),
    ],
)
def test_classification(mac: str, vendor: str | None, users: list[str], expected: object) -> None:
    assert classify(mac, vendor, users) == expected


@pytest.mark.parametrize(
    "model",
    [
        "",
        "../etc",
        "a/b",
        "a.b",
        "a_b",
        "a b",
        "-a",
        "a-",
        "UPPER",
        "x" * (MODEL_MAX + 1),
        "caf\u00e9",
        "a\x00b",
        "a\nb",
    ],
)
def test_a_class_naming_an_impossible_model_makes_an_unknown_device(model: str) -> None:
    """Never trusted further, whatever else the client says (a MAC of a Raspberry Pi, a
    valid vendor class below the user class that decides)."""
    value = CLASS_PREFIX + model
    assert model_from_class(value) is None
    assert classify(RPI_MAC, "walt.node.pc-x86-64", [value]) == Classification(
        None, invalid_class=value
    )


def test_a_class_not_of_walt_names_no_model() -> None:
    assert model_from_class("xwalt.node.pc") is None
    assert model_from_class(None) is None
    assert model_from_class("x" * 64 + "walt.node.pc") is None


def test_the_longest_model_is_accepted() -> None:
    model = "a" * (MODEL_MAX - 2) + "-1"
    assert len(model) == MODEL_MAX and model_from_class(CLASS_PREFIX + model) == model


def test_an_invalid_class_is_shown_escaped_and_truncated() -> None:
    assert shown_class("walt.node.a\x1b[2J\u00e9") == "walt.node.a\\x1b[2J\\xe9"
    long = shown_class("walt.node." + "x" * 500)
    assert long.endswith("...") and len(long) == 83
    assert shown_class("walt.node.\udcff") == "walt.node.\\udcff"


# Letters that matter to the grammar, and anything else.
_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-._/ \t\n\x00\x7f\u00e9")


@given(st.one_of(_TEXT, st.text()))
def test_no_accepted_model_holds_a_separator_or_a_control_character(text: str) -> None:
    model = model_from_class(CLASS_PREFIX + text)
    if model is None:
        return
    assert model == text and 1 <= len(model) <= MODEL_MAX
    assert not any(c in model for c in "/.") and model.isprintable()
    assert not any(c.isspace() for c in model) and model.isascii()
    assert parse_local(f"{model}-default") == (f"{model}-default", "latest")


@given(st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?", fullmatch=True))
def test_every_model_makes_a_local_image_name(model: str) -> None:
    assert is_model(model)
    assert classify(MAC, None, [CLASS_PREFIX + model]) == Classification(model)
    assert parse_local(f"{model}-default:latest") == (f"{model}-default", "latest")
