"""`python -m tests.support.neighbours_watch IFACE`: what `watch(IFACE)` sees, as JSON lines.

Tests run it inside a lab namespace with `nsenter --net`, as the lab runs waltd: one line per
observation (`kind` Carrier or Neighbour, then the fields); a WatchError ends it with a line
of kind `error` and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys

from waltd.provision.neighbours import WatchError, watch


async def main(interface: str) -> int:
    """Print every observation of `interface` until a WatchError (status 1) or a signal."""
    async with contextlib.aclosing(watch(interface)) as events:
        try:
            async for event in events:
                line = {"kind": type(event).__name__, **dataclasses.asdict(event)}
                print(json.dumps(line), flush=True)
        except WatchError as err:
            print(json.dumps({"kind": "error", "error": str(err)}), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
