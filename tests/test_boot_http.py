"""The HTTP boot server (provision/boot_http.py) and TFTP through the per-node layout, with
the real daemon on a lab's node network.

Real components: waltd and its dnsmasq in the lab's server namespace, simulated nodes that
get their leases with busybox udhcpc and fetch from their own namespaces (busybox wget and
tftp, and a small Python HTTP client for what busybox cannot send: Range, HEAD, raw paths).
The boot files are put in place with provision/boot.py's own functions on the daemon's
exports root, as the exports service does.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lab.lab import Lab, LabError, Node
from tests.support.daemon import is_event, walt
from tests.support.lab_daemon import lab_config, records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.wait import until
from waltd.provision.boot import WAITING_IPXE, copy_boot_files
from waltd.provision.boot_http import MAX_CONNECTIONS_PER_ADDRESS
from waltd.provision.layout import set_node_links, set_node_waiting

pytestmark = pytest.mark.lab

MODEL = "pc-x86-64"
ID_A = "a" * 64
ID_B = "b" * 64

# Sends one request exactly as given (no path normalisation) and prints the answer as JSON.
CLIENT = """
import base64, http.client, json, sys
host, method, path, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
conn = http.client.HTTPConnection(host, 80, timeout=10)
conn.putrequest(method, path, skip_accept_encoding=True)
for key, value in extra.items():
    conn.putheader(key, value)
conn.endheaders()
answer = conn.getresponse()
body = answer.read()
print(json.dumps({"status": answer.status, "headers": dict(answer.getheaders()),
                  "body": base64.b64encode(body).decode()}))
"""

# Opens N connections and keeps them (each served: a request answered on it), then one
# more: the server closes that one without reading a request.
HOLDER = """
import socket, sys
host, count = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(count):
    sock = socket.create_connection((host, 80), timeout=10)
    sock.sendall(b"GET /boot/missing HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 404")
    held.append(sock)
print("held")
extra = socket.create_connection((host, 80), timeout=10)
try:
    extra.sendall(b"GET /boot/missing HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    print("refused" if extra.recv(4096) == b"" else "served")
except ConnectionResetError:
    print("refused")
"""


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with running_lab("dnsmasq") as lab:
        yield lab


async def _request(
    lab: Lab, node: Node, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    argv = [sys.executable, "-c", CLIENT, str(lab.server_ip), method, path]
    result = await lab.run([*argv, json.dumps(headers or {})], netns=node.netns)
    answer = json.loads(result.stdout)
    return answer["status"], answer["headers"], base64.b64decode(answer["body"])


async def _wget(lab: Lab, node: Node, path: str) -> str:
    url = f"http://{lab.server_ip}{path}"
    result = await lab.run(["busybox", "wget", "-q", "-O", "-", url], netns=node.netns)
    return result.stdout


def _image(folder: Path, marker: str) -> Path:
    """An image root whose /boot/<model>/ holds a start script and a kernel of its own."""
    files = folder / "boot" / MODEL
    (files / "sub").mkdir(parents=True)
    (files / "start.ipxe").write_text(f"#!ipxe\necho image {marker}\n")
    (files / "vmlinuz").write_bytes(bytes(range(256)) * 64 + marker.encode())
    (files / "sub" / "initrd.img").write_text(f"initrd {marker}")
    (folder / "etc").mkdir()
    (folder / "etc" / "hostname").write_text(f"secret of {marker}\n")
    return folder


def _node_row(folder: Path, mac: str) -> dict[str, Any]:
    listing = json.loads(walt(folder / "api.sock", "node", "show", "--json").stdout)
    return next(row for row in listing["nodes"] if row["mac"] == mac)


async def test_nodes_fetch_their_own_boot_files_and_report_booted(lab: Lab) -> None:
    folder = lab.root / "waltd"
    folder.mkdir()
    waltd = await start_waltd(lab, lab_config(lab, folder))
    await wait_record(waltd, is_event("dnsmasq_started"))
    listening = await wait_record(waltd, is_event("boot_http_listening"))
    assert (listening["address"], listening["port"]) == (str(lab.server_ip), 80)
    root = folder / "exports"

    a, b, stranger = await lab.add_node(), await lab.add_node(), await lab.add_node()
    ip_a = await lab.node_dhcp(a, vendor_class=f"walt.node.{MODEL}")
    ip_b = await lab.node_dhcp(b, vendor_class=f"walt.node.{MODEL}")
    await lab.node_dhcp(stranger)  # no walt class: an unknown device, no node
    name_a = (await wait_record(waltd, is_event("node.detected", mac=a.mac)))["name"]
    name_b = (await wait_record(waltd, is_event("node.detected", mac=b.mac)))["name"]
    await wait_record(waltd, is_event("unknown_device", mac=stranger.mac))

    # The exports service gives the waiting nodes the server's "wait and retry" script;
    # then this test puts in place what it does for ready nodes: boot files, node links.
    for node in (a, b):
        tftp = root / "nodes" / node.mac / "tftp"
        await until(
            lambda t=tftp: t.is_symlink() and os.readlink(t) == "../../boot/waiting",
            what=f"the waiting layout of {node.name}",
            details=lambda: waltd.log_tail(40),
        )
    for image_id, marker in ((ID_A, "A"), (ID_B, "B")):
        image = _image(lab.root / f"image-{marker}", marker)
        copy_boot_files(image, MODEL, root / "boot" / image_id / MODEL)
        # the image's mount, for the TFTP escape check below
        (root / "images" / image_id).mkdir(parents=True)
        (root / "images" / image_id / "fs").symlink_to(image)
    set_node_links(root, a.mac, image_id=ID_A, model=MODEL, ip=str(ip_a), name=name_a)
    set_node_links(root, b.mac, image_id=ID_B, model=MODEL, ip=str(ip_b), name=name_b)

    # Each node gets its own files for the same path.
    assert await _wget(lab, a, "/boot/start.ipxe") == "#!ipxe\necho image A\n"
    assert await _wget(lab, b, "/boot/start.ipxe") == "#!ipxe\necho image B\n"
    assert await _wget(lab, a, "/boot/sub/initrd.img") == "initrd A"

    # Range (sendfile underneath) and HEAD.
    kernel = (root / "boot" / ID_A / MODEL / "vmlinuz").read_bytes()
    part = {"Range": "bytes=250-261"}
    status, headers, body = await _request(lab, a, "GET", "/boot/vmlinuz", part)
    assert (status, body) == (206, kernel[250:262])
    assert headers["Content-Range"] == f"bytes 250-261/{len(kernel)}"
    status, headers, body = await _request(lab, a, "GET", "/boot/vmlinuz", {"Range": "bytes=-1"})
    assert (status, body) == (206, b"A")
    status, headers, body = await _request(lab, a, "HEAD", "/boot/vmlinuz")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(kernel)))

    # Nothing else is reachable: another node's files, the image, folders, odd paths.
    for path in (
        f"/boot/../../{ID_B}/{MODEL}/start.ipxe",
        f"/boot/%2e%2e/%2e%2e/{ID_B}/{MODEL}/start.ipxe",
        f"/boot/..%2f..%2f{ID_B}/{MODEL}/start.ipxe",
        "/boot/%2fetc%2fhostname",
        "/boot/sub",
        "/boot/sub/",
        "/boot/",
        "/boot/missing",
        "/boot/start.ipxe%00",
        "/boot/" + "x" * 2000,
        f"/boot/../../../images/{ID_A}/fs/etc/hostname",
    ):
        status, _, body = await _request(lab, a, "GET", path)
        assert status == 404 and b"secret" not in body and b"image B" not in body, path
    status, _, _ = await _request(lab, a, "POST", "/boot/start.ipxe")
    assert status == 405
    status, _, _ = await _request(lab, stranger, "GET", "/boot/start.ipxe")
    assert status == 404  # an unknown device is no node

    # TFTP through the same layout: dnsmasq follows the node's links to the server's copy,
    # and refuses a path climbing out of its root towards the image.
    hexhyp_a = a.mac.replace(":", "-")
    got = lab.root / "tftp-got"
    tftp = ["busybox", "tftp", "-g", "-l", str(got)]
    await lab.run([*tftp, "-r", f"nodes/{hexhyp_a}/start.ipxe", str(lab.server_ip)], netns=a.netns)
    assert got.read_text() == "#!ipxe\necho image A\n"
    got.unlink()
    # dnsmasq's hook reports the finished transfer (its file as dnsmasq resolved it)
    sent = await wait_record(waltd, is_event("tftp_transfer", ip=str(ip_a)))
    assert sent["file"].endswith("/start.ipxe") and sent["size"] == len("#!ipxe\necho image A\n")
    escape = f"nodes/{hexhyp_a}/../../../nodes/{a.mac}/fs/etc/hostname"
    with pytest.raises(LabError, match="Permission denied"):  # dnsmasq refuses any `..`
        await lab.run([*tftp, "-r", escape, str(lab.server_ip)], netns=a.netns)
    assert not got.exists() or b"secret" not in got.read_bytes()

    # Booted: only from a node's address; the node, and only it, is `booted`.
    status, _, _ = await _request(lab, stranger, "GET", "/boot/booted")
    assert status == 404
    assert await _wget(lab, a, "/boot/booted") == "ok\n"
    record = await wait_record(waltd, is_event("node.booted", mac=a.mac))
    assert (record["name"], record["ip"]) == (name_a, str(ip_a))
    assert _node_row(folder, a.mac)["state"] == "booted"
    assert _node_row(folder, b.mac)["state"] != "booted"
    assert await _wget(lab, a, "/boot/booted") == "ok\n"  # again: no second record
    booted = [r for r in records(waltd) if r.get("event") == "node.booted"]
    assert [r["mac"] for r in booted] == [a.mac]

    # A node whose image is not ready gets the server's "wait and retry" script, over
    # TFTP as over HTTP.
    set_node_waiting(root, b.mac, ip=str(ip_b), name=name_b)
    hexhyp_b = b.mac.replace(":", "-")
    await lab.run([*tftp, "-r", f"nodes/{hexhyp_b}/start.ipxe", str(lab.server_ip)], netns=b.netns)
    assert got.read_text() == WAITING_IPXE
    assert await _wget(lab, b, "/boot/start.ipxe") == WAITING_IPXE

    # Connections from one address are bounded: one more is closed on arrival, and the
    # places come back once the held ones close.
    held = await lab.run(
        [sys.executable, "-c", HOLDER, str(lab.server_ip), str(MAX_CONNECTIONS_PER_ADDRESS)],
        netns=a.netns,
    )
    assert held.stdout.split() == ["held", "refused"]
    refused = await wait_record(waltd, is_event("boot_http_connection_refused"))
    assert refused["address"] == str(ip_a)
    # (the exports service gave `a`, booted with no image in the database, the waiting script)
    status, _, _ = await _request(lab, a, "GET", "/boot/start.ipxe")
    assert status == 200

    await lab.stop(waltd)
    assert waltd.process.returncode == 0
    assert not any(r.get("event") == "service_crashed" for r in records(waltd))


async def test_a_new_http_port_is_taken_on_reload(lab: Lab) -> None:
    """`boot.http-port` is reloadable: the server listens on the new port, the old one is
    closed, and the bootstrap dnsmasq sends names the new one."""
    folder = lab.root / "waltd"
    folder.mkdir()
    conf = lab_config(lab, folder, boot={"http-port": 8080})
    waltd = await start_waltd(lab, conf)
    first = await wait_record(waltd, is_event("boot_http_listening"))
    assert first["port"] == 8080
    await wait_record(waltd, is_event("daemon_ready"))
    bootstrap = folder / "exports" / "tftp" / "bootstrap.ipxe"
    assert "set walt-http http://${next-server}:8080" in bootstrap.read_text().splitlines()

    conf.write_text(conf.read_text().replace("http-port: 8080", "http-port: 8081"))
    waltd.process.send_signal(signal.SIGHUP)
    await wait_record(waltd, is_event("config_reloaded"))
    second = await wait_record(waltd, is_event("boot_http_listening"), after=1)
    assert second["port"] == 8081
    await lab.wait_listening(waltd, 8081)
    assert "set walt-http http://${next-server}:8081" in bootstrap.read_text().splitlines()
    node = await lab.add_node()
    await lab.node_dhcp(node)
    probe = [sys.executable, "-c", "import socket,sys; socket.create_connection(sys.argv[1:3], 5)"]
    await lab.run([*probe, str(lab.server_ip), "8081"], netns=node.netns)
    with pytest.raises(LabError, match="Connection refused"):
        await lab.run([*probe, str(lab.server_ip), "8080"], netns=node.netns)
    await lab.stop(waltd)
    assert waltd.process.returncode == 0
