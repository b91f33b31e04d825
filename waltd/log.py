"""Structured logs: JSON lines for the journal, a readable console on a terminal.

Every record has `event`, `level` and `timestamp`; subjects (`mac`, `ip`, `model`, `image`,
`registry`, `duration_s`, `error`) are keys, never formatted into the text. Secrets are
redacted before any renderer or the event stream sees them. Records of the standard library's
`logging` (aiohttp, asyncio) take the same road, with their logger's name as `logger`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
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

    Known values are registered by whoever loads them (the secrets file, a user's
    credentials for one request) and forgotten when no longer needed.
    """

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    def register(self, value: str) -> None:
        """Redact `value` wherever it appears in a record from now on."""
        if len(value) >= 3:  # shorter strings would blank out ordinary words
            self._values[value] = self._values.get(value, 0) + 1

    def forget(self, value: str) -> None:
        """Stop redacting `value` (one registration less)."""
        count = self._values.get(value, 0) - 1
        if count > 0:
            self._values[value] = count
        else:
            self._values.pop(value, None)

    def scrub(self, text: str) -> str:
        """`text` with every known secret and URL password replaced."""
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
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
    finished: list[Any] = [
        # Tracebacks become an `exception` string so the JSON line and the stream carry them.
        structlog.processors.format_exc_info,
        redactor,
        _Publish(bus),
        renderer,
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*stamped, *finished],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(stream, numeric_level, stamped, finished)


def _route_stdlib(stream: TextIO, level: int, stamped: list[Any], finished: list[Any]) -> None:
    """Send the standard library's log records through the same processors."""
    global _stdlib_handler
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finished],
        )
    )
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
