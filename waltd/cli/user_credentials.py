"""A user's registry logins for the `walt` client: ~/.walt/config, else a prompt.

They travel with the one request that needs them and are never stored by the server.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from waltd.api.wire import Login, RegistryInfo


class CredentialsError(Exception):
    """An unusable ~/.walt/config."""


def config_path() -> Path:
    """The user's client configuration file."""
    return Path(os.environ.get("WALT_CLIENT_CONFIG") or Path.home() / ".walt" / "config")


def load(path: Path | None = None) -> dict[str, Login]:
    """Logins by registry label from the `registries` mapping of the client config."""
    path = path or config_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise CredentialsError(f"{path}: other users may read it; fix it with: chmod 600 {path}")
    # imported here: most `walt` commands of a user without the file never need it, and every
    # command pays for its imports at start
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raise CredentialsError(f"{path}: not a readable YAML file") from None
    regs = data.get("registries", {}) if isinstance(data, dict) else None
    if not isinstance(regs, dict):
        raise CredentialsError(f"{path}: 'registries' must map labels to username and password")
    out = {}
    for label, entry in regs.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("username"), str)
            or not isinstance(entry.get("password"), str)
        ):
            raise CredentialsError(
                f"{path}: registries entry {str(label)!r} needs a username "
                "and a password (quoted strings)"
            )
        out[str(label)] = Login(entry["username"], entry["password"])
    return out


def for_registries(registries: Sequence[RegistryInfo]) -> dict[str, Login]:
    """Logins for the registries that want one: from the file, else asked on a terminal."""
    known = load()
    wanted = {r.label for r in registries if r.auth == "basic"}
    creds = {label: known[label] for label in wanted if label in known}
    if sys.stdin.isatty():
        for label in sorted(wanted - creds.keys()):
            user = input(f"Login for registry {label} (empty to skip it): ").strip()
            if user:
                creds[label] = Login(user, getpass.getpass("Password: "))
    configured = {r.label for r in registries}
    if "hub" in configured and "hub" in known:
        creds.setdefault("hub", known["hub"])  # optional on the hub: sent when the user has one
    return creds
