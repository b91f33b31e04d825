"""`walt-server-setup`: the operator's configuration tool.

    walt-server-setup check                  validate server.conf
    walt-server-setup --edit-conf            the interactive registry menu (needs a terminal)
    walt-server-setup registry list          the registries and the server's login for each
    walt-server-setup registry add ...       add a docker-registry-v2 or jfrog-artifactory entry
    walt-server-setup registry remove LABEL  remove an entry and its stored login
    walt-server-setup enable-hub|disable-hub put the Docker Hub entry back (first) or remove it

A change is validated as a whole first: when the result would be invalid, the messages are
server.conf's own, nothing is written and the exit status is 78 (EX_CONFIG). Then three files
are written, each atomically: the server's logins (`server.secrets` beside server.conf, mode
0600), podman's registries drop-in (`--podman-registries`, $WALTD_PODMAN_REGISTRIES, or
/etc/containers/registries.conf.d/waltd.conf), and server.conf last, the file the daemon reads.
A running daemon applies the change on SIGHUP: `systemctl reload waltd`, or `--reload-pid PID`.
Other exit statuses: 1 no such registry, 2 usage (or --edit-conf without a terminal), 73 a file
could not be written.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from waltd import config as configuration
from waltd import credentials, podman_registries
from waltd.registries.base import Credentials

EX_USAGE = 2
EX_NOT_FOUND = 1
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

    Raises `error` otherwise (a YAML or duplicate-key problem names a line, not `registries`).
    """
    if not all(message.startswith(f"{path}: registries") for message in error.messages):
        raise error
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
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


def problems(setup: Setup, registries: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes the configuration with these registries invalid (empty when valid)."""
    try:
        validate(setup, registries)
    except configuration.ConfigError as err:
        return err.messages
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
        if registry.label in secrets and (registry.api == "docker-hub" or registry.auth == "basic")
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
    return f"{scheme}://{podman_registries.location(host, port)}{repository}"


def _login_column(entry: Mapping[str, Any], login: Credentials | None) -> str:
    if entry.get("api") == "docker-hub":
        return login.username if login else "anonymous"
    if entry.get("auth", "none") != "basic":
        return "-"
    return login.username if login else "none (users log in)"


def registry_table(rows: Sequence[tuple[Mapping[str, Any], Credentials | None]]) -> list[str]:
    """Aligned lines describing raw entries with the server's login of each (never a password)."""
    table = [("Label", "API", "Address", "Protocol", "Auth", "Server login", "Description")]
    for entry, login in rows:
        hub = entry.get("api") == "docker-hub"
        table.append(
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
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


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
    url = f"{scheme}://{podman_registries.location(registry.host, registry.port)}/v2/"
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


def _fail(err: configuration.ConfigError) -> int:
    print(err, file=sys.stderr)
    return configuration.EX_CONFIG


def _check(path: Path) -> int:
    try:
        config = configuration.load(path)
    except configuration.ConfigError as err:
        return _fail(err)
    net = config.walt_net
    print(f"{path}: valid")
    print(f"  node network: {f'{net.interface} {net.ip}' if net else 'none (no DHCP served)'}")
    labels = ", ".join(r.label for r in config.registries) or "none"
    print(f"  registries: {labels}")
    return 0


def _commit(
    setup: Setup,
    registries: Sequence[Mapping[str, Any]],
    secrets: Mapping[str, Credentials],
    args: argparse.Namespace,
    check: Sequence[str] = (),
) -> int:
    """Validate, check the connectivity of the `check` labels, write, and report."""
    try:
        config = validate(setup, registries)
    except configuration.ConfigError as err:
        print("Nothing written: the result would be invalid.", file=sys.stderr)
        return _fail(err)
    if check:
        for result in check_connectivity(config, secrets, check):
            if result.problem is not None:
                print(result.line(), file=sys.stderr)
    try:
        write(setup.files, config, secrets)
    except OSError as err:
        print(f"Cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    after_save(setup.files, args.reload_pid)
    return 0


def _registry_list(setup: Setup) -> int:
    if not setup.files.config.exists():
        print(f"{setup.files.config} does not exist: the defaults apply.")
    rows = [(entry, setup.secrets.get(entry_label(entry))) for entry in setup.registries]
    for line in registry_table(rows):
        print(line)
    return 0


def _read_password() -> str:
    """The password on standard input, without its line end (as `docker login` reads it)."""
    return sys.stdin.read().rstrip("\r\n")


def _registry_add(setup: Setup, args: argparse.Namespace) -> int:
    if args.auth == "none" and args.username is not None:
        print("--username applies to --auth basic only.", file=sys.stderr)
        return EX_USAGE
    if args.password_stdin != (args.username is not None):
        print("--username and --password-stdin go together.", file=sys.stderr)
        return EX_USAGE
    if args.username is not None and (problem := credentials.username_problem(args.username)):
        print(f"--username: {problem}", file=sys.stderr)
        return EX_USAGE
    entry: dict[str, Any] = {"label": args.label, "api": args.api}
    if args.description is not None:
        entry["description"] = args.description
    entry |= {"host": args.host, "port": args.port, "protocol": args.protocol, "auth": args.auth}
    if args.repository is not None:
        entry["repository"] = args.repository
    secrets = dict(setup.secrets)
    if args.username is not None:
        password = _read_password()
        if not password:
            print("No password on standard input.", file=sys.stderr)
            return EX_USAGE
        secrets[args.label] = Credentials(args.username, password)
    else:
        # A new entry starts without the login a previous one of that label may have left.
        secrets.pop(args.label, None)
    check = () if args.no_check else (args.label,)
    return _commit(setup, [*setup.registries, entry], secrets, args, check)


def _remove(setup: Setup, label: str, args: argparse.Namespace) -> int:
    kept = [entry for entry in setup.registries if entry_label(entry) != label]
    if len(kept) == len(setup.registries):
        labels = ", ".join(entry_label(entry) for entry in setup.registries) or "none"
        print(f"No registry labelled {label!r}; registries: {labels}.", file=sys.stderr)
        return EX_NOT_FOUND
    if label == "hub":
        print(f"Disabling the hub. {HUB_WARNING}")
    secrets = {key: value for key, value in setup.secrets.items() if key != label}
    return _commit(setup, kept, secrets, args)


def _enable_hub(setup: Setup, args: argparse.Namespace) -> int:
    if any(entry.get("api") == "docker-hub" for entry in setup.registries):
        print("The hub is already enabled.")
        return 0
    # First: default images are looked up in configuration order, the hub first by default.
    return _commit(setup, [dict(HUB_ENTRY), *setup.registries], setup.secrets, args)


def _disable_hub(setup: Setup, args: argparse.Namespace) -> int:
    if not any(entry.get("api") == "docker-hub" for entry in setup.registries):
        print("The hub is already disabled.")
        return 0
    return _remove(setup, "hub", args)


def _edit_conf(files: Files, reload_pid: int | None) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "walt-server-setup --edit-conf is an interactive menu and needs a terminal. "
            "Without one, use: walt-server-setup registry list|add|remove, enable-hub, "
            "disable-hub.",
            file=sys.stderr,
        )
        return EX_USAGE
    # Imported here: the menu library loads only when the menu runs.
    from waltd.cli import editor

    return editor.run(files, reload_pid)


def _pid(text: str) -> int:
    pid = int(text)
    if pid <= 1:
        raise argparse.ArgumentTypeError("a daemon's process id is above 1")
    return pid


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The file options; sub-commands accept them too, without overriding what came before."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        type=Path,
        default=default(configuration.DEFAULT_PATH),
        help=f"server.conf (default {configuration.DEFAULT_PATH}); the secrets file is "
        f"{credentials.SECRETS_NAME} beside it",
    )
    parser.add_argument(
        "--podman-registries",
        type=Path,
        default=default(None),
        metavar="PATH",
        help=f"podman's registries drop-in to regenerate (default ${podman_registries.ENV_VAR} "
        f"or {podman_registries.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--reload-pid",
        type=_pid,
        default=default(None),
        metavar="PID",
        help="send SIGHUP to this daemon process after saving",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="walt-server-setup",
        description="Check and edit the WalT server configuration.",
        epilog="Without a command, --edit-conf runs the interactive menu.",
    )
    _add_common(parser, defaults=True)
    parser.add_argument(
        "--edit-conf", action="store_true", help="edit the registries in an interactive menu"
    )
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("check", parents=[common], help="validate the configuration file")
    registry = commands.add_parser("registry", parents=[common], help="list, add or remove")
    actions = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", parents=[common], help="the registries and the server's logins")
    add = actions.add_parser("add", parents=[common], help="add a registry")
    add.add_argument("--label", required=True)
    add.add_argument("--api", required=True, choices=("docker-registry-v2", "jfrog-artifactory"))
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, default=443)
    add.add_argument("--protocol", choices=("https", "http", "https-no-verify"), default="https")
    add.add_argument("--auth", choices=("basic", "none"), default="basic")
    add.add_argument("--username", help="the server's own login (with --password-stdin)")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the login's password on stdin"
    )
    add.add_argument("--repository", help="the Artifactory repository (jfrog-artifactory)")
    add.add_argument("--description", help="at most 35 characters")
    add.add_argument(
        "--no-check", action="store_true", help="skip the connectivity check (a warning only)"
    )
    remove = actions.add_parser("remove", parents=[common], help="remove a registry")
    remove.add_argument("label")
    commands.add_parser("enable-hub", parents=[common], help="put Docker Hub back, first")
    commands.add_parser("disable-hub", parents=[common], help="remove Docker Hub")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `walt-server-setup`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.edit_conf == (args.command is not None):
        parser.error("give either --edit-conf or a command")
    files = Files(args.config, args.podman_registries or podman_registries.default_path())
    if args.edit_conf:
        return _edit_conf(files, args.reload_pid)
    if args.command == "check":
        return _check(args.config)
    try:
        setup = read_setup(files)
    except configuration.ConfigError as err:
        return _fail(err)
    if args.command == "enable-hub":
        return _enable_hub(setup, args)
    if args.command == "disable-hub":
        return _disable_hub(setup, args)
    if args.action == "list":
        return _registry_list(setup)
    if args.action == "add":
        return _registry_add(setup, args)
    return _remove(setup, args.label, args)


if __name__ == "__main__":
    sys.exit(main())
