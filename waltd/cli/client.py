"""The client's link to the daemon: HTTP over the API's unix socket."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

DEFAULT_SOCKET = Path("/run/waltd/api.sock")


class ClientError(Exception):
    """A failure to show the user as one line."""


def socket_path() -> Path:
    """The API socket: WALT_SOCKET, else the daemon's default."""
    return Path(os.environ.get("WALT_SOCKET") or DEFAULT_SOCKET)


class Client:
    """Talks to waltd; use as `async with Client() as c:`."""

    def __init__(self, path: Path | None = None, timeout_s: float = 30) -> None:
        self.path = path or socket_path()
        self._timeout = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            # A connection per request: the daemon closes idle ones within seconds, and a
            # command may wait longer than that between two requests (a password prompt).
            connector=aiohttp.UnixConnector(path=str(self.path), force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=None),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _unreachable(self, err: Exception) -> ClientError:
        return ClientError(f"cannot reach waltd at {self.path} ({err}); is the daemon running?")

    async def get_json(self, path: str) -> Any:
        """GET `path` and decode its JSON body; errors become ClientError."""
        assert self._session is not None
        try:
            async with self._session.get(
                f"http://waltd{path}", timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise ClientError(_message(body, resp.status))
                return body
        except aiohttp.ClientConnectionError as err:
            raise self._unreachable(err) from err
        except (ValueError, aiohttp.ContentTypeError) as err:
            raise ClientError(f"waltd sent an unreadable answer: {err}") from err

    async def stream(
        self,
        path: str,
        body: Any = None,
        *,
        data: bytes | AsyncIterable[bytes] | None = None,
        content_type: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """GET (or POST `body` as JSON, or `data` chunked as `content_type`, to) a
        newline-delimited JSON stream; yields each record.

        Records may be of any size; a broken stream or record becomes a ClientError.
        """
        assert self._session is not None
        method = "GET" if body is None and data is None else "POST"
        extra: dict[str, Any] = {"json": body}
        if data is not None:
            extra = {"data": data, "headers": {"Content-Type": content_type or ""}}
        answered = False
        try:
            async with self._session.request(method, f"http://waltd{path}", **extra) as resp:
                answered = True
                if resp.status >= 400:
                    raise ClientError(_message(await resp.json(content_type=None), resp.status))
                async for record in _ndjson(resp.content):
                    yield record
        except aiohttp.ClientError as err:
            if not answered:
                raise self._unreachable(err) from err
            raise ClientError(
                f"the answer from waltd broke off ({err or type(err).__name__})"
            ) from err
        except ValueError as err:
            raise ClientError(f"waltd sent an unreadable record: {err}") from err


async def _ndjson(content: aiohttp.StreamReader) -> AsyncIterator[Any]:
    """The records of a newline-delimited JSON body.

    Read in chunks rather than lines: aiohttp's line reader refuses lines longer than its
    buffer, and one record (a long image list) may take megabytes.
    """
    partial: list[bytes] = []
    async for chunk in content.iter_any():
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            line = b"".join([*partial, piece])
            partial = []
            if line.strip():
                yield json.loads(line)
        if rest:
            partial.append(rest)
    line = b"".join(partial)
    if line.strip():
        yield json.loads(line)


def _message(body: Any, status: int) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return f"waltd answered with HTTP status {status}"
