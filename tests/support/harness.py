"""A waltd with one extra test service, run as its own process: `harness.py CONFIG MODE`.

MODE `long`: a service runs an operation longer than any shutdown budget, with a child
process that ignores SIGTERM (its PID is logged as `long_child_started`).
MODE `crash`: a service that raises shortly after every start.
MODE `bad-exit`: a service whose `__aexit__` raises when shutdown cancels it.
The daemon itself is the real one (waltd.daemon.run); only the extra service is a test's.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from waltd import config as configuration
from waltd import log
from waltd.context import Context
from waltd.daemon import run
from waltd.events import EventBus
from waltd.supervisor import Service


class LongWork(Service):
    """Starts a child that ignores SIGTERM and waits on it far beyond the budget."""

    name = "long-work"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def serve(self) -> None:
        argv = ["sh", "-c", "trap '' TERM; sleep 600 & echo started; wait; sleep 600"]
        children = self._ctx.children
        proc = await children.spawn(argv, stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            await proc.stdout.readline()  # the shell has forked its `sleep`: a group of two
            log.get().info("long_child_started", pids=children.pids())
            await children.wait(proc)
        except asyncio.CancelledError:
            await children.stop(proc, grace=0)  # as `Children.run` does
            raise

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


class BadExit(Service):
    """Its release raises, as a resource that fails to close would, when it is cancelled."""

    name = "bad-exit"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def serve(self) -> None:
        log.get().info("bad_exit_serving")
        await asyncio.Future()

    async def __aexit__(self, *exc: object) -> None:
        raise RuntimeError("deliberate failure to release")


def main() -> int:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    bus = EventBus()
    log.setup(bus=bus)
    config = configuration.load(path)
    extra = {"long": LongWork, "crash": Crasher, "bad-exit": BadExit}[mode]
    return asyncio.run(run(config, config_path=path, bus=bus, extra=[extra], restart_min_s=0.2))


if __name__ == "__main__":
    sys.exit(main())
