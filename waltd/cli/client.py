"""The client's link to the daemon: HTTP over the API's unix socket."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import h11

DEFAULT_SOCKET = Path("/run/waltd/api.sock")
# What one read from the socket takes at most.
_READ = 64 * 1024
# An error answer's body is read up to this size.
_ERROR_BODY = 64 * 1024

T = TypeVar("T")


class ClientError(Exception):
    """A failure to show the user as one line."""


def socket_path() -> Path:
    """The API socket: WALT_SOCKET, else the daemon's default."""
    return Path(os.environ.get("WALT_SOCKET") or DEFAULT_SOCKET)


class _Broken(Exception):
    """The connection broke, or the daemon spoke no HTTP we understand."""


class _Exchange:
    """One request and its answer on a connection of its own (the daemon closes idle
    connections within seconds, and a command may wait longer than that between two
    requests: a password prompt). HTTP/1.1 by h11's state machine over asyncio streams:
    a light client, since every `walt` command pays for its imports."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = h11.Connection(h11.CLIENT)

    def _send(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | AsyncIterable[bytes] | None,
        content_type: str | None,
    ) -> None:
        headers = [("Host", "waltd"), ("Connection", "close")]
        if content_type:
            headers.append(("Content-Type", content_type))
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
        elif body is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", "0"))
        try:
            self._send(h11.Request(method=method, target=target, headers=headers))
            if isinstance(body, bytes):
                self._send(h11.Data(data=body))
            elif body is not None:
                async for chunk in body:
                    if chunk:
                        self._send(h11.Data(data=chunk))
                        await self._writer.drain()
            self._send(h11.EndOfMessage())
            await self._writer.drain()
        except (OSError, h11.ProtocolError) as err:
            raise _Broken(str(err) or type(err).__name__) from err

    async def _event(self) -> Any:
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as err:
                raise _Broken(f"not HTTP: {err}") from err
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self._reader.read(_READ)
            except OSError as err:
                raise _Broken(str(err) or type(err).__name__) from err
            self._conn.receive_data(data)

    async def status(self) -> int:
        """The answer's status, once its head arrived."""
        event = await self._event()
        if isinstance(event, h11.ConnectionClosed):
            raise _Broken("the connection closed before an answer")
        if not isinstance(event, h11.Response):
            raise _Broken(f"unexpected {type(event).__name__}")
        return int(event.status_code)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The answer's body as it comes."""
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def body(self, limit: int) -> bytes:
        """The whole body, refused past `limit` bytes."""
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise _Broken(f"an answer over {limit} bytes")
        return bytes(data)

    def close(self) -> None:
        self._writer.close()


class Client:
    """Talks to waltd; use as `async with Client() as c:`."""

    def __init__(self, path: Path | None = None, timeout_s: float = 30) -> None:
        self.path = path or socket_path()
        self._timeout = timeout_s

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _unreachable(self, err: Exception) -> ClientError:
        return ClientError(f"cannot reach waltd at {self.path} ({err}); is the daemon running?")

    async def _open(self) -> _Exchange:
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_unix_connection(str(self.path), limit=_READ)
        except (OSError, TimeoutError) as err:
            raise self._unreachable(err) from err
        return _Exchange(reader, writer)

    async def get_json(self, path: str) -> Any:
        """GET `path` and decode its JSON body; errors become ClientError."""
        exchange = await self._open()
        try:
            async with asyncio.timeout(self._timeout):
                await exchange.request("GET", path, None, None)
                status = await exchange.status()
                body = json.loads(await exchange.body(64 * 2**20) or b"null")
        except _Broken as err:
            raise self._unreachable(err) from err
        except TimeoutError as err:
            raise ClientError(f"waltd did not answer within {self._timeout:g} s") from err
        except ValueError as err:
            raise ClientError(f"waltd sent an unreadable answer: {err}") from err
        finally:
            exchange.close()
        if status >= 400:
            raise ClientError(_message(body, status))
        return body

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
        method = "GET" if body is None and data is None else "POST"
        payload: bytes | AsyncIterable[bytes] | None = data
        kind = content_type
        if data is None and body is not None:
            payload, kind = json.dumps(body).encode(), "application/json"
        exchange = await self._open()
        answered = False
        try:
            await exchange.request(method, path, payload, kind)
            status = await exchange.status()
            answered = True
            if status >= 400:
                raise ClientError(
                    _message(json.loads(await exchange.body(_ERROR_BODY) or b"null"), status)
                )
            async for record in _ndjson(exchange.chunks()):
                yield record
        except _Broken as err:
            if not answered:
                raise self._unreachable(err) from err
            raise ClientError(f"the answer from waltd broke off ({err})") from err
        except ValueError as err:
            raise ClientError(f"waltd sent an unreadable record: {err}") from err
        finally:
            exchange.close()

    async def records(self, path: str, body: Any, parse: Callable[[Any], T]) -> AsyncIterator[T]:
        """`stream`'s records, each read by `parse` (one of api/wire.py's record readers); a
        record it cannot read is a ClientError."""
        async for raw in self.stream(path, body):
            try:
                record = parse(raw)
            except ValueError as err:
                raise ClientError(f"waltd sent an unreadable record: {err}") from err
            yield record


async def _ndjson(chunks: AsyncIterator[bytes]) -> AsyncIterator[Any]:
    """The records of a newline-delimited JSON body; a record may take megabytes."""
    partial: list[bytes] = []
    async for chunk in chunks:
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
