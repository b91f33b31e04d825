"""`make demo` end to end: the lab, waltd, nodes that get their default images, the node
table, a search, then Ctrl-C tears it down."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import require_root, require_tool
from tests.support.daemon import ROOT

pytestmark = pytest.mark.lab


def test_demo_tells_the_story_and_cleans_up() -> None:
    require_root()
    for tool in ("dnsmasq", "busybox", "buildah", "skopeo", "docker-registry"):
        require_tool(tool)
    demo = subprocess.Popen(
        [sys.executable, "-m", "lab.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: list[str] = []
    assert demo.stdout is not None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "the lab keeps running" in line:
                break
        text = "\n".join(lines)
        assert "the lab keeps running" in text, text
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text += "\n" + rest
    assert demo.returncode == 0, text
    assert re.search(r"node\.detected .*model=pc-x86-64", text)
    assert re.search(
        r"node\.detected .*model=rpi-3-b-plus .*user_classes=walt.node.rpi-3-b-plus", text
    )
    # each default image once, the Raspberry Pi one from the registry with a password
    assert len(re.findall(r"image\.fetch\.done model=pc-x86-64 .*source=local", text)) == 1
    assert len(re.findall(r"image\.fetch\.done model=rpi-3-b-plus .*source=private", text)) == 1
    assert re.search(r"image\.fetch\.source_failed model=rpi-3-b-plus .*source=local", text)
    assert "== 4 nodes ready" in text
    assert re.search(
        r"rpi-3-b-plus-\w+ +\| rpi-3-b-plus +\| waltplatform/rpi-3-b-plus-default +\| ready", text
    )
    assert "Unknown devices (not WalT nodes):" in text
    assert "User         | Image name" in text
    assert "local:demo/debian-tests" in text
    # the server's password went to no terminal line
    assert "demo password of the private registry" not in text
    assert "waltd exited with status 0" in text and "lab removed" in text
    prefix = re.search(r"== lab (\w+):", text)
    assert prefix is not None
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix.group(1) not in netns
    assert not os.path.exists(f"/tmp/waltd-lab-{prefix.group(1)}")
