"""The composition root: it builds the context's handles and the services, in start order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from waltd import config as configuration
from waltd import instance, log
from waltd.api.server import ApiService
from waltd.context import Context, ServerSecrets
from waltd.db import Database
from waltd.events import EventBus
from waltd.images.locks import NameLocks
from waltd.images.repository import Repository, RepositoryService
from waltd.node_events import NodeEvents
from waltd.process import Children, kill_recorded, pidfd_child_watcher
from waltd.provision.boot_http import BootHttpService
from waltd.provision.detect import DetectionService
from waltd.provision.dnsmasq import DnsmasqService
from waltd.provision.exports import ExportsService
from waltd.provision.nfs import NfsService
from waltd.provision.provisioning import ProvisioningService
from waltd.provision.vnodes import VirtualNodes, VirtualNodesService
from waltd.registries.cache import DigestCache
from waltd.registries.sources import Registries, RegistriesService
from waltd.supervisor import RunningConfig, Service, ServiceStatus, Supervisor

_log = log.get("daemon")


class DatabaseService(Service):
    """Opens the state database at start and closes it at stop (the handle stays)."""

    name = "database"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __aenter__(self) -> Self:
        await self._db.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._db.__aexit__(None, None, None)


ServiceFactory = Callable[[Context], Service]


def standard_services(config: configuration.Config) -> list[ServiceFactory]:
    """The daemon's services in start order (shutdown runs in reverse).

    Detection listens before dnsmasq starts, so no lease event meets a closed socket; the
    provisioning service subscribes to node events before detection publishes any.
    Without a node network there is no dnsmasq at all: no DHCP on an operator's LAN.
    """
    services: list[ServiceFactory] = [
        lambda ctx: DatabaseService(ctx.db),
        lambda ctx: RegistriesService(ctx.registries, ctx.running),
        lambda ctx: RepositoryService(ctx.repository, ctx.running),
        ApiService,
        ProvisioningService,
        DetectionService,
    ]
    if config.walt_net is not None:
        services.append(DnsmasqService)
        # the NFS server before anything exports to it (nodes' root file systems)
        services.append(lambda ctx: NfsService(ctx.exporter, ctx.children, ctx.running))
        # Nodes fetch over HTTP what dnsmasq's bootstrap sends them to.
        services.append(BootHttpService)
        # mounts, boot files, node folders and NFS exports of the nodes ready to boot
        services.append(ExportsService)
        # last: a virtual node's first requests find DHCP, TFTP and HTTP answering
        services.append(lambda ctx: VirtualNodesService(ctx.vnodes))
    return services


def _raise_descriptor_limit() -> None:
    """Lift the soft descriptor limit to the hard one (systemd gives 1024 soft, 512K hard):
    the API's connection caps are a share of it, so a low soft limit starves callers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        _log.info("descriptor_limit_raised", soft=soft, to=hard)


async def run(
    config: configuration.Config,
    *,
    config_path: Path | None,
    bus: EventBus,
    extra: Sequence[ServiceFactory] = (),
    restart_min_s: float = 1.0,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns its exit status.

    It holds the locks of its state and runtime folders throughout. When another daemon
    holds either, this one touches nothing of that daemon's (children, sockets) and
    returns 1.
    """
    # What the daemon writes is its own unless made readable on purpose (dnsmasq's folder,
    # boot files, the API socket): the state holds nodes, users' traces and logins.
    os.umask(0o077)
    _raise_descriptor_limit()
    with contextlib.ExitStack() as held:
        for folder in (config.daemon.state_dir, config.daemon.run_dir):
            try:
                held.enter_context(instance.lock(folder))
            except instance.AlreadyRunning as err:
                _log.error("daemon_already_running", folder=str(folder), pid=err.pid)
                print(f"waltd: {err}", file=sys.stderr)
                return 1
        held.enter_context(pidfd_child_watcher())
        return await _run(
            config, config_path=config_path, bus=bus, extra=extra, restart_min_s=restart_min_s
        )


async def _run(
    config: configuration.Config,
    *,
    config_path: Path | None,
    bus: EventBus,
    extra: Sequence[ServiceFactory],
    restart_min_s: float,
) -> int:
    state_dir, run_dir = config.daemon.state_dir, config.daemon.run_dir
    # Traversable but not listable: dnsmasq, once it drops to `nobody`, reads its own
    # folders inside.
    state_dir.chmod(0o711)
    run_dir.chmod(0o711)
    records = run_dir / "children.json"  # the PIDs of this boot
    await asyncio.to_thread(kill_recorded, records)
    running = RunningConfig(config, config_path)
    secrets = ServerSecrets(config_path)
    secrets.load()
    statuses: dict[str, ServiceStatus] = {}
    children = Children(records)
    nodes = NodeEvents()
    db = Database(state_dir / "waltd.db")
    ctx = Context(
        running=running,
        bus=bus,
        nodes=nodes,
        children=children,
        db=db,
        registries=Registries(DigestCache(state_dir / "registry-cache")),
        repository=Repository(children, running),
        image_locks=NameLocks(),
        secrets=secrets,
        statuses=statuses,
        vnodes=VirtualNodes(running, children, db, nodes),
    )
    services = [make(ctx) for make in [*standard_services(config), *extra]]
    supervisor = Supervisor(
        running,
        services,
        children=ctx.children,
        statuses=statuses,
        restart_min_s=restart_min_s,
        reload_files=secrets.load,
    )
    _log.info(
        "daemon_starting",
        config=str(config_path) if config_path else "<defaults>",
        node_network=config.walt_net.interface if config.walt_net else None,
    )
    if config.walt_net is None:
        _log.warning("no_node_network", detail="network.walt-net is not set: no DHCP is served")
    return await supervisor.run()
