"""What `walt-server-setup` does to the files, shared by its commands and its menu.

server.conf is handled as YAML data whose `registries` is a list of mappings, so that an entry
may be invalid while it is being edited; every change is validated as a whole with server.conf's
own rules (`validate`, `problems`) before `write` saves the server's logins, podman's registries
drop-in and server.conf, in that order. `check_connectivity` asks each registry's `/v2/`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from waltd import config as configuration
from waltd import credentials, names, podman_registries
from waltd.cli.terminal import table
from waltd.registries.base import Credentials

EX_CANTCREAT = 73
CHECK_TIMEOUT_S = 3.0

HUB_ENTRY: dict[str, Any] = {
    "label": "hub",
    "api": "docker-hub",
    "description": configuration.HUB_DESCRIPTION,
}
HUB_WARNING = (
    "Without the hub, new node models need their default image "
    "(waltplatform/<model>-default:latest) in another registry or in the docker daemon."
)
RELOAD_HINT = "A running daemon applies it on `systemctl reload waltd` (SIGHUP)."
_COLUMNS = ("Label", "API", "Address", "Protocol", "Auth", "Server login", "Description")


@dataclass(frozen=True)
class Files:
    """The files walt-server-setup reads and writes."""

    config: Path
    podman: Path

    @property
    def secrets(self) -> Path:
        """The server's logins, beside server.conf."""
        return credentials.secrets_path(self.config)


@dataclass
class Setup:
    """server.conf as YAML data (its `registries` a list of mappings) and the stored logins."""

    files: Files
    data: dict[str, Any]
    secrets: dict[str, Credentials]

    @property
    def registries(self) -> list[dict[str, Any]]:
        """The registry entries as they are in the file."""
        entries: list[dict[str, Any]] = self.data["registries"]
        return entries


def _registries_only(path: Path, error: configuration.ConfigError) -> dict[str, Any]:
    """The file's raw data when its only problems are in `registries` (which the editor fixes).

    Raises `error` otherwise (a file, YAML or duplicate-key problem is in no section).
    """
    if not all(problem.section == "registries" for problem in error.problems):
        raise error
    try:
        raw, _ = configuration.read_data(path)
    except configuration.ConfigError:
        raise error from None
    if not isinstance(raw, dict):
        raise error
    entries = raw.get("registries")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise error
    return raw


def read_setup(files: Files, *, tolerant: bool = False) -> Setup:
    """Read server.conf (its defaults when absent) and the logins.

    Raises ConfigError (SecretsError for the logins). With `tolerant`, a file whose problems are
    all in its registries is read as it is, for the editor to fix.
    """
    secrets = credentials.load(files.secrets)
    if not files.config.exists():
        return Setup(files, configuration.to_data(configuration.default_config()), secrets)
    try:
        data = configuration.to_data(configuration.load(files.config))
    except configuration.ConfigError as err:
        if not tolerant:
            raise
        data = _registries_only(files.config, err)
    return Setup(files, data, secrets)


def validate(setup: Setup, registries: Sequence[Mapping[str, Any]]) -> configuration.Config:
    """The configuration with these registries; ConfigError with server.conf's messages."""
    data = {**setup.data, "registries": [dict(entry) for entry in registries]}
    return configuration.parse(data, str(setup.files.config))


def problems(setup: Setup, registries: Sequence[Mapping[str, Any]]) -> list[configuration.Problem]:
    """What makes the configuration with these registries invalid (empty when valid)."""
    try:
        validate(setup, registries)
    except configuration.ConfigError as err:
        return err.problems
    return []


def entry_label(entry: Mapping[str, Any]) -> str:
    """The label of a raw entry as the menus show it."""
    if entry.get("api") == "docker-hub":
        return "hub"
    return str(entry.get("label", "?"))


def _logins_kept(
    config: configuration.Config, secrets: Mapping[str, Credentials]
) -> dict[str, Credentials]:
    """The logins of registries that use one: a removed registry's password does not linger."""
    return {
        registry.label: secrets[registry.label]
        for registry in config.registries
        if registry.label in secrets and registry.takes_login
    }


def write(files: Files, config: configuration.Config, secrets: Mapping[str, Credentials]) -> None:
    """Write the logins, podman's drop-in, then server.conf (what the daemon reads) last."""
    files.config.parent.mkdir(parents=True, exist_ok=True)
    kept = _logins_kept(config, secrets)
    if kept or files.secrets.exists():
        credentials.save(files.secrets, kept)
    podman_registries.write(files.podman, config)
    configuration.save(files.config, config)


def after_save(files: Files, reload_pid: int | None) -> None:
    """Say what was written and how the daemon picks it up; send SIGHUP when asked."""
    written = [files.config, files.podman]
    if files.secrets.exists():
        written.insert(1, files.secrets)
    print(f"Saved: {', '.join(map(str, written))}.")
    if reload_pid is None:
        print(RELOAD_HINT)
        return
    try:
        os.kill(reload_pid, signal.SIGHUP)
    except OSError as err:
        print(f"Could not signal process {reload_pid}: {err.strerror}. {RELOAD_HINT}")
    else:
        print(f"Sent SIGHUP to process {reload_pid}: the daemon reloads its configuration.")


def address(entry: Mapping[str, Any]) -> str:
    """Where a raw entry points: `https://host:port`, Artifactory's repository after it."""
    if entry.get("api") == "docker-hub":
        return "hub.docker.com"
    host, port = entry.get("host"), entry.get("port", 443)
    if not isinstance(host, str) or not isinstance(port, int):
        return "?"
    scheme = "http" if entry.get("protocol") == "http" else "https"
    repository = f"/{entry['repository']}" if entry.get("repository") else ""
    return f"{scheme}://{names.host_port(host, port)}{repository}"


def _login_column(entry: Mapping[str, Any], login: Credentials | None) -> str:
    if entry.get("api") == "docker-hub":
        return login.username if login else "anonymous"
    if entry.get("auth", "none") != "basic":
        return "-"
    return login.username if login else "none (users log in)"


def registry_table(rows: Sequence[tuple[Mapping[str, Any], Credentials | None]]) -> str:
    """A table of raw entries with the server's login of each (never a password)."""
    cells = []
    for entry, login in rows:
        hub = entry.get("api") == "docker-hub"
        cells.append(
            (
                entry_label(entry),
                str(entry.get("api", "?")),
                address(entry),
                "https" if hub else str(entry.get("protocol", "https")),
                "-" if hub else str(entry.get("auth", "none")),
                _login_column(entry, login),
                str(entry.get("description", "")),
            )
        )
    # An entry being fixed may hold any text: the table escapes what a terminal would obey.
    return table(cells, _COLUMNS)


@dataclass(frozen=True)
class Reachability:
    """The outcome of one registry's connectivity check."""

    label: str
    url: str
    problem: str | None

    def line(self) -> str:
        """One line for the operator."""
        if self.problem is None:
            return f"{self.label}: {self.url} answers."
        return f"WARNING: {self.label}: {self.url}: {self.problem}"


async def _probe(
    session: aiohttp.ClientSession, registry: configuration.Registry, login: Credentials | None
) -> Reachability:
    assert registry.host is not None and registry.port is not None
    scheme = "http" if registry.protocol == "http" else "https"
    url = f"{scheme}://{names.host_port(registry.host, registry.port)}/v2/"
    headers = {}
    if login is not None:
        token = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        async with session.get(
            url,
            headers=headers,
            # False: no certificate check; True: aiohttp's default, verified.
            ssl=False if registry.protocol == "https-no-verify" else True,
            allow_redirects=False,
        ) as response:
            status = response.status
            challenge = response.headers.get("WWW-Authenticate", "")
    except TimeoutError:
        return Reachability(registry.label, url, f"no answer within {CHECK_TIMEOUT_S:g} s")
    except aiohttp.ClientConnectorError as err:
        if isinstance(err.os_error, ConnectionRefusedError):
            reason = "connection refused (nothing listens there)"
        else:
            reason = err.os_error.strerror or str(err.os_error)
        return Reachability(registry.label, url, f"cannot connect: {reason}")
    except aiohttp.ClientError as err:
        return Reachability(registry.label, url, f"failed: {type(err).__name__}: {err}")
    if status == 200:
        return Reachability(registry.label, url, None)
    if status == 401:
        if login is not None and challenge.lower().startswith("basic"):
            return Reachability(
                registry.label,
                url,
                f"refused the server's login (user {login.username}); check the user name "
                "and the password",
            )
        return Reachability(registry.label, url, None)
    return Reachability(
        registry.label, url, f"answered HTTP {status}, where a registry answers 200 or 401"
    )


async def _check_all(
    registries: Sequence[configuration.Registry], secrets: Mapping[str, Credentials]
) -> list[Reachability]:
    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(
            *(_probe(session, registry, secrets.get(registry.label)) for registry in registries)
        )


def check_connectivity(
    config: configuration.Config,
    secrets: Mapping[str, Credentials],
    labels: Sequence[str] | None = None,
) -> list[Reachability]:
    """GET `/v2/` of each registry (those of `labels` only, when given), concurrently.

    200 and 401 mean a registry answers; with a stored login for a registry that asks for
    Basic authentication, a 401 means the login was refused. Docker Hub is not checked.
    """
    chosen = [
        registry
        for registry in config.registries
        if registry.api != "docker-hub" and (labels is None or registry.label in labels)
    ]
    if not chosen:
        return []
    return asyncio.run(_check_all(chosen, secrets))
