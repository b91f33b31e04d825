"""dnsmasq's dhcp-script: the message it writes, and the script dnsmasq runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tests.support.daemon import ROOT
from waltd import dhcp_event
from waltd.provision.dnsmasq import write_hook

# what dnsmasq's environment may carry: any text, including the surrogate escapes Python
# gives to bytes that are not UTF-8
_TEXT = st.text(st.characters(codec=None), max_size=40)


@given(
    action=st.sampled_from(["add", "old", "del"]),
    mac=_TEXT,
    ip=_TEXT,
    hostname=_TEXT,
    vendor=st.none() | _TEXT,
    users=st.lists(_TEXT, max_size=4),
)
def test_the_message_is_the_json_of_the_event(
    action: str, mac: str, ip: str, hostname: str, vendor: str | None, users: list[str]
) -> None:
    env = {f"DNSMASQ_USER_CLASS{i}": u for i, u in enumerate(users)}
    if vendor is not None:
        env["DNSMASQ_VENDOR_CLASS"] = vendor
    event = dhcp_event.build_event([action, mac, ip, hostname], env)
    data = dhcp_event.encode(event)
    assert data == json.dumps(event).encode()
    assert json.loads(data) == event


def test_the_hook_imports_nothing_costly() -> None:
    """The hook runs once per lease, one lease after another: `json` and `socket` (their
    Python halves import `re` and `enum`), `pathlib` or anything of waltd's beyond its package
    would cost more than the rest of a call."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import waltd.dhcp_event;"
        "print([m for m in sorted(sys.modules) if m in ('json', 'socket', 'pathlib', 're',"
        " 'enum', 'tempfile') or (m.startswith('waltd') and m not in ('waltd',"
        " 'waltd.dhcp_event'))])"
    )
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_written_hook_spools_what_dnsmasq_gave(tmp_path: Path) -> None:
    hook = write_hook(tmp_path / "dhcp-hook")
    assert stat.S_IMODE(hook.stat().st_mode) == 0o700
    spool = tmp_path / "spool"
    env = {
        "PATH": os.environ["PATH"],  # dnsmasq's own environment: none of ours for Python
        dhcp_event.SPOOL_ENV: str(spool),
        "DNSMASQ_USER_CLASS0": "walt.node.pc-x86-64",
    }
    subprocess.run([str(hook), "add", "52:54:00:00:00:07", "10.0.0.7"], env=env, check=True)
    (written,) = spool.iterdir()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    event = json.loads(written.read_bytes())
    assert event["mac"] == "52:54:00:00:00:07" and event["user_classes"] == ["walt.node.pc-x86-64"]
    # `init` (dnsmasq's lease dump request) writes nothing
    subprocess.run([str(hook), "init"], env=env, check=True)
    assert len(list(spool.iterdir())) == 1
