"""`bench/search`: `walt image search` over a Docker registry v2, against the reference algorithm.

Sets up a lab (the `lab` package): a registry in the server namespace and, next to it, a TCP proxy
adding `RTT_MS` of round-trip time (`wan_proxy.py`, a process of its own). The measurements
(`search_run.py`) then run in the server namespace too, so that the loopback figures see the
bare registry. Their output is relayed as it comes; the JSON figures are its last line. The lab
is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bench import run_as_root, wan_proxy, within
from lab import Lab, LabProcess

RTT_MS = 20
TIME_LIMIT_S = 13 * 60  # the project's limit for a benchmark is 15 minutes
_REPO = Path(__file__).resolve().parents[1]
_POLL_S = 0.2


def _copy_new(log: Path, offset: int) -> int:
    """Copy what `log` holds past `offset` to stdout; the new offset."""
    with log.open("rb") as source:
        source.seek(offset)
        data = source.read()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return offset + len(data)


async def _relay(proc: LabProcess) -> int:
    """Show the output of `proc` as it comes until it exits; its exit status."""
    offset = 0
    while True:
        try:
            status = await asyncio.wait_for(proc.process.wait(), _POLL_S)
        except TimeoutError:
            offset = _copy_new(proc.log, offset)
            continue
        _copy_new(proc.log, offset)
        return status


async def _run() -> int:
    print("search bench: starting the lab (registry, WAN proxy)", flush=True)
    async with Lab() as lab:
        registry = await lab.start_registry("bench")
        # the server namespace holds nothing but the lab's servers: the next port is free there
        proxy_port = registry.port + 1 if registry.port < 65535 else registry.port - 1
        argv = [sys.executable, "-I", wan_proxy.__file__, str(proxy_port), str(registry.port)]
        proxy = await lab.spawn("wan-proxy", [*argv, str(RTT_MS / 2)], netns=lab.server_netns)
        await lab.wait_listening(proxy, proxy_port)
        argv = [sys.executable, "-u", "-m", "bench.search_run", str(registry.port)]
        argv += [str(proxy_port), str(RTT_MS), str(lab.root / "bench")]
        measure = await lab.spawn(
            "search-run", argv, netns=lab.server_netns, env=lab.containers_env, cwd=_REPO
        )
        status = await within("search", TIME_LIMIT_S, _relay(measure))
        return 1 if status is None else status


def main() -> None:
    """Entry point of `bench/search`; refuses to run without root."""
    run_as_root("search", _run)


if __name__ == "__main__":
    main()
