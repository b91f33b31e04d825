"""Structured logs: JSON lines, subject keys, tracebacks, redaction, the event stream."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from waltd import log
from waltd.events import EventBus


@pytest.fixture
def out() -> io.StringIO:
    stream = io.StringIO()
    return stream


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_subject_keys(out: io.StringIO) -> None:
    log.setup(stream=out)
    log.get(model="rpi-3-b").info(
        "image_fetched", image="waltplatform/rpi-3-b-default", duration_s=1.5
    )
    (rec,) = _lines(out)
    assert rec["event"] == "image_fetched" and rec["level"] == "info"
    assert rec["model"] == "rpi-3-b" and rec["duration_s"] == 1.5
    assert str(rec["timestamp"]).endswith("Z")


def test_debug_is_filtered_at_info(out: io.StringIO) -> None:
    log.setup(stream=out, level="info")
    log.get().debug("noise")
    log.get().warning("kept")
    assert [r["event"] for r in _lines(out)] == ["kept"]


def test_exception_traceback_is_kept(out: io.StringIO) -> None:
    log.setup(stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        log.get().exception("service_crashed", service="x")
    (rec,) = _lines(out)
    assert "Traceback" in str(rec["exception"]) and "boom" in str(rec["exception"])


def test_console_renderer_on_a_terminal() -> None:
    stream = io.StringIO()
    log.setup(stream=stream, pretty=True)
    log.get().info("node_detected", mac="52:54:00:00:00:01")
    text = stream.getvalue()
    assert "node_detected" in text and "52:54:00:00:00:01" in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_secrets_are_redacted(out: io.StringIO) -> None:
    log.setup(stream=out)
    log.redactor.register("s3cr3t-Pa55")
    try:
        log.get().info(
            "registry_error",
            password="hunter2",
            error="login as bob with s3cr3t-Pa55 failed",
            url="https://bob:hunter2@reg.example.org/v2/",
            headers={"Authorization": "Basic Ym9iOmh1bnRlcjI="},
        )
    finally:
        log.redactor.forget("s3cr3t-Pa55")
    text = out.getvalue()
    for secret in ("hunter2", "s3cr3t-Pa55", "Ym9iOmh1bnRlcjI="):
        assert secret not in text
    (rec,) = _lines(out)
    assert rec["password"] == "***"
    assert rec["url"] == "https://bob:***@reg.example.org/v2/"
    assert rec["error"] == "login as bob with *** failed"


def test_records_reach_the_event_bus_redacted(out: io.StringIO) -> None:
    bus = EventBus()
    log.setup(stream=out, bus=bus)
    log.get().info("a", token="t0ken")
    log.get().info("b", ip="192.168.152.100")
    events = bus.recent()
    assert [e["event"] for e in events] == ["a", "b"]
    assert events[0]["token"] == "***"
    assert [e["seq"] for e in events] == [r["seq"] for r in _lines(out)]


def teardown_module() -> None:
    structlog.reset_defaults()


def test_stdlib_records_are_json_redacted_and_streamed(out: io.StringIO) -> None:
    bus = EventBus()
    log.setup(stream=out, bus=bus)
    log.redactor.register("s3cr3t-Pa55")
    try:
        logging.getLogger("aiohttp.server").error("Error handling request from %s", "s3cr3t-Pa55")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("asyncio").exception("Task exception was never retrieved")
        logging.getLogger("asyncio").debug("below the level")
    finally:
        log.redactor.forget("s3cr3t-Pa55")
    assert "s3cr3t-Pa55" not in out.getvalue()
    first, second = _lines(out)
    assert first["event"] == "Error handling request from ***"
    assert (first["level"], first["logger"]) == ("error", "aiohttp.server")
    assert str(first["timestamp"]).endswith("Z")
    assert second["level"] == "error" and "RuntimeError: boom" in str(second["exception"])
    assert [e["seq"] for e in bus.recent()] == [first["seq"], second["seq"]]


def test_identical_errors_are_written_once_per_window(out: io.StringIO) -> None:
    bus = EventBus()
    log.setup(stream=out, bus=bus)
    for _ in range(1000):
        log.get("api").warning("api_accept_failed", error="[Errno 24] Too many open files")
        logging.getLogger("asyncio").error("socket.accept() out of system resource")
    log.get("api").warning("api_accept_failed", error="[Errno 23] Too many open files in system")
    log.get("detect").warning("api_accept_failed", error="[Errno 24] Too many open files")
    for _ in range(3):
        log.get("detect").info("node_lease", mac="52:54:00:00:00:01")
    written = [
        (r["event"], r.get("component", r.get("logger")), r.get("error")) for r in _lines(out)
    ]
    assert written == [
        ("api_accept_failed", "api", "[Errno 24] Too many open files"),
        ("socket.accept() out of system resource", "asyncio", None),
        ("api_accept_failed", "api", "[Errno 23] Too many open files in system"),
        ("api_accept_failed", "detect", "[Errno 24] Too many open files"),
        *[("node_lease", "detect", None)] * 3,
    ]
    assert len(bus.recent()) == len(written)  # the event stream is spared as well


def test_the_next_record_after_the_window_tells_how_many_were_left_out() -> None:
    now = [0.0]
    repeats = log.RepeatLimiter(window_s=10, max_keys=2, clock=lambda: now[0])

    def error(event: str, error: str = "boom") -> dict[str, object] | None:
        record = {"event": event, "level": "error", "component": "api", "error": error}
        try:
            return dict(repeats(None, "error", record))
        except structlog.DropEvent:
            return None

    assert error("a") == {"event": "a", "level": "error", "component": "api", "error": "boom"}
    assert [error("a") for _ in range(5)] == [None] * 5
    now[0] = 9.9
    assert error("a") is None
    now[0] = 10.0
    assert error("a") == {**error_record("a"), "repeated": 6}
    assert error("a") is None
    now[0] = 25.0
    assert error("a") == {**error_record("a"), "repeated": 1}
    now[0] = 40.0  # after a quiet window: nothing was left out since
    assert error("a") == error_record("a")
    # more keys than kept: the oldest is forgotten, never the memory bound exceeded
    assert error("b") is not None and error("c") is not None and error("a") is not None

    # the standard library's records, through the same count
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed", None, None)
    assert repeats.filter(record) and not repeats.filter(record)
    now[0] = 60.0
    assert repeats.filter(record) and record.repeated == 1


def error_record(event: str) -> dict[str, object]:
    return {"event": event, "level": "error", "component": "api", "error": "boom"}


def test_the_same_warning_about_another_subject_is_not_a_repeat() -> None:
    """Two nodes timing out at once, two models failing to fetch: each is told."""
    repeats = log.RepeatLimiter(window_s=10, clock=lambda: 0.0)

    def warning(**subject: object) -> bool:
        record = {"event": "node.boot_timeout", "level": "warning", "component": "x", **subject}
        try:
            repeats(None, "warning", record)
            return True
        except structlog.DropEvent:
            return False

    assert warning(mac="52:54:00:00:00:01", resets=0)
    assert warning(mac="52:54:00:00:00:02", resets=0)
    assert warning(mac="52:54:00:00:00:01", resets=1)
    assert not warning(mac="52:54:00:00:00:01", resets=1)  # this one is a repeat
