"""The one way a test gets a lab (and, through `Lab.start_registry`, a real registry).

A missing tool or missing root skips the test, or fails it in CI (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lab import Lab
from tests.conftest import require_root, require_tool

# What every lab needs, whatever the test does with it.
LAB_TOOLS = ("ip", "nsenter", "mount", "umount", "busybox")


def require_lab(*tools: str) -> None:
    """Root, the tools of every lab and `tools`, or a skip (a failure in CI)."""
    require_root()
    for tool in (*LAB_TOOLS, *tools):
        require_tool(tool)


@asynccontextmanager
async def running_lab(*tools: str) -> AsyncIterator[Lab]:
    """`async with running_lab("docker-registry") as lab:` once `require_lab(*tools)` holds."""
    require_lab(*tools)
    async with Lab() as lab:
        yield lab
