"""`bench/storm`: 50 new nodes of 5 models, from their first DHCP to every one ready.

A lab registry standing in for Docker Hub (its access log on, to count downloads) holds the 5
default images `waltplatform/<model>-default:latest`, `IMAGE_MB` MiB of random bytes each;
the lab has 50 simulated nodes, 10 per model (their namespaces are made once and never
timed). Everything runs in the lab's server namespace, beside the registry. Per round:

- **ours**: a waltd on a new folder (its start is not timed); the 50 nodes ask for a lease
  at once; timed from then to the last `node.ready` record;
- **floor**: the same 5 images copied by `skopeo copy` into a new storage, 2 at a time (the
  default `images.fetch-concurrency`);
- **ref**: the reference behaviour, one pull per node in sequence: 50 `skopeo copy` into a
  new storage (an image held already costs its manifest and a skipped layer).

Each run also reads the CPU-seconds the whole machine spent (`/proc/stat`): on a machine of
few CPUs, the floor's downloads keep them busy, and whatever else a storm costs shows there.

After one untimed run of ours and the floor, `RUNS` rounds, the order rotating from round to
round (the disk's write-back weighs on whichever goes first), each run after a `sync`; the
figures are medians. Then a new daemon takes `KNOWN_NODES` new nodes at once, as spool files
the way the hook writes them (its peak RSS, VmHWM, once every one is ready), and, once
REPEAT_S passed since they were last seen (as renewals come: sooner, they would be taken for
repeats), `HOOK_EVENTS` lease renewals of them (hook events absorbed per second). The lab and
every folder are removed at the end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import run_as_root, within
from bench.clone import remove_run_folder
from bench.lab_waltd import Log, stamp, start_waltd, write_config
from lab import Lab, Registry
from lab.default_images import (
    StormNode,
    add_nodes,
    build_and_publish,
    count_downloads,
    dhcp_storm,
    reference,
    vendor_class,
)
from waltd import config as configuration
from waltd import dhcp_event
from waltd.aio import gather_all
from waltd.images.storage import Storage
from waltd.provision.nodes import REPEAT_S

MODELS = ("pc-x86-64", "pc-x86-32", "rpi-3-b-plus", "rpi-4-b", "qemu-arm")
NODES = 50
IMAGE_MB = 40
CONCURRENCY = 2  # images.fetch-concurrency's default, the floor's bound too
RUNS = 3
KNOWN_NODES = 1000
HOOK_EVENTS = KNOWN_NODES  # one renewal per node: a second one that soon would be a repeat
TIME_LIMIT_S = 14 * 60  # the project's limit for a benchmark is 15 minutes
_REPO = Path(__file__).resolve().parents[1]
# the made-up nodes' addresses: leases of another network than the lab's (nothing checks)
_KNOWN_NET = ipaddress.IPv4Network("172.31.0.0/16")


async def _config(lab: Lab, folder: Path, registry: Registry) -> Path:
    return await write_config(lab, folder, registry, {"fetch-concurrency": CONCURRENCY})


async def _start_waltd(lab: Lab, folder: Path, registry: Registry, name: str) -> Log:
    """A waltd on `folder`, in the server namespace, once it serves DHCP."""
    ready = ("daemon_ready", "dnsmasq_started")
    return await start_waltd(lab, await _config(lab, folder, registry), name, ready)


def _downloads(lab: Lab, registry: Registry) -> int:
    return sum(count_downloads(lab, registry).values())


@dataclass(frozen=True)
class Storm:
    """One storm's figures, seconds from the first DHCP request."""

    ready_s: float  # the last node ready
    detected_s: float  # the last node detected
    fetched_s: float  # the last default image in the repository
    downloads: int  # layers the registry served
    cpu_s: float  # CPU-seconds the whole machine spent from the first DHCP to the last ready


async def _ours(lab: Lab, registry: Registry, nodes: Sequence[StormNode], name: str) -> Storm:
    """One storm against a new daemon."""
    folder = lab.root / name
    before = _downloads(lab, registry)
    log = await _start_waltd(lab, folder, registry, f"waltd-{name}")
    try:
        macs = {n.node.mac for n in nodes}
        cpu = _busy_s()
        began = time.time()
        # the nodes leave the addresses they got unset: setting them is the nodes' own work
        # (nothing of it reaches the server), and this process's CPU counts as the server's
        await dhcp_storm(lab, nodes, configure=False)
        await log.until(
            lambda: {r.get("mac") for r in log.named("node.ready")} >= macs, "every node ready"
        )
        # read once the last ready record is seen: the log's polling pause is counted too,
        # at about one tenth of a CPU-second per second
        cpu = _busy_s() - cpu
    finally:
        await lab.stop(log.proc, grace_s=15)
        remove_run_folder(folder)

    def last(event: str) -> float:
        return max(stamp(r) for r in log.named(event)) - began

    return Storm(
        last("node.ready"),
        last("node.detected"),
        last("image.fetch.done"),
        _downloads(lab, registry) - before,
        round(cpu, 2),
    )


def _busy_s() -> float:
    """CPU-seconds the machine has spent so far, all CPUs, idle and I/O wait left out."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _fresh_storage(folder: Path) -> dict[str, str]:
    """A new storage of the daemon's kind in `folder`; the environment that names it."""
    config = configuration.default_config()
    daemon = replace(config.daemon, state_dir=folder / "state", image_storage=folder / "images")
    config = replace(config, daemon=daemon)
    storage = Storage.of(config)
    storage.prepare(config)
    return storage.env()


async def _copy(lab: Lab, env: dict[str, str], registry: Registry, model: str) -> None:
    image = reference(model)
    argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false"]
    argv += [f"docker://{registry.host}/{image}", f"containers-storage:docker.io/{image}"]
    await lab.run(argv, netns=lab.server_netns, env=env, timeout_s=600)


async def _floor(lab: Lab, registry: Registry, name: str) -> tuple[float, float]:
    """The 5 images by skopeo into a new storage, CONCURRENCY at a time; its seconds and the
    CPU-seconds the machine spent meanwhile."""
    folder = lab.root / name
    env = _fresh_storage(folder)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(model: str) -> None:
        async with gate:
            await _copy(lab, env, registry, model)

    try:
        cpu = _busy_s()
        began = time.monotonic()
        await gather_all(one(model) for model in MODELS)
        return time.monotonic() - began, _busy_s() - cpu
    finally:
        remove_run_folder(folder)


async def _ref(lab: Lab, registry: Registry, nodes: Sequence[StormNode], name: str) -> float:
    """One pull per node, in sequence, into a new storage; its seconds."""
    folder = lab.root / name
    env = _fresh_storage(folder)
    try:
        began = time.monotonic()
        for n in nodes:
            await _copy(lab, env, registry, n.model)
        return time.monotonic() - began
    finally:
        remove_run_folder(folder)


# ---- 1000 known nodes and hook events -------------------------------------------------------


def _command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of process `pid` (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _drop(folder: Path, events: Sequence[tuple[str, str, str, str]], bridge: str) -> float:
    """Put one spool file per event (action, mac, ip, model) into the daemon's spool at once,
    as the hook writes them (renamed into place); when the first one landed (epoch seconds).

    The files are written beside the spool first: what is timed is the daemon taking them,
    not their writing.
    """
    spool = folder / "run" / "dhcp-spool"
    staging = folder / "run" / "drop"  # beside the spool: a rename moves no data
    staging.mkdir(exist_ok=True)
    base = time.time_ns()
    names = []
    for number, (action, mac, ip, model) in enumerate(events):
        environ = {"DNSMASQ_VENDOR_CLASS": vendor_class(model), "DNSMASQ_INTERFACE": bridge}
        data = dhcp_event.encode(dhcp_event.build_event([action, mac, ip], environ))
        name = f"{base + number:020d}-{os.getpid()}.json"
        (staging / name).write_bytes(data)
        names.append(name)
    began = time.time()
    for name in names:
        os.rename(staging / name, spool / name)
    return began


def _drained(log: Log, since: int) -> int:
    return sum(r.get("count", 0) for r in log.named("dhcp_spool_drained", since))


async def _known_nodes(lab: Lab, registry: Registry) -> dict[str, float]:
    """Peak RSS with KNOWN_NODES nodes, and hook events absorbed per second."""
    folder = lab.root / "known"
    log = await _start_waltd(lab, folder, registry, "waltd-known")
    try:
        if b"waltd" not in _command_line(log.proc.pid):
            raise RuntimeError(f"process {log.proc.pid} is not waltd: it cannot be measured")
        hosts = _KNOWN_NET.hosts()
        known = [
            (f"02:57:00:00:{i >> 8:02x}:{i & 0xFF:02x}", str(next(hosts)), MODELS[i % len(MODELS)])
            for i in range(KNOWN_NODES)
        ]
        since = len(log.records)
        began = await asyncio.to_thread(
            _drop, folder, [("add", mac, ip, model) for mac, ip, model in known], lab.bridge
        )
        await log.until(lambda: _drained(log, since) >= KNOWN_NODES, "the new nodes recorded")
        new_rate = KNOWN_NODES / (stamp(log.named("dhcp_spool_drained")[-1]) - began)
        await log.until(lambda: len(log.named("node.ready")) >= KNOWN_NODES, "the nodes ready")
        rss = _vm_hwm_mb(log.proc.pid)
        print(
            f"known nodes: {KNOWN_NODES} new at {new_rate:.0f}/s, VmHWM {rss:.1f} MiB", flush=True
        )

        # renewals come at half the lease time: past REPEAT_S after the nodes' last sighting
        # (sooner, the daemon takes them for repeats of what it recorded, and skips them)
        last_seen = max(stamp(r) for r in log.named("dhcp_spool_drained") + log.named("node.ready"))
        await asyncio.sleep(max(0.0, last_seen + REPEAT_S + 0.5 - time.time()))
        renewals = [("old", mac, ip, model) for mac, ip, model in known]
        since = len(log.records)
        began = await asyncio.to_thread(_drop, folder, renewals, lab.bridge)
        await log.until(lambda: _drained(log, since) >= HOOK_EVENTS, "the renewals recorded")
        rate = HOOK_EVENTS / (stamp(log.named("dhcp_spool_drained")[-1]) - began)
        peak = _vm_hwm_mb(log.proc.pid)
        print(
            f"hook events: {HOOK_EVENTS} renewals at {rate:.0f}/s, VmHWM {peak:.1f} MiB", flush=True
        )
    finally:
        await lab.stop(log.proc, grace_s=15)
        remove_run_folder(folder)
    return {
        "rss_mb_1000_nodes": round(rss, 1),
        "rss_mb_after_hook_events": round(peak, 1),
        "hook_events_per_s": round(rate),
        "new_node_events_per_s": round(new_rate),
    }


# ---- the whole bench ------------------------------------------------------------------------


async def _measure(lab: Lab) -> dict[str, Any]:
    print(f"storm bench: {len(MODELS)} images of {IMAGE_MB} MiB, {NODES} nodes", flush=True)
    registry = await lab.start_registry("hub", access_log=True)
    await build_and_publish(lab, MODELS, registry, payload_mb=IMAGE_MB)
    nodes = await add_nodes(lab, NODES, MODELS)
    print("storm bench: warming up (untimed)", flush=True)
    await _ours(lab, registry, nodes, "warm-ours")
    await _floor(lab, registry, "warm-floor")
    storms: list[Storm] = []
    floor: list[float] = []
    floor_cpu: list[float] = []
    ref: list[float] = []

    async def run_ours(name: str) -> None:
        storms.append(await _ours(lab, registry, nodes, name))

    async def run_floor(name: str) -> None:
        seconds, cpu = await _floor(lab, registry, name)
        floor.append(seconds)
        floor_cpu.append(cpu)

    async def run_ref(name: str) -> None:
        ref.append(await _ref(lab, registry, nodes, name))

    sides = [("ours", run_ours), ("floor", run_floor), ("ref", run_ref)]
    for run in range(RUNS):
        for side, measure in sides[run:] + sides[:run]:
            await asyncio.to_thread(os.sync)
            await measure(f"{side}-{run + 1}")
        storm = storms[-1]
        print(
            f"run {run + 1}: ours {storm.ready_s:.2f} s (last node detected at "
            f"{storm.detected_s:.2f} s, last image at {storm.fetched_s:.2f} s, "
            f"{storm.downloads} downloads, {storm.cpu_s:.2f} CPU-s), floor {floor[-1]:.2f} s "
            f"({floor_cpu[-1]:.2f} CPU-s), ref {ref[-1]:.2f} s",
            flush=True,
        )
    known = await _known_nodes(lab, registry)
    ours_s, floor_s, ref_s = (
        statistics.median(v) for v in ([s.ready_s for s in storms], floor, ref)
    )
    downloads = [s.downloads for s in storms]
    figures: dict[str, Any] = {
        "bench": "storm",
        "nodes": NODES,
        "models": len(MODELS),
        "downloads": max(downloads),
        "floor_ratio": round(ours_s / floor_s, 3),
        "serial_speedup": round(ref_s / ours_s, 2),
        "rss_mb_1000_nodes": known["rss_mb_1000_nodes"],
        "hook_events_per_s": known["hook_events_per_s"],
        "ours_s": round(ours_s, 3),
        "floor_s": round(floor_s, 3),
        "ref_s": round(ref_s, 3),
        "ours_detected_s": round(statistics.median(s.detected_s for s in storms), 3),
        "ours_fetched_s": round(statistics.median(s.fetched_s for s in storms), 3),
        "downloads_per_run": downloads,
        "ours_cpu_s": round(statistics.median(s.cpu_s for s in storms), 2),
        "floor_cpu_s": round(statistics.median(floor_cpu), 2),
        "image_mb": IMAGE_MB,
        "new_node_events_per_s": known["new_node_events_per_s"],
        "rss_mb_after_hook_events": known["rss_mb_after_hook_events"],
        "runs": RUNS,
        "cpus": os.cpu_count(),
    }
    figures["targets_met"] = (
        figures["floor_ratio"] <= 1.25
        and all(d == len(MODELS) for d in downloads)
        and figures["rss_mb_1000_nodes"] < 100
    )
    return figures


async def _run() -> int:
    print("storm bench: starting the lab", flush=True)
    async with Lab() as lab:
        figures = await within("storm", TIME_LIMIT_S, _measure(lab))
        if figures is None:
            return 1
    print(json.dumps(figures), flush=True)
    return 0


def main() -> None:
    """Entry point of `bench/storm`; refuses to run without root."""
    run_as_root("storm", _run)


if __name__ == "__main__":
    main()
