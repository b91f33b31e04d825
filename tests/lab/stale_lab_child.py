"""Child of test_stale: builds a lab, prints what it made as one JSON line, waits to be killed.

`processes` are the lab's own (children of the lab), `orphan` one it does not know of, started
in its server namespace.

Run as `python stale_lab_child.py`; the test SIGKILLs it, so its lab never cleans up.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from lab import Lab, build_image, exportable_mount
from lab.record import mount_points, process_start_time
from waltd import log

IMAGE = "docker.io/waltplatform/stale-default:latest"


async def main() -> None:
    """Make a lab with a registry, a node, an image mount and an unrecorded process, then wait."""
    log.setup(stream=sys.stderr)  # waltd's records (the image mount's): stdout is the state
    async with Lab() as lab:
        await lab.start_registry("hub")
        await lab.add_node()
        await build_image(lab, IMAGE, ["pc-x86-64"], {"etc/marker": "stale\n"})
        async with exportable_mount(lab, IMAGE):
            # started behind the lab's back, as a daemon under test starts its children
            nsenter = ["nsenter", f"--net={lab.netns_path(lab.server_netns)}", "sleep", "600"]
            orphan = await asyncio.create_subprocess_exec(
                *nsenter, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            state = {
                "prefix": lab.prefix,
                "root": str(lab.root),
                "netns": lab.record.netns,
                "processes": [(p.pid, process_start_time(p.pid)) for p in lab.processes],
                "orphan": (orphan.pid, process_start_time(orphan.pid)),
                "mounts": mount_points(lab.root),
            }
            print(json.dumps(state), flush=True)
            await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main())
