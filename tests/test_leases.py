"""dnsmasq's lease file: parsed within its bounds, damaged lines skipped and counted."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from waltd.provision import leases
from waltd.provision.leases import Lease, parse_leases, read_leases

NOW = 1_700_000_000
MAC = "52:54:00:12:34:56"


def _line(expiry: int, mac: str, ip: str, host: str = "*", client: str = "*") -> bytes:
    return f"{expiry} {mac} {ip} {host} {client}\n".encode()


def test_leases_in_force_are_read() -> None:
    data = (
        _line(NOW + 3600, MAC, "10.0.0.5", "pc-123456", "01:52:54:00:12:34:56")
        + _line(0, "B8:27:EB:00:00:01", "10.0.0.6")  # never expires
        + _line(NOW - 1, "52:54:00:00:00:09", "10.0.0.9")  # expired: left out
        + b"duid 00:01:00:01:2c:1f:2a:3b:52:54:00:12:34:56\n"
        + _line(NOW + 60, "00:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d", "fd00::5")
    )
    found = parse_leases(data, NOW)
    assert found.leases == (
        Lease(MAC, "10.0.0.5", NOW + 3600, "pc-123456"),
        Lease("b8:27:eb:00:00:01", "10.0.0.6", 0, None),
    )
    assert (found.malformed, found.first_problem, found.truncated) == (0, None, False)


def test_the_last_lease_of_a_mac_wins() -> None:
    data = _line(NOW + 10, MAC, "10.0.0.5") + _line(NOW + 20, MAC, "10.0.0.7")
    (lease,) = parse_leases(data, NOW).leases
    assert lease.ip == "10.0.0.7"


def test_malformed_lines_are_skipped_and_counted() -> None:
    data = (
        b"garbage\n"
        + _line(NOW + 10, "52:54:00:12:34", "10.0.0.5")
        + _line(NOW + 10, MAC, "10.0.0.300")
        + f"-5 {MAC} 10.0.0.5 * *\n".encode()
        + _line(NOW + 10, MAC, "10.0.0.5", "a\x1bb")
        + b"\xff\xfe\n"
        + _line(NOW + 10, "52:54:00:00:00:02", "10.0.0.2")
    )
    found = parse_leases(data, NOW)
    assert [lease.mac for lease in found.leases] == ["52:54:00:00:00:02"]
    assert found.malformed == 6
    assert found.first_problem == "line 1: 1 fields instead of 5"


def test_a_cut_file_loses_its_partial_line() -> None:
    data = _line(NOW + 10, MAC, "10.0.0.5") + _line(NOW + 10, "52:54:00:00:00:02", "10.0")
    found = parse_leases(data[:-3], NOW, truncated=True)
    assert [lease.mac for lease in found.leases] == [MAC]
    assert found.truncated and found.malformed == 0


def test_lines_beyond_the_bound_are_left_out() -> None:
    count = leases.MAX_LINES + 10
    data = b"".join(
        _line(NOW + 10, f"52:54:00:{i >> 16:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}", "10.0.0.1")
        for i in range(count)
    )
    found = parse_leases(data, NOW)
    assert len(found.leases) == leases.MAX_LINES and found.truncated
    exactly = data[: len(data) // count * leases.MAX_LINES]
    assert not parse_leases(exactly, NOW).truncated


def test_the_file_is_read_within_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "leases"
    assert read_leases(path, NOW).leases == ()  # dnsmasq never ran
    line = _line(NOW + 10, MAC, "10.0.0.5")
    path.write_bytes(line * (leases.MAX_BYTES // len(line) + 5))
    found = read_leases(path, NOW)
    assert found.truncated and len(found.leases) == 1 and found.malformed == 0


@given(st.binary(max_size=2000))
def test_the_parser_never_crashes_on_garbage(data: bytes) -> None:
    found = parse_leases(data, NOW)
    assert len(found.leases) + found.malformed <= data.count(b"\n") + 1
