"""New nodes and their default images, end to end (issue 10).

Real components: waltd in a lab's server namespace with its own dnsmasq on the node bridge,
simulated nodes asking DHCP with busybox udhcpc (vendor class `walt.node.<model>`), real
docker-registry servers (one standing in for Docker Hub's registry, one wanting a password),
default images built with buildah and pushed with skopeo, the daemon's own podman storage
read back with podman. Downloads are counted from the registries' access logs. The one
in-process piece is the proxy that holds a layer in the SIGKILL test (tests/support/
registry_proxy.py): it forwards to the real registry and only decides when.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lab import Lab, LabProcess
from lab.default_images import (
    StormNode,
    add_nodes,
    build_and_publish,
    build_default_image,
    count_downloads,
    dhcp_storm,
    publish,
    stored_layers,
    vendor_class,
)
from tests.support.daemon import is_event, is_lease, walt
from tests.support.lab_daemon import lab_config, records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.registry_proxy import Fault, Proxy, when
from tests.support.search_lab import reach_from_server
from tests.support.store_images import release_storage
from tests.support.transfer import hub_entry, registry_entry, run
from tests.support.wait import until
from waltd import credentials
from waltd.db import default_name
from waltd.images.storage import Storage
from waltd.provision.nodes import default_image
from waltd.registries.base import Credentials

pytestmark = pytest.mark.lab

PC = "pc-x86-64"
USER, PASSWORD = "walt-server", "private registry pass 7f3a"
TOOLS = ("dnsmasq", "docker-registry", "skopeo", "buildah", "podman", "htpasswd")
Record = dict[str, Any]


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    """A lab of its own per test; its daemons' storage released before the lab goes."""
    async with running_lab(*TOOLS) as lab:
        try:
            yield lab
        finally:
            for proc in lab.processes:
                if proc.name.startswith("waltd"):
                    await lab.stop(proc)
            release_storage(lab.root / "waltd" / "images")


def shown(model: str) -> str:
    """`model`'s default image as records and `walt node show` name it."""
    return default_image(model).display


def waltd_folder(lab: Lab) -> Path:
    """The daemon's folder (configuration, state, storage) inside the lab's."""
    folder = lab.root / "waltd"
    folder.mkdir(exist_ok=True)
    return folder


def configure(lab: Lab, registries: list[dict[str, Any]], **images: Any) -> Path:
    """server.conf: the lab's node network, `registries`, no docker daemon, `images` keys."""
    folder = waltd_folder(lab)
    no_docker = {"docker-socket": str(folder / "no-docker.sock")}
    return lab_config(lab, folder, registries=registries, images={**no_docker, **images})


async def start(lab: Lab, config: Path, name: str = "waltd", log_level: str = "info") -> LabProcess:
    """waltd, once it serves DHCP."""
    waltd = await start_waltd(lab, config, name, log_level)
    await wait_record(waltd, is_event("daemon_ready"), timeout_s=30)
    await wait_record(waltd, is_event("dnsmasq_started"))
    return waltd


def named(proc: LabProcess, event: str, **keys: object) -> list[Record]:
    """The daemon's records of `event` with these values."""
    match = is_event(event, **keys)
    return [r for r in records(proc) if match(r)]


async def all_ready(waltd: LabProcess, nodes: list[StormNode], timeout_s: float) -> None:
    """Wait until each of `nodes` has its node.ready record."""
    for n in nodes:
        await wait_record(waltd, is_event("node.ready", mac=n.node.mac), timeout_s=timeout_s)


def podman(lab: Lab, *args: str) -> str:
    """podman on the daemon's storage (its own configuration files, as waltd runs it)."""
    folder = waltd_folder(lab)
    env = {**os.environ, **Storage(folder / "images", folder / "state" / "containers").env()}
    res = run(["podman", *args], env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def stored_images(lab: Lab) -> list[tuple[str, list[str]]]:
    """Every image of the daemon's storage, intermediate ones too: (id, names), each image
    once (podman lists an image once per name); the name the exports service holds a
    mounted image by is left out (it comes and goes with the node's export)."""
    listed = json.loads(podman(lab, "images", "--all", "--format", "json") or "[]")
    found: dict[str, list[str]] = {}
    for entry in listed:
        names = [
            n for n in entry.get("Names") or [] if not n.startswith("localhost/waltd-mounted/")
        ]
        found.setdefault(entry["Id"], names)
    return list(found.items())


def labels(lab: Lab, model: str) -> dict[str, str]:
    """The labels of `model`'s default image in the daemon's storage."""
    out = podman(lab, "image", "inspect", "--format", "{{json .Labels}}", default_image(model).full)
    return json.loads(out)


def node_rows(lab: Lab) -> dict[str, Record]:
    """`walt node show --all --json`: the nodes by MAC."""
    res = walt(waltd_folder(lab) / "api.sock", "node", "show", "--all", "--json")
    assert res.returncode == 0, res.stderr
    return {row["mac"]: row for row in json.loads(res.stdout)["nodes"]}


def most_at_once(recs: list[Record]) -> int:
    """The most downloads under way at once, from the fetch records' order."""
    running = most = 0
    for record in recs:
        event = record.get("event")
        if event == "image.fetch.started":
            running += 1
            most = max(most, running)
        elif event in ("image.fetch.done", "image.fetch.source_failed"):
            running -= 1
    return most


async def test_a_new_model_gets_its_default_image_from_the_hub(lab: Lab) -> None:
    hub = await lab.start_registry("hub", access_log=True)
    image = (await build_and_publish(lab, [PC], hub))[0]
    waltd = await start(lab, configure(lab, [hub_entry(hub.url)]))
    node = (await add_nodes(lab, 1, [PC]))[0]
    ip = await lab.node_dhcp(node.node, vendor_class=vendor_class(PC))

    ready = await wait_record(waltd, is_event("node.ready", mac=node.node.mac), timeout_s=60)
    assert (ready["model"], ready["ip"]) == (PC, str(ip))
    assert (ready["image"], ready["name"]) == (shown(PC), default_name(node.node.mac, PC))
    detected = named(waltd, "node.detected", mac=node.node.mac)
    assert len(detected) == 1 and detected[0]["model"] == PC
    new = named(waltd, "model.new")
    assert [(r["model"], r["image"]) for r in new] == [(PC, shown(PC))]
    started = named(waltd, "image.fetch.started")
    assert [(r["model"], r["image"], r["source"]) for r in started] == [(PC, shown(PC), "hub")]
    done = named(waltd, "image.fetch.done")
    assert [(r["model"], r["source"]) for r in done] == [(PC, "hub")]
    order = [
        r["event"]
        for r in records(waltd)
        if r.get("event") in ("model.new", "image.fetch.started", "image.fetch.done", "node.ready")
    ]
    assert order == ["model.new", "image.fetch.started", "image.fetch.done", "node.ready"]

    # in the repository under its name, with its label, the id the record pinned
    assert labels(lab, PC)["walt.node.models"] == PC
    stored = stored_images(lab)
    assert [names for _, names in stored] == [[default_image(PC).full]]
    assert stored[0][0].removeprefix("sha256:") == done[0]["image_id"].removeprefix("sha256:")
    assert count_downloads(lab, hub) == {image.reference: 1}

    row = node_rows(lab)[node.node.mac]
    assert (row["state"], row["model"], row["image"]) == ("ready", PC, shown(PC))
    await lab.stop(waltd)
    assert waltd.process.returncode == 0
    assert not named(waltd, "service_crashed")


async def test_hub_down_the_image_comes_from_a_registry_wanting_a_password(lab: Lab) -> None:
    hub = await lab.start_registry("hub", access_log=True)
    private = await lab.start_registry("private", auth=(USER, PASSWORD), access_log=True)
    image = await build_default_image(lab, PC)
    await publish(lab, image, hub)
    await publish(lab, image, private)
    await lab.stop(hub.process)
    config = configure(lab, [hub_entry(hub.url), registry_entry(private, "private", "basic")])
    secrets = credentials.secrets_path(config)
    credentials.save(secrets, {"private": Credentials(USER, PASSWORD)})
    assert secrets.stat().st_mode & 0o777 == 0o600
    waltd = await start(lab, config)
    node = (await add_nodes(lab, 1, [PC]))[0]
    await lab.node_dhcp(node.node, vendor_class=vendor_class(PC))

    ready = await wait_record(waltd, is_event("node.ready", mac=node.node.mac), timeout_s=60)
    assert ready["image"] == shown(PC)
    failed = named(waltd, "image.fetch.source_failed")
    assert [(r["model"], r["source"]) for r in failed] == [(PC, "hub")]
    assert failed[0]["level"] == "warning" and failed[0]["error"]
    done = named(waltd, "image.fetch.done")
    assert [(r["model"], r["source"]) for r in done] == [(PC, "private")]
    assert labels(lab, PC)["walt.node.models"] == PC
    assert count_downloads(lab, private) == {image.reference: 1}
    await lab.stop(waltd)
    log = waltd.log.read_text()
    assert PASSWORD not in log and PASSWORD not in private.process.log.read_text()


async def test_every_source_down_the_node_waits_then_gets_its_image_by_itself(lab: Lab) -> None:
    hub = await lab.start_registry("hub", access_log=True)
    private = await lab.start_registry("private", auth=(USER, PASSWORD))
    image = await build_default_image(lab, PC)
    await publish(lab, image, hub)
    await publish(lab, image, private)
    await lab.stop(hub.process)
    await lab.stop(private.process)
    entries = [hub_entry(hub.url), registry_entry(private, "private", "basic")]
    config = configure(lab, entries, **{"retry-min-s": 0.5, "retry-max-s": 2})
    credentials.save(credentials.secrets_path(config), {"private": Credentials(USER, PASSWORD)})
    waltd = await start(lab, config)
    node = (await add_nodes(lab, 1, [PC]))[0]
    await lab.node_dhcp(node.node, vendor_class=vendor_class(PC))

    failed = await wait_record(waltd, is_event("image.fetch.failed", model=PC), timeout_s=60)
    assert failed["level"] == "error" and failed["image"] == shown(PC)
    assert [e["source"] for e in failed["errors"]] == ["hub", "private"]
    assert all(e["error"] for e in failed["errors"])
    assert 0 < failed["retry_in_s"] <= 2
    # tried again (each source once more; a repeated failure record is rate-limited in
    # the log, the tries are not), still failing: the node waits
    retried = is_event("image.fetch.started", model=PC, source="private")
    await wait_record(waltd, retried, after=1, timeout_s=30)
    assert not named(waltd, "node.ready")
    assert node_rows(lab)[node.node.mac]["state"] == "waiting"

    # the hub comes back on its port: no DHCP, no signal, the next try gets it
    hub = await lab.restart_registry(hub)
    ready = await wait_record(waltd, is_event("node.ready", mac=node.node.mac), timeout_s=30)
    assert ready["image"] == shown(PC)
    assert [r["source"] for r in named(waltd, "image.fetch.done")] == ["hub"]
    assert count_downloads(lab, hub) == {image.reference: 1}
    assert node_rows(lab)[node.node.mac]["state"] == "ready"


async def test_storm_of_50_nodes_of_5_models_downloads_each_image_once(lab: Lab) -> None:
    models = [PC, "pc-x86-32", "rpi-3-b-plus", "rpi-4-b", "qemu-arm"]
    hub = await lab.start_registry("hub", access_log=True)
    images = await build_and_publish(lab, models, hub, payload_mb=2)
    waltd = await start(lab, configure(lab, [hub_entry(hub.url)]))
    nodes = await add_nodes(lab, 50, models)

    await dhcp_storm(lab, nodes)  # all 50 at once
    await all_ready(waltd, nodes, timeout_s=180)

    assert count_downloads(lab, hub) == {image.reference: 1 for image in images}
    ready = named(waltd, "node.ready")
    assert sorted(r["mac"] for r in ready) == sorted(n.node.mac for n in nodes)
    assert all(r["image"] == shown(r["model"]) for r in ready)
    assert sorted(r["model"] for r in named(waltd, "model.new")) == sorted(models)
    assert sorted(r["model"] for r in named(waltd, "image.fetch.done")) == sorted(models)
    # fetch-concurrency (2 by default) bounds the downloads under way (whether two ran at
    # once depends on how fast dnsmasq's hook announced the models)
    assert 1 <= most_at_once(records(waltd)) <= 2
    assert {names[0] for _, names in stored_images(lab)} == {default_image(m).full for m in models}


def hold_layer(held: asyncio.Event, release: asyncio.Event) -> Fault:
    """A fault that holds a request (setting `held`) until `release` is set, then lets it
    through."""

    async def apply(request: web.Request) -> None:
        held.set()
        await release.wait()
        return None

    return apply


async def test_sigkill_during_a_download_leaves_no_staging_image_and_nodes_end_ready(
    lab: Lab,
) -> None:
    hub = await lab.start_registry("hub", access_log=True)
    image = (await build_and_publish(lab, [PC], hub, payload_mb=4))[0]
    (layer,) = stored_layers(lab.registry_data(hub))[image.reference]
    async with Proxy(hub.url) as proxy:
        await reach_from_server(lab, proxy.port)
        held, release = asyncio.Event(), asyncio.Event()
        proxy.fault = when(rf"/v2/.+/blobs/{layer}", hold_layer(held, release))
        config = configure(lab, [hub_entry(proxy.url)])
        waltd = await start(lab, config)
        nodes = await add_nodes(lab, 3, [PC])
        await dhcp_storm(lab, nodes)
        await wait_record(waltd, is_event("image.fetch.started", model=PC), timeout_s=30)
        await asyncio.wait_for(held.wait(), 30)  # skopeo is fetching the layer

        waltd.process.send_signal(signal.SIGKILL)
        await lab.stop(waltd)
        assert not named(waltd, "node.ready") and not named(waltd, "image.fetch.done")
        proxy.fault = None
        release.set()

        again = await start(lab, config, "waltd-2")
        for n in nodes:
            await wait_record(again, is_event("node.ready", mac=n.node.mac), timeout_s=60)
        assert not named(again, "node.detected")  # no new DHCP: the nodes were known
        assert [r["source"] for r in named(again, "image.fetch.done")] == ["hub"]

    stored = stored_images(lab)
    assert [names for _, names in stored] == [[default_image(PC).full]], stored
    assert labels(lab, PC)["walt.node.models"] == PC
    rows = node_rows(lab)
    assert {rows[n.node.mac]["state"] for n in nodes} == {"ready"}
    await lab.stop(again)
    assert again.process.returncode == 0


async def test_a_model_waiting_for_its_download_turn_has_its_image_checked_meanwhile(
    lab: Lab,
) -> None:
    """One download at a time: while the first model's layer downloads (held here), the
    second model's image is checked at its source already (its manifest asked), so its copy
    starts as soon as its turn comes; the bound holds all the same."""
    second = "rpi-4-b"
    hub = await lab.start_registry("hub", access_log=True)
    images = await build_and_publish(lab, [PC, second], hub, payload_mb=2)
    (layer,) = stored_layers(lab.registry_data(hub))[images[0].reference]
    async with Proxy(hub.url) as proxy:
        await reach_from_server(lab, proxy.port)
        held, release = asyncio.Event(), asyncio.Event()
        proxy.fault = when(rf"/v2/.+/blobs/{layer}", hold_layer(held, release))
        waltd = await start(lab, configure(lab, [hub_entry(proxy.url)], **{"fetch-concurrency": 1}))
        first, other = await add_nodes(lab, 2, [PC, second])
        await dhcp_storm(lab, [first])
        await asyncio.wait_for(held.wait(), 30)  # the first image is downloading
        await dhcp_storm(lab, [other])
        manifest = ("GET", f"/v2/{default_image(second).user}/{second}-default/manifests/latest")
        await until(lambda: manifest in proxy.requests, what="the second image checked")
        assert not named(waltd, "image.fetch.started", model=second)  # its turn has not come
        release.set()
        await all_ready(waltd, [first, other], timeout_s=60)
    assert most_at_once(records(waltd)) == 1
    assert count_downloads(lab, hub) == {image.reference: 1 for image in images}
    # asked once: the copy was pinned to the answer given while it waited
    assert proxy.requests.count(manifest) == 1


async def test_restart_with_leases_recognises_the_nodes_and_fetches_nothing(lab: Lab) -> None:
    models = [PC, "rpi-4-b"]
    hub = await lab.start_registry("hub", access_log=True)
    images = await build_and_publish(lab, models, hub)
    config = configure(lab, [hub_entry(hub.url)])
    waltd = await start(lab, config)
    nodes = await add_nodes(lab, 4, models)
    ips = await dhcp_storm(lab, nodes)
    await all_ready(waltd, nodes, timeout_s=60)
    downloads = count_downloads(lab, hub)
    assert downloads == {image.reference: 1 for image in images}
    await lab.stop(waltd)
    assert waltd.process.returncode == 0

    again = await start(lab, config, "waltd-2", log_level="debug")
    # the nodes renew their leases: known, same addresses, ready at once
    assert await dhcp_storm(lab, nodes) == ips
    for n in nodes:
        lease = await wait_record(again, is_lease(n.node.mac))
        assert lease["model"] == n.model
    rows = node_rows(lab)
    assert {rows[n.node.mac]["state"] for n in nodes} == {"ready"}
    for event in ("node.detected", "model.new", "image.fetch.started"):
        assert not named(again, event), event
    assert count_downloads(lab, hub) == downloads
    await lab.stop(again)
    assert again.process.returncode == 0
