"""The repository's tool configuration (pure renderers) and its files on disk."""

from __future__ import annotations

import stat
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waltd import config as configuration
from waltd.images.storage import Storage, render_containers_conf, render_storage_conf, toml_str

ROOT = Path("/srv/walt")


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_toml_strings_round_trip(text: str) -> None:
    assert tomllib.loads(f"key = {toml_str(text)}") == {"key": text}


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        toml_str("/srv/\udcff")


def test_storage_conf() -> None:
    conf = tomllib.loads(render_storage_conf(ROOT / "storage", ROOT / "run"))
    assert conf == {
        "storage": {"driver": "overlay", "graphroot": f"{ROOT}/storage", "runroot": f"{ROOT}/run"}
    }


def test_containers_conf() -> None:
    conf = tomllib.loads(render_containers_conf(ROOT / "tmp"))
    assert conf["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=4096:4096"]
    engine = conf["engine"]
    assert engine["runtime"] == "runc" and engine["cgroup_manager"] == "cgroupfs"
    assert engine["tmp_dir"].startswith(f"{ROOT}/tmp/")
    assert engine["events_logger"] == "file"
    assert conf["network"]["network_config_dir"].startswith(f"{ROOT}/tmp/")


def test_prepare_writes_private_files_naming_the_configured_storage(tmp_path: Path) -> None:
    """The tools read only these files (the environment names them): the storage root of
    server.conf, the insecure registries of server.conf, and an empty auth file."""
    config = configuration.default_config()
    registry = configuration.Registry(
        "local", "docker-registry-v2", "lab registry", "127.0.0.1", 5000, "http"
    )
    daemon = replace(config.daemon, state_dir=tmp_path / "state", image_storage=tmp_path / "img")
    config = replace(config, daemon=daemon, registries=(registry,))
    storage = Storage.of(config)
    storage.prepare(config)
    env = storage.env()
    conf = tomllib.loads(Path(env["CONTAINERS_STORAGE_CONF"]).read_text())
    assert conf["storage"]["graphroot"] == str(tmp_path / "img")
    registries = tomllib.loads(Path(env["CONTAINERS_REGISTRIES_CONF"]).read_text())
    assert registries["registry"] == [{"location": "127.0.0.1:5000", "insecure": True}]
    assert Path(env["REGISTRY_AUTH_FILE"]).read_text() == '{"auths": {}}'
    for name in ("storage.conf", "containers.conf", "registries.conf", "auth.json"):
        assert stat.S_IMODE((storage.folder / name).stat().st_mode) == 0o600
