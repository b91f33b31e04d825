"""Each lab run starts clean, even after a run that was killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import Lab, records_locked
from lab.record import NETNS_DIR, RECORD_DIR, mount_points, process_start_time
from tests.support.daemon import ROOT
from tests.support.wait import until

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

CHILD = Path(__file__).with_name("stale_lab_child.py")


def _netns_of(prefix: str) -> list[str]:
    return [path.name for path in NETNS_DIR.glob(f"{prefix}-*")]


def _alive(processes: list[tuple[int, int]]) -> list[int]:
    return [pid for pid, start in processes if process_start_time(pid) == start]


def _assert_gone(prefix: str, root: Path, processes: list[tuple[int, int]]) -> None:
    assert _netns_of(prefix) == []
    assert _alive(processes) == []
    assert mount_points(root) == []
    assert not root.exists()
    assert not (RECORD_DIR / f"{prefix}.json").exists()


async def test_two_labs_in_a_row_start_clean(
    lab_host: None, require_tool: Callable[[str], str]
) -> None:
    require_tool("docker-registry")
    prefixes = []
    for _ in range(2):
        async with Lab() as lab:
            assert (RECORD_DIR / f"{lab.prefix}.json").exists()
            assert all(_netns_of(prefix) == [] for prefix in prefixes)
            await lab.add_node()
            await lab.start_registry("hub")
            prefix, root = lab.prefix, lab.root
            processes = [(p.pid, process_start_time(p.pid) or 0) for p in lab.processes]
            assert len(_netns_of(prefix)) == 2 and len(_alive(processes)) == 2
        _assert_gone(prefix, root, processes)
        prefixes.append(prefix)
    assert prefixes[0] != prefixes[1]


async def test_a_killed_lab_is_cleared_by_the_next(
    lab_host: None, require_tool: Callable[[str], str]
) -> None:
    for tool in ("docker-registry", "buildah", "podman"):
        require_tool(tool)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # `lab` lives at the repository's root
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
    except BaseException:
        child.kill()
        await child.wait()
        raise
    # held: a lab starting elsewhere on the machine must not clear it before we looked
    with records_locked():
        child.kill()  # SIGKILL: the child's lab gets no chance to clean up
        await child.wait()
        state = json.loads(line)
        prefix, root = state["prefix"], Path(state["root"])
        processes = [(pid, start) for pid, start in state["processes"]]
        orphan = (state["orphan"][0], state["orphan"][1])
        assert len(processes) == 2  # forwarder, registry
        # the lab's own processes die with it (PDEATHSIG); what it does not know of stays
        await until(lambda: not _alive(processes), what="the lab's processes to end")
        assert _alive([orphan]) == [orphan[0]]
        assert len(_netns_of(prefix)) == 2
        assert state["mounts"] and mount_points(root) == state["mounts"]

    async with Lab():
        _assert_gone(prefix, root, [*processes, orphan])
