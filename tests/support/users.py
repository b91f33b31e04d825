"""Real non-root Unix users for tests (useradd), removed at the end."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import require_root, require_tool


def fresh_name(prefix: str) -> str:
    """A user name no other test run takes: `prefix` and six hex digits."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


@contextmanager
def unix_users(*names: str) -> Iterator[tuple[str, ...]]:
    """New users of these exact names (no home; `--badname`: tests try odd ones)."""
    require_root()
    require_tool("useradd")
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--badname", "-M", "-s", "/bin/sh", name],
                check=True,
                capture_output=True,
                timeout=60,
            )
            made.append(name)
        yield names
    finally:
        for name in made:
            subprocess.run(["userdel", "--force", name], capture_output=True, timeout=60)


@contextmanager
def unix_user(prefix: str) -> Iterator[str]:
    """One new user named `prefix` plus six hex digits."""
    with unix_users(fresh_name(prefix)) as (name,):
        yield name
