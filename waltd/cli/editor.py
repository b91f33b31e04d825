"""`walt-server-setup --edit-conf`: the interactive registry menu (questionary, arrow keys).

The screen always shows the registries and whether the configuration is valid, with
server.conf's own messages when it is not. Each field is checked when entered; an entry that
clashes with another (a duplicate label, a shared host:port) is shown with the configuration's
message and may be edited again, kept for now, or undone. Changes stay in memory until
"Validate and quit", which saves only a valid configuration, after a connectivity check that
warns but does not block. "Discard" and Ctrl-C leave every file as it was.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import questionary
from prompt_toolkit.shortcuts import clear
from questionary import Choice

from waltd import config as configuration
from waltd.cli.registry_setup import (
    EX_CANTCREAT,
    HUB_ENTRY,
    HUB_WARNING,
    Files,
    Setup,
    after_save,
    check_connectivity,
    entry_label,
    problems,
    read_setup,
    registry_table,
    validate,
    write,
)
from waltd.credentials import username_problem
from waltd.registries.base import Credentials

V2 = "docker-registry-v2"
ARTIFACTORY = "jfrog-artifactory"
HUB = "docker-hub"
_PROTOCOLS = ("https", "http", "https-no-verify")
_AUTHS = ("basic", "none")
# Defaults of a new entry, as WalT proposes them for a v2 registry.
_NEW_ENTRY: dict[str, Any] = {"port": 443, "protocol": "https", "auth": "basic"}
EX_INTERRUPTED = 130


@dataclass
class _Entry:
    """A registry entry as the file holds it, with the server's login for it."""

    data: dict[str, Any]
    login: Credentials | None


def _port(text: str) -> int | str:
    """An integer when the text is one; anything else is left for the check to explain."""
    return int(text) if text.isdecimal() else text


def _probe(api: str) -> dict[str, Any]:
    """A valid entry of this api, to check one field at a time."""
    if api == HUB:
        return {"label": "hub", "api": HUB}
    probe: dict[str, Any] = {"label": "probe", "api": api, "host": "localhost"}
    if api == ARTIFACTORY:
        probe["repository"] = "walt"
    return probe


def default_description(api: str) -> str:
    """The description server.conf gives an entry of this api that has none."""
    return configuration.parse({"registries": [_probe(api)]}, "check").registries[0].description


def field_problem(api: str, key: str, value: object) -> str | None:
    """What server.conf's check says of one value of one key, alone (None when it passes)."""
    probe = _probe(api)
    probe[key] = value
    try:
        configuration.parse({"registries": [probe]}, "check")
    except configuration.ConfigError as err:
        return next((problem.text for problem in err.problems if problem.key == key), None)
    return None


def _validator(api: str, key: str, optional: bool = False) -> Callable[[str], bool | str]:
    def check(text: str) -> bool | str:
        text = text.strip()
        if optional and not text:
            return True
        problem = field_problem(api, key, _port(text) if key == "port" else text)
        return True if problem is None else problem

    return check


def _username_check(text: str) -> bool | str:
    text = text.strip()
    return True if not text else (username_problem(text) or True)


def _text(message: str, default: str, validate: Callable[[str], bool | str]) -> str:
    answer: str = questionary.text(message, default=default, validate=validate).unsafe_ask()
    return answer.strip()


def _select(message: str, choices: Sequence[Choice], default: object = None) -> Any:
    chosen = next((choice for choice in choices if choice.value == default), None)
    return questionary.select(
        message, choices=list(choices), default=chosen, instruction="(arrow keys, Enter)"
    ).unsafe_ask()


def _confirm(message: str, default: bool) -> bool:
    return bool(questionary.confirm(message, default=default).unsafe_ask())


def _ask_login(message: str, old: Credentials | None) -> Credentials | None:
    """The server's own login; an empty user name means none. The password is never shown."""
    username = _text(message, old.username if old else "", _username_check)
    if not username:
        return None
    if old is not None and old.username == username and _confirm("Keep the stored password?", True):
        return old
    password: str = questionary.password(
        "Password (hidden):", validate=lambda text: bool(text) or "type the password"
    ).unsafe_ask()
    return Credentials(username, password)


def _form(api: str, start: Mapping[str, Any], login: Credentials | None) -> _Entry:
    """Ask every field of an entry, `start` giving the defaults."""
    data: dict[str, Any] = {"label": "hub", "api": HUB}
    if api != HUB:
        data["label"] = _text("Label:", str(start.get("label", "")), _validator(api, "label"))
        data["api"] = api
    description = _text(
        "Description (empty: the default):",
        str(start.get("description", "")),
        _validator(api, "description", optional=True),
    )
    data["description"] = description or default_description(api)
    if api == HUB:
        login = _ask_login("Docker Hub user for the server's own pulls (empty: anonymous):", login)
        return _Entry(data, login)
    data["host"] = _text(
        "Host name or IP address:", str(start.get("host", "")), _validator(api, "host")
    )
    data["port"] = _port(_text("Port:", str(start.get("port", 443)), _validator(api, "port")))
    data["protocol"] = _select(
        "Protocol:", [Choice(p, p) for p in _PROTOCOLS], start.get("protocol", "https")
    )
    data["auth"] = _select(
        "Authentication:", [Choice(a, a) for a in _AUTHS], start.get("auth", "basic")
    )
    if api == ARTIFACTORY:
        data["repository"] = _text(
            "Repository:", str(start.get("repository", "")), _validator(api, "repository")
        )
    if data["auth"] == "basic":
        login = _ask_login("User name of the server's own login (empty: none):", login)
    else:
        login = None
    return _Entry(data, login)


class _Editor:
    """The menu's state: the entries being edited and a notice for the next screen."""

    def __init__(self, setup: Setup, reload_pid: int | None) -> None:
        self.setup = setup
        self.reload_pid = reload_pid
        self.entries = [
            _Entry(copy.deepcopy(entry), setup.secrets.get(entry_label(entry)))
            for entry in setup.registries
        ]
        self.saved = copy.deepcopy(self.entries)
        self.notice: list[str] = []

    def problems(self, entries: Sequence[_Entry] | None = None) -> list[configuration.Problem]:
        """server.conf's problems with these entries (the current ones by default)."""
        chosen = self.entries if entries is None else entries
        return problems(self.setup, [entry.data for entry in chosen])

    def has_hub(self) -> bool:
        """True when the docker-hub entry is there."""
        return any(entry.data.get("api") == HUB for entry in self.entries)

    def render(self) -> None:
        """The registries, the validation status and the last notice."""
        clear()
        print(f"WalT server registries ({self.setup.files.config})")
        print()
        rows = [(entry.data, entry.login) for entry in self.entries]
        for line in registry_table(rows).splitlines():
            print(f"  {line}")
        if not self.entries:
            print("  (no registry at all)")
        print()
        found = self.problems()
        if found:
            print("Status: INVALID; fix this before saving:")
            for problem in found:
                print(f"  - {problem}")
        else:
            changed = self.entries != self.saved
            print(f"Status: valid{', unsaved changes' if changed else ', no change'}")
        for line in self.notice:
            print(line)
        print()

    def choices(self) -> list[Choice]:
        """The main menu."""
        items = [
            Choice(
                f"Edit or remove {entry_label(entry.data)!r} ({entry.data.get('api', '?')})",
                ("entry", index),
            )
            for index, entry in enumerate(self.entries)
        ]
        if self.has_hub():
            items.append(Choice("Disable the hub", "disable-hub"))
        else:
            items.append(Choice("Enable the hub", "enable-hub"))
        items += [
            Choice("Add a Docker registry v2", ("add", V2)),
            Choice("Add a JFrog Artifactory instance", ("add", ARTIFACTORY)),
            Choice("Discard changes and quit", "discard"),
            Choice("Validate and quit", "save"),
        ]
        return items

    def loop(self) -> int:
        """Show the menu until the operator saves or discards; the exit status."""
        while True:
            self.render()
            action = _select("What do you want to do?", self.choices())
            self.notice = []
            match action:
                case ("entry", int(index)):
                    self.entry_menu(index)
                case "disable-hub":
                    self.disable_hub()
                case "enable-hub":
                    self.entries.insert(0, _Entry(dict(HUB_ENTRY), self.setup.secrets.get("hub")))
                    self.notice = ["Hub enabled, first in the search order (not saved yet)."]
                case ("add", str(api)):
                    self.edit(None, api)
                case "discard":
                    if self.entries == self.saved or _confirm("Discard your changes?", False):
                        print("Nothing written.")
                        return 0
                case "save":
                    status = self.save()
                    if status is not None:
                        return status

    def entry_menu(self, index: int) -> None:
        """Edit or remove one entry."""
        entry = self.entries[index]
        label = entry_label(entry.data)
        hub = entry.data.get("api") == HUB
        action = _select(
            f"Registry {label!r}:",
            [
                Choice("Edit", "edit"),
                Choice("Disable the hub (remove it)" if hub else "Remove", "remove"),
                Choice("Back", "back"),
            ],
        )
        if action == "edit":
            api = entry.data.get("api")
            if api not in (HUB, V2, ARTIFACTORY):
                api = _select("API:", [Choice(V2, V2), Choice(ARTIFACTORY, ARTIFACTORY)])
            self.edit(index, str(api))
        elif action == "remove" and hub:
            self.disable_hub()
        elif action == "remove":
            del self.entries[index]
            self.notice = [f"Removed {label!r} (not saved yet)."]

    def disable_hub(self) -> None:
        """Remove the hub entry, after the warning."""
        print(HUB_WARNING)
        if _confirm("Disable the hub?", True):
            self.entries = [entry for entry in self.entries if entry.data.get("api") != HUB]
            self.notice = [f"Hub disabled (not saved yet). {HUB_WARNING}"]

    def edit(self, index: int | None, api: str) -> None:
        """Add (index None) or change an entry; a clash is shown and may be fixed or undone."""
        start = self.entries[index] if index is not None else _Entry(dict(_NEW_ENTRY), None)
        before = set(self.problems())
        while True:
            entry = _form(api, start.data, start.login)
            candidate = list(self.entries)
            if index is None:
                candidate.append(entry)
            else:
                candidate[index] = entry
            added = [problem for problem in self.problems(candidate) if problem not in before]
            if not added:
                self.entries = candidate
                self.notice = [f"{entry_label(entry.data)!r} is ready (not saved yet)."]
                return
            print()
            print("This makes the configuration invalid:")
            for problem in added:
                print(f"  - {problem}")
            action = _select(
                "What now?",
                [
                    Choice("Edit it again", "again"),
                    Choice("Keep it and fix the configuration later", "keep"),
                    Choice("Undo this change", "undo"),
                ],
            )
            if action == "again":
                start = entry
                continue
            if action == "keep":
                self.entries = candidate
            else:
                self.notice = ["Change undone."]
            return

    def save(self) -> int | None:
        """Validate, check connectivity, write; None to go back to the menu."""
        if self.problems():
            self.notice = ["Not saved: the configuration is invalid; fix the problems above."]
            return None
        config = validate(self.setup, [entry.data for entry in self.entries])
        secrets = {entry_label(entry.data): entry.login for entry in self.entries if entry.login}
        if any(registry.api != HUB for registry in config.registries):
            print("Checking that the registries answer...")
        results = check_connectivity(config, secrets)
        for result in results:
            print(result.line())
        warnings = [result.line() for result in results if result.problem is not None]
        if warnings:
            action = _select(
                "Some registries did not answer as expected.",
                [Choice("Save anyway", "save"), Choice("Back to the menu", "back")],
            )
            if action == "back":
                self.notice = warnings
                return None
        try:
            write(self.setup.files, config, secrets)
        except OSError as err:
            print(f"Cannot write {err.filename}: {err.strerror}", file=sys.stderr)
            return EX_CANTCREAT
        after_save(self.setup.files, self.reload_pid)
        return 0


def run(files: Files, reload_pid: int | None) -> int:
    """The menu on the current terminal; the exit status."""
    try:
        setup = read_setup(files, tolerant=True)
    except configuration.ConfigError as err:
        print(err, file=sys.stderr)
        print("Fix the file by hand, then run the editor again.", file=sys.stderr)
        return configuration.EX_CONFIG
    try:
        return _Editor(setup, reload_pid).loop()
    except (KeyboardInterrupt, EOFError):
        print("\nInterrupted: nothing written.")
        return EX_INTERRUPTED
