"""`walt image build`: a build context (a tar from the client, or a git repository) made an
image of the caller's with `buildah build`.

The daemon never reads a user's path as root: a folder reaches it as a tar the client made,
which is checked member by member before anything is written (no absolute path, no '..', no
link leading outside, no device; bounded count and size), and a `file://` repository is read
by `git archive` running as the caller. Other git URLs (https, ssh) are cloned by root with
no login of the server's (no ssh key, no agent, no credential helper). Everything is unpacked
into a private folder under the storage's temporary folder, removed when the build ends.

`FROM <name>[:<tag>]` naming one of the caller's images is resolved to it (WalT users write
their own images without their user name). The result must carry `walt.node.models` and stay
within the layer limit; it is built under a staging name and tagged into place only then.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import stat
import tarfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from waltd import log
from waltd.db import Database, Node
from waltd.images import replacing, store
from waltd.images.locks import NameLocks
from waltd.images.repository import Repository
from waltd.images.store import LocalRef
from waltd.images.tools import ToolError
from waltd.names import InvalidName, parse_local
from waltd.process import Children

_log = log.get("images")

# A build context, unpacked or cloned: its files' total size and how many entries it holds.
MAX_CONTEXT_BYTES = 2 * 1024**3
MAX_MEMBERS = 100_000
# A Containerfile is read (to resolve FROM lines) only up to this size.
MAX_CONTAINERFILE_BYTES = 1024**2
# The files a build context may hold its instructions in, in the order buildah prefers them.
CONTAINERFILES = ("Containerfile", "Dockerfile")
# Time bounds: fetching a git repository, and the whole `buildah build`.
FETCH_TIMEOUT_S = 600.0
BUILD_TIMEOUT_S = 3600.0
# git's stderr kept for its error message.
_GIT_MESSAGE_CHARS = 2000
# One line of build output, as handed on (a RUN step may print a line of any length).
MAX_LINE_CHARS = 4096


class BuildError(ValueError):
    """A build refused or failed; the message is for the user."""


# --- the build context: checks (pure) --------------------------------------------------


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar member may not be unpacked into a build context, None when it may."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith("/"):
        return f"{name!r} is an absolute path"
    if ".." in parts:
        return f"{name!r} leads outside the build folder ('..')"
    if not name.isprintable():
        return f"{name!r} holds a control character"
    if member.isdev() or member.isfifo():
        return f"{name!r} is a device or a FIFO"
    if member.issym() or member.islnk():
        if member.islnk():
            # a hard link names another member, from the top of the archive
            target = PurePosixPath(member.linkname)
            if member.linkname.startswith("/") or ".." in target.parts:
                return f"hard link {name!r} points outside the build folder"
        elif link_escapes(name, member.linkname):
            return f"link {name!r} -> {member.linkname!r} points outside the build folder"
        return None
    if not (member.isfile() or member.isdir()):
        return f"{name!r} is of a kind a build context cannot hold"
    return None


def link_escapes(path: str, target: str) -> bool:
    """Whether a symbolic link at `path` (relative to the top) pointing to `target` leads
    outside the top folder (an absolute target always does)."""
    if target.startswith("/"):
        return True
    depth = len(PurePosixPath(path).parts) - 1  # the folder holding the link
    for part in PurePosixPath(target).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part != ".":
            depth += 1
    return False


def check_members(members: Iterable[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """The members of a build context tar, each checked, with their count and total size
    bounded; BuildError naming the first problem."""
    checked: list[tarfile.TarInfo] = []
    total = 0
    for member in members:
        if len(checked) >= MAX_MEMBERS:
            raise BuildError(f"the build context holds more than {MAX_MEMBERS} entries")
        problem = member_problem(member)
        if problem:
            raise BuildError(f"refused build context: {problem}")
        total += member.size
        if total > MAX_CONTEXT_BYTES:
            raise BuildError(f"the build context is over {MAX_CONTEXT_BYTES // 1024**2} MiB")
        checked.append(member)
    return checked


def unpack(archive: Path, dest: Path) -> None:
    """Unpack the build context tar `archive` into the empty folder `dest`, after checking
    every member; files belong to root (a context's owners mean nothing in an image) and
    lose setuid, setgid and group/other write bits."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = check_members(tar)
            # tarfile's `data` filter checks the same again as it writes, and drops owners
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as err:
        raise BuildError(f"the build context is no readable tar: {err}") from None


def check_tree(top: Path) -> None:
    """A fetched repository's content: bounded in entries and size, links inside `top`, no
    device; BuildError naming the first problem."""
    count = total = 0
    for folder, dirs, files in os.walk(top):
        for entry in (*dirs, *files):
            count += 1
            if count > MAX_MEMBERS:
                raise BuildError(f"the repository holds more than {MAX_MEMBERS} entries")
            path = Path(folder, entry)
            info = path.lstat()
            relative = str(path.relative_to(top))
            if stat.S_ISLNK(info.st_mode):
                if link_escapes(relative, os.readlink(path)):
                    raise BuildError(f"refused repository: link {relative!r} points outside it")
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > MAX_CONTEXT_BYTES:
                    raise BuildError(f"the repository is over {MAX_CONTEXT_BYTES // 1024**2} MiB")
            elif not stat.S_ISDIR(info.st_mode):
                raise BuildError(f"refused repository: {relative!r} is no file nor folder")


def inside(top: Path, sub_dir: str) -> Path:
    """The folder `sub_dir` (checked by names.parse_sub_dir) of `top`, links resolved inside
    `top` only; BuildError when it leads outside or is no folder."""
    root = top.resolve()
    path = (root / sub_dir).resolve()
    if not path.is_relative_to(root):
        raise BuildError(f"sub-folder {sub_dir!r} leads outside the repository")
    if not path.is_dir():
        raise BuildError(f"the repository has no folder {sub_dir!r}")
    return path


def find_containerfile(context: Path) -> Path:
    """The context's Containerfile or Dockerfile (a regular file, not a link)."""
    for name in CONTAINERFILES:
        path = context / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            raise BuildError(f"{name} must be a regular file (not a link nor a folder)")
        if info.st_size > MAX_CONTAINERFILE_BYTES:
            raise BuildError(f"{name} is over {MAX_CONTAINERFILE_BYTES // 1024} KiB")
        return path
    raise BuildError(
        f"the build folder holds no {' nor '.join(CONTAINERFILES)} (at its top: give the "
        "folder that holds it)"
    )


# --- FROM lines (pure) -----------------------------------------------------------------

_FROM_RE = re.compile(r"\s*FROM\s", re.IGNORECASE)


@dataclass(frozen=True)
class BaseLine:
    """A `FROM` line naming an image (not an earlier stage): its index and the image."""

    index: int
    image: str


def base_images(text: str) -> list[BaseLine]:
    """The images the `FROM` lines of a Containerfile name, earlier stages left out.

    `FROM [--platform=...] <image> [AS <stage>]`; a line continued from the previous one
    (after a '\\') is no instruction.
    """
    found: list[BaseLine] = []
    stages: set[str] = set()
    continued = False
    for index, line in enumerate(text.split("\n")):
        instruction = not continued and not line.lstrip().startswith("#")
        continued = line.rstrip().endswith("\\")
        if not instruction or not _FROM_RE.match(line):
            continue
        words = [w for w in line.split()[1:] if not w.startswith("--")]
        if not words:
            continue
        image = words[0]
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() not in stages:
            found.append(BaseLine(index, image))
    return found


def own_image(image: str) -> tuple[str, str] | None:
    """(name, tag) when `image` is written as one of the caller's images are (a local name,
    no user, no registry), else None."""
    try:
        return parse_local(image)
    except InvalidName:
        return None


def resolve_from(text: str, resolved: Mapping[int, str]) -> str:
    """`text` with the image of each `FROM` line whose index is in `resolved` replaced."""
    lines = text.split("\n")
    for index, image in resolved.items():
        words = lines[index].split()
        position = next(i for i, w in enumerate(words) if i > 0 and not w.startswith("--"))
        words[position] = image
        lines[index] = " ".join(words)
    return "\n".join(lines)


class LineSplitter:
    """A tool's terminal output made lines (carriage returns dropped, a long line handed on
    in pieces of MAX_LINE_CHARS)."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        """Take more output; hand on every line it completes."""
        self._partial += data
        *complete, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        for line in complete:
            self._emit(line)
        while len(self._partial) > MAX_LINE_CHARS:  # a long line goes on in pieces
            self._emit(bytes(self._partial[:MAX_LINE_CHARS]))
            del self._partial[:MAX_LINE_CHARS]

    def close(self) -> None:
        """Hand on what is left."""
        if self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, line: bytes) -> None:
        text = line.decode(errors="replace").replace("\r", "").rstrip()
        if text:
            self._on_line(text)


# --- the build folder and the sources --------------------------------------------------


@asynccontextmanager
async def work_folder(repo: Repository) -> AsyncIterator[Path]:
    """A private folder (0700) under the storage's temporary folder, removed at the end
    whatever happens."""
    base = repo.storage.tmp
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = base / f"build-{secrets.token_hex(8)}"
    folder.mkdir(mode=0o700)
    try:
        yield folder
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, folder, True))


def _git_env(work: Path) -> dict[str, str]:
    """git with no configuration, login, prompt or protocol of the machine's: only https,
    ssh and file, ssh without keys, agent or prompt."""
    ssh = (
        "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null "
        "-o IdentityAgent=none -o StrictHostKeyChecking=accept-new "
        f"-o UserKnownHostsFile={shlex.quote(str(work / 'known_hosts'))}"
    )
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(work),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "https:ssh:file",
        "GIT_SSH_COMMAND": ssh,
    }


def _git_message(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()[-_GIT_MESSAGE_CHARS:]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-4:]) or "no message"


async def fetch_git(children: Children, url: str, work: Path, uid: int, gid: int) -> Path:
    """The repository at `url` (checked by names.check_git_url) in a folder of `work`.

    https and ssh: `git clone --depth 1` by the daemon. file: `git archive` run as the
    caller (`uid`, `gid`): the caller's own permissions decide what may be read, and the
    archive is unpacked like a client's tar.
    """
    source = work / "source"
    env = _git_env(work)
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            if url.startswith("file://"):
                await _archive_as(children, url, work, uid, gid, env)
                source.mkdir(mode=0o700)
                await asyncio.to_thread(unpack, work / "source.tar", source)
                return source
            argv = ["git", "clone", "--depth", "1", "--quiet", "--", url, str(source)]
            status, _, err = await children.run(argv, env=env, cwd=work)
            if status != 0:
                raise BuildError(f"git could not clone {url}: {_git_message(err)}")
    except TimeoutError:
        raise BuildError(f"fetching {url} took more than {FETCH_TIMEOUT_S:g} s") from None
    await asyncio.to_thread(shutil.rmtree, source / ".git", True)
    await asyncio.to_thread(check_tree, source)
    return source


async def _archive_as(
    children: Children, url: str, work: Path, uid: int, gid: int, env: dict[str, str]
) -> None:
    """`git archive --remote=URL HEAD` as the caller into `work/source.tar`, each file of it
    bounded by MAX_CONTEXT_BYTES (RLIMIT_FSIZE)."""
    argv = [
        "prlimit",
        f"--fsize={MAX_CONTEXT_BYTES}",
        "--",
        "git",
        "archive",
        "--format=tar",
        f"--remote={url}",
        "HEAD",
    ]
    if uid != 0:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *argv]
    with (work / "source.tar").open("wb") as out:
        proc = await children.spawn(
            argv,
            env=env,
            cwd="/",
            stdout=out.fileno(),
            stderr=asyncio.subprocess.PIPE,
            drops_privileges=uid != 0,
        )
        try:
            assert proc.stderr is not None
            err = bytearray()
            while chunk := await proc.stderr.read(65536):
                err += chunk
                del err[:-_GIT_MESSAGE_CHARS]
            status = await children.wait(proc)
        except asyncio.CancelledError:
            await children.stop(proc, grace=0)
            raise
    if status != 0:
        raise BuildError(f"git could not read {url} as you: {_git_message(bytes(err))}")


# --- the build -------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A build's result: the image installed under its name."""

    ref: LocalRef
    id: str
    models: tuple[str, ...]
    replaced: bool


async def _resolved_containerfile(repo: Repository, context: Path, work: Path, caller: str) -> Path:
    """A copy of the context's Containerfile in `work`, its FROM lines naming one of the
    caller's images made full names (`docker.io/<caller>/<name>:<tag>`)."""
    original = find_containerfile(context)
    text = original.read_bytes().decode(errors="replace")
    resolved: dict[int, str] = {}
    for line in base_images(text):
        local = own_image(line.image)
        if local is None:
            continue
        ref = LocalRef(caller, *local)
        if await store.get(repo, ref) is not None:
            resolved[line.index] = ref.full
    path = work / "Containerfile"
    path.write_text(resolve_from(text, resolved))
    return path


def check_replace(
    shown: str, nodes: list[Node], models: tuple[str, ...] | None, force: bool
) -> None:
    """BuildError when the image `shown`, which `nodes` use, may not be replaced: without
    `force` when nodes use it (an unused image is simply replaced), with it when the new
    image (supporting `models`, None: not built yet) misses one of their models."""
    command = f"walt image build --force {shown} ..."
    refusal = replacing.refusal(shown, nodes, models, force, command, unused_needs_force=False)
    if refusal:
        raise BuildError(refusal)


async def build(
    repo: Repository,
    locks: NameLocks,
    db: Database,
    *,
    caller: str,
    ref: LocalRef,
    force: bool,
    context: Path,
    work: Path,
    on_line: Callable[[str], None],
) -> Built:
    """Build `context` (a folder of `work`) into `ref`, streaming buildah's output lines to
    `on_line`; all or nothing: on any failure or cancellation the staging image is gone and
    the previous image of that name untouched. An image nodes use is replaced only with
    `force`, and only by one supporting their models. BuildError for the user otherwise."""
    shown = ref.local if ref.user == caller else ref.display
    # early: no build in vain
    check_replace(shown, await db.nodes_using_image(ref.full), None, force)
    containerfile = await _resolved_containerfile(repo, context, work, caller)
    lines = LineSplitter(on_line)
    async with store.staging(repo, ref) as staged:
        argv = [
            "buildah",
            "build",
            "--layers",
            "--force-rm",
            "-f",
            str(containerfile),
            "-t",
            staged,
            str(context),
        ]
        before = await store.image_ids(repo)
        try:
            async with asyncio.timeout(BUILD_TIMEOUT_S):
                await repo.run_streaming(argv, lines.feed)
        except BaseException as err:
            # the steps done before the failure were committed as cache images (`--layers`),
            # which no image will build on; a successful build's own chain is the cache kept
            await store.drop_dangling(repo, keep=before)
            if isinstance(err, TimeoutError):
                raise BuildError(f"the build took more than {BUILD_TIMEOUT_S:g} s") from None
            if isinstance(err, ToolError):
                raise BuildError(f"the build failed: {err.message}") from None
            raise
        finally:
            lines.close()
        data = await store.inspect_id(repo, staged)
        if data is None:
            raise BuildError("buildah reported success but left no image")
        if not data.models:
            raise BuildError(
                "the image has no walt.node.models label: the Containerfile must set it, "
                "e.g. LABEL walt.node.models=pc-x86-64,rpi-3-b-plus"
            )
        try:
            store.check_layers(data, shown)
        except store.TooManyLayers as err:
            raise BuildError(str(err)) from None
        async with locks.hold(ref.full):
            check_replace(shown, await db.nodes_using_image(ref.full), data.models, force)
            replaced = await store.get(repo, ref) is not None
            await store.install(repo, staged, ref)
    _log.info("image_built", image=ref.display, id=data.id[:12], replaced=replaced)
    return Built(ref, data.id, data.models, replaced)
