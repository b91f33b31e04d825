"""Hostile image names given to `walt image rename/duplicate/remove/squash`: each refused by
the daemon with a message saying what is allowed; nothing in storage changes and the daemon
goes on. A real daemon with its own podman storage; `walt` run as root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, walt, write_config
from tests.support.store_images import build, repository_at, storage_folder
from waltd.images import store
from waltd.images.store import LocalRef
from waltd.names import InvalidName

# (name, what the refusal says): the rule, not only that it is wrong
HOSTILE = [
    ("../x", "invalid user '..' in image name '../x': use lower-case letters, digits and '-'"),
    ("x" * 300, "at most 128 characters are allowed"),
    ("u" * 33 + "/x", "at most 32 characters are allowed"),
    ("my image", "invalid image name 'my image': use lower-case letters, digits and '-'"),
    ("a;rm -rf /", "use lower-case letters, digits and '-' (not first or last)"),
    ("a\nb", "invalid image name 'a\\nb': use lower-case letters, digits and '-'"),
    ("nowhere:bob/x", "a location ('nowhere') belongs in a clone URL (walt image clone)"),
    ("-rf", "use lower-case letters, digits and '-' (not first or last)"),
    ("a:b:c", "at most one ':tag' is allowed"),
    ("a/b/c", "at most one '/' is allowed (<user>/<name>[:<tag>])"),
    ("default", "it is reserved for the default images of node models"),
    ("Upper", "use lower-case letters, digits and '-'"),
    ("a:.tag", "use lower-case letters, digits, '.', '_' and '-' (not '.' or '-' first)"),
]


@pytest.mark.parametrize(("name", "says"), HOSTILE)
def test_the_grammar_says_what_is_allowed(name: str, says: str) -> None:
    with pytest.raises(InvalidName) as refused:
        LocalRef.parse(name, "alice")
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.fixture
def folder() -> Iterator[Path]:
    with storage_folder() as path:
        yield path


async def test_the_daemon_refuses_hostile_names_and_goes_on(folder: Path) -> None:
    config = write_config(
        folder, registries=[], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    repo = repository_at(folder)
    mine = LocalRef("root", "good")
    image_id = await build(repo, mine)
    daemon = Daemon(folder, config).start()
    try:
        for name, says in HOSTILE:
            commands = [
                ("rename", "good", name),
                ("rename", name, "other"),
                ("duplicate", "good", name),
                ("remove", name),
                ("squash", name),
            ]
            for command in commands:
                res = walt(daemon.socket, "image", command[0], "--", *command[1:])
                assert res.returncode == 1, (command, res.stdout)
                assert says in res.stderr, (command, res.stderr)
                assert res.stderr.count("\n") == 1  # one line: a newline in a name is escaped
        assert [i.ref for i in await store.list_images(repo)] == [mine]
        kept = await store.get(repo, mine)
        assert kept is not None and kept.id == image_id
        assert walt(daemon.socket, "status").returncode == 0
        assert daemon.stop() == 0
    finally:
        daemon.kill()
