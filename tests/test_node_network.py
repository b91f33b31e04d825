"""waltd on a real node network: its own dnsmasq, simulated nodes, lease events end to end.

Real components: network namespaces and a bridge, dnsmasq run by waltd, busybox udhcpc in
each node's namespace, the `waltd-dhcp-event` hook called by dnsmasq.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from lab.lab import Lab
from tests.support.daemon import is_event, is_lease, running, spool_of, walt
from tests.support.lab_daemon import lab_config, records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.wait import until
from waltd import dhcp_event
from waltd.provision.dnsmasq import host_entry, name_option

pytestmark = pytest.mark.lab


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with running_lab("dnsmasq") as lab:
        yield lab


async def test_nodes_lease_and_reach_waltd_with_their_model(lab: Lab) -> None:
    folder = lab.root / "waltd"
    folder.mkdir()
    # debug: the renewal below, soon after the first lease, is a repeat (a debug record)
    waltd = await start_waltd(lab, lab_config(lab, folder), log_level="debug")
    await wait_record(waltd, is_event("daemon_ready"))
    await wait_record(waltd, is_event("dnsmasq_started"))

    pc, rpi, other = (await lab.add_node(), await lab.add_node(), await lab.add_node())
    ip_pc = await lab.node_dhcp(pc, vendor_class="walt.node.pc-x86-64")
    ip_rpi = await lab.node_dhcp(rpi, user_class="walt.node.rpi-3-b-plus")
    ip_other = await lab.node_dhcp(other)  # busybox's own vendor class: not a node
    for ip in (ip_pc, ip_rpi, ip_other):
        assert ip in lab.subnet and lab.dhcp_range[0] <= ip <= lab.dhcp_range[1]

    det_pc = await wait_record(waltd, is_event("node.detected", mac=pc.mac))
    assert (det_pc["model"], det_pc["ip"]) == ("pc-x86-64", str(ip_pc))
    assert det_pc["vendor_class"] == "walt.node.pc-x86-64"
    det_rpi = await wait_record(waltd, is_event("node.detected", mac=rpi.mac))
    assert (det_rpi["model"], det_rpi["ip"]) == ("rpi-3-b-plus", str(ip_rpi))
    assert det_rpi["user_classes"] == ["walt.node.rpi-3-b-plus"]
    unknown = await wait_record(waltd, is_event("unknown_device", mac=other.mac))
    assert unknown["vendor_class"].startswith("udhcp")

    # The same records through the API, as `walt log show` gives them.
    res = walt(folder / "api.sock", "log", "show", "--json", "--limit", "0")
    streamed = [json.loads(line) for line in res.stdout.splitlines()]
    assert {(e["event"], e.get("mac")) for e in streamed} >= {
        ("node.detected", pc.mac),
        ("node.detected", rpi.mac),
        ("unknown_device", other.mac),
    }
    status = json.loads(walt(folder / "api.sock", "status", "--json").stdout)
    assert status["nodes"] == 2 and status["node_network"] == lab.bridge

    # A detected node became a known host: dnsmasq read its files without a restart, the
    # lease it gave earlier is still there, and its answer now names the node.
    run, file = folder / "run" / "dnsmasq", pc.mac.replace(":", "-")
    assert (run / "hosts.d" / file).read_text() == host_entry(pc.mac)
    assert (run / "options.d" / file).read_text() == name_option(pc.mac, det_pc["name"])
    again = await lab.node_dhcp(pc, vendor_class="walt.node.pc-x86-64")
    assert (again, pc.host_name) == (ip_pc, det_pc["name"])
    renewed = await wait_record(waltd, is_lease(pc.mac))
    assert renewed["model"] == "pc-x86-64"
    # ...and dnsmasq reported no renamed lease before that answer (events come in order): a
    # name in the host entry would have been one more lease event
    assert [r for r in records(waltd) if is_lease(pc.mac)(r)] == [renewed]
    # at debug level dnsmasq's line for each DHCP message is relayed
    acks = [r["line"] for r in records(waltd) if r.get("event") == "dnsmasq_output"]
    assert any("DHCPACK" in line and pc.mac in line for line in acks)
    leases = (folder / "state" / "dnsmasq" / "leases").read_text()
    assert all(n.mac in leases for n in (pc, rpi, other))
    assert next(s for s in status["services"] if s["name"] == "dnsmasq")["restarts"] == 0

    await lab.stop(waltd)
    assert waltd.process.returncode == 0
    assert not any(r.get("event") == "service_crashed" for r in records(waltd))


async def test_without_node_network_nobody_gets_a_lease(lab: Lab) -> None:
    folder = lab.root / "waltd"
    folder.mkdir()
    conf = lab_config(lab, folder)
    data = yaml.safe_load(conf.read_text())
    del data["network"]
    conf.write_text(yaml.safe_dump(data))
    waltd = await start_waltd(lab, conf)
    await wait_record(waltd, is_event("no_node_network"))
    await wait_record(waltd, is_event("daemon_ready"))
    node = await lab.add_node()
    with pytest.raises(Exception, match="no DHCP lease"):
        await lab.node_dhcp(node, vendor_class="walt.node.pc-x86-64", tries=2)
    assert not any(r.get("event") == "dnsmasq_started" for r in records(waltd))
    await lab.stop(waltd)


async def test_dnsmasq_failure_is_reported_and_the_daemon_stays_up(lab: Lab) -> None:
    """A node network on a missing interface: dnsmasq's own reason in the log, retries with
    backoff, and the API still answers."""
    folder = lab.root / "waltd"
    folder.mkdir()
    conf = lab_config(lab, folder)
    data = yaml.safe_load(conf.read_text())
    data["network"]["walt-net"]["interface"] = "no-such-if"
    conf.write_text(yaml.safe_dump(data))
    waltd = await start_waltd(lab, conf)
    crash = await wait_record(waltd, is_event("service_crashed", service="dnsmasq"))
    assert "dnsmasq exited with status" in crash["error"]
    assert "no-such-if" in crash["error"]
    await wait_record(waltd, is_event("service_restart_scheduled", service="dnsmasq"))
    status = json.loads(walt(folder / "api.sock", "status", "--json").stdout)
    services = {s["name"]: s for s in status["services"]}
    assert services["api"]["state"] == "running" and services["detect"]["state"] == "running"
    assert services["dnsmasq"]["restarts"] >= 1
    await lab.stop(waltd)
    assert waltd.process.returncode == 0


def _dnsmasq_pids(conf: Path) -> list[int]:
    """The dnsmasq processes (main and helper) running with configuration file `conf`."""
    return running("dnsmasq", f"--conf-file={conf}")


def _owners(pids: list[int]) -> set[int]:
    owners = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile
            owners.add(Path(f"/proc/{pid}").stat().st_uid)
    return owners


def nobody_owns(pids: list[int]) -> bool:
    """Whether one of `pids` runs as `nobody` (dnsmasq once it dropped its privileges)."""
    return pwd.getpwnam("nobody").pw_uid in _owners(pids)


async def test_dnsmasq_dies_with_a_killed_waltd(lab: Lab) -> None:
    """dnsmasq drops to `nobody`, which clears PDEATHSIG: its keeper must still end it."""
    folder = lab.root / "waltd"
    folder.mkdir()
    waltd = await start_waltd(lab, lab_config(lab, folder))
    await wait_record(waltd, is_event("dnsmasq_started"))
    conf = folder / "run" / "dnsmasq" / "dnsmasq.conf"
    # at info level dnsmasq writes no line per DHCP message or router advert (they would be
    # relayed for nothing)
    assert {"quiet-dhcp", "quiet-ra"} <= set(conf.read_text().splitlines())
    try:
        # The keeper starts first; dnsmasq itself and its drop to nobody follow shortly.
        await until(lambda: nobody_owns(_dnsmasq_pids(conf)), what="dnsmasq as nobody", timeout_s=5)
        pids = _dnsmasq_pids(conf)
        assert pids
        waltd.process.kill()  # no clean-up code runs
        await waltd.process.wait()
        await until(lambda: not _dnsmasq_pids(conf), what="dnsmasq to end", timeout_s=5)
    finally:
        for pid in _dnsmasq_pids(conf):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_node_seen_while_dnsmasq_is_down_gets_its_host_entry(lab: Lab) -> None:
    """dnsmasq fails (missing interface) and waits to be restarted; a node arrives meanwhile,
    from the spool: the next start of dnsmasq writes its hosts.d entry."""
    folder = lab.root / "waltd"
    folder.mkdir()
    conf = lab_config(lab, folder)
    data = yaml.safe_load(conf.read_text())
    data["network"]["walt-net"]["interface"] = "no-such-if"
    conf.write_text(yaml.safe_dump(data))
    waltd = await start_waltd(lab, conf)
    await wait_record(waltd, is_event("service_crashed", service="dnsmasq"))
    mac = "52:54:00:aa:bb:01"
    event = dhcp_event.build_event(
        ["add", mac, str(lab.dhcp_range[0])], {"DNSMASQ_VENDOR_CLASS": "walt.node.pc-x86-64"}
    )
    dhcp_event.spool(dhcp_event.encode(event), str(spool_of(folder)))
    detected = await wait_record(waltd, is_event("node.detected", mac=mac))
    entry = folder / "run" / "dnsmasq" / "hosts.d" / mac.replace(":", "-")
    # The restart delay doubles from 1 s (with jitter): the next start comes within ~5 s.
    await until(entry.exists, what=f"{entry}", timeout_s=10)
    assert entry.read_text() == host_entry(mac)
    option = folder / "run" / "dnsmasq" / "options.d" / mac.replace(":", "-")
    assert option.read_text() == name_option(mac, detected["name"])
    await lab.stop(waltd)
    assert waltd.process.returncode == 0
