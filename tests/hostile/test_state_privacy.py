"""The daemon's state is private: other users can neither list its folder nor read a file
in it (nodes, the event spool, caches, child records). dnsmasq's own folder is the one
exception: dnsmasq reads it after dropping to `nobody`, and it holds what the node network
shows anyway (addresses and names of nodes). What lies inside a folder others cannot enter
(the container tools' 0700 folder, where podman makes some of its files 0644) is out of
their reach whatever its own mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, Daemon, remove, short_dir, spool_of, walt, write_config
from waltd import dhcp_event


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove(path)


def _reachable(path: Path, top: Path) -> bool:
    """Whether users other than the owner may enter every folder from `top` (excluded) down
    to `path`'s parent."""
    folder = path.parent
    while folder != top:
        if not stat.S_IMODE(folder.stat().st_mode) & 0o011:
            return False
        folder = folder.parent
    return True


def test_no_state_file_is_readable_by_other_users(folder: Path) -> None:
    # a permissive umask, as a shell or a service manager may give
    old = os.umask(0o022)
    try:
        d = Daemon(folder, write_config(folder), env={"PYTHONPATH": str(ROOT)}).start()
    finally:
        os.umask(old)
    try:
        event = dhcp_event.build_event(
            ["add", "52:54:00:00:00:01", "10.0.0.2"], {"DNSMASQ_VENDOR_CLASS": "walt.node.x"}
        )
        dhcp_event.spool(dhcp_event.encode(event), str(spool_of(folder)))
        d.wait_for(lambda e: e.get("event") == "node.detected")
        assert '"nodes": 1' in walt(d.socket, "status", "--json").stdout
        exposed = []
        files = 0
        # the state folder and the runtime one (the spool, the children's record)
        for top in (folder / "state", folder / "run"):
            assert stat.S_IMODE(top.stat().st_mode) == 0o711  # traversable, not listable
            for path in top.rglob("*"):
                # dnsmasq's folders are readable on purpose: it reads them as `nobody`
                if path.is_relative_to(top / "dnsmasq") or not _reachable(path, top):
                    continue
                files += 1
                mode = stat.S_IMODE(path.lstat().st_mode)
                if mode & 0o077 and not path.is_socket():
                    exposed.append(f"{path.relative_to(folder)} {mode:o}")
                if path.is_socket() and mode & 0o077:
                    exposed.append(f"{path.relative_to(folder)} (socket) {mode:o}")
        assert files >= 5  # the database, its journal, the spool, the children's record
        assert exposed == []
        assert d.stop() == 0
    finally:
        d.kill()
