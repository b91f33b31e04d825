"""The server's secrets file: mode 0600, atomic writes, refusal of a file others may read."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import yaml

from tests.support.faults import file_size_limit
from waltd import credentials
from waltd.config import ConfigError
from waltd.registries.base import Credentials

PASSWORD = "pa:ss word#1 'quoted' \"and\" more"


def _dump(data: object) -> str:
    return yaml.safe_dump(data)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_path_is_beside_server_conf(tmp_path: Path) -> None:
    assert credentials.secrets_path(tmp_path / "server.conf") == tmp_path / "server.secrets"


def test_absent_file_holds_no_login(tmp_path: Path) -> None:
    assert credentials.load(tmp_path / "server.secrets") == {}


def test_round_trip_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "server.secrets"
    logins = {"local": Credentials("alice", PASSWORD), "hub": Credentials("bob", "0123")}
    old = os.umask(0)
    try:
        credentials.save(path, logins)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert credentials.load(path) == logins
    # Only the file itself: the temporary file was renamed, not left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.secrets"]


def test_replacing_keeps_0600_and_leaves_no_old_login(tmp_path: Path) -> None:
    path = tmp_path / "server.secrets"
    credentials.save(path, {"local": Credentials("alice", "one")})
    path.chmod(0o400)  # an operator's chmod: the secrets stay 0600 after the next save
    credentials.save(path, {"other": Credentials("carol", "two")})
    assert credentials.load(path) == {"other": Credentials("carol", "two")}
    assert _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.secrets"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620])
def test_file_others_may_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "server.secrets"
    credentials.save(path, {"local": Credentials("alice", PASSWORD)})
    path.chmod(mode)
    with pytest.raises(credentials.SecretsError) as caught:
        credentials.load(path)
    text = str(caught.value)
    assert f"chmod 600 {path}" in text and f"{mode:04o}" in text
    assert PASSWORD not in text
    # The daemon treats it like an invalid server.conf (exit 78).
    assert isinstance(caught.value, ConfigError)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"local:\n  username: alice\n  password: {PASSWORD}\n  extra: [\n", "YAML syntax error"),
        (_dump({"local": {"username": "a", "password": PASSWORD, "x": 1}}), "exactly username"),
        ("local: {username: alice, password: 1234}\n", "key 'password': must be"),
        (_dump({"local": {"username": "a:b", "password": PASSWORD}}), "key 'username': must be"),
        (_dump({"Local": {"username": "alice", "password": PASSWORD}}), "not a registry label"),
        (f"- {PASSWORD}\n", "must be a mapping"),
    ],
)
def test_malformed_file_never_shows_a_password(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "server.secrets"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(credentials.SecretsError) as caught:
        credentials.load(path)
    assert expected in str(caught.value)
    assert PASSWORD not in str(caught.value) and "1234" not in str(caught.value)


def test_password_not_in_repr() -> None:
    assert PASSWORD not in repr(Credentials("alice", PASSWORD))


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    """The write fails for real, as on a full disk (EFBIG past a file size limit)."""
    path = tmp_path / "server.secrets"
    credentials.save(path, {"local": Credentials("alice", "old")})
    with file_size_limit(8), pytest.raises(OSError) as caught:
        credentials.save(path, {"local": Credentials("alice", "new")})
    assert caught.value.errno == errno.EFBIG
    assert credentials.load(path) == {"local": Credentials("alice", "old")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.secrets"]
