"""`make demo`: the lab-in-a-box, with waltd on its node network and a virtual node booting.

A server namespace with a node bridge and two registries: `local` (anonymous) and `private`
(it wants a password, which waltd has in its server.secrets). The bootable pc-x86-64 default
image (lab/pc_image.py, built offline from Debian packages) is published to `local`, the
Raspberry Pi one to `private`; waltd runs with its own dnsmasq, ganesha and boot HTTP server
on the bridge. `walt node create vnode1` starts a QEMU virtual node; simulated Raspberry Pi
nodes and a device of no model ask for leases at once. waltd detects them, fetches each
model's default image once (the Raspberry Pi one after `local` says it has none: from
`private`), exports vnode1's image, and vnode1 boots it over iPXE, TFTP/HTTP and NFS. Then
`walt node show --all`, `walt image search` and the end of vnode1's console. The terminal
shows waltd's event stream (a virtual node's console lines as a count: `walt node console`
shows them); Ctrl-C stops waltd (SIGTERM, within its shutdown budget; QEMU with it) and
tears the whole lab down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from lab.default_images import DefaultImage, publish, reference
from lab.images import build_image, push_image
from lab.lab import Lab, LabProcess, Registry
from lab.pc_image import BOOTED_MARKER, build_pc_image
from waltd import credentials
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable
from waltd.cli.walt import format_event
from waltd.registries.base import Credentials

REPO = Path(__file__).resolve().parents[1]
# The Debian packages of the bootable image, downloaded once and kept across demos. Not in
# .pytest_cache (pytest's own, which `pytest --cache-clear` empties); the demo's test passes
# the tests' folder with --package-cache so that CI downloads them once.
PACKAGE_CACHE = REPO / ".cache" / "pc-image"
VNODE = "vnode1"
# (vendor class, user class) of each simulated node; a device sending neither is no node
NODES = (
    (None, "walt.node.rpi-3-b-plus"),
    (None, "walt.node.rpi-3-b-plus"),
    (None, None),
)
# which registry holds each model's default image
DEFAULTS = {"pc-x86-64": "local", "rpi-3-b-plus": "private"}
# a user's WalT image, found by `walt image search`
USER_IMAGE = ("demo/debian-tests", ("pc-x86-64", "rpi-3-b-plus"))
PRIVATE_LOGIN = ("walt-server", "demo password of the private registry")
# vnode1's boot under TCG takes 10-20 s once its image is exported; the default images
# come from the lab's own registries in seconds. Past this the demo says what is missing.
STORY_TIMEOUT_S = 240.0
# console lines of the virtual node shown at the end: the initramfs's and the image's own
CONSOLE_MARKERS = ("walt-initramfs:", BOOTED_MARKER)


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
            "run-dir": str(folder / "run"),
        },
        "exports": {"root": str(folder / "exports"), "nfs": "ganesha"},
    }


def say(text: str) -> None:
    """A line of the demo's own (waltd's events are the other lines)."""
    print(f"\x1b[1m== {text}\x1b[0m" if sys.stdout.isatty() else f"== {text}", flush=True)


def _dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stdout.isatty() else text


class EventView:
    """waltd's event stream as the terminal shows it.

    A virtual node's console is one `vnode.console` record a line (a kernel's boot: hundreds
    in a second) and would bury the dozen events the demo is about. They are counted, and
    the count is shown, dimmed, before the node's next event (so the kernel's boot is one
    line between `node.exported` and `node.booted`); `walt node console` shows the lines.
    """

    def __init__(self) -> None:
        self._console: Counter[str] = Counter()

    def show(self, event: dict[str, Any]) -> None:
        """Print `event`, or count it when it is a console line."""
        kind = event.get("event")
        node = str(event.get("name", "?"))
        if kind == "vnode.console":
            self._console[node] += 1
            return
        if kind == "vnode.console_dropped":
            # lines the daemon did not log are in the console all the same
            self._console[node] += int(event.get("count", 0))
            return
        if node in self._console:
            self._flush(node)
        print(format_event(event, colour=sys.stdout.isatty()), flush=True)

    def close(self) -> None:
        """The counts not shown yet (the stream ended)."""
        for node in sorted(self._console):
            self._flush(node)

    def _flush(self, node: str) -> None:
        count = self._console.pop(node)
        shown = printable(node)
        print(
            _dim(f"         {shown}: {count} console lines (walt node console {shown})"), flush=True
        )


async def _show_events(socket: Path) -> None:
    view = EventView()
    async with Client(socket) as client:
        for _ in range(200):
            try:
                async for event in client.stream("/v1/events?follow=1"):
                    view.show(event)
                view.close()
                return
            except ClientError:
                await asyncio.sleep(0.1)  # the daemon is still starting


async def _rpi_image(lab: Lab) -> DefaultImage:
    """The Raspberry Pi default image: a stand-in (the simulated nodes only ask for leases)
    with a `/boot/rpi-3-b-plus/` folder, which waltd copies and exports as a real one's."""
    model = "rpi-3-b-plus"
    local = f"docker.io/{reference(model)}"
    files = {
        "etc/hostname": f"{model}\n",
        "etc/os-release": f'NAME="WalT default image for {model} (demo stand-in)"\n',
        f"boot/{model}/README": "A stand-in: the demo's Raspberry Pi nodes boot nothing.\n",
    }
    await build_image(lab, local, [model], files)
    return DefaultImage(model, local, 0)


async def _publish(lab: Lab, registries: dict[str, Registry], package_cache: Path) -> None:
    say(f"building the bootable pc-x86-64 default image (Debian packages in {package_cache})")
    for image in (await build_pc_image(lab, package_cache), await _rpi_image(lab)):
        label = DEFAULTS[image.model]
        await publish(lab, image, registries[label])
        say(f"published {image.reference} to {label}")
    name, models = USER_IMAGE
    files = {"etc/hostname": f"{name}\n", "etc/walt/models": ",".join(models) + "\n"}
    await build_image(lab, f"docker.io/{name}:latest", models, files)
    await push_image(lab, f"docker.io/{name}:latest", registries["local"], f"{name}:latest")
    say(f"published {name} to local")


async def _walt(folder: Path, *args: str, show: bool = True) -> str:
    """Run `walt ARGS` as a user would; print its output (with `show`) and return it;
    RuntimeError when it fails."""
    if show:
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
    text = out.decode(errors="replace").rstrip()
    if show:
        print(text, flush=True)
    if proc.returncode != 0:
        raise RuntimeError(f"walt {' '.join(args)} exited with status {proc.returncode}")
    return text


class Story:
    """What the demo waits for, from waltd's events: vnode1 booted, the simulated nodes
    ready."""

    def __init__(self, macs: set[str]) -> None:
        self.nodes = len(macs)
        self.booted = False
        self.not_ready = set(macs)

    def done(self) -> bool:
        """vnode1 is booted and every simulated node ready."""
        return self.booted and not self.not_ready

    def missing(self) -> str:
        """What did not happen yet, in words."""
        left = [] if self.booted else [f"{VNODE} not booted"]
        left += [f"{mac} not ready" for mac in sorted(self.not_ready)]
        return ", ".join(left)

    async def follow(self, client: Client) -> None:
        """Read waltd's events (its backlog first) until `done`."""
        async for event in client.stream("/v1/events?follow=1"):
            if event.get("event") == "node.booted" and event.get("name") == VNODE:
                self.booted = True
            elif event.get("event") == "node.ready":
                self.not_ready.discard(str(event.get("mac")))
            if self.done():
                return


async def _nodes(lab: Lab, folder: Path) -> None:
    """`walt node create vnode1`, then every simulated node asks for a lease at once; returns
    once vnode1 is booted and every simulated node ready, or after STORY_TIMEOUT_S saying
    what is missing."""
    added = [await lab.add_node() for _ in NODES]
    story = Story({n.mac for n, classes in zip(added, NODES, strict=True) if any(classes)})
    async with Client(folder / "api.sock") as client, asyncio.TaskGroup() as group:
        following = group.create_task(story.follow(client))
        await _walt(folder, "node", "create", VNODE)
        for node, (vendor_class, user_class) in zip(added, NODES, strict=True):
            announced = vendor_class or user_class or "no class (not a WalT node)"
            say(f"{node.name} ({node.mac}, simulated: a lease, no boot) asks as {announced}")
        await asyncio.gather(
            *(
                lab.node_dhcp(node, vendor_class=vendor_class, user_class=user_class)
                for node, (vendor_class, user_class) in zip(added, NODES, strict=True)
            )
        )
        say("every simulated node has a lease")
        await asyncio.wait({following}, timeout=STORY_TIMEOUT_S)
        following.cancel()  # past the bound: the story is told as far as it went
    if story.done():
        say(f"{VNODE} booted, {story.nodes} simulated nodes ready")
    else:
        say(f"not within {STORY_TIMEOUT_S:.0f} s: {story.missing()} (waltd's log says why)")


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


async def _console(folder: Path) -> None:
    """The lines of vnode1's console its initramfs and its image's init printed."""
    text = await _walt(folder, "node", "console", VNODE, "--no-follow", show=False)
    lines = [line for line in text.splitlines() if any(m in line for m in CONSOLE_MARKERS)]
    say(f"walt node console {VNODE} --no-follow (its walt lines, {len(lines)} of them)")
    print("\n".join(lines), flush=True)


async def run_demo(stop: asyncio.Event, package_cache: Path) -> None:
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
        await _publish(lab, registries, package_cache)
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
            try:
                await _api_up(folder)
                await _nodes(lab, folder)
                await _walt(folder, "node", "show", "--all")
                await _walt(folder, "image", "search")
                await _console(folder)
            except* (RuntimeError, ClientError, OSError) as failed:
                # the lab stays up for a look at what went wrong
                say(f"the story stopped: {'; '.join(map(str, failed.exceptions))}")
            say("the lab keeps running; Ctrl-C tears it down")

        nodes = asyncio.create_task(story())
        try:
            await _first_of(stop.wait(), viewer)
        finally:
            nodes.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await nodes
            say("stopping waltd")
            # waltd stops its children (QEMU, dnsmasq, ganesha) within its budget
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


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.demo",
        description="make demo: a lab, waltd, a virtual node that boots (Ctrl-C tears it down)",
    )
    parser.add_argument(
        "--package-cache",
        type=Path,
        default=PACKAGE_CACHE,
        help="where the bootable image's Debian packages are kept (default: %(default)s)",
    )
    return parser.parse_args()


async def main(package_cache: Path) -> int:
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
    await run_demo(stop, package_cache)
    say("lab removed")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_arguments().package_cache)))
