"""A bootable `waltplatform/pc-x86-64-default`, built offline from Debian packages.

The image holds a small root filesystem (busybox-static and its applet links) whose
`/sbin/init` prints `WALT NODE BOOTED <hostname>` on the console, reports the boot to the
server (`GET <walt.http>/boot/booted`) and stays up, and `/boot/pc-x86-64/` with what the
node's iPXE loads: Debian's kernel (`vmlinuz`), an initramfs (`initrd.img`) and
`start.ipxe`, which uses the boot variables the server's bootstrap script sets
(`walt-server`, `walt-http`, `walt-nfsroot`).

The initramfs loads the few modules it needs (virtio network, NFS, overlay), asks for a
lease with the vendor class `walt.node.pc-x86-64`, mounts the NFS root read-only (NFSv3,
else v4), puts a tmpfs overlay on top (a writable root) and switches to it.

The packages come from the machine's apt sources (`apt-get download`, kept in a cache folder
and reused); the kernel is the one `linux-image-amd64` of the running release depends on.
Everything else is made here: the kernel package is read in Python (no 400 MB unpacking),
module dependencies come from each module's `.modinfo`, and the initramfs is a cpio archive
written in Python, so the image is the same from one build to the next.
"""

from __future__ import annotations

import asyncio
import gzip
import lzma
import os
import re
import secrets
import shutil
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lab.default_images import DefaultImage, vendor_class
from lab.images import build_image
from lab.lab import Lab, LabError

MODEL = "pc-x86-64"
IMAGE = f"docker.io/waltplatform/{MODEL}-default:latest"
# Printed on the console by the root's init once the node runs its image.
BOOTED_MARKER = "WALT NODE BOOTED"
# Printed by the initramfs once the root is mounted (stage timing, debugging).
NFS_MOUNTED_MARKER = "walt-initramfs: NFS root mounted"
# The modules the initramfs loads (their dependencies are added): the network card of
# QEMU's virtual nodes, the NFS client (v3 and v4), overlayfs.
MODULES = ("virtio_pci", "virtio_net", "nfsv3", "nfsv4", "overlay")
BUSYBOX_PACKAGE = "busybox-static"
# Bounds on what is read from the packages (a Debian kernel package holds ~5000 files, its
# largest module a few MiB, its kernel ~8 MiB).
MAX_MEMBERS = 100_000
MAX_FILE_BYTES = 64 * 2**20
# Kernel command line words after the contract's own.
KERNEL_ARGS = "console=ttyS0"

_KERNEL_DEPENDS = re.compile(r"^\s*Depends:\s*(linux-image-(\S+)-amd64)\s*$", re.MULTILINE)
_APPLET = re.compile(r"[a-z0-9_.\[-]+(/[a-z0-9_.\[-]+)*")

START_IPXE = f"""#!ipxe
# WalT {MODEL} default image: kernel and initramfs over HTTP (TFTP if HTTP fails), root
# over NFS. walt-server, walt-http and walt-nfsroot are set by the server's bootstrap.
set walt-args {KERNEL_ARGS} walt.nfsroot=${{walt-nfsroot}} walt.http=${{walt-http}}
set walt-tftp tftp://${{walt-server}}/nodes/${{mac:hexhyp}}
kernel ${{walt-http}}/boot/vmlinuz ${{walt-args}} || kernel ${{walt-tftp}}/vmlinuz ${{walt-args}}
initrd ${{walt-http}}/boot/initrd.img || initrd ${{walt-tftp}}/initrd.img
boot
"""

INITRAMFS_INIT = f"""#!/bin/sh
# WalT {MODEL} initramfs: network, the NFS root read-only under a tmpfs overlay, then the
# root's own /sbin/init.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {{
    echo "walt-initramfs: $*; rebooting in 10 s"
    sleep 10
    reboot -f
}}

while read -r module; do
    insmod "/lib/modules/$module.ko" || fail "cannot load module $module"
done < /lib/modules/load-order

tries=0
until [ -e /sys/class/net/eth0 ]; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || fail "no network interface eth0"
    sleep 0.1
done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -V {vendor_class(MODEL)} -s /etc/udhcpc.script -f -q -n -t 30 -T 2 \\
    || fail "no DHCP lease"

nfsroot=
http=
for word in $(cat /proc/cmdline); do
    case "$word" in
        walt.nfsroot=*) nfsroot="${{word#walt.nfsroot=}}" ;;
        walt.http=*) http="${{word#walt.http=}}" ;;
    esac
done
case "$nfsroot" in
    *:/*) ;;
    *) fail "no walt.nfsroot=SERVER:/PATH on the kernel command line" ;;
esac
server="${{nfsroot%%:*}}"

mkdir -p /mnt/ro /mnt/rw /newroot
# busybox passes the options to the kernel, whose NFS client wants the server's address
if mount -t nfs -o "ro,nolock,vers=3,proto=tcp,mountproto=tcp,addr=$server" "$nfsroot" /mnt/ro
then
    echo "{NFS_MOUNTED_MARKER} (NFSv3) from $nfsroot"
elif mount -t nfs4 -o "ro,vers=4,addr=$server" "$nfsroot" /mnt/ro; then
    echo "{NFS_MOUNTED_MARKER} (NFSv4) from $nfsroot"
else
    fail "cannot mount $nfsroot"
fi
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay \\
    -o lowerdir=/mnt/ro,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \\
    || fail "cannot put the overlay on the NFS root"
[ -x /newroot/sbin/init ] || fail "the image has no /sbin/init"

# what the root's init needs, one value a line (read, never evaluated)
mkdir -p /newroot/etc/walt
echo "$http" > /newroot/etc/walt/http
mount --move /mnt/ro /newroot/media/root-ro
mount --move /mnt/rw /newroot/media/root-rw
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot /sbin/init
"""

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc's event script: the leased address, the route, the host name the server gives
case "$1" in
    deconfig) ip -4 addr flush dev "$interface" ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        for gateway in $router; do
            ip route add default via "$gateway" dev "$interface" && break
        done
        [ -n "$hostname" ] && hostname "$hostname"
        echo "walt-initramfs: address $ip/$mask" ;;
esac
exit 0
"""

ROOT_INIT = f"""#!/bin/sh
# WalT {MODEL} default image: say the node booted, report it to the server, stay up.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# the initramfs hands over /proc, /sys and /dev mounted
[ -e /proc/mounts ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1
[ "$(hostname)" = "(none)" ] && hostname -F /etc/hostname
echo "{BOOTED_MARKER} $(hostname)"
http=
[ -r /etc/walt/http ] && read -r http < /etc/walt/http
if [ -n "$http" ]; then
    tries=0
    until wget -q -O /dev/null "$http/boot/booted"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 10 ]; then
            echo "walt: could not report the boot to $http"
            break
        fi
        sleep 3
    done
fi
while true; do
    sleep 3600
done
"""


class PackageError(LabError):
    """A package could not be had or read; the message says which and why."""


# ---- packages ----------------------------------------------------------------------------


def kernel_package(apt_cache_depends: str) -> tuple[str, str]:
    """(package, kernel ABI) of the kernel `linux-image-amd64` depends on, from the output
    of `apt-cache depends linux-image-amd64`: ("linux-image-6.1.0-57-amd64", "6.1.0-57")."""
    found = _KERNEL_DEPENDS.search(apt_cache_depends)
    if found is None:
        raise PackageError("apt-cache depends linux-image-amd64 names no linux-image package")
    return found[1], found[2]


@dataclass(frozen=True)
class Packages:
    """The downloaded packages: the kernel's (`linux-image-<abi>-amd64`) and busybox-static."""

    kernel_deb: Path
    busybox_deb: Path
    kernel_abi: str


def _cached_deb(cache_dir: Path, package: str) -> Path | None:
    """The newest `<package>_<version>_amd64.deb` of the cache (sorted by name)."""
    found = sorted(cache_dir.glob(f"{package}_*_amd64.deb"))
    return found[-1] if found else None


async def download_packages(lab: Lab, cache_dir: Path) -> Packages:
    """The kernel package and busybox-static in `cache_dir`, downloaded with `apt-get
    download` only when the cache has none (a CI run downloads them once)."""
    await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
    depends = await lab.run(["apt-cache", "depends", "linux-image-amd64"], check=False)
    if depends.returncode != 0:
        raise PackageError(f"apt-cache depends linux-image-amd64: {depends.stderr.strip()}")
    kernel, abi = kernel_package(depends.stdout)
    debs = {}
    for package in (kernel, BUSYBOX_PACKAGE):
        deb = _cached_deb(cache_dir, package)
        if deb is None:
            # as root: apt's own user may not write into the cache folder
            download = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
            fetched = await lab.run(download, cwd=cache_dir, check=False, timeout_s=600)
            deb = _cached_deb(cache_dir, package)
            if fetched.returncode != 0 or deb is None:
                raise PackageError(f"apt-get download {package}: {fetched.stderr.strip()[-500:]}")
        debs[package] = deb
    return Packages(debs[kernel], debs[BUSYBOX_PACKAGE], abi)


def _deb_data(deb: BinaryIO, name: str) -> int:
    """Position `deb` (an ar archive) at the start of its `data.tar.*` member; its size.

    `name` is the package, for error messages.
    """
    if deb.read(8) != b"!<arch>\n":
        raise PackageError(f"{name} is not a Debian package")
    for _ in range(16):  # a .deb has three members
        header = deb.read(60)
        if len(header) < 60:
            break
        member = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii", "replace").strip() or -1)
        if size < 0:
            raise PackageError(f"{name}: damaged ar header")
        if member.startswith("data.tar"):
            return size
        deb.seek(size + (size & 1), os.SEEK_CUR)
    raise PackageError(f"{name} has no data.tar member")


def deb_files(deb: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(path, content) of each regular file of the package `deb` whose path (`./` removed)
    `want` accepts, in the package's order; read in one pass, nothing written to disk."""
    with open(deb, "rb") as raw:
        _deb_data(raw, deb.name)
        # "r|*" reads the data member's compression (xz, zstd is not in Python 3.11)
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                for count, member in enumerate(tar):
                    if count >= MAX_MEMBERS:
                        raise PackageError(f"{deb.name}: more than {MAX_MEMBERS} files")
                    path = member.name.removeprefix("./")
                    if not member.isfile() or not want(path):
                        continue
                    if member.size > MAX_FILE_BYTES:
                        raise PackageError(f"{deb.name}: {path} is larger than the bound")
                    extracted = tar.extractfile(member)
                    assert extracted is not None  # a regular file
                    yield path, extracted.read()
        except (tarfile.TarError, lzma.LZMAError, EOFError) as error:
            raise PackageError(f"{deb.name}: cannot read its files: {error}") from error


# ---- kernel modules ----------------------------------------------------------------------


def modinfo(data: bytes) -> dict[str, str]:
    """The `name` and `depends` fields of a kernel module's `.modinfo` section (ELF64,
    little-endian: the amd64 kernel's); missing fields are absent."""
    try:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise PackageError("not a little-endian ELF64 file")
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

        def section(index: int) -> tuple[int, int, int]:
            base = shoff + index * shentsize
            (name,) = struct.unpack_from("<I", data, base)
            offset, size = struct.unpack_from("<QQ", data, base + 0x18)
            return name, offset, size

        _, strings, _ = section(shstrndx)
        for index in range(shnum):
            name, offset, size = section(index)
            end = data.index(b"\0", strings + name)
            if data[strings + name : end] == b".modinfo":
                fields = {}
                for item in data[offset : offset + size].split(b"\0"):
                    key, _, value = item.partition(b"=")
                    if key in (b"name", b"depends"):
                        fields[key.decode()] = value.decode("ascii", "replace")
                return fields
    except (struct.error, ValueError, IndexError) as error:
        raise PackageError(f"damaged kernel module: {error}") from error
    return {}


def load_order(depends: Mapping[str, Sequence[str]], wanted: Iterable[str]) -> list[str]:
    """`wanted` modules and all they depend on, each after its dependencies.

    `depends` maps every module of the kernel to the modules it needs; one missing is an
    error naming it, and so is a dependency cycle.
    """
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" or "done"

    def visit(module: str, chain: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        if state.get(module) == "visiting":
            raise PackageError(f"module dependency cycle: {' -> '.join((*chain, module))}")
        if module not in depends:
            needed = f" (needed by {chain[-1]})" if chain else ""
            raise PackageError(f"the kernel has no module {module}{needed}")
        state[module] = "visiting"
        for dependency in depends[module]:
            visit(dependency, (*chain, module))
        state[module] = "done"
        order.append(module)

    for module in wanted:
        visit(module, ())
    return order


def _module_bytes(path: str, data: bytes) -> bytes:
    """A module file's ELF content: `.ko.xz` decompressed (busybox's insmod reads plain
    ELF only)."""
    if path.endswith(".ko.xz"):
        return lzma.decompress(data, memlimit=MAX_FILE_BYTES * 4)
    if path.endswith(".ko"):
        return data
    raise PackageError(f"{path}: unsupported module compression")


def _is_module(path: str) -> bool:
    return path.startswith("lib/modules/") and path.endswith((".ko", ".ko.xz", ".ko.zst"))


@dataclass(frozen=True)
class Kernel:
    """The kernel and the modules the initramfs loads (`modules` in load order, as files
    `<name>.ko` of `folder`)."""

    vmlinuz: Path
    folder: Path
    modules: tuple[str, ...]


def _read_kernel(deb: Path, abi: str, dest: Path) -> Kernel:
    """Write the kernel and the needed modules of `deb` into `dest` (two passes over the
    package: the modules' dependencies, then their files)."""
    depends: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for path, data in deb_files(deb, _is_module):
        info = modinfo(_module_bytes(path, data))
        stem = PurePosixPath(path).name.split(".ko")[0]
        name = info.get("name") or stem.replace("-", "_")
        depends[name] = [d for d in info.get("depends", "").split(",") if d]
        paths[path] = name
    order = load_order(depends, MODULES)
    needed = {path for path, name in paths.items() if name in order}
    vmlinuz_path = f"boot/vmlinuz-{abi}-amd64"
    folder = dest / "modules"
    folder.mkdir(parents=True)
    for path, data in deb_files(deb, lambda p: p in needed or p == vmlinuz_path):
        if path == vmlinuz_path:
            (dest / "vmlinuz").write_bytes(data)
        else:
            (folder / f"{paths[path]}.ko").write_bytes(_module_bytes(path, data))
    if not (dest / "vmlinuz").is_file():
        raise PackageError(f"{deb.name} has no {vmlinuz_path}")
    (dest / "load-order").write_text("".join(f"{m}\n" for m in order))
    return Kernel(dest / "vmlinuz", folder, tuple(order))


def kernel_files(deb: Path, abi: str, cache_dir: Path) -> Kernel:
    """The kernel and modules of `deb`, read once per package into `cache_dir` (a folder
    named after the package file, made under a temporary name, then renamed)."""
    dest = cache_dir / f"{deb.name}.d"
    if not (dest / "load-order").is_file():
        staging = cache_dir / f".{deb.name}.{secrets.token_hex(4)}"
        try:
            _read_kernel(deb, abi, staging)
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    order = tuple((dest / "load-order").read_text().split())
    return Kernel(dest / "vmlinuz", dest / "modules", order)


def busybox_binary(deb: Path) -> bytes:
    """`/bin/busybox` of the busybox-static package."""
    for _, data in deb_files(deb, lambda p: p == "bin/busybox"):
        return data
    raise PackageError(f"{deb.name} has no bin/busybox")


# ---- initramfs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CpioEntry:
    """One member of a cpio archive: a folder, a file (`data`), a symlink (`target`) or a
    character device (`device`: major, minor)."""

    path: str
    mode: int
    data: bytes = b""
    target: str | None = None
    device: tuple[int, int] | None = None


_S_IFDIR, _S_IFREG, _S_IFLNK, _S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A cpio archive in the `newc` format the kernel unpacks: every member owned by root,
    time 0 (the same entries make the same bytes)."""
    out = bytearray()

    def member(ino: int, path: str, mode: int, body: bytes, rdev: tuple[int, int]) -> None:
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(name), 0)
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields))
        out.extend(name + b"\0" * (-(110 + len(name)) % 4))
        out.extend(body + b"\0" * (-len(body) % 4))

    for ino, entry in enumerate(entries, start=1):
        path = entry.path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"invalid path in an archive: {entry.path!r}")
        perms = entry.mode & 0o7777
        if entry.target is not None:
            member(ino, path, _S_IFLNK | 0o777, entry.target.encode(), (0, 0))
        elif entry.device is not None:
            member(ino, path, _S_IFCHR | perms, b"", entry.device)
        elif entry.path.endswith("/"):
            member(ino, path, _S_IFDIR | perms, b"", (0, 0))
        else:
            member(ino, path, _S_IFREG | perms, entry.data, (0, 0))
    member(0, "TRAILER!!!", 0, b"", (0, 0))
    return bytes(out)


def applet_links(listing: str) -> list[str]:
    """The applet paths of `busybox --list-full` (`bin/sh`, `usr/bin/wget`...), without
    `bin/busybox` itself and `sbin/init` (both the initramfs and the image have their own)."""
    links = []
    for line in listing.split():
        if not _APPLET.fullmatch(line) or ".." in line.split("/"):
            raise PackageError(f"unexpected busybox applet path {line[:80]!r}")
        if line not in ("bin/busybox", "sbin/init") and line not in links:
            links.append(line)
    return links


_FOLDERS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run")


def initramfs(busybox: bytes, applets: Sequence[str], kernel: Kernel) -> bytes:
    """The gzip-compressed initramfs: busybox and its links, the modules, /init."""
    entries = [CpioEntry(f"{folder}/", 0o755) for folder in (*_FOLDERS, "lib", "lib/modules")]
    entries.append(CpioEntry("dev/console", 0o600, device=(5, 1)))  # before devtmpfs
    entries.append(CpioEntry("bin/busybox", 0o755, busybox))
    entries += [CpioEntry(link, 0o777, target="/bin/busybox") for link in applets]
    entries.append(CpioEntry("init", 0o755, INITRAMFS_INIT.encode()))
    entries.append(CpioEntry("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.encode()))
    load = "".join(f"{m}\n" for m in kernel.modules)
    entries.append(CpioEntry("lib/modules/load-order", 0o644, load.encode()))
    for module in kernel.modules:
        data = (kernel.folder / f"{module}.ko").read_bytes()
        entries.append(CpioEntry(f"lib/modules/{module}.ko", 0o644, data))
    return gzip.compress(newc_archive(entries), compresslevel=9, mtime=0)


# ---- the image ---------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def write_root(
    dest: Path, busybox: bytes, applets: Sequence[str], kernel: Kernel, initrd: bytes
) -> None:
    """The image's files in the empty folder `dest`: busybox, /etc, /sbin/init, /boot/<model>."""
    for folder in (*_FOLDERS, "tmp", "media/root-ro", "media/root-rw", "etc/walt"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        (dest / folder).chmod(0o1777 if folder == "tmp" else 0o755)
    _write(dest / "bin/busybox", busybox, 0o755)
    for link in applets:
        (dest / link).symlink_to("/bin/busybox")
    _write(dest / "sbin/init", ROOT_INIT, 0o755)
    _write(dest / "etc/hostname", f"{MODEL}\n")
    _write(dest / "etc/walt/model", f"{MODEL}\n")
    _write(dest / "etc/os-release", f'NAME="WalT default image for {MODEL}"\nID=walt\n')
    _write(dest / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(dest / "etc/group", "root:x:0:\n")
    boot = dest / "boot" / MODEL
    _write(boot / "vmlinuz", kernel.vmlinuz.read_bytes())
    _write(boot / "initrd.img", initrd)
    _write(boot / "start.ipxe", START_IPXE)


async def build_pc_tree(lab: Lab, cache_dir: Path, dest: Path) -> None:
    """The image's files in `dest` (made, must not exist), from the packages in `cache_dir`
    (downloaded there first when missing)."""
    packages = await download_packages(lab, cache_dir)
    kernel = await asyncio.to_thread(
        kernel_files, packages.kernel_deb, packages.kernel_abi, cache_dir
    )
    busybox = await asyncio.to_thread(busybox_binary, packages.busybox_deb)
    tools = dest.with_name(f".{dest.name}.tools")
    tools.mkdir(parents=True)
    try:
        # the downloaded busybox (not the machine's) says which applets it has
        _write(tools / "busybox", busybox, 0o755)
        listing = await lab.run([str(tools / "busybox"), "--list-full"])
    finally:
        shutil.rmtree(tools)
    applets = applet_links(listing.stdout)
    initrd = await asyncio.to_thread(initramfs, busybox, applets, kernel)
    await asyncio.to_thread(dest.mkdir, parents=True)
    await asyncio.to_thread(write_root, dest, busybox, applets, kernel, initrd)


async def build_pc_image(lab: Lab, cache_dir: Path) -> DefaultImage:
    """Build the bootable `docker.io/waltplatform/pc-x86-64-default:latest` in the lab's
    storage (label `walt.node.models=pc-x86-64`); the packages are kept in `cache_dir`.

    `lab.default_images.publish` pushes it to a lab registry.
    """
    tree = lab.root / "build" / f"pc-{secrets.token_hex(4)}"
    try:
        await build_pc_tree(lab, cache_dir, tree)
        await build_image(lab, IMAGE, [MODEL], tree)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return DefaultImage(MODEL, IMAGE, 0)
