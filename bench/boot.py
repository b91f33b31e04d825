"""`bench/boot`: boot files over HTTP (waltd) and TFTP (dnsmasq, tftpd-hpa), a 100-node HTTP
storm, and a QEMU virtual node from `walt node create` to booted.

A lab registry standing in for Docker Hub holds the bootable `waltplatform/pc-x86-64-default`
(lab/pc_image.py: Debian's kernel and a busybox initramfs); waltd runs, one at a time, in the lab's
server namespace with its dnsmasq, ganesha and HTTP boot server, the registry as its hub.

1. **virtual node**, `VNODE_RUNS` times: a new daemon (its start not timed), then `walt
   node create`, timed from the client's start to the node's `node.booted` record; the
   stages (QEMU started, iPXE's DHCP, the "wait and retry" script, the default image
   fetched from the hub, exported, the image's start.ipxe, kernel, NFS root, booted) from
   the records' timestamps; the median run is reported.
2. on one more daemon, `STORM_NODES` simulated nodes (namespaces made untimed) ask for
   leases at once with the pc-x86-64 vendor class; the daemon makes them ready and exports
   them for real (the image mounted once, its boot files copied, each node's links and NFS
   export): timed to the last `node.exported`.
3. **throughput**: `NODES` of them fetch the image's kernel then its initrd, all at once,
   from their namespaces: over HTTP from waltd (`busybox wget`), over TFTP from the
   daemon's dnsmasq through each node's layout (`busybox tftp`, blksize `BLKSIZE`: the
   link's MTU minus 32), and over TFTP from tftpd-hpa (`in.tftpd` on another port of the
   server address, serving the same folder): aggregate MB/s (10^6 bytes) = all bytes over
   the wall time from the first client's start to the last one's end. After one untimed
   round of each that checks the bytes, `RUNS` rounds, the order rotating; medians.
4. **storm**: all `STORM_NODES` fetch their boot files (start.ipxe, vmlinuz, initrd.img, in
   sequence, as iPXE does) over HTTP at once, into files of a tmpfs; a node fails when a
   fetch exits non-zero or a file's bytes differ from the server's copy. `STORM_RUNS` storms;
   the failures are summed.
5. `WARM_VNODES` more virtual nodes on that daemon (the image there and mounted) while time
   remains, each removed once booted: `vnode_warm_s`.

The lab and every folder are removed at the end. tftpd-hpa must be installed
(`apt-get install tftpd-hpa`; its service need not run: the bench starts `in.tftpd`).
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import run_as_root, within
from bench.clone import remove_run_folder
from bench.lab_waltd import Log, Record, stamp, start_waltd, write_config
from lab import Lab, LabError, Registry
from lab.default_images import StormNode, add_nodes, dhcp_storm, publish
from lab.pc_image import MODEL, NFS_MOUNTED_MARKER, build_pc_image

NODES = 20
STORM_NODES = 100
STORM_RUNS = 3
RUNS = 3
BLKSIZE = 1468  # a veth's MTU of 1500 minus the IP and UDP headers and TFTP's 4 bytes
HPA_PORT = 6969  # dnsmasq holds port 69 on the server address
FILES = ("vmlinuz", "initrd.img")  # what the throughput rounds fetch, in this order
BOOT_FILES = ("start.ipxe", *FILES)  # what a booting node fetches
TIME_LIMIT_S = 14 * 60  # the project's limit for a benchmark is 15 minutes
WARM_VNODES_UNTIL_S = 10 * 60  # more virtual nodes only while the bench is younger than this
WARM_VNODES = 2
VNODE_RUNS = 3
CLIENT_TIMEOUT_S = 180.0
TARGET_RATIO = 5.0  # HTTP at least 5 times tftpd-hpa's aggregate
TARGET_VNODE_S = 20.0
MB = 10**6
_REPO = Path(__file__).resolve().parents[1]
PACKAGE_CACHE = _REPO / ".pytest_cache" / "d" / "pc-image-packages"  # the tests' cache


async def _config(lab: Lab, folder: Path, registry: Registry) -> Path:
    return await write_config(lab, folder, registry)


async def _start_waltd(lab: Lab, folder: Path, registry: Registry, name: str) -> Log:
    """waltd on `folder` (made here) in the server namespace, once it serves DHCP, HTTP
    and NFS."""
    ready = ("daemon_ready", "dnsmasq_started", "boot_http_listening", "nfs_ready")
    return await start_waltd(lab, await _config(lab, folder, registry), name, ready)


async def _walt(lab: Lab, folder: Path, *args: str) -> None:
    argv = [sys.executable, "-m", "waltd.cli.walt", *args]
    env = {"PYTHONPATH": str(_REPO), "WALT_SOCKET": str(folder / "api.sock")}
    await lab.run(argv, env=env, timeout_s=60)


# ---- the virtual node ---------------------------------------------------------------------


def _first(records: Sequence[Record], match: Callable[[Record], bool], after: int = 0) -> int:
    """The index of the first record from `after` on that `match` accepts, or -1."""
    return next((i for i in range(after, len(records)) if match(records[i])), -1)


def vnode_stages(records: Sequence[Record], mac: str, began: float) -> dict[str, float]:
    """Seconds from `began` (epoch) to each stage of the virtual node `mac`'s boot, from the
    daemon's records (a stage not seen is left out):

    qemu_started; first_dhcp (iPXE's lease); waiting_script (the "wait and retry" start.ipxe
    fetched before the node was exported); image_fetched (the default image from the hub);
    exported; start_ipxe (the image's start.ipxe over TFTP); kernel_http (iPXE asks for
    the kernel); kernel_started (its first console line); initramfs_lease; nfs_root_mounted;
    booted (`node.booted`).
    """

    def event(name: str) -> Callable[[Record], bool]:
        return lambda r: r.get("event") == name and r.get("mac") in (mac, None)

    def console(text: str) -> Callable[[Record], bool]:
        return lambda r: r.get("event") == "vnode.console" and text in str(r.get("line", ""))

    lease = _first(records, lambda r: r.get("event") == "node_lease" and r.get("mac") == mac)
    ip = records[lease].get("ip") if lease >= 0 else None

    def start_ipxe(r: Record) -> bool:
        return (
            r.get("event") == "tftp_transfer"
            and r.get("ip") == ip
            and str(r.get("file", "")).endswith("/start.ipxe")
        )

    exported = _first(records, event("node.exported"))
    found = {
        "qemu_started": _first(records, event("vnode.started")),
        "first_dhcp": lease,
        "image_fetched": _first(records, lambda r: r.get("event") == "image.fetch.done"),
        "exported": exported,
        "start_ipxe": _first(records, start_ipxe, max(exported, 0)) if exported >= 0 else -1,
        "kernel_http": _first(records, console("/boot/vmlinuz")),
        "kernel_started": _first(records, console("Linux version")),
        "initramfs_lease": _first(records, console("walt-initramfs: address")),
        "nfs_root_mounted": _first(records, console(NFS_MOUNTED_MARKER)),
        "booted": _first(records, event("node.booted")),
    }
    waiting = _first(records, start_ipxe)
    if 0 <= waiting and (exported < 0 or waiting < exported):
        found["waiting_script"] = waiting
    ordered = sorted((i, stage) for stage, i in found.items() if i >= 0)
    return {stage: round(stamp(records[i]) - began, 2) for i, stage in ordered}


async def _vnode(lab: Lab, log: Log, folder: Path, name: str) -> dict[str, float]:
    """`walt node create name` to `node.booted`, then `walt node remove name`: seconds from
    the client's start to each stage (a stage not seen is left out), `booted` the total."""
    since = len(log.records)
    began = time.time()
    await _walt(lab, folder, "node", "create", name)
    await log.until(lambda: bool(log.named("vnode.started", since)), f"{name} started")
    mac = next(r["mac"] for r in log.named("vnode.started", since) if r.get("name") == name)
    await log.until(
        lambda: any(r.get("mac") == mac for r in log.named("node.booted", since)), f"{name} booted"
    )
    found = vnode_stages(log.records[since:], mac, began)
    await _walt(lab, folder, "node", "remove", name)
    await log.until(lambda: bool(log.named("vnode.removed", since)), f"{name} removed")
    return found


# ---- clients --------------------------------------------------------------------------------


async def _clients(
    lab: Lab, nodes: Sequence[StormNode], fetches: Callable[[StormNode], list[list[str]]]
) -> tuple[float, list[str]]:
    """Every node runs its `fetches` in sequence, all nodes at once; the wall time from the
    first start to the last end, and one line per failed fetch (a node stops at its first:
    a node whose boot fails does not go on)."""
    errors: list[str] = []

    async def node(n: StormNode) -> None:
        for argv in fetches(n):
            try:
                done = await lab.run(
                    argv, netns=n.node.netns, check=False, timeout_s=CLIENT_TIMEOUT_S
                )
            except LabError as err:  # no result in time
                errors.append(f"{n.node.name}: {err}")
                return
            if done.returncode != 0:
                errors.append(
                    f"{n.node.name}: {argv[1]} {argv[-1]} exited {done.returncode}: "
                    f"{done.stderr.strip()[-200:]}"
                )
                return

    began = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for n in nodes:
            group.create_task(node(n))
    return time.monotonic() - began, errors


def _http(
    server: str, out: Callable[[StormNode, str], str], files: Sequence[str]
) -> Callable[[StormNode], list[list[str]]]:
    return lambda n: [
        ["busybox", "wget", "-q", "-O", out(n, f), f"http://{server}/boot/{f}"] for f in files
    ]


def _tftp(
    server: str,
    port: int | None,
    out: Callable[[StormNode, str], str],
    remote: Callable[[StormNode, str], str],
) -> Callable[[StormNode], list[list[str]]]:
    where = [server] if port is None else [server, str(port)]
    return lambda n: [
        ["busybox", "tftp", "-g", "-b", str(BLKSIZE), "-r", remote(n, f), "-l", out(n, f), *where]
        for f in FILES
    ]


def _wrong(pairs: Sequence[tuple[Path, Path]]) -> list[Path]:
    """The fetched files (first of each pair) missing or unlike the server's (second); each
    fetched file is removed."""
    wrong = []
    for got, expected in pairs:
        if not got.exists() or not filecmp.cmp(got, expected, shallow=False):
            wrong.append(got)
        got.unlink(missing_ok=True)
    return wrong


def _boot_folder(exports: Path, mac: str) -> tuple[Path, dict[str, int]]:
    """Node `mac`'s boot folder (its `tftp` link resolved) and the sizes of BOOT_FILES there."""
    boot = Path(os.path.realpath(exports / "nodes" / mac / "tftp"))
    return boot, {f: (boot / f).stat().st_size for f in BOOT_FILES}


def _hexhyp(n: StormNode) -> str:
    return n.node.mac.replace(":", "-")


# ---- the whole bench ------------------------------------------------------------------------


async def _measure(lab: Lab, deadline: float) -> dict[str, Any]:
    hpa = shutil.which("in.tftpd")
    if hpa is None:
        raise RuntimeError("tftpd-hpa is not installed (apt-get install tftpd-hpa)")
    print(
        f"boot bench: building the bootable {MODEL} image (packages in {PACKAGE_CACHE})", flush=True
    )
    hub = await lab.start_registry("hub")
    await publish(lab, await build_pc_image(lab, PACKAGE_CACHE), hub)
    cold = []
    for run in range(1, VNODE_RUNS + 1):
        print(f"virtual node {run}: a new daemon, walt node create vboot{run}", flush=True)
        folder = lab.root / f"vnode-{run}"
        log = await _start_waltd(lab, folder, hub, f"waltd-vnode-{run}")
        try:
            stages = await _vnode(lab, log, folder, f"vboot{run}")
        finally:
            await lab.stop(log.proc, grace_s=15)
            await asyncio.to_thread(remove_run_folder, folder)
        print(
            f"virtual node {run}: booted in {stages['booted']:.1f} s; stages (s): {stages}",
            flush=True,
        )
        cold.append(stages)
    folder = lab.root / "waltd"
    log = await _start_waltd(lab, folder, hub, "waltd")
    try:
        figures = await _with_daemon(lab, log, folder, hpa, deadline)
    finally:
        await lab.stop(log.proc, grace_s=15)
        await asyncio.to_thread(remove_run_folder, folder)
    middle = sorted(cold, key=lambda stages: stages["booted"])[len(cold) // 2]
    # the keys first, in its order
    first = list(figures)[: list(figures).index("storm_failures") + 1]
    result = {key: figures.pop(key) for key in first}
    result["vnode_boot_s"] = middle["booted"]
    met = figures.pop("targets_met")
    result.update(figures)
    result["vnode_stages_s"] = middle
    result["vnode_cold_s"] = [stages["booted"] for stages in cold]
    result["targets_met"] = met and middle["booted"] <= TARGET_VNODE_S
    return result


async def _with_daemon(
    lab: Lab, log: Log, folder: Path, hpa: str, deadline: float
) -> dict[str, Any]:
    """Everything but the virtual nodes' first boots, on one daemon; the figures without
    `vnode_boot_s` (`targets_met` says whether the other targets are met)."""
    server = str(lab.server_ip)
    nodes = await add_nodes(lab, STORM_NODES, [MODEL])
    print(f"{STORM_NODES} simulated nodes: leases at once, the daemon exports each", flush=True)
    since = len(log.records)
    began = time.time()
    await dhcp_storm(lab, nodes)
    macs = {n.node.mac for n in nodes}
    await log.until(
        lambda: {r.get("mac") for r in log.named("node.exported", since)} >= macs,
        "every node exported",
    )
    exported_s = max(stamp(r) for r in log.named("node.exported", since)) - began
    detected_s = max(stamp(r) for r in log.named("node.detected", since)) - began
    print(
        f"{STORM_NODES} nodes exported {exported_s:.1f} s after their DHCP requests (the last"
        f" one detected at {detected_s:.1f} s)",
        flush=True,
    )

    boot, sizes = await asyncio.to_thread(_boot_folder, folder / "exports", nodes[0].node.mac)
    per_node = sum(sizes[f] for f in FILES)
    print(
        f"boot files: {boot}: " + ", ".join(f"{f} {s / MB:.1f} MB" for f, s in sizes.items()),
        flush=True,
    )
    proc = await lab.spawn(
        "tftpd-hpa",
        [hpa, "-L", "-s", str(boot), "-a", f"{server}:{HPA_PORT}"],
        netns=lab.server_netns,
    )
    await lab.wait_listening(proc, HPA_PORT, udp=True)

    scratch = lab.root / "scratch"
    await asyncio.to_thread(scratch.mkdir)
    await lab.mount_tmpfs(scratch, "mode=0755")
    try:
        figures = await _rounds(lab, nodes[:NODES], server, boot, per_node, scratch)
        failures, storm_s = await _storms(lab, log, nodes, server, boot, scratch, sizes)
    finally:
        await lab.unmount(scratch)
        await lab.stop(proc)

    warm = []
    for number in range(WARM_VNODES):
        if time.monotonic() > deadline:
            print("virtual nodes: no time left for more", flush=True)
            break
        stages = await _vnode(lab, log, folder, f"vwarm{number + 1}")
        print(
            f"virtual node (image there): booted in {stages['booted']:.1f} s; stages (s): {stages}",
            flush=True,
        )
        warm.append(stages["booted"])

    http, tftp, tftpd_hpa = figures["http"], figures["tftp"], figures["tftpd-hpa"]
    result: dict[str, Any] = {
        "bench": "boot",
        "nodes": NODES,
        "http_mb_s": round(http, 1),
        "tftp_mb_s": round(tftp, 1),
        "tftpd_hpa_mb_s": round(tftpd_hpa, 1),
        "storm_nodes": STORM_NODES,
        "storm_failures": failures,
        "http_tftpd_hpa_ratio": round(http / tftpd_hpa, 1),
        "http_tftp_ratio": round(http / tftp, 1),
        "storm_runs": STORM_RUNS,
        "storm_s": round(statistics.median(storm_s), 2),
        "exported_s": round(exported_s, 2),
        "detected_s": round(detected_s, 2),
        "vnode_warm_s": warm,
        "kernel_initrd_mb": round(per_node / MB, 2),
        "runs": RUNS,
        "cpus": os.cpu_count(),
    }
    result["targets_met"] = http >= TARGET_RATIO * tftpd_hpa and failures == 0
    return result


async def _rounds(
    lab: Lab, nodes: Sequence[StormNode], server: str, boot: Path, per_node: int, scratch: Path
) -> dict[str, float]:
    """Untimed rounds checking the bytes, then RUNS timed rounds; median MB/s per server."""
    sides: dict[
        str, Callable[[Callable[[StormNode, str], str]], Callable[[StormNode], list[list[str]]]]
    ] = {
        "http": lambda out: _http(server, out, FILES),
        "tftp": lambda out: _tftp(server, None, out, lambda n, f: f"nodes/{_hexhyp(n)}/{f}"),
        "tftpd-hpa": lambda out: _tftp(server, HPA_PORT, out, lambda n, f: f),
    }
    for side, fetches in sides.items():

        def kept(n: StormNode, f: str, side: str = side) -> str:
            return str(scratch / f"{side}-{n.node.name}-{f}")

        took, errors = await _clients(lab, nodes, fetches(kept))
        if errors:
            raise RuntimeError(f"{side}: {len(errors)} fetches failed: {errors[:3]}")
        pairs = [(Path(kept(n, f)), boot / f) for n in nodes for f in FILES]
        wrong = await asyncio.to_thread(_wrong, pairs)
        if wrong:
            raise RuntimeError(f"{side}: wrong bytes in {', '.join(p.name for p in wrong[:5])}")
        print(
            f"{side}: checked (untimed): {len(nodes)} nodes got the right bytes in {took:.2f} s",
            flush=True,
        )
    rates: dict[str, list[float]] = {side: [] for side in sides}
    names = list(sides)
    for run in range(RUNS):
        order = names[run:] + names[:run]
        for side in order:
            took, errors = await _clients(lab, nodes, sides[side](lambda n, f: "/dev/null"))
            if errors:
                raise RuntimeError(f"{side}: {len(errors)} fetches failed: {errors[:3]}")
            rates[side].append(len(nodes) * per_node / MB / took)
        print(
            f"run {run + 1} ({', '.join(order)}): "
            + ", ".join(f"{s} {rates[s][-1]:.1f} MB/s" for s in names),
            flush=True,
        )
    return {side: statistics.median(values) for side, values in rates.items()}


async def _storms(
    lab: Lab,
    log: Log,
    nodes: Sequence[StormNode],
    server: str,
    boot: Path,
    scratch: Path,
    sizes: dict[str, int],
) -> tuple[int, list[float]]:
    """STORM_RUNS storms of every node fetching its boot files over HTTP; failed nodes (summed)
    and each storm's seconds."""
    failed = 0
    times = []
    for run in range(STORM_RUNS):
        since = len(log.records)

        def out(n: StormNode, f: str) -> str:
            return str(scratch / f"{n.node.name}-{f}")

        took, errors = await _clients(lab, nodes, _http(server, out, BOOT_FILES))
        bad = {e.partition(":")[0] for e in errors}
        pairs = [(Path(out(n, f)), boot / f) for n in nodes for f in BOOT_FILES]
        for path in await asyncio.to_thread(_wrong, pairs):
            name = path.name.partition("-")[0]
            if name not in bad:
                bad.add(name)
                errors.append(f"{name}: {path.name}: wrong bytes")
        log.poll()
        refused = len(log.named("boot_http_connection_refused", since))
        total = len(nodes) * sum(sizes.values())
        print(
            f"storm {run + 1}: {len(nodes)} nodes in {took:.2f} s ({total / MB / took:.1f} MB/s), "
            f"{len(bad)} failed, {refused} connections refused"
            + (f": {errors[:3]}" if errors else ""),
            flush=True,
        )
        failed += len(bad)
        times.append(took)
    return failed, times


async def _run() -> int:
    print("boot bench: starting the lab", flush=True)
    began = time.monotonic()
    async with Lab() as lab:
        figures = await within("boot", TIME_LIMIT_S, _measure(lab, began + WARM_VNODES_UNTIL_S))
        if figures is None:
            return 1
    print(json.dumps(figures), flush=True)
    return 0


def main() -> None:
    """Entry point of `bench/boot`; refuses to run without root."""
    run_as_root("boot", _run)


if __name__ == "__main__":
    main()
