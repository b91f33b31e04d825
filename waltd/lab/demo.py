"""`make demo`: run waltd on a sample configuration inside a scratch folder and show its log.

Ctrl-C stops the daemon (SIGTERM, within its shutdown budget) and removes the folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import yaml

from waltd.cli.client import Client, ClientError
from waltd.cli.walt import format_event


def sample_config(folder: Path) -> dict[str, object]:
    """A configuration whose every path lies in `folder` (no node network: no DHCP)."""
    return {
        "registries": [
            {
                "label": "hub",
                "api": "docker-hub",
                "description": "Public registry at hub.docker.com",
            }
        ],
        "api": {"socket": str(folder / "api.sock")},
        "daemon": {"state-dir": str(folder / "state"), "shutdown-budget-s": 5},
        "exports": {"root": str(folder / "exports"), "nfs": "ganesha"},
    }


async def _show_events(socket: Path) -> None:
    async with Client(socket) as client:
        for _ in range(100):
            try:
                async for event in client.stream("/v1/events?follow=1"):
                    print(format_event(event, colour=sys.stdout.isatty()), flush=True)
                return
            except ClientError:
                await asyncio.sleep(0.1)  # the daemon is still starting


async def main() -> int:
    """Start the daemon, stream its events until Ctrl-C, then stop it."""
    folder = Path(tempfile.mkdtemp(prefix="waltd-demo-"))
    conf = folder / "server.conf"
    conf.write_text(yaml.safe_dump(sample_config(folder), sort_keys=False))
    print(f"demo: waltd with {conf} (Ctrl-C to stop)", flush=True)
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waltd",
        "--config",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches the demo only; it stops the daemon itself
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    viewer = asyncio.create_task(_show_events(folder / "api.sock"))
    try:
        await stop.wait()
    finally:
        print("\ndemo: stopping waltd", flush=True)
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(signal.SIGTERM)
        status = await daemon.wait()
        with contextlib.suppress(asyncio.TimeoutError, ClientError):
            await asyncio.wait_for(viewer, 5)
        viewer.cancel()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"demo: waltd exited with status {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
