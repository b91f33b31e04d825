"""The measurements of `bench/search`, run inside the lab's server namespace.

`python -m bench.search_run REGISTRY_PORT PROXY_PORT RTT_MS WORK_DIR`, started by `bench/search`
(`search.py`) next to the registry, so that "loopback" is the bare loopback (no lab forwarder
in between). It fills the registry with 40 WalT repositories x 5 tags (200 distinct images),
then, through the WAN proxy and on loopback, times 3 interleaved rounds of:

- ref: the reference WalT server's algorithm: the catalog, then every repository in parallel,
  each listing its tags, then one `skopeo inspect` process per tag, in sequence;
- cold: `RegistryV2Source.list_images()` with an empty `DigestCache` (new folder, new client);
- warm: the same with the `DigestCache` a previous listing filled, one tag having been
  re-pointed to a new image just before (the listing must show it).

Every listing, the reference's included, is checked against what the registry holds. Progress
goes to stdout, the figures as one JSON object on the last line.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import statistics
import sys
import tarfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from waltd import config, log
from waltd.registries.base import ImageInfo
from waltd.registries.cache import DigestCache
from waltd.registries.v2.source import RegistryV2Source

USERS = ("alice", "bob", "carol", "dave")
NAMES_PER_USER = 10
TAGS = ("latest", "1.0", "1.1", "2.0", "test")
RUNS = 3
TARGETS = {"cold": 5.0, "warm": 10.0}  # speedups wanted through the WAN proxy
MODELS = "pc-x86-64,rpi-3-b-plus"
UNIQUE_LABEL = "bench.image"  # one value per image: every manifest and config is distinct

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# image ("user/name:tag") -> (manifest digest, unique label)
Found = dict[str, tuple[str | None, str | None]]


class BenchError(Exception):
    """The benchmark cannot give a figure: a step failed or a listing is wrong."""


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer() -> tuple[bytes, str]:
    """A small gzipped tar layer (one file) and its diff id (digest of the plain tar)."""
    content = b"walt search benchmark\n"
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo("etc/walt-bench")
        member.size = len(content)
        member.mtime = 1_700_000_000
        tar.addfile(member, io.BytesIO(content))
    tar_bytes = plain.getvalue()
    return gzip.compress(tar_bytes, mtime=0), _sha256(tar_bytes)


async def _checked(response: aiohttp.ClientResponse, status: int) -> None:
    if response.status != status:
        body = (await response.text(errors="replace"))[:300]
        raise BenchError(f"{response.method} {response.url.path}: {response.status} {body}")


class BenchRegistry:
    """The lab registry as the benchmark fills it, and what it should hold (`expected`)."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self._session = session
        self._origin = URL(f"http://127.0.0.1:{port}")
        self._layer, self._diff_id = _layer()
        self._serial = 0
        self._changes = 0
        self.repositories = [f"{u}/image{i:02d}" for u in USERS for i in range(NAMES_PER_USER)]
        self.expected: Found = {}

    async def fill(self) -> None:
        """Every repository: the shared layer once, then one distinct image per tag."""

        async def repository(repo: str) -> None:
            await self._upload(repo, self._layer)
            for tag in TAGS:
                await self.put_image(repo, tag)

        await asyncio.gather(*map(repository, self.repositories))

    async def change(self) -> str:
        """Re-point one tag (a different one each time) to a new image; its name."""
        index = self._changes
        self._changes += 1
        repo = self.repositories[(index * 7) % len(self.repositories)]
        tag = TAGS[index % len(TAGS)]
        await self.put_image(repo, tag)
        return f"{repo}:{tag}"

    async def put_image(self, repo: str, tag: str) -> None:
        """A new image (its own config, hence manifest) as `repo:tag`."""
        self._serial += 1
        unique = f"{repo}:{tag}#{self._serial}"
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Labels": {"walt.node.models": MODELS, UNIQUE_LABEL: unique}},
            "rootfs": {"type": "layers", "diff_ids": [self._diff_id]},
        }
        config_body = json.dumps(image_config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {
                "mediaType": CONFIG_V1,
                "size": len(config_body),
                "digest": await self._upload(repo, config_body),
            },
            "layers": [
                {"mediaType": LAYER_GZIP, "size": len(self._layer), "digest": _sha256(self._layer)}
            ],
        }
        body = json.dumps(manifest).encode()
        url = self._origin / "v2" / repo / "manifests" / tag
        headers = {"Content-Type": MANIFEST_V2}
        async with self._session.put(url, data=body, headers=headers) as response:
            await _checked(response, 201)
        self.expected[f"{repo}:{tag}"] = (_sha256(body), unique)

    async def _upload(self, repo: str, data: bytes) -> str:
        """Upload a blob to `repo` (POST, then a monolithic PUT); its digest."""
        digest = _sha256(data)
        uploads = self._origin / "v2" / repo / "blobs" / "uploads/"
        async with self._session.post(uploads) as response:
            await _checked(response, 202)
            location = URL(response.headers["Location"])
        url = self._origin.join(location).update_query(digest=digest)
        headers = {"Content-Type": "application/octet-stream"}
        async with self._session.put(url, data=data, headers=headers) as response:
            await _checked(response, 201)
        return digest


# ---- the reference --------------------------------------------------------------------------


async def _inspect(host: str, image: str) -> dict[str, Any]:
    """`skopeo inspect` of one image, as the reference runs it."""
    process = await asyncio.create_subprocess_exec(
        *("skopeo", "inspect", "--tls-verify=false", f"docker://{host}/{image}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise BenchError(f"skopeo inspect {image}: {err.decode(errors='replace').strip()[-300:]}")
    data = json.loads(out)
    if not isinstance(data, dict):
        raise BenchError(f"skopeo inspect {image}: unexpected output")
    return data


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        await _checked(response, 200)
        return await response.json()


async def reference(host: str) -> Found:
    """The reference algorithm: catalog; repositories in parallel, skopeo per tag in sequence."""
    async with aiohttp.ClientSession() as session:
        catalog = await _get_json(session, f"http://{host}/v2/_catalog?n=1000")

        async def repository(repo: str) -> Found:
            tags = await _get_json(session, f"http://{host}/v2/{repo}/tags/list")
            found: Found = {}
            for tag in tags["tags"] or []:
                data = await _inspect(host, f"{repo}:{tag}")
                labels = data.get("Labels") or {}
                found[f"{repo}:{tag}"] = (data.get("Digest"), labels.get(UNIQUE_LABEL))
            return found

        walt_named = [r for r in catalog["repositories"] if r.count("/") == 1]
        parts = await asyncio.gather(*map(repository, walt_named))
    return {image: value for part in parts for image, value in part.items()}


# ---- ours -----------------------------------------------------------------------------------


def _found(images: list[ImageInfo]) -> Found:
    found: Found = {}
    for info in images:
        key = f"{info.user}/{info.name}:{info.tag}"
        if key in found:
            raise BenchError(f"{key} listed twice")
        found[key] = (info.digest, info.labels.get(UNIQUE_LABEL))
    return found


def _check(found: Found, expected: Found, what: str) -> None:
    """`found` must be exactly what the registry holds."""
    if found == expected:
        return
    missing = sorted(expected.keys() - found.keys())
    extra = sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if found[k] != expected[k])
    raise BenchError(
        f"{what}: {len(found)} images instead of {len(expected)}; missing {missing[:3]}, "
        f"unexpected {extra[:3]}, out of date {wrong[:3]}"
    )


async def _timed(listing: Awaitable[Found]) -> tuple[float, Found]:
    start = time.perf_counter()
    found = await listing
    return time.perf_counter() - start, found


async def _listing(source: RegistryV2Source) -> Found:
    return _found(await source.list_images())


async def _series(path: str, port: int, fill: BenchRegistry, work: Path) -> dict[str, list[float]]:
    """RUNS interleaved rounds of ref, cold and warm against 127.0.0.1:`port`."""
    host = f"127.0.0.1:{port}"
    entry = config.Registry(
        "bench", "docker-registry-v2", "search benchmark", "127.0.0.1", port, "http"
    )
    warm_cache = DigestCache(work / f"warm-{path}")
    warm = RegistryV2Source(entry, cache=warm_cache)
    _check(await _listing(warm), fill.expected, f"{path}: the listing that fills the warm cache")
    await warm_cache.flush()
    times: dict[str, list[float]] = {"ref": [], "cold": [], "warm": []}
    for run in range(1, RUNS + 1):
        seconds, found = await _timed(reference(host))
        _check(found, fill.expected, f"{path}: reference run {run}")
        times["ref"].append(seconds)

        cache = DigestCache(work / f"cold-{path}-{run}")
        cold = RegistryV2Source(entry, cache=cache)
        seconds, found = await _timed(_listing(cold))
        _check(found, fill.expected, f"{path}: cold run {run}")
        times["cold"].append(seconds)
        # as the daemon does after a search, untimed: the results did not wait for the disk
        await cache.flush()

        changed = await fill.change()
        seconds, found = await _timed(_listing(warm))
        if found.get(changed) != fill.expected[changed]:
            raise BenchError(
                f"{path}: warm run {run} does not show the change of {changed}: "
                f"{found.get(changed)} instead of {fill.expected[changed]}"
            )
        _check(found, fill.expected, f"{path}: warm run {run}")
        times["warm"].append(seconds)
        await warm_cache.flush()
        print(
            f"  {path} run {run}/{RUNS}: ref {times['ref'][-1]:.3f} s, "
            f"cold {times['cold'][-1]:.3f} s, warm {seconds:.3f} s ({changed} changed)",
            flush=True,
        )
    return times


async def _bench(registry_port: int, proxy_port: int, rtt_ms: int, work: Path) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        fill = BenchRegistry(session, registry_port)
        start = time.perf_counter()
        await fill.fill()
        print(
            f"search bench: {len(fill.repositories)} repositories x {len(TAGS)} tags = "
            f"{len(fill.expected)} distinct images in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        # the skopeo binary into the page cache before any run is timed
        await _inspect(f"127.0.0.1:{registry_port}", next(iter(fill.expected)))
        # the reference is CPU-bound: other work on the machine slows it, and us less
        load = os.getloadavg()[0]
        print(f"search bench: {os.cpu_count()} CPUs, load average {load:.1f}", flush=True)
        medians: dict[str, float] = {}  # "ref", "cold_loopback", ...
        paths = (("proxy", proxy_port, ""), ("loopback", registry_port, "_loopback"))
        for path, port, name in paths:
            label = f"through the WAN proxy (+{rtt_ms} ms RTT)" if name == "" else "on loopback"
            print(f"search bench: {RUNS} rounds {label}", flush=True)
            times = await _series(path, port, fill, work)
            for kind, values in times.items():
                medians[f"{kind}{name}"] = statistics.median(values)
    result: dict[str, Any] = {"bench": "search", "tags": len(fill.expected), "rtt_ms": rtt_ms}
    for name in ("", "_loopback"):
        for kind in ("cold", "warm"):
            speedup = medians[f"ref{name}"] / medians[f"{kind}{name}"]
            result[f"{kind}_speedup{name}"] = round(speedup, 2)
    for name in ("", "_loopback"):
        for kind in ("ref", "cold", "warm"):
            result[f"{kind}{name}_s"] = round(medians[f"{kind}{name}"], 4)
    result["runs"] = RUNS
    result["cpus"] = os.cpu_count()
    result["targets_met"] = all(result[f"{k}_speedup"] >= v for k, v in TARGETS.items())
    return result


def _summary(result: dict[str, Any]) -> str:
    parts = [
        f"{kind} {result[f'{kind}_speedup']:.1f}x (target {target:g}x)"
        for kind, target in TARGETS.items()
    ]
    verdict = "targets met" if result["targets_met"] else "TARGET MISSED"
    return f"search bench: through the proxy {', '.join(parts)}: {verdict}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: `search_run REGISTRY_PORT PROXY_PORT RTT_MS WORK_DIR`."""
    registry_port, proxy_port, rtt_ms, work = argv if argv is not None else sys.argv[1:]
    log.setup(stream=sys.stderr, level="warning")  # stdout is for the figures
    try:
        result = asyncio.run(_bench(int(registry_port), int(proxy_port), int(rtt_ms), Path(work)))
    except BenchError as err:
        sys.exit(f"search bench FAILED: {err}")
    print(_summary(result), flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
