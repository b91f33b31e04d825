"""`bench/clone`: `walt image clone` through the real daemon against a plain `skopeo copy`.

A lab registry holds a WalT image of `LAYERS` layers of `LAYER_MB` MiB of random data each
(incompressible: the registry serves as many bytes). Each run copies it into a fresh storage
(nothing cached): **ours** is `walt image clone local:bench/big` timed by the client, against
a waltd started beforehand on a new folder (its start is not timed); **skopeo** is
`skopeo copy docker://... containers-storage:...` into a new storage of the same kind
(`waltd.images.storage.Storage`: overlay, its own configuration files). After one untimed run
of each, `RUNS` rounds of both, after a `sync`, the side that goes first alternating from
round to round; the figures are medians. The lab and every folder are removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from lab import Lab, push_image
from waltd import config as configuration
from waltd.images.storage import Storage

LAYERS = 12
LAYER_MB = 64
RUNS = 3
IMAGE = "bench/big:latest"
_REPO = Path(__file__).resolve().parents[1]
_READY_S = 30.0


async def _build(lab: Lab) -> None:
    """The image, in the lab's storage: `LAYERS` layers of random data, labelled for a PC."""
    env = lab.containers_env
    base = "scratch"
    for number in range(LAYERS):
        data = lab.root / f"layer-{number}"
        data.write_bytes(os.urandom(LAYER_MB * 2**20))
        container = (await lab.run(["buildah", "from", base], env=env)).stdout.strip()
        try:
            await lab.run(
                ["buildah", "add", "--quiet", container, str(data), f"/{data.name}"], env=env
            )
            if number == LAYERS - 1:
                label = ["--label", "walt.node.models=pc-x86-64"]
                await lab.run(["buildah", "config", *label, container], env=env)
            name = f"docker.io/{IMAGE}" if number == LAYERS - 1 else f"localhost/bench/l{number}"
            await lab.run(["buildah", "commit", "--quiet", container, name], env=env)
            base = name
        finally:
            await lab.run(["buildah", "rm", container], env=env)
            data.unlink()


def _config(folder: Path, port: int) -> Path:
    """A server.conf with every path in `folder`, the lab registry labelled `local`."""
    registry = {
        "label": "local",
        "api": "docker-registry-v2",
        "description": "bench registry",
        "host": "127.0.0.1",
        "port": port,
        "protocol": "http",
        "auth": "none",
    }
    data = {
        "api": {"socket": str(folder / "api.sock")},
        "daemon": {
            "state-dir": str(folder / "state"),
            "image-storage": str(folder / "images"),
            "run-dir": str(folder / "run"),
        },
        "exports": {"root": str(folder / "exports"), "nfs": "ganesha"},
        "registries": [registry],
        "images": {"docker-socket": str(folder / "no-docker.sock")},
    }
    path = folder / "server.conf"
    path.write_text(yaml.safe_dump(data))
    return path


def remove_run_folder(folder: Path) -> None:
    """Remove a run's folder, first unmounting what the storage tools left mounted in it
    (containers-storage makes its overlay folder a mount of its own), deepest first."""
    root = str(folder.resolve())
    with open("/proc/self/mountinfo") as table:
        points = {line.split()[4] for line in table}
    for point in sorted((p for p in points if p.startswith(root + "/")), reverse=True):
        subprocess.run(["umount", point], check=True, capture_output=True)
    shutil.rmtree(folder)


def _ours(port: int) -> float:
    """One clone through a fresh daemon; its seconds."""
    folder = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    env = {**os.environ, "PYTHONPATH": str(_REPO), "WALT_SOCKET": str(folder / "api.sock")}
    log = folder / "waltd.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "waltd", "--config", str(_config(folder, port))],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + _READY_S
        while b'"daemon_ready"' not in log.read_bytes():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"waltd did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.02)
        began = time.monotonic()
        argv = [sys.executable, "-m", "waltd.cli.walt", "image", "clone", f"local:{IMAGE}"]
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        spent = time.monotonic() - began
        if res.returncode != 0:
            raise RuntimeError(f"walt image clone failed: {res.stderr}")
        return spent
    finally:
        daemon.terminate()
        daemon.wait(30)
        remove_run_folder(folder)


def _skopeo(port: int) -> float:
    """One `skopeo copy` into a fresh storage of the same kind; its seconds."""
    folder = Path(tempfile.mkdtemp(prefix="wb-", dir="/tmp"))
    try:
        config = configuration.default_config()
        daemon = replace(config.daemon, state_dir=folder / "state", image_storage=folder / "images")
        config = replace(config, daemon=daemon)
        storage = Storage.of(config)
        storage.prepare(config)
        env = {**os.environ, **storage.env()}
        argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false"]
        argv += [f"docker://127.0.0.1:{port}/{IMAGE}", f"containers-storage:docker.io/root/{IMAGE}"]
        began = time.monotonic()
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        spent = time.monotonic() - began
        if res.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {res.stderr}")
        return spent
    finally:
        remove_run_folder(folder)


async def _run() -> int:
    print("clone bench: starting the lab (registry)", flush=True)
    async with Lab() as lab:
        registry = await lab.start_registry("bench")
        print(f"clone bench: building {LAYERS} x {LAYER_MB} MiB and pushing it", flush=True)
        await _build(lab)
        await push_image(lab, f"docker.io/{IMAGE}", registry)
        # untimed, once each: what a first run alone would pay (binaries and the registry's
        # blobs read from disk into the page cache)
        print("clone bench: warming up", flush=True)
        await asyncio.to_thread(_ours, registry.port)
        await asyncio.to_thread(_skopeo, registry.port)
        ours: list[float] = []
        plain: list[float] = []
        for run in range(RUNS):
            # which goes first alternates (ours first, then skopeo first, ...): the disk's
            # write-back of earlier runs weighs on whichever comes first, and must not always
            # fall on the same side
            pair = [(ours, _ours), (plain, _skopeo)]
            for times, measure in pair if run % 2 == 0 else reversed(pair):
                # each run starts with the previous one's writes on disk, not in the page cache
                await asyncio.to_thread(os.sync)
                times.append(await asyncio.to_thread(measure, registry.port))
            print(f"run {run + 1}: ours {ours[-1]:.2f} s, skopeo {plain[-1]:.2f} s", flush=True)
    ours_s, skopeo_s = statistics.median(ours), statistics.median(plain)
    figures = {
        "bench": "clone",
        "overhead_ratio": round(ours_s / skopeo_s, 3),
        "ours_s": round(ours_s, 3),
        "skopeo_s": round(skopeo_s, 3),
        "mb": LAYERS * LAYER_MB,
    }
    print(json.dumps(figures), flush=True)
    return 0


def main() -> int:
    """Entry point of `bench/clone`."""
    return asyncio.run(_run())


if __name__ == "__main__":
    sys.exit(main())
