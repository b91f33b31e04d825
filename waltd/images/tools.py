"""Running podman, buildah and skopeo: argument lists, the repository's environment, bounded
output, and failures turned into `ToolError` carrying the tool's own words (secrets removed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
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
    lines = [line.removeprefix("Error: ").strip() for line in text.splitlines() if line.strip()]
    return scrub(" | ".join(lines[-5:]) or "no message", secrets)


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
