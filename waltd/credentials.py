"""The server's own registry logins: `server.secrets`, beside server.conf, mode 0600.

These are the credentials the daemon uses for what it does by itself (default images); a user's
operations use that user's credentials, never these. `walt-server-setup` writes the file; an
operator may edit it by hand too. It is YAML, one entry per registry label:

    local:
      username: alice
      password: "the password"

`hub` holds an optional Docker Hub login. The file is created 0600 before anything is written and
replaced atomically. One that other users may read (or change) is refused, with the command that
fixes it: a password readable by every local user is a leak to report, not to use. No password
ever reaches a message, a log line or a command line.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

import yaml

from waltd import names
from waltd.atomic import write_atomic
from waltd.config import ConfigError, Problem
from waltd.config.files import TooDeep, Unreadable, load_yaml, position, read_bounded
from waltd.registries.base import Credentials

SECRETS_NAME = "server.secrets"
MODE = 0o600

_HEADER = (
    "# Registry logins of the WalT server, written by walt-server-setup.\n"
    "# Keep this file mode 0600: the server refuses it otherwise.\n"
)


class SecretsError(ConfigError):
    """An unusable secrets file; like a bad server.conf, the daemon exits with EX_CONFIG."""


def _error(path: Path, text: str, where: str = "", key: str | None = None) -> SecretsError:
    """One problem of the file; `text` never holds a value, which may be a password."""
    return SecretsError([Problem(str(path), None, where, key, text)])


def secrets_path(config_path: Path) -> Path:
    """The secrets file that goes with a server.conf: `server.secrets` in the same folder."""
    return config_path.parent / SECRETS_NAME


def _read(path: Path) -> bytes | None:
    """The file's bytes (None when absent), after checking who may read it."""
    try:
        data, info = read_bounded(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _error(path, f"cannot read it: {err.strerror or err}") from err
    except Unreadable as err:
        raise _error(path, str(err)) from err
    # The mode of the file actually read, not of whatever the name pointed to before.
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise _error(
            path,
            f"mode {mode:04o} lets other users read or change the passwords it holds; refused. "
            f"Fix it with: chmod 600 {path} (and change the passwords if others may have read "
            "them)",
        )
    return data


def username_problem(username: str) -> str | None:
    """Why a registry user name cannot be stored (Basic authentication joins it with ':')."""
    if not username or ":" in username or not username.isprintable():
        return "a user name is one line of text, not empty and without ':'"
    return None


def _entry(path: Path, label: object, value: object) -> tuple[str, Credentials]:
    """One checked entry; messages never show a value, which may be a password."""
    if not isinstance(label, str) or not names.is_label(label):
        raise _error(path, "a key is not a registry label; use lower-case letters, digits and '-'")
    where = f"entry {label!r}"
    if not isinstance(value, dict) or set(value) != {"username", "password"}:
        raise _error(path, "must be a mapping with exactly username and password", where)
    username, password = value["username"], value["password"]
    if not isinstance(username, str) or username_problem(username):
        raise _error(path, "must be a non-empty string without ':'; quote it", where, "username")
    if not isinstance(password, str) or not password:
        # A password that YAML read as a number would be altered (0123 is octal).
        raise _error(path, "must be a non-empty string; quote it", where, "password")
    return label, Credentials(username, password)


def load(path: Path) -> dict[str, Credentials]:
    """The logins by registry label; an absent file holds none.

    Raises SecretsError when other users may read or change the file, or it is not a mapping
    of label to username and password.
    """
    raw = _read(path)
    if raw is None:
        return {}
    try:
        # Duplicate keys are not refused here: the last login of a label is the one kept.
        data, _ = load_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise _error(path, f"not UTF-8 text (byte {err.start})") from None
    except TooDeep as err:
        raise _error(path, f"{err.problem}; a secrets file needs 2", position(err)) from None
    except yaml.MarkedYAMLError as err:
        # Only the position: PyYAML's own text may quote the line, which may be a password.
        raise _error(path, "YAML syntax error", position(err)) from None
    except yaml.YAMLError:
        raise _error(path, "not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _error(path, "must be a mapping of registry label to login")
    return dict(_entry(path, label, value) for label, value in data.items())


def save(path: Path, secrets: Mapping[str, Credentials]) -> None:
    """Write the logins atomically, mode 0600 from the start."""
    data = {
        label: {"username": creds.username, "password": creds.password}
        for label, creds in sorted(secrets.items())
    }
    text = _HEADER + (yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data else "")
    write_atomic(path, text.encode("utf-8"), MODE)
