"""A waltd with one extra test service, run as its own process: `harness.py CONFIG MODE`.

MODE `long`: a service runs an operation longer than any shutdown budget, with a child
process that ignores SIGTERM (its PID is logged as `long_child_started`).
MODE `crash`: a service that raises shortly after every start.
The daemon itself is the real one (waltd.daemon.run); only the extra service is a test's.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from waltd import config as configuration
from waltd import log
from waltd.daemon import Context, run
from waltd.events import EventBus
from waltd.supervisor import Service


class LongWork(Service):
    """Starts a child that ignores SIGTERM and waits on it far beyond the budget."""

    name = "long-work"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def serve(self) -> None:
        argv = ["sh", "-c", "trap '' TERM; sleep 600 & wait; sleep 600"]
        task = asyncio.create_task(self._ctx.children.run(argv))
        await asyncio.sleep(0.2)
        log.get().info("long_child_started", pids=self._ctx.children.pids())
        await task

    async def drain(self) -> None:
        # Running work is allowed to finish: this one never will, so the budget cuts it.
        await asyncio.Future()


class Crasher(Service):
    """Raises 0.2 s after each start."""

    name = "crasher"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def serve(self) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("deliberate crash for the test")


def main() -> int:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    bus = EventBus()
    log.setup(bus=bus)
    config = configuration.load(path)
    extra = {"long": LongWork, "crash": Crasher}[mode]
    return asyncio.run(run(config, config_path=path, bus=bus, extra=[extra], restart_min_s=0.2))


if __name__ == "__main__":
    sys.exit(main())
