"""The client's formatting of events."""

from waltd.cli.walt import format_event


def test_format_event_line() -> None:
    line = format_event(
        {
            "seq": 3,
            "event": "node_detected",
            "level": "info",
            "timestamp": "2026-11-27T12:00:01.5Z",
            "component": "detect",
            "mac": "52:54:00:00:00:01",
            "services": ["a", "b"],
            "detail": "two words",
        }
    )
    assert line == (
        '12:00:01 info    node_detected mac=52:54:00:00:00:01 services=a,b detail="two words"'
    )


def test_format_event_with_traceback_and_colour() -> None:
    line = format_event(
        {"event": "service_crashed", "level": "error", "exception": "Traceback...\nBoom\n"},
        colour=True,
    )
    assert "\x1b[31m" in line and line.endswith("Traceback...\nBoom")
