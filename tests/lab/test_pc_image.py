"""The bootable pc-x86-64 default image (lab/pc_image.py): built from Debian packages,
exported by ganesha, network-booted by QEMU through iPXE, TFTP and HTTP, up to its booted
report. No waltd here: the test lays out the exports root as the contract says, with
dnsmasq, ganesha and an HTTP stand-in (lab/boot_http.py) of its own."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_asyncio

from lab import (
    Lab,
    LabProcess,
    NfsExport,
    boot_http,
    configs,
    exportable_mount,
    fsid_of,
    ganesha,
    image_id,
)
from lab.default_images import DefaultImage
from lab.pc_image import (
    BOOTED_MARKER,
    MODEL,
    NFS_MOUNTED_MARKER,
    CpioEntry,
    applet_links,
    build_pc_image,
    kernel_package,
    load_order,
    newc_archive,
)
from tests.support.wait import until
from waltd.provision.boot import bootstrap_ipxe

pytestmark = pytest.mark.lab
in_module_loop = pytest.mark.asyncio(loop_scope="module")

HTTP_PORT = 80
BOOT_TIMEOUT_S = 240.0
MAX_IMAGE_BYTES = 32 * 2**20


def test_kernel_package_is_read_from_apt_cache_depends() -> None:
    text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n"
    assert kernel_package(text) == ("linux-image-6.1.0-57-amd64", "6.1.0-57")


def test_modules_load_after_their_dependencies() -> None:
    depends = {"nfsv3": ["nfs", "sunrpc"], "nfs": ["sunrpc"], "sunrpc": [], "other": []}
    assert load_order(depends, ["nfsv3"]) == ["sunrpc", "nfs", "nfsv3"]
    with pytest.raises(Exception, match="no module lockd \\(needed by nfs\\)"):
        load_order({"nfs": ["lockd"]}, ["nfs"])
    with pytest.raises(Exception, match="cycle: a -> b -> a"):
        load_order({"a": ["b"], "b": ["a"]}, ["a"])


@in_module_loop
async def test_newc_archive_is_what_cpio_reads(lab: Lab) -> None:
    """Checked against busybox's cpio (the format the kernel unpacks)."""
    entries = [
        CpioEntry("bin/", 0o755),
        CpioEntry("bin/tool", 0o755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("bin/sh", 0o777, target="/bin/busybox"),
        CpioEntry("odd", 0o644, b"x"),
    ]
    archive = newc_archive(entries)
    assert newc_archive(entries) == archive  # the same entries, the same bytes
    (lab.root / "a.cpio").write_bytes(archive)
    out = (await lab.run(["busybox", "cpio", "-t", "-v", "-F", str(lab.root / "a.cpio")])).stdout
    listed = [
        (line.split()[0], line.split()[1], line.split(maxsplit=5)[5]) for line in out.splitlines()
    ]
    assert listed == [
        ("drwxr-xr-x", "0/0", "bin"),
        ("-rwxr-xr-x", "0/0", "bin/tool"),
        ("lrwxrwxrwx", "0/0", "bin/sh -> /bin/busybox"),
        ("-rw-r--r--", "0/0", "odd"),
    ]
    with pytest.raises(ValueError, match="invalid path"):
        newc_archive([CpioEntry("../etc/passwd", 0o644, b"")])


def test_applet_links_leave_out_busybox_and_init() -> None:
    assert applet_links("bin/busybox\nbin/sh\nsbin/init\nusr/bin/wget\n") == [
        "bin/sh",
        "usr/bin/wget",
    ]
    with pytest.raises(Exception, match="unexpected busybox applet path"):
        applet_links("../../etc/x\n")


class Stages:
    """When each boot stage was first seen in the logs, counted from QEMU's start."""

    def __init__(self, started: float, logs: dict[str, LabProcess], node_ip: str) -> None:
        self._started = started
        self._logs = logs
        # (stage, log, text that shows it), in boot order; logs absent are not watched
        marks = [
            ("iPXE running", "qemu", "iPXE initialising devices"),
            ("bootstrap.ipxe sent (TFTP)", "dnsmasq", "bootstrap.ipxe"),
            ("start.ipxe sent (TFTP)", "dnsmasq", "start.ipxe"),
            ("initrd fetched (HTTP)", "http", "GET /boot/initrd.img"),
            ("initrd fetched (TFTP)", "dnsmasq", "initrd.img"),
            ("kernel running", "qemu", "Linux version"),
            ("NFS root mounted", "qemu", NFS_MOUNTED_MARKER),
            ("marker on the console", "qemu", BOOTED_MARKER),
            ("booted reported (HTTP)", "http", f"{boot_http.BOOTED_LINE} {node_ip}"),
        ]
        self._marks = [mark for mark in marks if mark[1] in logs]
        self.last = self._marks[-1][0]
        self.seen: dict[str, float] = {}

    def check(self) -> bool:
        """Note the stages seen since the last check; whether the last one was seen."""
        texts = {name: proc.log.read_text(errors="replace") for name, proc in self._logs.items()}
        for stage, log, text in self._marks:
            if stage not in self.seen and text in texts[log]:
                self.seen[stage] = time.monotonic() - self._started
        return self.last in self.seen

    def report(self) -> str:
        """One line a stage seen: its time, its name."""
        return "\n".join(f"{t:7.2f} s  {stage}" for stage, t in self.seen.items())


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)  # dnsmasq reads as nobody
    path.symlink_to(target)


async def _boot(lab: Lab, image: str, qemu: str, *, http: bool) -> tuple[Stages, str]:
    """Network-boot a QEMU node from `image` until its marker (and, with `http`, its booted
    report over HTTP; without, no HTTP server: iPXE falls back to TFTP); its boot stages
    and console. The layout of the exports root is made here as waltd's exports service
    would, and removed after."""
    b, c = lab.subnet.network_address.packed[1:3]
    mac, hexhyp = f"52:54:00:{b:02x}:{c:02x}:fe", f"52-54-00-{b:02x}-{c:02x}-fe"
    node_ip = lab.subnet.network_address + 10
    root = lab.root  # the exports root R of the contract
    ident = await image_id(lab, image)
    async with exportable_mount(lab, image) as fs:
        assert fs == root / "images" / ident / "fs"
        shutil.copytree(fs / "boot" / MODEL, root / "boot" / ident / MODEL)
        _link(root / "nodes" / mac / "fs", f"../../images/{ident}/fs")
        _link(root / "nodes" / mac / "tftp", f"../../boot/{ident}/{MODEL}")
        _link(root / "nodes" / "by-ip" / str(node_ip), f"../{mac}")
        _link(root / "tftp" / "nodes" / hexhyp, f"../../nodes/{mac}/tftp")
        shutil.copy(Path("/usr/lib/ipxe/undionly.kpxe"), root / "tftp" / "undionly.kpxe")
        bootstrap = bootstrap_ipxe(HTTP_PORT, root / "nodes")
        (root / "tftp" / "bootstrap.ipxe").write_text(bootstrap)
        servers: list[LabProcess] = []
        try:
            async with ganesha(lab) as nfs:
                pseudo = root / "nodes" / mac / "fs"
                await nfs.set_exports([NfsExport(pseudo, fs, str(node_ip), fsid_of(ident))])
                # an IPv6 prefix for dnsmasq's router advertisements: without one, iPXE
                # waits ~30 s for a router at its second DHCP
                ula = ["addr", "replace", f"fd00:{b:x}:{c:x}::1/64", "dev", lab.bridge, "nodad"]
                await lab.run(["ip", "-n", lab.server_netns, *ula])
                tap = await lab.add_tap()  # its name, unique in the lab, names the logs
                folder = root / f"dnsmasq-{tap}"
                folder.mkdir()
                conf = folder / "dnsmasq.conf"
                conf.write_text(
                    configs.pxe_dnsmasq_conf(
                        interface=lab.bridge,
                        dhcp_range=lab.dhcp_range,
                        netmask=lab.subnet.netmask,
                        tftp_root=root / "tftp",
                        folder=folder,
                        hosts=[(mac, node_ip)],
                    )
                )
                argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
                dnsmasq = await lab.spawn(f"dnsmasq-{tap}", argv, netns=lab.server_netns)
                servers.append(dnsmasq)
                await lab.wait_listening(dnsmasq, 67, udp=True)
                logs = {"dnsmasq": dnsmasq}
                if http:
                    argv = [sys.executable, "-I", boot_http.__file__, str(root)]
                    argv += [str(lab.server_ip), str(HTTP_PORT)]
                    logs["http"] = await lab.spawn(f"http-{tap}", argv, netns=lab.server_netns)
                    servers.append(logs["http"])
                    await lab.wait_listening(logs["http"], HTTP_PORT)

                argv = [qemu, "-accel", "tcg", "-nographic", "-m", "512", "-smp", "1"]
                argv += ["-no-reboot", "-boot", "n"]
                argv += ["-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
                argv += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no"]
                started = time.monotonic()
                vm = await lab.spawn(f"qemu-{tap}", argv, netns=lab.server_netns)
                stages = Stages(started, {**logs, "qemu": vm}, str(node_ip))
                try:
                    await until(
                        stages.check,
                        what=f"the boot up to {stages.last}",
                        timeout_s=BOOT_TIMEOUT_S,
                        alive=lambda: vm.process.returncode is None,
                        details=lambda: f"{stages.report()}\n{vm.log_tail(40)}",
                    )
                finally:
                    await lab.stop(vm)
                return stages, vm.log.read_text(errors="replace")
        finally:
            for proc in servers:
                await lab.stop(proc)
            for folder in ("boot", "nodes", "tftp"):
                shutil.rmtree(root / folder)


@pytest.fixture(scope="module")
def boot_tools(lab_host: None, require_tool: Callable[[str], str]) -> str:
    """The tools of a boot, or a skip (a failure in CI); QEMU's path."""
    for tool in ("apt-get", "buildah", "podman", "dnsmasq", "ganesha.nfsd", "rpcbind"):
        require_tool(tool)
    return require_tool("qemu-system-x86_64")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pc_image(lab: Lab, boot_tools: str, package_cache: Path) -> DefaultImage:
    """The bootable image, built once for the module."""
    return await build_pc_image(lab, package_cache)


@in_module_loop
async def test_the_pc_image_boots_in_qemu_from_nfs(
    lab: Lab, boot_tools: str, pc_image: DefaultImage
) -> None:
    image = pc_image
    inspect = ["podman", "image", "inspect", "--format", "{{json .Labels}} {{.Size}}"]
    labels, size = (await lab.run([*inspect, image.local], env=lab.containers_env)).stdout.split()
    assert '"walt.node.models":"pc-x86-64"' in labels and int(size) < MAX_IMAGE_BYTES

    stages, console = await _boot(lab, image.local, boot_tools, http=True)
    print(f"\nboot stages of {image.reference} (QEMU -accel tcg):\n{stages.report()}")
    assert f"{BOOTED_MARKER} {MODEL}" in console
    mounts = [line for line in console.splitlines() if "mount" in line]
    assert "(NFSv3)" in console, "\n".join(mounts)  # v4 is the fallback


@in_module_loop
async def test_without_http_the_kernel_comes_over_tftp(
    lab: Lab, boot_tools: str, pc_image: DefaultImage
) -> None:
    stages, console = await _boot(lab, pc_image.local, boot_tools, http=False)
    print(f"\nboot stages over TFTP only:\n{stages.report()}")
    assert "initrd fetched (TFTP)" in stages.seen
    assert f"{BOOTED_MARKER} {MODEL}" in console
