"""Hostile configuration files: a FIFO, a huge file, deep nesting, thousands of registries.

Each is refused with a clear ConfigError (exit 78 at start, `config_reload_refused` on SIGHUP)
instead of hanging the daemon, exhausting its recursion or costing quadratic time.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import Daemon, remove, run_once, short_dir, walt, write_config
from waltd import config as configuration
from waltd import credentials

# Far past any nesting a configuration needs, and past Python's recursion limit.
DEEP = 5000
# Deep flow-style YAML: 10 KB of text, one list inside another DEEP times.
DEEP_TEXT = "[" * DEEP + "]" * DEEP + "\n"


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove(path)


def _secrets(folder: Path, text: str) -> Path:
    path = credentials.secrets_path(folder / "server.conf")
    path.write_text(text)
    path.chmod(0o600)
    return path


# --- not a regular file ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["server.conf", "server.secrets"])
def test_a_fifo_is_refused_at_start_without_blocking(folder: Path, name: str) -> None:
    """A FIFO with no writer blocked the daemon's start forever; now it exits 78 at once."""
    conf = write_config(folder)
    fifo = folder / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)
    # run_once bounds the start (TimeoutExpired rather than a hung suite).
    proc = run_once(conf)
    assert proc.returncode == configuration.EX_CONFIG, proc.stderr
    assert f"{fifo}: not a regular file (a FIFO); refused unread" in proc.stderr


# --- size -----------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A sparse 64 MiB file: reading it would cost time and memory; only its size is looked at."""
    size = 64 * configuration.MAX_FILE_SIZE
    conf, secrets = tmp_path / "server.conf", tmp_path / "server.secrets"
    for path in (conf, secrets):
        with path.open("wb") as file:
            file.truncate(size)
        path.chmod(0o600)
    limit = f"{size} bytes, over the limit of {configuration.MAX_FILE_SIZE}; refused unread"
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(conf)
    assert str(caught.value) == f"{conf}: {limit}"
    with pytest.raises(credentials.SecretsError) as caught:
        credentials.load(secrets)
    assert str(caught.value) == f"{secrets}: {limit}"


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    text = "registries: []\n"
    path = tmp_path / "server.conf"
    padding = "#" * (configuration.MAX_FILE_SIZE - len(text) - 1) + "\n"
    path.write_text(text + padding)
    assert configuration.load(path).registries == ()
    path.write_text(text + "#" + padding)
    with pytest.raises(configuration.ConfigError, match="over the limit"):
        configuration.load(path)


# --- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [DEEP_TEXT, "{a: " * DEEP + "}" * DEEP + "\n", "registries:\n- " + DEEP_TEXT],
    ids=["lists", "mappings", "in-registries"],
)
def test_deep_nesting_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "server.conf"
    path.write_text(text)
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(path)
    (problem,) = caught.value.problems
    assert problem.text == (
        f"nested deeper than {configuration.MAX_DEPTH} levels; a configuration needs a few"
    )
    assert problem.where.startswith("line 1, column ") or problem.where.startswith("line 2, ")


def test_deep_nesting_in_the_secrets_file_is_a_secrets_error(tmp_path: Path) -> None:
    path = _secrets(tmp_path, "local: " + DEEP_TEXT)
    with pytest.raises(credentials.SecretsError) as caught:
        credentials.load(path)
    assert "nested deeper than" in str(caught.value)


def test_nesting_is_bounded_at_max_depth(tmp_path: Path) -> None:
    path = tmp_path / "server.conf"
    depth = configuration.MAX_DEPTH
    path.write_text("[" * depth + "]" * depth)
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(path)
    # Read, then refused for what it holds: a list where a mapping belongs.
    assert "top level: must be a mapping" in str(caught.value)
    path.write_text("[" * (depth + 1) + "]" * (depth + 1))
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(path)
    assert str(caught.value) == (
        f"{path}: line 1, column {depth + 1}: nested deeper than {depth} levels; "
        "a configuration needs a few"
    )


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("images:\n  fetch-concurrency: " + "9" * 5000 + "\n", "line 2, column 22",
         "not a valid int value"),
        ("images: {retry-min-s: !!float x}\n", "line 1, column 23", "not a valid float value"),
        ("a: !!timestamp 2001-13-45\n", "line 1, column 4", "not a valid timestamp value"),
        ("a: !!set 11\n", "line 1, column 4", "expected a mapping node, but found scalar"),
    ],
)  # fmt: skip
def test_a_malformed_value_is_a_config_error(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    """PyYAML raises plain Python errors on these, which went up as tracebacks."""
    path = tmp_path / "server.conf"
    path.write_text(text)
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(path)
    assert str(caught.value) == f"{path}: {where}: YAML syntax error: {problem}"
    secrets = _secrets(tmp_path, text)
    with pytest.raises(credentials.SecretsError) as caught:
        credentials.load(secrets)
    # The position only: the value may be a password.
    assert str(caught.value) == f"{secrets}: {where}: YAML syntax error"


@pytest.mark.parametrize("name", ["server.conf", "server.secrets"])
def test_deep_nesting_exits_78_at_start(folder: Path, name: str) -> None:
    conf = write_config(folder)
    if name == "server.conf":
        conf.write_text(DEEP_TEXT)
    else:
        _secrets(folder, "local: " + DEEP_TEXT)
    proc = run_once(conf)
    assert proc.returncode == configuration.EX_CONFIG, proc.stderr
    assert f"{folder / name}: line 1, column " in proc.stderr
    assert "nested deeper than" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("name", ["server.conf", "server.secrets"])
def test_deep_nesting_on_sighup_is_refused_and_the_daemon_runs_on(folder: Path, name: str) -> None:
    conf = write_config(folder)
    daemon = Daemon(folder, conf)
    try:
        daemon.start()
        if name == "server.conf":
            conf.write_text(DEEP_TEXT)
        else:
            _secrets(folder, "local: " + DEEP_TEXT)
        daemon.signal(signal.SIGHUP)
        refused = daemon.wait_for(lambda record: record.get("event") == "config_reload_refused")
        assert f"{folder / name}: " in refused["error"]
        assert "nested deeper than" in refused["error"]
        status = walt(daemon.socket, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert [r["label"] for r in json.loads(status.stdout)["registries"]] == ["hub"]
        assert daemon.stop() == 0
        log = daemon.log_path.read_text()
        assert "Traceback" not in log and "RecursionError" not in log
    finally:
        daemon.kill()


# --- validation time ------------------------------------------------------------------------


def _many(count: int) -> str:
    """A file of `count` registries (every other one on a shared host) and `count` bad keys."""
    registries = [
        {
            "label": f"r{index}",
            "api": "docker-registry-v2",
            "host": "shared.example.org" if index % 2 else f"reg{index}.example.org",
        }
        for index in range(count)
    ]
    images = {f"unknown-{index}": index for index in range(count)}
    return yaml.safe_dump({"registries": registries, "images": images})


def _load_time(path: Path) -> tuple[float, int]:
    """The shortest of three loads (the least disturbed by the machine) and the problems found."""
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        with pytest.raises(configuration.ConfigError) as caught:
            configuration.load(path)
        best = min(best, time.perf_counter() - began)
    return best, len(caught.value.problems)


def test_validation_time_grows_linearly(tmp_path: Path) -> None:
    """4x the registries and keys cost about 4x the time; the quadratic checks cost 16x.

    Both sizes are measured in the same test on the same machine, so only the growth matters:
    8x leaves room for a noisy machine and still fails the quadratic duplicate checks.
    """
    small, large = tmp_path / "small.conf", tmp_path / "large.conf"
    small.write_text(_many(500))
    large.write_text(_many(2000))
    small_s, small_problems = _load_time(small)
    large_s, large_problems = _load_time(large)
    # Each shared-host entry but the first, and each unknown key, is one problem.
    assert (small_problems, large_problems) == (249 + 500, 999 + 2000)
    assert large_s < 8 * small_s, f"500 entries: {small_s:.3f} s, 2000: {large_s:.3f} s"
