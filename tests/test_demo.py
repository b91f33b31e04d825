"""`make demo` end to end: the lab, waltd, a QEMU virtual node that boots its default image,
simulated nodes that get theirs, the node table, a search, the node's console, then Ctrl-C
tears it all down (QEMU included)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.support.daemon import ROOT

pytestmark = pytest.mark.lab

TOOLS = (
    "dnsmasq",
    "busybox",
    "buildah",
    "skopeo",
    "podman",
    "docker-registry",
    "apt-get",
    "ganesha.nfsd",
    "rpcbind",
    "qemu-system-x86_64",
)


def _lab_processes(root: str) -> list[str]:
    """The command lines of the processes naming the lab's folder (QEMU's QMP socket is in
    it, as are waltd's and the registries' files)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        if root in argv:
            found.append(argv)
    return found


def test_demo_tells_the_story_and_cleans_up(package_cache: Path) -> None:
    require_root()
    for tool in TOOLS:
        require_tool(tool)
    began = time.monotonic()
    demo = subprocess.Popen(
        [sys.executable, "-m", "lab.demo", "--package-cache", str(package_cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: list[str] = []
    assert demo.stdout is not None
    try:
        # the demo's own bound on the story is 240 s; the package download (first run) more
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "the lab keeps running" in line:
                break
        text = "\n".join(lines)
        assert "the lab keeps running" in text, text
        took = time.monotonic() - began
        prefix = re.search(r"== lab (\w+):", text)
        assert prefix is not None
        root = f"/tmp/waltd-lab-{prefix.group(1)}"
        assert any("qemu-system-x86_64" in p for p in _lab_processes(root)), text
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text += "\n" + rest
    assert demo.returncode == 0, text
    # vnode1 created through the CLI, detected as a PC, exported, booted
    assert "Node vnode1 created" in text
    assert re.search(r"node\.detected name=vnode1 model=pc-x86-64", text)
    assert re.search(r"node\.exported name=vnode1 ", text)
    assert re.search(r"node\.booted .*name=vnode1 model=pc-x86-64", text)
    assert re.search(r"vnode1: \d+ console lines \(walt node console vnode1\)", text)
    assert not re.search(r"vnode\.console ", text)  # counted, not one line each
    assert re.search(
        r"node\.detected .*model=rpi-3-b-plus .*user_classes=walt.node.rpi-3-b-plus", text
    )
    # each default image once, the Raspberry Pi one from the registry with a password
    assert len(re.findall(r"image\.fetch\.done model=pc-x86-64 .*source=local", text)) == 1
    assert len(re.findall(r"image\.fetch\.done model=rpi-3-b-plus .*source=private", text)) == 1
    assert re.search(r"image\.fetch\.source_failed model=rpi-3-b-plus .*source=local", text)
    assert "== vnode1 booted, 2 simulated nodes ready" in text
    assert re.search(r"vnode1 +\| pc-x86-64 +\| waltplatform/pc-x86-64-default +\| booted", text)
    assert re.search(
        r"rpi-3-b-plus-\w+ +\| rpi-3-b-plus +\| waltplatform/rpi-3-b-plus-default +\| ready", text
    )
    assert "Unknown devices (not WalT nodes):" in text
    assert "User         | Image name" in text
    assert "local:demo/debian-tests" in text
    # the node's console: its root came over NFS, its init ran
    assert "walt-initramfs: NFS root mounted" in text
    assert "WALT NODE BOOTED vnode1" in text
    # the server's password went to no terminal line
    assert "demo password of the private registry" not in text
    assert "waltd exited with status 0" in text and "lab removed" in text
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix.group(1) not in netns  # the taps were in the server namespace
    assert not os.path.exists(root)
    assert _lab_processes(root) == []  # QEMU, waltd, dnsmasq, ganesha, registries
    print(f"the demo told its story in {took:.1f} s")
