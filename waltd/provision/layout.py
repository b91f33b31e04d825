"""The per-node layout under the exports root R: what each node's boot and root file system
requests find.

- R/nodes/<mac>/fs -> ../../images/<id>/fs (its root, exported over NFS) and
  R/nodes/<mac>/tftp -> ../../boot/<id>/<model> (its boot files), or -> ../../boot/waiting
  while its image is not ready;
- R/nodes/by-ip/<ip> and R/nodes/by-name/<name> -> ../<mac> (aliases);
- R/tftp/nodes/<mac-hexhyp> -> ../../nodes/<mac>/tftp (dnsmasq's TFTP names).

Every link is replaced atomically (a new link under a temporary name in the same folder,
then a rename over the old one), so a reader (dnsmasq, the HTTP server, NFS) sees the old
target or the new one, never none. The folders that change at every node event may live in
the daemon's runtime folder (`layout_in`). `node_boot_file` finds a node's boot file
through its links, for the HTTP boot server. Blocking file work, nothing here holds daemon
state: the exports service sets a node's links on its event loop (a few system calls in
the runtime folder, cheaper than a thread hand-off) and runs the rest (`layout_in`,
`alias_index`, a node's removal, which looks at every alias) in a thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from waltd.names import check_image_id, normalise_mac
from waltd.provision.boot import TEMP_MARK, WAITING, public_folder
from waltd.provision.models import is_model

# Node names as aliases: one folder entry, not hidden.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


# The layout's folders that change at every node event; where they live (`layout_in`).
_CHANGING = (Path("nodes"), Path("tftp") / "nodes")
# What the layout's relative links lead to outside those folders.
_LED_TO = ("images", "boot")


def layout_in(root: Path, runtime: Path) -> None:
    """Keep the folders of the layout that change at every node event (R/nodes,
    R/tftp/nodes) in `runtime` (the daemon's runtime folder: a memory file system, remade
    at every start as the layout is), R's own entries then being links to them.

    `runtime` gets `images` and `boot` links back to R's, so that every relative link of the
    layout (`../../images/<id>/fs`, `../../boot/<id>/<model>`, `../../nodes/<mac>/tftp`)
    leads where it would in R. A real folder left in R by an earlier layout is emptied of
    the links and folders it held (never descending into a mount) and replaced by its link.
    """
    if os.path.realpath(runtime) == os.path.realpath(root):
        return  # the runtime folder is R itself: the layout is in place already
    for changing in _CHANGING:
        public_folder(runtime / changing)
    for name in _LED_TO:
        _switch_link(runtime / name, str(root / name))
    for changing in _CHANGING:
        place = root / changing
        public_folder(place.parent)
        if place.is_dir() and not place.is_symlink():
            _clear_layout(place)
        _switch_link(place, str(runtime / changing))


def _clear_layout(folder: Path) -> None:
    """Remove the links and folders of a layout in `folder`, then `folder`; what is neither
    (a file, a mount and what it holds) stays, and OSError says so."""
    with os.scandir(folder) as entries:
        for entry in list(entries):
            if entry.is_symlink():
                os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False) and not os.path.ismount(entry.path):
                with contextlib.suppress(OSError):  # kept: the final rmdir says so
                    _clear_layout(Path(entry.path))
    try:
        os.rmdir(folder)
    except OSError as err:
        raise OSError(
            err.errno, f"{folder} holds what is not the layout's ({err.strerror}): move it away"
        ) from None


@dataclass(frozen=True)
class NodePaths:
    """Where one node's entries of the layout live under the exports root."""

    root: Path
    mac: str
    # its alias links (R/nodes/by-ip/<ip>, R/nodes/by-name/<name>) as just set; () unless set
    aliases: tuple[Path, ...] = ()

    @property
    def folder(self) -> Path:
        """R/nodes/<mac>/."""
        return self.root / "nodes" / self.mac

    @property
    def fs(self) -> Path:
        """R/nodes/<mac>/fs: the node's NFS root (a link to its image's mount)."""
        return self.folder / "fs"

    @property
    def tftp(self) -> Path:
        """R/nodes/<mac>/tftp: the node's boot files (a link under R/boot/)."""
        return self.folder / "tftp"

    @property
    def tftp_alias(self) -> Path:
        """R/tftp/nodes/<mac-hexhyp>: the same folder as dnsmasq's TFTP names it."""
        return self.root / "tftp" / "nodes" / self.mac.replace(":", "-")


def node_paths(root: Path, mac: str) -> NodePaths:
    """The layout paths of node `mac` (any case, colons or hyphens) under `root`."""
    return NodePaths(root, normalise_mac(mac))


def _switch_link(path: Path, target: str) -> None:
    """Make `path` a symbolic link to `target`: a new link under a temporary name in the
    same folder, then a rename over the old entry (atomic for readers)."""
    with contextlib.suppress(OSError):
        if os.readlink(path) == target:
            return
    temp = path.parent / f"{TEMP_MARK}{path.name}.{secrets.token_hex(4)}"
    os.symlink(target, temp)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _alias_names(ip: str | None, name: str | None) -> tuple[str | None, str | None]:
    if ip is not None:
        ip = str(ipaddress.IPv4Address(ip))
    if name is not None and not _NODE_NAME.fullmatch(name):
        raise ValueError(f"node name {name[:70]!r} cannot name a folder entry")
    return ip, name


_ALIAS_KINDS = ("by-ip", "by-name")


def _all_aliases(root: Path) -> Iterator[tuple[Path, str]]:
    """Every alias link (by-ip, by-name) and the MAC it leads to."""
    for kind in _ALIAS_KINDS:
        with contextlib.suppress(FileNotFoundError):
            with os.scandir(root / "nodes" / kind) as listing:
                for entry in listing:
                    with contextlib.suppress(OSError):
                        if entry.is_symlink():
                            target = os.readlink(entry.path)
                            if target.startswith("../"):
                                yield Path(entry.path), target.removeprefix("../")


def _aliases_of(root: Path, mac: str) -> Iterator[Path]:
    """The alias links (by-ip, by-name) that lead to node `mac`."""
    return (path for path, target in _all_aliases(root) if target == mac)


def alias_index(root: Path) -> dict[str, tuple[Path, ...]]:
    """Node MAC -> the alias links that lead to it, in one look at them all: a caller that
    keeps it up to date (`NodePaths.aliases`) hands each node's to `set_node_links` and
    `set_node_waiting` as `known`, sparing each call a look at every alias."""
    index: dict[str, list[Path]] = {}
    for path, mac in _all_aliases(root):
        index.setdefault(mac, []).append(path)
    return {mac: tuple(paths) for mac, paths in index.items()}


def _still_aliases(root: Path, mac: str, known: tuple[Path, ...]) -> Iterator[Path]:
    """The links of `known` that still lead to node `mac` (another node may have taken one)."""
    folders = {root / "nodes" / kind for kind in _ALIAS_KINDS}
    for path in known:
        with contextlib.suppress(OSError):
            if path.parent in folders and os.readlink(path) == f"../{mac}":
                yield path


def _set_aliases(
    root: Path, mac: str, ip: str | None, name: str | None, known: tuple[Path, ...] | None
) -> tuple[Path, ...]:
    wanted = {}
    if ip is not None:
        wanted[root / "nodes" / "by-ip" / ip] = f"../{mac}"
    if name is not None:
        wanted[root / "nodes" / "by-name" / name] = f"../{mac}"
    for path, target in wanted.items():
        public_folder(path.parent)
        _switch_link(path, target)
    # Stale ones: the node's previous IP or name.
    stale = _aliases_of(root, mac) if known is None else _still_aliases(root, mac, known)
    for path in list(stale):
        if path not in wanted:
            path.unlink(missing_ok=True)
    return tuple(wanted)


def _set_node(paths: NodePaths, tftp_target: str, fs_target: str | None) -> None:
    public_folder(paths.folder)
    public_folder(paths.tftp_alias.parent)
    if fs_target is None:
        paths.fs.unlink(missing_ok=True)
    else:
        _switch_link(paths.fs, fs_target)
    _switch_link(paths.tftp, tftp_target)
    _switch_link(paths.tftp_alias, f"../../nodes/{paths.mac}/tftp")


def set_node_links(
    root: Path,
    mac: str,
    *,
    image_id: str,
    model: str,
    ip: str | None,
    name: str | None,
    known: tuple[Path, ...] | None = None,
) -> NodePaths:
    """Point node `mac` at image `image_id`: R/nodes/<mac>/fs -> ../../images/<id>/fs,
    tftp -> ../../boot/<id>/<model>, its TFTP and alias links; stale aliases removed (those
    of `known`, the alias links that led to the node, when the caller keeps them: else every
    alias is looked at). The paths returned list the node's aliases now.

    The targets need not exist yet (a node sees them once they do); ValueError for an
    invalid MAC, image id, model, IP or name."""
    check_image_id(image_id)
    if not is_model(model):
        raise ValueError(f"invalid node model {model[:70]!r}")
    paths = node_paths(root, mac)
    ip, name = _alias_names(ip, name)
    _set_node(paths, f"../../boot/{image_id}/{model}", f"../../images/{image_id}/fs")
    return replace(paths, aliases=_set_aliases(root, paths.mac, ip, name, known))


def set_node_waiting(
    root: Path,
    mac: str,
    *,
    ip: str | None,
    name: str | None,
    known: tuple[Path, ...] | None = None,
) -> NodePaths:
    """Node `mac` has no image ready: tftp -> ../../boot/waiting (the server's "wait and
    retry" start.ipxe), no fs link; its TFTP and alias links as in `set_node_links`."""
    paths = node_paths(root, mac)
    ip, name = _alias_names(ip, name)
    _set_node(paths, f"../../boot/{WAITING}", None)
    return replace(paths, aliases=_set_aliases(root, paths.mac, ip, name, known))


def remove_node_links(root: Path, mac: str) -> None:
    """Remove node `mac` from the layout: its TFTP link, aliases, links and folder."""
    paths = node_paths(root, mac)
    paths.tftp_alias.unlink(missing_ok=True)
    for alias in list(_aliases_of(root, paths.mac)):
        alias.unlink(missing_ok=True)
    for link in (paths.fs, paths.tftp):
        link.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        for leftover in paths.folder.iterdir():
            if leftover.name.startswith(TEMP_MARK):
                leftover.unlink(missing_ok=True)
        paths.folder.rmdir()


def node_boot_folder(root: Path, mac: str) -> Path | None:
    """The real folder of node `mac`'s boot files (its `tftp` link resolved), or None when
    the node has none or the link leads outside R/boot/."""
    boot = os.path.realpath(root / "boot")
    real = os.path.realpath(node_paths(root, mac).tftp)
    if not real.startswith(boot + os.sep) or not os.path.isdir(real):
        return None
    return Path(real)


# Request paths below /boot/ (HTTP): their length, a component's, and how many components.
PATH_MAX = 1024
NAME_MAX = 255
PATH_DEPTH_MAX = 32


def boot_path(raw: str) -> str:
    """`raw` (a decoded request path below /boot/) checked as a relative path inside a
    node's boot folder: no `..`, `.` or empty component, not absolute, no NUL, bounded;
    ValueError saying what is wrong."""
    if len(raw) > PATH_MAX:
        raise ValueError(f"a boot path holds at most {PATH_MAX} characters")
    if "\0" in raw:
        raise ValueError("a boot path holds no NUL character")
    parts = raw.split("/")
    if raw.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError("a boot path is relative, without `.`, `..` or empty components")
    if len(parts) > PATH_DEPTH_MAX:
        raise ValueError(f"a boot path holds at most {PATH_DEPTH_MAX} components")
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise ValueError(f"a boot path's components hold at most {NAME_MAX} bytes")
    return raw


def node_boot_file(root: Path, mac: str, rel: str) -> Path | None:
    """The regular file at `rel` (checked by `boot_path`) in node `mac`'s boot folder, its
    real path, or None when there is none (no folder, a folder, or a path leading out)."""
    folder = node_boot_folder(root, mac)
    if folder is None:
        return None
    real = os.path.realpath(folder / boot_path(rel))
    if not real.startswith(f"{folder}{os.sep}"):
        return None
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            return None
    except OSError:
        return None
    return Path(real)
