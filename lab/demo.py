"""`make demo`: the lab-in-a-box, with waltd on its node network.

A server namespace with a node bridge and a private registry, waltd with its own dnsmasq
on the bridge, two simulated nodes of different models taking a lease, WalT images
published to the registry and found by `walt image search`. The terminal shows waltd's
event stream; Ctrl-C stops waltd (SIGTERM, within its shutdown budget) and tears the whole
lab down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from lab.images import build_image, push_image
from lab.lab import Lab, LabProcess, Registry
from waltd.cli.client import Client, ClientError
from waltd.cli.walt import format_event

NODES = (("walt.node.pc-x86-64", None), (None, "walt.node.rpi-3-b-plus"))
# WalT images published to the lab's private registry, found by `walt image search`.
IMAGES = (
    ("waltplatform/pc-x86-64-default", ("pc-x86-64",)),
    ("waltplatform/rpi-3-b-plus-default", ("rpi-3-b-plus",)),
    ("demo/debian-tests", ("pc-x86-64", "rpi-3-b-plus")),
)


def demo_config(lab: Lab, folder: Path, local_registry_port: int) -> dict[str, Any]:
    """waltd's configuration for the lab: its node network, its registries, paths in `folder`."""
    first, last = lab.dhcp_range
    return {
        "network": {
            "walt-net": {
                "interface": lab.bridge,
                "ip": str(lab.server_interface),
                "dhcp-range": f"{first}-{last}",
            }
        },
        # No Docker Hub here (no internet): the hub is disabled, the lab's registry serves.
        "registries": [
            {
                "label": "local",
                "api": "docker-registry-v2",
                "description": "Lab registry",
                "host": "127.0.0.1",
                "port": local_registry_port,
                "protocol": "http",
            },
        ],
        "api": {"socket": str(folder / "api.sock")},
        "daemon": {
            "state-dir": str(folder / "state"),
            "shutdown-budget-s": 5,
            "image-storage": str(folder / "images"),
        },
        "exports": {"root": str(folder / "exports"), "nfs": "ganesha"},
    }


def say(text: str) -> None:
    """A line of the demo's own (waltd's events are the other lines)."""
    print(f"\x1b[1m== {text}\x1b[0m" if sys.stdout.isatty() else f"== {text}", flush=True)


async def _show_events(socket: Path) -> None:
    async with Client(socket) as client:
        for _ in range(200):
            try:
                async for event in client.stream("/v1/events?follow=1"):
                    print(format_event(event, colour=sys.stdout.isatty()), flush=True)
                return
            except ClientError:
                await asyncio.sleep(0.1)  # the daemon is still starting


async def _publish(lab: Lab, registry: Registry) -> None:
    for name, models in IMAGES:
        files = {"etc/hostname": f"{name}\n", "etc/walt/models": ",".join(models) + "\n"}
        await build_image(lab, f"docker.io/{name}:latest", models, files)
        await push_image(lab, f"docker.io/{name}:latest", registry, f"{name}:latest")
    say(f"published {len(IMAGES)} WalT images to the local registry")


async def _search(folder: Path) -> None:
    say("walt image search")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waltd.cli.walt",
        "image",
        "search",
        env={**os.environ, "WALT_SOCKET": str(folder / "api.sock")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    print(out.decode(errors="replace").rstrip(), flush=True)


async def _nodes(lab: Lab) -> None:
    for vendor_class, user_class in NODES:
        node = await lab.add_node()
        announced = vendor_class or user_class
        say(f"node {node.name} ({node.mac}) asks for a lease as {announced}")
        ip = await lab.node_dhcp(node, vendor_class=vendor_class, user_class=user_class)
        say(f"node {node.name} got {ip}")


async def run_demo(stop: asyncio.Event) -> None:
    """Build the lab, run waltd and the nodes, stream events until `stop` is set."""
    async with Lab() as lab:
        say(
            f"lab {lab.prefix}: server namespace {lab.server_netns}, bridge {lab.bridge}, "
            f"node network {lab.subnet}, folder {lab.root}"
        )
        local = await lab.start_registry("local")
        say(f"registry: local {local.url}")
        folder = lab.root / "waltd"
        folder.mkdir()
        conf = folder / "server.conf"
        conf.write_text(yaml.safe_dump(demo_config(lab, folder, local.port), sort_keys=False))
        waltd: LabProcess = await lab.spawn(
            "waltd",
            [sys.executable, "-m", "waltd", "--config", str(conf)],
            netns=lab.server_netns,
        )
        say(f"waltd (pid {waltd.pid}) on {lab.bridge}; its log: {waltd.log}")
        viewer = asyncio.create_task(_show_events(folder / "api.sock"))

        async def story() -> None:
            await _nodes(lab)
            await _publish(lab, local)
            await _search(folder)
            say("the lab keeps running; Ctrl-C tears it down")

        nodes = asyncio.create_task(story())
        try:
            await _first_of(stop.wait(), viewer)
        finally:
            nodes.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await nodes
            say("stopping waltd")
            status = await lab.stop(waltd, grace_s=10)
            with contextlib.suppress(asyncio.TimeoutError, ClientError):
                await asyncio.wait_for(viewer, 5)
            viewer.cancel()
            say(f"waltd exited with status {status}; removing the lab")


async def _first_of(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        if not t.done() and t is not aws[-1]:
            t.cancel()


async def main() -> int:
    """Entry point of `make demo`."""
    if os.geteuid() != 0:
        print(
            "make demo needs root (network namespaces, dnsmasq); run it with sudo", file=sys.stderr
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    say("building the lab (Ctrl-C to stop)")
    await run_demo(stop)
    say("lab removed")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
