"""`make demo`: the lab-in-a-box, with waltd on its node network.

A server namespace with a node bridge and two registries: `local` (anonymous) and `private`
(it wants a password, which waltd has in its server.secrets). The default images of two
node models are published, one to each; waltd runs with its own dnsmasq on the bridge.
Simulated nodes of both models and a device of no model ask for leases at once: waltd
detects them, fetches each model's default image once (the Raspberry Pi one after `local`
says it has none: from `private`), and every node becomes ready. Then `walt node show` and
`walt image search`. The terminal shows waltd's event stream; Ctrl-C stops waltd (SIGTERM,
within its shutdown budget) and tears the whole lab down.
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

from lab.default_images import build_default_image, publish
from lab.images import build_image, push_image
from lab.lab import Lab, LabProcess, Registry
from waltd import credentials
from waltd.cli.client import Client, ClientError
from waltd.cli.walt import format_event
from waltd.registries.base import Credentials

# (vendor class, user class) of each simulated node; a device sending neither is no node
NODES = (
    ("walt.node.pc-x86-64", None),
    ("walt.node.pc-x86-64", None),
    (None, "walt.node.rpi-3-b-plus"),
    (None, "walt.node.rpi-3-b-plus"),
    (None, None),
)
# which registry holds each model's default image
DEFAULTS = (("pc-x86-64", "local"), ("rpi-3-b-plus", "private"))
# a user's WalT image, found by `walt image search`
USER_IMAGE = ("demo/debian-tests", ("pc-x86-64", "rpi-3-b-plus"))
PRIVATE_LOGIN = ("walt-server", "demo password of the private registry")


def demo_config(lab: Lab, folder: Path, local: Registry, private: Registry) -> dict[str, Any]:
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
        # No Docker Hub here (no internet): the hub is disabled, the lab's registries serve.
        "registries": [
            {
                "label": "local",
                "api": "docker-registry-v2",
                "description": "Lab registry",
                "host": "127.0.0.1",
                "port": local.port,
                "protocol": "http",
            },
            {
                "label": "private",
                "api": "docker-registry-v2",
                "description": "Lab registry with a password",
                "host": "127.0.0.1",
                "port": private.port,
                "protocol": "http",
                "auth": "basic",
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


async def _publish(lab: Lab, registries: dict[str, Registry]) -> None:
    for model, label in DEFAULTS:
        image = await build_default_image(lab, model)
        await publish(lab, image, registries[label])
        say(f"published {image.reference} to {label}")
    name, models = USER_IMAGE
    files = {"etc/hostname": f"{name}\n", "etc/walt/models": ",".join(models) + "\n"}
    await build_image(lab, f"docker.io/{name}:latest", models, files)
    await push_image(lab, f"docker.io/{name}:latest", registries["local"], f"{name}:latest")
    say(f"published {name} to local")


async def _walt(folder: Path, *args: str) -> None:
    say("walt " + " ".join(args))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waltd.cli.walt",
        *args,
        env={**os.environ, "WALT_SOCKET": str(folder / "api.sock")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    print(out.decode(errors="replace").rstrip(), flush=True)


async def _nodes(lab: Lab, folder: Path) -> None:
    """Every simulated node asks for a lease at once; returns once every node is ready."""
    added = [await lab.add_node() for _ in NODES]
    for node, (vendor_class, user_class) in zip(added, NODES, strict=True):
        announced = vendor_class or user_class or "no class (not a WalT node)"
        say(f"{node.name} ({node.mac}) will ask for a lease as {announced}")
    macs = {n.mac for n, classes in zip(added, NODES, strict=True) if any(classes)}
    async with Client(folder / "api.sock") as client:
        ready = asyncio.ensure_future(_until_ready(client, macs))
        try:
            await asyncio.gather(
                *(
                    lab.node_dhcp(node, vendor_class=vendor_class, user_class=user_class)
                    for node, (vendor_class, user_class) in zip(added, NODES, strict=True)
                )
            )
            say("every node has a lease")
            await ready
        finally:
            ready.cancel()
    say(f"{len(macs)} nodes ready")


async def _api_up(folder: Path) -> None:
    """Until waltd answers on its socket (it is starting: a few tenths of a second)."""
    async with Client(folder / "api.sock") as client:
        for _ in range(300):
            try:
                await client.get_json("/v1/status")
                return
            except ClientError:
                await asyncio.sleep(0.1)
    raise RuntimeError("waltd did not answer on its socket within 30 s")


async def _until_ready(client: Client, macs: set[str]) -> None:
    """Follow waltd's events until each of `macs` had its `node.ready`."""
    waiting = set(macs)
    async for event in client.stream("/v1/events?follow=1"):
        if event.get("event") == "node.ready":
            waiting.discard(str(event.get("mac")))
            if not waiting:
                return


async def run_demo(stop: asyncio.Event) -> None:
    """Build the lab, run waltd and the nodes, stream events until `stop` is set."""
    async with Lab() as lab:
        say(
            f"lab {lab.prefix}: server namespace {lab.server_netns}, bridge {lab.bridge}, "
            f"node network {lab.subnet}, folder {lab.root}"
        )
        registries = {
            "local": await lab.start_registry("local"),
            "private": await lab.start_registry("private", auth=PRIVATE_LOGIN),
        }
        for label, registry in registries.items():
            say(f"registry: {label} {registry.url}")
        await _publish(lab, registries)
        folder = lab.root / "waltd"
        folder.mkdir()
        conf = folder / "server.conf"
        config = demo_config(lab, folder, registries["local"], registries["private"])
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        # the server's own login for `private` (default images), beside server.conf, 0600
        credentials.save(credentials.secrets_path(conf), {"private": Credentials(*PRIVATE_LOGIN)})
        waltd: LabProcess = await lab.spawn(
            "waltd",
            [sys.executable, "-m", "waltd", "--config", str(conf)],
            netns=lab.server_netns,
        )
        say(f"waltd (pid {waltd.pid}) on {lab.bridge}; its log: {waltd.log}")
        viewer = asyncio.create_task(_show_events(folder / "api.sock"))

        async def story() -> None:
            await _api_up(folder)
            await _nodes(lab, folder)
            await _walt(folder, "node", "show", "--all")
            await _walt(folder, "image", "search")
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
