"""Running podman, buildah and skopeo: argument lists, the repository's environment, and
failures turned into `ToolError` carrying the end of the tool's own words (secrets removed).

A command's stdout is what the repository itself lists (images, inspections), so `run` keeps
it whole; streaming commands keep only the last 64 KiB of their stderr.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import termios
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from waltd.images.storage import Storage
from waltd.process import Children

TOOLS = frozenset({"podman", "buildah", "skopeo"})
# The end of a failing tool's stderr kept in its error (its last words say what went wrong).
_MESSAGE_CHARS = 2000


class ToolError(Exception):
    """A tool failed; `message` is what it said, without any secret of the operation."""

    def __init__(self, tool: str, status: int, message: str) -> None:
        self.tool = tool
        self.status = status
        self.message = message
        super().__init__(f"{tool} failed (status {status}): {message}")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (of a few characters or more) replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _message(stderr: bytes, secrets: Iterable[str]) -> str:
    text = stderr.decode(errors="replace").strip()
    if len(text) > _MESSAGE_CHARS:
        text = "..." + text[-_MESSAGE_CHARS:]
    lines = [_words(line) for line in text.splitlines() if line.strip()]
    return scrub(" | ".join(lines[-5:]) or "no message", secrets)


def _words(line: str) -> str:
    """A tool's line without its decoration: podman's `Error: `, or skopeo's logrus frame
    (`time="..." level=fatal msg="..."` when its stderr is no terminal)."""
    line = line.strip()
    start = line.find(' msg="')
    if line.startswith("time=") and start > 0 and line.endswith('"'):
        try:
            return str(json.loads(line[start + 5 :]))
        except ValueError:
            pass
    return line.removeprefix("Error: ").strip()


async def run(
    children: Children,
    storage: Storage,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    secrets: Iterable[str] = (),
) -> bytes:
    """Run one tool command (argv[0] is podman, buildah or skopeo) on `storage`; its stdout.

    ToolError when it fails. Cancelling kills the tool (and its process group).
    """
    if not argv or argv[0] not in TOOLS:
        raise ValueError(f"not a repository tool: {argv[:1]}")
    env = {**os.environ, **storage.env()}
    status, out, err = await children.run(list(argv), env=env, input=input)
    if status != 0:
        raise ToolError(argv[0], status, _message(err, list(secrets)))
    return out


async def run_json(
    children: Children,
    storage: Storage,
    argv: Sequence[str],
    *,
    secrets: Iterable[str] = (),
) -> Any:
    """Like `run`, for a command printing JSON (`--format json`, `inspect`)."""
    out = await run(children, storage, argv, secrets=secrets)
    try:
        return json.loads(out or b"null")
    except ValueError as err:
        raise ToolError(argv[0], 0, f"unreadable JSON output: {err}") from None


# The pseudo-terminal's width: skopeo cuts its progress lines to it (0 columns: nothing left).
_PTY_COLUMNS = 200
# What is kept of a streaming command's stderr (its end says why it failed).
_STDERR_KEPT = 64 * 1024
# A cancelled streaming command gets SIGTERM and this long before SIGKILL: buildah then stops
# and removes the build's container (SIGKILLed, it leaves the RUN step's processes running).
STOP_GRACE_S = 5.0


async def run_streaming(
    children: Children,
    storage: Storage,
    argv: Sequence[str],
    on_output: Callable[[bytes], None],
    *,
    secrets: Iterable[str] = (),
) -> None:
    """Run one tool command with its stdout on a pseudo-terminal, handing what it writes
    there to `on_output` as it comes.

    skopeo draws its byte progress only when its output is a terminal. stderr stays a pipe:
    its end becomes the ToolError when the command fails. Cancelling stops the tool:
    SIGTERM, then SIGKILL after STOP_GRACE_S.
    """
    if not argv or argv[0] not in TOOLS:
        raise ValueError(f"not a repository tool: {argv[:1]}")
    env = {**os.environ, **storage.env(), "TERM": "dumb"}
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, _PTY_COLUMNS, 0, 0))
        proc = await children.spawn(
            list(argv), env=env, stdout=slave, stderr=asyncio.subprocess.PIPE
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the child holds its own: the master sees EOF (EIO) when it ends
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.connect_read_pipe(
        lambda: _Terminal(on_output, ended), os.fdopen(master, "rb", buffering=0)
    )
    try:
        assert proc.stderr is not None
        err = bytearray()
        while chunk := await proc.stderr.read(65536):
            err += chunk
            del err[:-_STDERR_KEPT]
        status = await children.wait(proc)
        await ended  # the last progress lines, before the caller hears of the end
    except asyncio.CancelledError:
        await children.stop(proc, grace=STOP_GRACE_S)
        raise
    finally:
        transport.close()
    if status != 0:
        raise ToolError(argv[0], status, _message(bytes(err), list(secrets)))


class _Terminal(asyncio.Protocol):
    """The master side of the tool's terminal: data to `feed`, its end to `ended`."""

    def __init__(self, feed: Callable[[bytes], None], ended: asyncio.Future[None]) -> None:
        self._feed = feed
        self._ended = ended

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # EIO once the last holder of the slave side has closed it: the normal end
        if not self._ended.done():
            self._ended.set_result(None)
