"""`make demo` end to end: the lab, waltd, two nodes, a search, then Ctrl-C tears it down."""

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
    assert "User         | Image name" in text
    assert "local:waltplatform/pc-x86-64-default" in text
    assert "waltd exited with status 0" in text and "lab removed" in text
    prefix = re.search(r"== lab (\w+):", text)
    assert prefix is not None
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix.group(1) not in netns
    assert not os.path.exists(f"/tmp/waltd-lab-{prefix.group(1)}")
