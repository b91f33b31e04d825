"""What the daemon's services share: typed handles, built once by the composition root.

`daemon.py` builds every handle before any service starts and services only use them: the
database is opened and closed by its service but is always the same object, the registry
sources of the running configuration are replaced inside their holder on reload, and node
events go through their channel. Nothing here imports a service.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from waltd import config as configuration
from waltd import credentials, log
from waltd.db import Database
from waltd.events import EventBus
from waltd.images.locks import NameLocks
from waltd.images.repository import Repository
from waltd.node_events import NodeEvents
from waltd.process import Children
from waltd.provision.nfs import NfsExports
from waltd.provision.vnodes import VirtualNodes
from waltd.registries.base import Credentials
from waltd.registries.sources import Registries
from waltd.supervisor import RunningConfig, ServiceStatus


class ServerSecrets:
    """The server's own registry logins (server.secrets beside server.conf)."""

    def __init__(self, config_path: Path | None) -> None:
        self._path = credentials.secrets_path(config_path) if config_path else None
        self.logins: dict[str, Credentials] = {}

    def load(self) -> None:
        """(Re)read the file; ConfigError when unusable (the old logins stay)."""
        if self._path is None:
            return
        new = credentials.load(self._path)
        for old in self.logins.values():
            log.redactor.forget(old.password)
        for login in new.values():
            log.redactor.register(login.password)
        self.logins = new


@dataclass(frozen=True)
class Context:
    """The handles services share; frozen: services use them, never replace them."""

    running: RunningConfig
    bus: EventBus
    nodes: NodeEvents
    children: Children
    db: Database
    registries: Registries
    repository: Repository
    # One lock per image name: two operations on one name run one after the other.
    image_locks: NameLocks
    secrets: ServerSecrets
    # Each service's status by name, kept by the supervisor (what `walt status` shows).
    statuses: Mapping[str, ServiceStatus]
    # The virtual nodes (QEMU); their service runs them only with a node network.
    vnodes: VirtualNodes
    # The NFS exports of nodes, applied to the server `exports.nfs` names (NfsService).
    exporter: NfsExports = field(default_factory=NfsExports)
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def config(self) -> configuration.Config:
        """The running configuration (it changes on reload)."""
        return self.running.current

    @property
    def state_dir(self) -> Path:
        """The folder for the database, dnsmasq's leases, caches and records."""
        return self.running.current.daemon.state_dir

    @property
    def run_dir(self) -> Path:
        """The folder for what a reboot forgets: dnsmasq's configuration and host entries,
        the lease-event spool, the record of child processes, the node layout's changing
        folders."""
        return self.running.current.daemon.run_dir
