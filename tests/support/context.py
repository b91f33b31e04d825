"""A daemon context for tests that run one service in the test's own event loop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from waltd import config as configuration
from waltd.context import Context, ServerSecrets
from waltd.db import Database
from waltd.events import EventBus
from waltd.images.locks import NameLocks
from waltd.images.repository import Repository
from waltd.node_events import NodeEvents
from waltd.process import Children
from waltd.provision.vnodes import VirtualNodes
from waltd.registries.sources import Registries
from waltd.supervisor import RunningConfig


def make_context(state_dir: Path, config: configuration.Config | None = None) -> Context:
    """The real handles on `state_dir` (the database made, not opened), as daemon.py builds
    them; the runtime folder is `state_dir/run`."""
    config = config or configuration.default_config()
    daemon = replace(config.daemon, state_dir=state_dir, run_dir=state_dir / "run")
    config = replace(config, daemon=daemon)
    running = RunningConfig(config, None)
    children = Children(daemon.run_dir / "children.json")
    nodes = NodeEvents()
    db = Database(state_dir / "waltd.db")
    return Context(
        running=running,
        bus=EventBus(),
        nodes=nodes,
        children=children,
        db=db,
        registries=Registries(None),
        repository=Repository(children, running),
        image_locks=NameLocks(),
        secrets=ServerSecrets(None),
        statuses={},
        vnodes=VirtualNodes(running, children, db, nodes),
    )
