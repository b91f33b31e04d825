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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from waltd import config as configuration
from waltd import credentials, podman_registries
from waltd.cli.registry_setup import (
    EX_CANTCREAT,
    HUB_ENTRY,
    HUB_WARNING,
    Files,
    Setup,
    after_save,
    check_connectivity,
    entry_label,
    read_setup,
    registry_table,
    validate,
    write,
)
from waltd.registries.base import Credentials

EX_USAGE = 2
EX_NOT_FOUND = 1


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
    print(registry_table(rows))
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
