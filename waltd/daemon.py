"""The daemon's wiring: its context, its services in start order, and `run`."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from waltd import config as configuration
from waltd import credentials, instance, log
from waltd.db import Database
from waltd.events import EventBus
from waltd.process import Children, kill_recorded
from waltd.registries.base import Credentials
from waltd.registries.cache import DigestCache
from waltd.supervisor import Service, ServiceStatus, Supervisor

if TYPE_CHECKING:
    from waltd.provision.dnsmasq import DnsmasqService
    from waltd.registries.sources import SourceSet

_log = log.get("daemon")


@dataclass
class Context:
    """What services share: configuration, event bus, children, database, supervisor."""

    initial_config: configuration.Config
    bus: EventBus
    children: Children
    config_path: Path | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    db: Database | None = None
    supervisor: Supervisor | None = None
    dnsmasq: DnsmasqService | None = None
    # The server's own registry logins (server.secrets), for what the daemon does alone.
    server_credentials: dict[str, Credentials] = field(default_factory=dict)
    # Manifests and image configs by digest, shared by every registry client.
    registry_cache: DigestCache | None = None
    # The image sources of the running configuration (RegistriesService keeps them).
    registry_sources: SourceSet | None = None

    def load_credentials(self) -> None:
        """(Re)read server.secrets beside the configuration; SecretsError when unusable."""
        if self.config_path is None:
            return
        creds = credentials.load(credentials.secrets_path(self.config_path))
        for old in self.server_credentials.values():
            log.redactor.forget(old.password)
        for new in creds.values():
            log.redactor.register(new.password)
        self.server_credentials = creds

    @property
    def config(self) -> configuration.Config:
        """The running configuration (it changes on reload)."""
        return self.supervisor.config if self.supervisor else self.initial_config

    @property
    def state_dir(self) -> Path:
        """The folder for the database, the event spool, caches and records."""
        return self.initial_config.daemon.state_dir

    async def node_known(self, mac: str, name: str) -> None:
        """A node was registered: dnsmasq (when running) learns its name."""
        if self.dnsmasq is not None:
            self.dnsmasq.add_host(mac, name)

    def statuses(self) -> list[ServiceStatus]:
        """Each service's status, in start order."""
        return list(self.supervisor.statuses.values()) if self.supervisor else []


class DatabaseService(Service):
    """Opens the state database and publishes it on the context."""

    name = "database"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._db: Database | None = None

    async def __aenter__(self) -> Self:
        self._db = await Database(self._ctx.state_dir / "waltd.db").__aenter__()
        self._ctx.db = self._db
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._ctx.db = None
        if self._db is not None:
            db, self._db = self._db, None
            await db.__aexit__(None, None, None)


ServiceFactory = Callable[[Context], Service]


def standard_services(config: configuration.Config) -> list[ServiceFactory]:
    """The daemon's services in start order (shutdown runs in reverse).

    Detection listens before dnsmasq starts, so no lease event meets a closed socket.
    Without a node network there is no dnsmasq at all: no DHCP on an operator's LAN.
    """
    from waltd.api.server import ApiService
    from waltd.provision.detect import DetectionService
    from waltd.provision.dnsmasq import DnsmasqService
    from waltd.registries.sources import RegistriesService

    services: list[ServiceFactory] = [
        DatabaseService,
        RegistriesService,
        ApiService,
        DetectionService,
    ]
    if config.walt_net is not None:
        services.append(DnsmasqService)
    return services


async def run(
    config: configuration.Config,
    *,
    config_path: Path | None,
    bus: EventBus,
    extra: Sequence[ServiceFactory] = (),
    restart_min_s: float = 1.0,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns its exit status.

    It holds the state folder's lock throughout. When another daemon holds it, this one
    touches nothing of that daemon's (children, sockets) and returns 1.
    """
    state_dir = config.daemon.state_dir
    try:
        held = instance.lock(state_dir)
    except instance.AlreadyRunning as err:
        _log.error("daemon_already_running", state_dir=str(state_dir), pid=err.pid)
        print(f"waltd: {err}", file=sys.stderr)
        return 1
    with held:
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
    state_dir = config.daemon.state_dir
    # Traversable but not listable: dnsmasq, once it drops to `nobody`, reads its own
    # folder inside.
    state_dir.chmod(0o711)
    records = state_dir / "children.json"
    await asyncio.to_thread(kill_recorded, records)
    ctx = Context(
        initial_config=config, bus=bus, children=Children(records), config_path=config_path
    )
    ctx.load_credentials()
    ctx.registry_cache = DigestCache(state_dir / "registry-cache")
    services = [make(ctx) for make in [*standard_services(config), *extra]]
    supervisor = Supervisor(
        config,
        services,
        children=ctx.children,
        config_path=config_path,
        restart_min_s=restart_min_s,
        reload_files=ctx.load_credentials,
    )
    ctx.supervisor = supervisor
    _log.info(
        "daemon_starting",
        config=str(config_path) if config_path else "<defaults>",
        node_network=config.walt_net.interface if config.walt_net else None,
    )
    if config.walt_net is None:
        _log.warning("no_node_network", detail="network.walt-net is not set: no DHCP is served")
    return await supervisor.run()
