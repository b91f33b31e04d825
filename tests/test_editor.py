"""`walt-server-setup --edit-conf` driven through a real terminal (a pty, with pexpect).

Keys are what an operator types: arrow keys, Enter, Ctrl-U to clear a default. The child runs
`python -m waltd.cli.server_setup` with the test's own files; podman's drop-in goes to the
test's folder. PROMPT_TOOLKIT_NO_CPR stops prompt_toolkit from asking the terminal for the
cursor position, which a pty without a terminal emulator never answers.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest
import yaml

from tests.test_server_setup import (
    PASSWORD,
    USER,
    Paths,
    Registries,
    add_registry,
    free_port,
    paths,
    registries,
    v2,
)
from waltd import credentials
from waltd.registries.base import Credentials

# Fixtures shared with test_server_setup (imported, so pytest sees them here too).
__all__ = ["paths", "registries"]

DOWN = "\x1b[B"
ENTER = "\r"
CLEAR = "\x15"  # Ctrl-U: the line before the cursor, i.e. a default value
TIMEOUT_S = 10


class Terminal:
    """The editor in a pty, and everything it printed."""

    def __init__(self, paths: Paths) -> None:
        env = {
            **os.environ,
            "TERM": "xterm-256color",
            "PROMPT_TOOLKIT_NO_CPR": "1",
            "WALTD_PODMAN_REGISTRIES": str(paths.podman),
        }
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "waltd.cli.server_setup", *paths.args("--edit-conf")],
            env=env,
            dimensions=(60, 400),
            encoding="utf-8",
            timeout=TIMEOUT_S,
        )
        self.transcript: list[str] = []

    def expect(self, text: str) -> None:
        """Wait for `text` (literal) on the screen."""
        self.child.expect_exact(text)
        self.transcript += [self.child.before, self.child.after]

    def choose(self, question: str, downs: int) -> None:
        """Answer a menu: `downs` presses of the down arrow from the first item, then Enter."""
        self.expect(question)
        self.child.send(DOWN * downs + ENTER)

    def answer(self, question: str, text: str, clear: bool = False) -> None:
        """Type into a text prompt; `clear` removes its default first."""
        self.expect(question)
        self.child.send((CLEAR if clear else "") + text + ENTER)

    def end(self) -> int:
        """Wait for the program to exit; its status."""
        self.child.expect(pexpect.EOF)
        self.transcript.append(self.child.before)
        self.child.close()
        status: int = self.child.exitstatus
        return status

    def text(self) -> str:
        """Everything printed so far."""
        return "".join(self.transcript)

    def process_strings(self) -> str:
        """The child's argv and environment, as the kernel shows them to every local user."""
        proc = Path(f"/proc/{self.child.pid}")
        return (proc / "cmdline").read_bytes().decode() + (proc / "environ").read_bytes().decode()


@pytest.fixture
def spawn(paths: Paths) -> Iterator[Callable[[], Terminal]]:
    """Start the editor on the test's files; any still running at the end is killed."""
    started: list[Terminal] = []

    def start() -> Terminal:
        started.append(Terminal(paths))
        return started[-1]

    yield start
    for term in started:
        if term.child.isalive():
            term.child.terminate(force=True)


def _add_v2(
    term: Terminal, menu_index: int, label: str, port: int, http: bool, basic: bool
) -> None:
    """Fill the "Add a Docker registry v2" form up to the login."""
    term.choose("What do you want to do?", menu_index)
    term.answer("Label:", label, clear=True)
    term.answer("Description (empty: the default):", "", clear=True)
    term.answer("Host name or IP address:", "127.0.0.1", clear=True)
    term.answer("Port:", str(port), clear=True)
    term.choose("Protocol:", 1 if http else 0)
    term.choose("Authentication:", 0 if basic else 1)


def test_add_registries_with_clashes_then_save(
    spawn: Callable[[], Terminal], paths: Paths, registries: Registries
) -> None:
    term = spawn()
    port = registries.locked.port
    closed = free_port()
    term.expect("Status: valid, no change")
    # Menu: hub, Disable the hub, Add v2 (2), Add Artifactory (3), Discard, Validate.
    _add_v2(term, 2, "local", port, http=True, basic=True)
    term.answer("User name of the server's own login (empty: none):", USER)
    term.expect("Password (hidden):")
    term.child.send(PASSWORD + ENTER)
    term.expect("Status: valid, unsaved changes")
    assert PASSWORD not in term.process_strings()

    # Menu: hub, local, Disable, Add v2 (3), Add Artifactory (4), Discard, Validate (6).
    _add_v2(term, 3, "local", port, http=True, basic=False)
    term.expect("This makes the configuration invalid:")
    term.expect(
        f"{paths.conf}: registries[2]: key 'label': 'local' is already used by registries[1]; "
        "labels must be unique"
    )
    term.choose("What now?", 0)  # edit it again, its answers as defaults
    term.answer("Label:", "other", clear=True)
    for question in ("Description", "Host name", "Port:"):
        term.answer(question, "")
    term.choose("Protocol:", 0)
    term.choose("Authentication:", 0)
    term.expect("This makes the configuration invalid:")
    term.expect(
        f"{paths.conf}: registries entry 'other': key 'host': 127.0.0.1:{port} is already used "
        "by registries entry 'local'; only jfrog-artifactory entries with different "
        "repositories may share a host and port"
    )
    term.choose("What now?", 2)  # undo
    term.expect("Change undone.")

    term.choose("What do you want to do?", 4)
    term.answer("Label:", "art", clear=True)
    term.answer("Description (empty: the default):", "Artifactory", clear=True)
    term.answer("Host name or IP address:", "127.0.0.1", clear=True)
    term.answer("Port:", "not-a-port", clear=True)
    term.expect("must be an integer from 1 to 65535")
    term.child.send(CLEAR + str(closed) + ENTER)
    term.choose("Protocol:", 0)
    term.choose("Authentication:", 1)
    term.answer("Repository:", "walt")
    term.expect("Status: valid, unsaved changes")

    # Menu: hub, local, art, Disable, Add v2, Add Artifactory, Discard, Validate (7).
    term.choose("What do you want to do?", 7)
    term.expect(f"local: http://127.0.0.1:{port}/v2/ answers.")
    term.expect(f"WARNING: art: https://127.0.0.1:{closed}/v2/: cannot connect")
    term.choose("Some registries did not answer as expected.", 0)  # save anyway
    term.expect("Saved:")
    term.expect("systemctl reload waltd")
    assert term.end() == 0

    entries = yaml.safe_load(paths.conf.read_text())["registries"]
    assert [(e["label"], e["api"], e["port"] if "port" in e else None) for e in entries] == [
        ("hub", "docker-hub", None),
        ("local", "docker-registry-v2", port),
        ("art", "jfrog-artifactory", closed),
    ]
    assert entries[2]["repository"] == "walt" and entries[2]["description"] == "Artifactory"
    assert stat.S_IMODE(paths.secrets.stat().st_mode) == 0o600
    assert credentials.load(paths.secrets) == {"local": Credentials(USER, PASSWORD)}
    podman = tomllib.loads(paths.podman.read_text())
    assert podman == {"registry": [{"location": f"127.0.0.1:{port}", "insecure": True}]}
    for path in (paths.conf, paths.podman):
        assert PASSWORD not in path.read_text()
    assert PASSWORD not in term.text()
    assert "*" * len(PASSWORD) in term.text()  # what the operator saw instead


def test_edit_keeps_the_login_disable_hub_and_refuse_invalid(
    spawn: Callable[[], Terminal], paths: Paths
) -> None:
    options = v2("127.0.0.1", 5999, "--username", USER, "--no-check")
    assert add_registry(paths, "local", *options, password=PASSWORD) == 0
    before = paths.snapshot()
    term = spawn()
    term.expect("Status: valid, no change")
    # Menu: hub, local (1), Disable (2), Add v2, Add Artifactory, Discard, Validate.
    term.choose("What do you want to do?", 1)
    term.choose("Registry 'local':", 0)  # edit
    for question in ("Label:", "Description", "Host name", "Port:"):
        term.answer(question, "")
    term.choose("Protocol:", 0)
    term.choose("Authentication:", 0)
    term.answer("User name of the server's own login", "")
    term.expect("Keep the stored password?")
    term.child.send(ENTER)
    term.expect("Status: valid, no change")

    term.choose("What do you want to do?", 2)
    term.expect("Without the hub, new node models need their default image")
    term.expect("Disable the hub?")
    term.child.send(ENTER)
    term.expect("Status: valid, unsaved changes")
    term.expect("Hub disabled (not saved yet).")

    # Menu: local, Enable the hub, Add v2 (2), Add Artifactory, Discard, Validate.
    _add_v2(term, 2, "local", 6000, http=False, basic=False)
    term.choose("What now?", 1)  # keep it
    term.expect("Status: INVALID; fix this before saving:")
    term.expect("'local' is already used by registries[0]; labels must be unique")
    # Menu: local, local, Enable, Add v2, Add Artifactory, Discard (5), Validate (6).
    term.choose("What do you want to do?", 6)
    term.expect("Not saved: the configuration is invalid")
    term.choose("What do you want to do?", 5)
    term.expect("Discard your changes?")
    term.child.send("y")
    term.expect("Nothing written.")
    assert term.end() == 0
    assert paths.snapshot() == before
    assert PASSWORD not in term.text()


def test_hub_description_and_login(spawn: Callable[[], Terminal], paths: Paths) -> None:
    term = spawn()
    term.choose("What do you want to do?", 0)
    term.choose("Registry 'hub':", 0)  # edit
    term.answer("Description (empty: the default):", "x" * 36, clear=True)
    term.expect("has 36 characters; use at most 35")
    term.child.send(CLEAR + "Docker Hub" + ENTER)
    term.answer("Docker Hub user for the server's own pulls (empty: anonymous):", USER)
    term.expect("Password (hidden):")
    term.child.send(PASSWORD + ENTER)
    term.expect("Status: valid, unsaved changes")
    term.choose("What do you want to do?", 5)  # validate: the hub is not contacted
    term.expect("Saved:")
    assert term.end() == 0
    assert "Checking" not in term.text() and PASSWORD not in term.text()
    assert yaml.safe_load(paths.conf.read_text())["registries"] == [
        {"label": "hub", "api": "docker-hub", "description": "Docker Hub"}
    ]
    assert credentials.load(paths.secrets) == {"hub": Credentials(USER, PASSWORD)}


def test_interrupt_writes_nothing(spawn: Callable[[], Terminal], paths: Paths) -> None:
    term = spawn()
    term.expect("What do you want to do?")
    term.child.sendintr()
    term.expect("Interrupted: nothing written.")
    assert term.end() == 130
    assert set(paths.snapshot().values()) == {None}


def test_invalid_file_outside_registries_is_refused(
    spawn: Callable[[], Terminal], paths: Paths
) -> None:
    paths.conf.write_text("images: {fetch-concurency: 2}\n")
    term = spawn()
    term.expect("fetch-concurency")
    term.expect("Fix the file by hand")
    assert term.end() == 78


def test_invalid_registries_are_shown_for_fixing(
    spawn: Callable[[], Terminal], paths: Paths
) -> None:
    entry = "{label: local, api: docker-registry-v2, host: 127.0.0.1, auth: none}"
    paths.conf.write_text(f"registries:\n- {entry}\n- {entry}\n")
    term = spawn()
    term.expect("Status: INVALID")
    term.expect("'local' is already used by registries[0]")
    # Menu: local (0), local (1): remove the second.
    term.choose("What do you want to do?", 1)
    term.choose("Registry 'local':", 1)
    term.expect("Status: valid, unsaved changes")
    # Menu: local, Enable the hub, Add v2, Add Artifactory, Discard, Validate (5).
    term.choose("What do you want to do?", 5)
    term.expect("WARNING: local: https://127.0.0.1:443/v2/")
    term.choose("Some registries did not answer as expected.", 0)
    assert term.end() == 0
    assert len(yaml.safe_load(paths.conf.read_text())["registries"]) == 1
    assert "insecure" not in paths.podman.read_text()
