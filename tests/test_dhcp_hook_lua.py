"""The Lua hook (`waltd/provision/dhcp_hook.lua`) run by a Lua 5.4 interpreter, as dnsmasq's
helper runs it: the messages it spools are those the exec hook (`waltd.dhcp_event`) writes
for the same call, whatever bytes the client sent."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import require_tool
from waltd import dhcp_event
from waltd.provision.dnsmasq import PREFIX_ENV, write_lua_hook

PREFIX = "00000000000000000042"
# what a client can put in a field dnsmasq passes on: any byte but NUL (C strings)
_RAW = st.lists(st.integers(1, 255), max_size=40).map(bytes)
_TEXT = st.text(st.characters(min_codepoint=1, exclude_categories=("Cs",)), max_size=20).map(
    str.encode
)
# byte sequences at the edges of UTF-8: the first and last valid sequence of each length
# and range, overlong forms, UTF-16 surrogates, code points past U+10FFFF, cut sequences
_EDGES = (
    b"\x7f", b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xdf\xbf",
    b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xe0\xa0\x80", b"\xec\xbf\xbf", b"\xed\x80\x80",
    b"\xed\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf",
    b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf3\xbf\xbf\xbf",
    b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff",
    b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3", b"\xe2\x82A", b"\xc3\xa9\xc3",
)  # fmt: skip
_UTF8_EDGES = st.lists(st.one_of(st.sampled_from(_EDGES), _TEXT), max_size=4).map(b"".join)
_FIELD = st.one_of(_RAW, _TEXT, _UTF8_EDGES)


def _lua(data: bytes) -> str:
    """`data` as a Lua string literal (three-digit decimal escapes: any byte, unambiguous)."""
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def _run(tmp_path: Path, calls: Sequence[str], spool: Path | None = None) -> tuple[list[Any], str]:
    """Run the hook with `calls` (Lua statements); the messages spooled, in name order, and
    what it wrote on stderr."""
    lua = require_tool("lua5.4")
    hook = write_lua_hook(tmp_path / "dhcp-hook.lua")
    if spool is None:
        spool = tmp_path / "spool"
        spool.mkdir()  # the daemon makes it before it starts dnsmasq
    driver = tmp_path / "driver.lua"
    driver.write_text(f"dofile({_lua(str(hook).encode())})\n" + "\n".join(calls) + "\n")
    env = {**os.environ, dhcp_event.SPOOL_ENV: str(spool), PREFIX_ENV: PREFIX}
    res = subprocess.run([lua, str(driver)], env=env, capture_output=True, timeout=20)
    assert res.returncode == 0, res.stderr
    files = sorted(spool.iterdir()) if spool.exists() else []
    assert all(f.name.startswith(PREFIX + "-") and f.suffix == ".json" for f in files)
    return [json.loads(f.read_bytes()) for f in files], res.stderr.decode(errors="replace")


def _lease_call(action: str, fields: dict[str, bytes]) -> str:
    table = ", ".join(f"{key} = {_lua(value)}" for key, value in fields.items())
    return f"lease({_lua(action.encode())}, {{{table}}})"


def _exec_hook_message(action: str, fields: dict[str, bytes]) -> dict[str, Any]:
    """The exec hook's message for the same call: arguments and environment decoded the way
    Python's os.environ and sys.argv decode them."""
    argv = [action, os.fsdecode(fields["mac_address"]), os.fsdecode(fields["ip_address"])]
    if "hostname" in fields:
        argv.append(os.fsdecode(fields["hostname"]))
    names = {"vendor_class": "DNSMASQ_VENDOR_CLASS", "interface": "DNSMASQ_INTERFACE"}
    names |= {f"user_class{i}": f"DNSMASQ_USER_CLASS{i}" for i in range(20)}
    environ = {names[k]: os.fsdecode(v) for k, v in fields.items() if k in names}
    message = json.loads(dhcp_event.encode(dhcp_event.build_event(argv, environ)))
    assert isinstance(message, dict)
    return message


def _without_time(message: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(message.pop("time"), int | float)
    return message


@settings(max_examples=120, deadline=None)
@given(
    mac=_FIELD,
    hostname=st.one_of(st.none(), _FIELD),
    vendor=st.one_of(st.none(), _FIELD),
    classes=st.lists(_FIELD, max_size=3),
    interface=_FIELD,
)
def test_the_lua_hook_writes_what_the_exec_hook_writes(
    tmp_path_factory: Any,
    mac: bytes,
    hostname: bytes | None,
    vendor: bytes | None,
    classes: list[bytes],
    interface: bytes,
) -> None:
    tmp_path = tmp_path_factory.mktemp("lua")
    fields = {"mac_address": mac, "ip_address": b"10.0.0.5", "interface": interface}
    if hostname is not None:
        fields["hostname"] = hostname
    if vendor is not None:
        fields["vendor_class"] = vendor
    fields |= {f"user_class{i}": value for i, value in enumerate(classes)}
    (written,), _ = _run(tmp_path, [_lease_call("add", fields)])
    assert _without_time(written) == _without_time(_exec_hook_message("add", fields))


def test_each_edge_of_utf8_is_written_as_the_exec_hook_writes_it(tmp_path: Path) -> None:
    calls = [_lease_call("add", _edge_fields(edge)) for edge in _EDGES]
    written, _ = _run(tmp_path, calls)
    expected = [_exec_hook_message("add", _edge_fields(edge)) for edge in _EDGES]
    assert [_without_time(m) for m in written] == [_without_time(m) for m in expected]


def _edge_fields(edge: bytes) -> dict[str, bytes]:
    return {"mac_address": b"m" + edge, "ip_address": b"10.0.0.5", "vendor_class": edge}


def test_messages_are_named_in_call_order_and_user_classes_are_bounded(tmp_path: Path) -> None:
    many = {f"user_class{i}": f"class-{i}".encode() for i in range(20)}
    lease = {"mac_address": b"52:54:00:00:00:01", "ip_address": b"10.0.0.5"}
    calls = [_lease_call("add", lease), _lease_call("old", lease), _lease_call("del", lease | many)]
    written, stderr = _run(tmp_path, calls)
    assert [m["action"] for m in written] == ["add", "old", "del"] and stderr == ""
    assert written[2]["user_classes"] == [f"class-{i}" for i in range(16)]
    assert written[0]["hostname"] is None and written[0]["vendor_class"] is None


def test_a_tftp_transfer_is_spooled_as_the_exec_hook_does(tmp_path: Path) -> None:
    table = '{destination_address = "10.0.0.5", file_name = "/srv/tftp/a b", file_size = "512"}'
    (written,), _ = _run(tmp_path, [f'tftp("tftp", {table})'])
    expected = dhcp_event.build_event(["tftp", "512", "10.0.0.5", "/srv/tftp/a b"], {})
    assert _without_time(written) == _without_time(json.loads(dhcp_event.encode(expected)))


def test_a_spool_it_cannot_write_is_reported_never_raised(tmp_path: Path) -> None:
    """dnsmasq calls the hook unprotected: an error raised would abort its helper."""
    call = _lease_call("add", {"mac_address": b"52:54:00:00:00:01", "ip_address": b"10.0.0.5"})
    written, stderr = _run(tmp_path, [call], spool=tmp_path / "none")
    assert written == []
    assert "waltd hook: cannot spool the event" in stderr
