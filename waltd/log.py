"""Structured logs: JSON lines for the journal, a readable console on a terminal.

Every record has `event`, `level` and `timestamp`; subjects (`mac`, `ip`, `model`, `image`,
`registry`, `duration_s`, `error`) are keys, never formatted into the text. Secrets are
redacted before any renderer or the event stream sees them. Records of the standard library's
`logging` (aiohttp, asyncio) take the same road, with their logger's name as `logger`.
Identical warnings and errors are rate-limited (`RepeatLimiter`): one per window, then a count.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

from waltd.events import EventBus

REDACTED = "***"
# Keys whose values are secrets whatever they hold.
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|authorization|credential|authfile_data", re.I
)
# Credentials embedded in URLs: scheme://user:password@host
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/:@\s]+):[^@/\s]+@", re.I
)


class SecretRedactor:
    """A structlog processor that hides secrets: by key name, in URLs, and known values.

    Known values are the server's own secrets (server.secrets, registered when loaded and
    forgotten when replaced): an administrator's choice. A caller's password is never
    registered, as a value it chose would blank that text in every record of every user;
    it stays in the objects of its request, which never log it.
    """

    def __init__(self) -> None:
        self._values: dict[str, int] = {}
        self._longest_first: tuple[str, ...] = ()  # a value inside another goes after it

    def register(self, value: str) -> None:
        """Redact `value` wherever it appears in a record from now on."""
        if len(value) >= 3:  # shorter strings would blank out ordinary words
            self._values[value] = self._values.get(value, 0) + 1
            self._sort()

    def forget(self, value: str) -> None:
        """Stop redacting `value` (one registration less)."""
        count = self._values.get(value, 0) - 1
        if count > 0:
            self._values[value] = count
        else:
            self._values.pop(value, None)
        self._sort()

    def _sort(self) -> None:
        self._longest_first = tuple(sorted(self._values, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """`text` with every known secret and URL password replaced."""
        for value in self._longest_first:
            text = text.replace(value, REDACTED)
        # every record's every text comes here: the pattern only where it can match
        if "@" not in text:
            return text
        return _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: REDACTED if _is_secret_key(k) else self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.scrub(str(value))

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        for key, value in list(event_dict.items()):
            event_dict[key] = REDACTED if _is_secret_key(key) else self._clean(value)
        return event_dict


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


redactor = SecretRedactor()

# Identical warnings and errors (same logger, event and error) are written once per window;
# the next one written after it says how many were left out (`repeated`).
REPEAT_WINDOW_S = 10.0
# Distinct (logger, event, error) kept track of; past it the oldest is forgotten.
REPEAT_KEYS = 1024
_KEY_CHARS = 200  # of an event or error text, for the comparison
_LIMITED_LEVELS = frozenset({"warning", "error", "critical"})
# What a record is about: records differing in one of these are not repeats of each other.
_SUBJECT_KEYS = ("mac", "name", "model", "source", "image", "registry", "service", "resets")


class RepeatLimiter:
    """Rate-limits identical warnings and errors: a structlog processor for structlog's
    records, a `logging` filter for the standard library's.

    A daemon out of descriptors fails the same way thousands of times a second; one record
    per window, then a count, tells the operator as much without filling the journal.
    Information records are never limited.
    """

    def __init__(
        self,
        window_s: float = REPEAT_WINDOW_S,
        max_keys: int = REPEAT_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window_s = window_s
        self._max_keys = max_keys
        self._clock = clock
        # key -> [end of its window, records left out in it]
        self._seen: dict[tuple[str, str, str], list[float]] = {}
        self._lock = threading.Lock()  # records come from worker threads too

    def _admit(self, logger: object, event: object, error: object) -> int | None:
        """None: leave the record out; else how many identical ones were left out before."""
        key = (str(logger)[:_KEY_CHARS], str(event)[:_KEY_CHARS], str(error)[:_KEY_CHARS])
        with self._lock:
            now = self._clock()
            window = self._seen.pop(key, None)
            if window is not None and now < window[0]:
                window[1] += 1
                self._seen[key] = window
                return None
            if len(self._seen) >= self._max_keys:
                self._seen = {k: w for k, w in self._seen.items() if now < w[0]}
                while len(self._seen) >= self._max_keys:
                    del self._seen[next(iter(self._seen))]
            self._seen[key] = [now + self._window_s, 0]
            return int(window[1]) if window is not None else 0

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if event_dict.get("level") not in _LIMITED_LEVELS:
            return event_dict
        source = event_dict.get("component") or event_dict.get("logger") or ""
        # the same event about another subject (another node, model or source) is news
        subject = "|".join(str(event_dict.get(key, "")) for key in _SUBJECT_KEYS)
        detail = f"{event_dict.get('error', '')}|{subject}"
        left_out = self._admit(source, event_dict.get("event"), detail)
        if left_out is None:
            raise structlog.DropEvent
        if left_out:
            event_dict["repeated"] = left_out
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        """The same for a standard library record (its count reaches it as `repeated`)."""
        if record.levelno < logging.WARNING:
            return True
        error = record.exc_info[1] if record.exc_info else None
        left_out = self._admit(record.name, record.getMessage(), error or "")
        if left_out is None:
            return False
        if left_out:
            record.repeated = left_out
        return True


# The root logger's handler installed by `setup`, replaced when `setup` runs again.
_stdlib_handler: logging.Handler | None = None


class _Publish:
    """Hands each finished record to the event bus (the API's event stream)."""

    def __init__(self, bus: EventBus | None) -> None:
        self.bus = bus

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if self.bus is not None:
            numbered = self.bus.publish(dict(event_dict))
            event_dict["seq"] = numbered["seq"]
        return event_dict


def setup(
    *,
    bus: EventBus | None = None,
    level: str = "info",
    stream: TextIO | None = None,
    pretty: bool | None = None,
) -> None:
    """Configure structlog for the process: JSON lines unless `stream` is a terminal."""
    stream = stream or sys.stdout
    if pretty is None:
        pretty = stream.isatty()
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if pretty
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    stamped: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    repeats = RepeatLimiter()
    finished: list[Any] = [
        # Tracebacks become an `exception` string so the JSON line and the stream carry them.
        structlog.processors.format_exc_info,
        redactor,
        _Publish(bus),
        renderer,
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*stamped, repeats, *finished],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(stream, numeric_level, stamped, finished, repeats)


def _route_stdlib(
    stream: TextIO,
    level: int,
    stamped: list[Any],
    finished: list[Any],
    repeats: RepeatLimiter,
) -> None:
    """Send the standard library's log records through the same processors."""
    global _stdlib_handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *stamped,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=["repeated"]),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finished],
        )
    )
    handler.addFilter(repeats)
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _stdlib_handler = handler


def get(name: str | None = None, **bound: Any) -> Any:
    """A logger, optionally bound to subject keys (`get(model="rpi-3-b")`).

    It stays lazy: a module-level logger made before `setup()` still uses its configuration.
    """
    if name:
        bound["component"] = name
    return structlog.get_logger(**bound)
