"""Virtual nodes: MACs, names, QEMU's arguments, the console (pure); QMP with a real QEMU;
`walt node create|console|remove` with the real daemon, dnsmasq and QEMU on a lab network.

Nothing here waits for a full boot: the nodes go as far as iPXE's DHCP and the server's
bootstrap (the bootable image is tested elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.lab import Lab, LabProcess
from tests.conftest import require_tool
from tests.support.daemon import (
    ROOT,
    Daemon,
    is_event,
    is_lease,
    remove,
    running,
    short_dir,
    walt,
    write_config,
)
from tests.support.lab_daemon import lab_config, records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.users import unix_user
from tests.support.wait import until
from waltd.names import InvalidName, check_node_name, normalise_mac
from waltd.provision import vnodes
from waltd.provision.vnodes import (
    Console,
    ConsoleDecoder,
    ConsoleDropped,
    ConsoleLine,
    QemuSpec,
    RecordBudget,
    allocate_mac,
    qemu_argv,
    tap_name,
)

# --- pure --------------------------------------------------------------------------------


def test_macs_are_qemus_unicast_and_never_one_taken() -> None:
    draws = iter([b"\x12\x34\x56", b"\x12\x34\x56", b"\xab\xcd\xef"])
    mac = allocate_mac(["52:54:00:12:34:56"], rand=lambda n: next(draws))
    assert mac == "52:54:00:ab:cd:ef"
    first = int(mac.split(":")[0], 16)
    assert not first & 1 and first & 2  # unicast, locally administered
    assert normalise_mac(allocate_mac([])).startswith("52:54:00:")
    with pytest.raises(vnodes.VNodeError, match="no free MAC"):
        allocate_mac(["52:54:00:00:00:01"], rand=lambda n: b"\x00\x00\x01")


def test_tap_names_fit_linux_and_follow_the_mac() -> None:
    assert tap_name("52:54:00:AB:cd:0e") == "wv-abcd0e"
    assert len(tap_name("52:54:00:ff:ff:ff")) <= 15
    assert tap_name("52:54:00:00:00:01") != tap_name("52:54:00:00:00:02")


@pytest.mark.parametrize("name", ["vnode1", "a", "pc-1", "x" * 32, "a--b"])
def test_node_names_users_may_give(name: str) -> None:
    assert check_node_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "VNode", "-x", "x-", "a b", "a;rm -rf /", "x" * 33, "a/b", "é", "a\x1b[2J", "a,b"]
)
def test_hostile_node_names_are_refused_saying_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidName, match="lower-case letters, digits and '-'") as caught:
        check_node_name(name)
    assert "\x1b" not in str(caught.value)


def test_qemu_argv_network_boots_with_tcg_on_the_tap() -> None:
    spec = QemuSpec(name="vnode1", mac="52:54:00:AA:bb:01", tap="wv-aabb01", qmp=Path("/s,x/q"))
    argv = qemu_argv(spec)
    assert argv[0] == "qemu-system-x86_64" and all(isinstance(a, str) for a in argv)

    def after(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert after("-accel") == "tcg" and after("-m") == "512" and after("-smp") == "1"
    assert "-nographic" in argv and "-nodefaults" in argv
    assert "-no-reboot" not in argv  # a reset must boot again
    assert after("-boot").startswith("order=n")
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:01" in argv
    assert "tap,id=n0,ifname=wv-aabb01,script=no,downscript=no" in argv
    # a comma in a path is doubled, as QEMU's option syntax wants
    assert after("-qmp") == "unix:/s,,x/q,server=on,wait=off"
    assert after("-runas") == "nobody"


IPXE_SAMPLE = (
    b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\n\r\n"
    b"Press Ctrl-B for the iPXE command line..."
    + b"\x08 \x08"
    * len("Press Ctrl-B for the iPXE command line...")
    + b"net0: 52:54:00:12:34:56 using virtio-net\r\n"
    b"\x1b[0;1miPXE 1.0.0\x1b[0m -- Open Source \x1b]0;title\x07Network Boot Firmware\r\n"
    b"Configuring (net0)...... ok\r\n"
)


def test_the_console_decoder_shows_what_a_terminal_shows() -> None:
    decoder = ConsoleDecoder()
    lines = [line for i in range(len(IPXE_SAMPLE)) for line in decoder.feed(IPXE_SAMPLE[i : i + 1])]
    assert lines == [
        "SeaBIOS (version 1.16.2)",
        "net0: 52:54:00:12:34:56 using virtio-net",
        "iPXE 1.0.0 -- Open Source Network Boot Firmware",
        "Configuring (net0)...... ok",
    ]
    assert decoder.flush() == []


def test_the_console_decoder_bounds_lines_and_keeps_controls_out() -> None:
    decoder = ConsoleDecoder(max_chars=10)
    # cut at 10 characters; NUL, BEL, DEL and C1 controls dropped, a tab made a space
    assert decoder.feed(b"0123456789abc\x00\x07\x7f\xc2\x9b\tz\n") == ["0123456789", "abc z"]
    # a last line without newline comes out at the end
    assert decoder.feed(b"end") == []
    assert decoder.flush() == ["end"]


def test_an_endless_escape_sequence_hides_little() -> None:
    decoder = ConsoleDecoder()
    # past 64 characters of a sequence, what follows is text again
    assert decoder.feed(b"\x1b]0;" + b"x" * 200 + b"\nnext\n") == ["x" * 139, "next"]
    # a newline ends a sequence: the next line is whole
    assert decoder.feed(b"\x1b]0;title\nline\n") == ["line"]


def test_the_console_decoder_joins_split_characters() -> None:
    decoder = ConsoleDecoder()
    raw = "héllo\n".encode()
    assert decoder.feed(raw[:2]) == []
    assert decoder.feed(raw[2:]) == ["héllo"]
    assert decoder.feed(b"\xffbad\n") == ["\ufffdbad"]
    assert all(line.isprintable() for line in decoder.feed(b"\x1b[31mred\x1b[0m\x01\n"))


async def test_the_console_ring_is_bounded_in_lines_and_characters() -> None:
    console = Console(max_lines=3, max_chars=9)
    for text in ("aaaa", "bbbb", "cccc", "dd"):
        console.append(text)
    assert [line.line for line in console.lines()] == ["cccc", "dd"]  # 6 characters
    for i in range(5):
        console.append(str(i))
    assert [line.line for line in console.lines()] == ["2", "3", "4"]
    assert console.lines()[-1].seq == 9


async def test_a_console_follower_gets_the_backlog_then_live_lines_once() -> None:
    console = Console(follower_queue=4)
    console.append("old")
    with console.follow() as (backlog, follower):
        assert [line.line for line in backlog] == ["old"]
        console.append("new")
        assert await follower.get() == ConsoleLine(2, "new")
        for i in range(10):  # a slow reader: it loses lines and is told how many
            console.append(f"l{i}")
        got = [follower._queue.get_nowait() for _ in range(follower._queue.qsize())]
        assert [g.line for g in got if isinstance(g, ConsoleLine)] == ["l0", "l1", "l2", "l3"]
        console.append("after")
        assert await follower.get() == ConsoleDropped(6)
        assert await follower.get() == ConsoleLine(13, "after")
        console.end()
        assert await follower.get() is None
    with console.follow() as (backlog, follower):  # an ended console ends a new follower
        assert await follower.get() is None


def test_console_records_are_a_burst_then_a_rate() -> None:
    now = [0.0]
    budget = RecordBudget(rate=2.0, burst=3, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    assert budget.take_refused() == 2 and budget.take_refused() == 0
    now[0] = 1.0
    assert [budget.take() for _ in range(3)] == [True, True, False]


# --- QMP with a real QEMU ------------------------------------------------------------------


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """A QEMU of no network device (it sends nothing anywhere), its serial port to a file."""
    require_tool("qemu-system-x86_64")
    socket = Path(f"/tmp/qmp-{os.getpid()}-{id(tmp_path)}.sock")
    out = tmp_path / "serial.txt"
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-nographic", "-nodefaults", "-m", "64"]
    argv += ["-serial", "stdio", "-monitor", "none", "-qmp", f"unix:{socket},server=on,wait=off"]
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    try:
        yield proc, socket, out
    finally:
        proc.kill()
        proc.wait()
        socket.unlink(missing_ok=True)


async def test_qmp_resets_and_quits_a_real_qemu(
    qemu: tuple[subprocess.Popen[bytes], Path, Path],
) -> None:
    proc, socket, out = qemu

    async def answers() -> bool:
        with contextlib.suppress(OSError):
            await vnodes.qmp(socket, None)
            return True
        return False

    await until(answers, what="QEMU's QMP", timeout_s=20, alive=lambda: proc.poll() is None)
    await until(lambda: b"SeaBIOS" in out.read_bytes(), what="the BIOS", timeout_s=20)
    assert await vnodes.qmp(socket, "system_reset") == {}
    await until(lambda: out.read_bytes().count(b"SeaBIOS") >= 2, what="a second BIOS start")
    with pytest.raises(vnodes.VNodeError, match="QEMU refused no-such-command"):
        await vnodes.qmp(socket, "no-such-command")
    await vnodes.qmp(socket, "quit")
    await until(lambda: proc.poll() is not None, what="QEMU to quit")


# --- the daemon -------------------------------------------------------------------------------


def test_without_a_node_network_no_virtual_node_is_made() -> None:
    folder = short_dir()
    d = Daemon(folder, write_config(folder))
    try:
        d.start()
        made = walt(d.socket, "node", "create", "vnode1")
        assert made.returncode == 1
        assert "virtual nodes need a node network (network.walt-net" in made.stderr
        shown = walt(d.socket, "node", "console", "vnode1")
        assert shown.returncode == 1 and "no virtual node named 'vnode1'" in shown.stderr
        assert d.stop() == 0
    finally:
        d.kill()
        remove(folder)


# --- the daemon on a lab network -----------------------------------------------------------


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with running_lab("dnsmasq", "qemu-system-x86_64") as lab:
        yield lab


def qemu_pids(mac: str) -> list[int]:
    """PIDs of the QEMU processes whose arguments hold `mac` (the keeper shell excluded)."""
    return running("qemu-system-x86_64", mac)


async def link(lab: Lab, name: str) -> dict[str, object] | None:
    """Interface `name` of the server namespace as `ip -j` shows it, or None."""
    shown = await lab.run(
        ["ip", "-j", "link", "show", "dev", name], netns=lab.server_netns, check=False
    )
    if shown.returncode != 0:
        return None
    (found,) = json.loads(shown.stdout)
    return found


def of_node(event: str, name: str) -> Callable[[dict[str, Any]], bool]:
    """A match for the records of `event` about node `name` (is_event takes `name` itself)."""
    return lambda r: r.get("event") == event and r.get("name") == name


# A POST as another user, with the system's Python (the test's virtualenv is root's).
_POST = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
body = sys.argv[3].encode()
s.sendall(b"POST %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
          % (sys.argv[2].encode(), len(body)) + body)
print(s.makefile("rb").read().partition(b"\r\n\r\n")[2].decode())
"""


async def post_as(user: str, socket: Path, path: str, body: dict[str, Any]) -> str:
    """POST `body` to `path` of the API as Unix user `user`; the answer's body."""
    python = require_tool("/usr/bin/python3")
    argv = ["runuser", "-u", user, "--", python, "-c", _POST, str(socket), path, json.dumps(body)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    return out.decode()


def node_row(socket: Path, name: str) -> dict[str, object] | None:
    listing = json.loads(walt(socket, "node", "show", "--json").stdout)
    return next((n for n in listing["nodes"] if n["name"] == name), None)


async def start(lab: Lab, name: str = "waltd") -> tuple[LabProcess, Path]:
    folder = lab.root / "waltd"
    folder.mkdir(exist_ok=True)
    # debug: a repeated lease (the bootstrap's, soon after iPXE's) is a debug record
    waltd = await start_waltd(lab, lab_config(lab, folder), name, log_level="debug")
    await wait_record(waltd, is_event("daemon_ready"), timeout_s=30)
    return waltd, folder / "api.sock"


@pytest.mark.lab
async def test_a_virtual_node_dhcps_through_waltd_then_is_removed(lab: Lab) -> None:
    waltd, socket = await start(lab)
    refused = walt(socket, "node", "create", "Bad;name")
    assert refused.returncode == 1 and "lower-case letters, digits and '-'" in refused.stderr

    made = walt(socket, "node", "create", "vnode1")
    assert made.returncode == 0, made.stderr
    created = await wait_record(waltd, of_node("vnode.created", "vnode1"))
    mac = created["mac"]
    assert mac.startswith("52:54:00:") and f"MAC {mac}" in made.stdout
    assert qemu_pids(mac)
    tap = await link(lab, tap_name(mac))
    assert tap is not None and tap["master"] == lab.bridge and "UP" in tap["flags"]
    again = walt(socket, "node", "create", "vnode1")
    assert again.returncode == 1 and "exists already" in again.stderr

    # iPXE's DHCP request reaches dnsmasq: a known pc-x86-64 node from its first lease
    detected = await wait_record(waltd, is_event("node.detected", mac=mac), timeout_s=120)
    assert detected["name"] == "vnode1" and detected["model"] == "pc-x86-64"
    row = node_row(socket, "vnode1")
    assert row is not None and row["ip"] == detected["ip"] and row["mac"] == mac
    # the server's bootstrap runs: the node asks again, saying its model
    await wait_record(waltd, is_lease(mac), timeout_s=120)

    shown = walt(socket, "node", "console", "vnode1", "--no-follow")
    assert shown.returncode == 0 and "iPXE" in shown.stdout, shown.stderr
    assert all(line.isprintable() for line in shown.stdout.splitlines())
    lines = [r for r in records(waltd) if r.get("event") == "vnode.console"]
    assert any("iPXE" in r["line"] for r in lines) and all(r["name"] == "vnode1" for r in lines)
    assert "uid" not in lines[0]  # the node's records are everyone's, not its creator's

    # another user may not remove it
    with unix_user("waltvn") as user:
        answer = await post_as(user, socket, "/v1/nodes/remove", {"name": "vnode1"})
    assert "only that user or root may remove it" in json.loads(answer)["error"]

    # a follower sees the node go: its stream ends when the node is removed
    follow = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "waltd.cli.walt", "node", "console", "vnode1",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "WALT_SOCKET": str(socket), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        await asyncio.wait_for(follow.stdout.readline(), 20)
        gone = walt(socket, "node", "remove", "vnode1")
        assert gone.returncode == 0 and "removed" in gone.stdout, gone.stderr
        assert await asyncio.wait_for(follow.wait(), 20) == 0
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
    await until(lambda: not qemu_pids(mac), what="QEMU to end", timeout_s=10)
    assert await link(lab, tap_name(mac)) is None
    assert node_row(socket, "vnode1") is None
    await wait_record(waltd, is_event("node.down", mac=mac))
    # nothing of it is served any longer: its folder and TFTP link are gone
    await wait_record(waltd, is_event("node.removed", mac=mac))
    exports = socket.parent / "exports"
    await until(
        lambda: (
            not (exports / "nodes" / mac).exists()
            and not (exports / "tftp" / "nodes" / mac.replace(":", "-")).is_symlink()
        ),
        what="the removed node's folder to go",
    )
    missing = walt(socket, "node", "console", "vnode1")
    assert missing.returncode == 1 and "no virtual node named 'vnode1'" in missing.stderr
    await lab.stop(waltd)
    assert waltd.process.returncode == 0
    assert not any(r.get("event") == "service_crashed" for r in records(waltd))


@pytest.mark.lab
async def test_a_dead_qemu_is_restarted_and_a_restarted_daemon_runs_its_nodes(lab: Lab) -> None:
    waltd, socket = await start(lab)
    assert walt(socket, "node", "create", "vnode1").returncode == 0
    created = await wait_record(waltd, of_node("vnode.created", "vnode1"))
    mac = created["mac"]
    (first,) = qemu_pids(mac)

    os.kill(first, signal.SIGKILL)  # QEMU dies: the node is down, QEMU comes back
    exited = await wait_record(waltd, of_node("vnode.exited", "vnode1"))
    assert exited["status"] != 0
    down = await wait_record(waltd, is_event("node.down", mac=mac))
    assert down["name"] == "vnode1"
    await wait_record(waltd, of_node("vnode.started", "vnode1"), after=1, timeout_s=20)
    (second,) = qemu_pids(mac)
    assert second != first

    # the daemon killed outright: its QEMU dies with it; the next daemon starts it again
    waltd.process.kill()
    await waltd.process.wait()
    await until(lambda: not qemu_pids(mac), what="QEMU to end with its daemon", timeout_s=10)
    waltd2, socket = await start(lab, "waltd2")
    started = await wait_record(waltd2, of_node("vnode.started", "vnode1"), timeout_s=30)
    assert started["mac"] == mac and qemu_pids(mac)
    assert (await link(lab, tap_name(mac)) or {}).get("master") == lab.bridge
    await wait_record(waltd2, is_lease(mac), timeout_s=120)
    assert walt(socket, "node", "remove", "vnode1").returncode == 0
    await lab.stop(waltd2)
    await until(lambda: not qemu_pids(mac), what="QEMU to end", timeout_s=10)
