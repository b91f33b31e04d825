"""`walt image build`: a real daemon building with buildah into its own podman storage.

The images are built offline: a `FROM scratch` base holding busybox-static (made with
`walt image build` itself) lets RUN steps run without a network.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.conftest import require_root, require_tool
from tests.support.daemon import (
    ROOT,
    Daemon,
    find_record,
    is_event,
    remove,
    short_dir,
    walt,
    write_config,
)
from tests.support.store_images import release_storage
from tests.support.users import unix_user
from tests.support.wait import until
from waltd.api import wire
from waltd.config import load as load_config
from waltd.db import Database
from waltd.images import build, tools
from waltd.images.storage import Storage
from waltd.images.store import STAGING_PREFIX
from waltd.names import InvalidName, check_git_url, parse_sub_dir
from waltd.process import Children

BASE_FILE = "FROM scratch\nCOPY busybox /bin/busybox\nLABEL walt.node.models=pc-x86-64\n"


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/drakkar-lig/walt-python-packages.git",
        "ssh://git@example.org:2222/team/repo.git",
        "git@example.org:team/repo.git",
        "file:///srv/git/repo.git",
    ],
)
def test_git_urls_of_the_three_forms_are_accepted(url: str) -> None:
    assert check_git_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("--upload-pack=touch /tmp/x", "not allowed"),
        ("--upload-pack", "must not start with '-'"),
        ("ext::sh -c touch% /tmp/pwned", "not allowed"),
        ("ext::sh", "'<transport>::' forms"),
        ("fd::3", "'<transport>::' forms"),
        ("http://example.org/repo.git", "scheme 'http'"),
        ("git://example.org/repo.git", "scheme 'git'"),
        ("https://user:secret@example.org/repo.git", "no password"),
        ("ssh://-oProxyCommand=x/repo", "not allowed"),
        ("host:-oProxyCommand", "https, ssh or file"),
        ("file:///srv/../etc/repo", "without '..'"),
        ("https://example.org/repo.git;reboot", "not allowed"),
        ("https://example.org/repo\n.git", "not allowed"),
        ("https://example.org/" + "x" * 3000, "at most 2048"),
    ],
)
def test_hostile_git_urls_are_refused_saying_what_is_allowed(url: str, why: str) -> None:
    with pytest.raises(InvalidName) as caught:
        check_git_url(url)
    assert why in str(caught.value)
    assert "https://host/path" in str(caught.value)


def test_sub_folders_stay_inside_the_repository() -> None:
    assert parse_sub_dir("images/rpi/") == "images/rpi"
    assert parse_sub_dir("./a//b") == "a/b"
    for hostile, why in [("../x", "'..'"), ("a/../../b", "'..'"), ("/etc", "relative")]:
        with pytest.raises(InvalidName, match=why):
            parse_sub_dir(hostile)


def test_from_lines_name_images_and_skip_earlier_stages() -> None:
    text = (
        "# FROM commented\n"
        "FROM --platform=linux/amd64 base:v1 AS builder\n"
        "RUN echo \\\n"
        "FROM not-an-instruction\n"
        "from builder\n"
        "FROM waltplatform/pc-x86-64-default\n"
        "FROM mine\n"
    )
    lines = build.base_images(text)
    assert [(line.index, line.image) for line in lines] == [
        (1, "base:v1"),
        (5, "waltplatform/pc-x86-64-default"),
        (6, "mine"),
    ]
    assert [build.own_image(line.image) for line in lines] == [
        ("base", "v1"),
        None,
        ("mine", "latest"),
    ]
    resolved = build.resolve_from(text, {1: "docker.io/joe/base:v1"})
    assert resolved.split("\n")[1] == (
        "FROM --platform=linux/amd64 docker.io/joe/base:v1 AS builder"
    )
    assert resolved.split("\n")[2:] == text.split("\n")[2:]


def test_links_leading_outside_are_seen() -> None:
    assert not build.link_escapes("a/link", "../b")
    assert not build.link_escapes("a/b/link", "../../c/./d")
    assert build.link_escapes("a/link", "../../b")
    assert build.link_escapes("link", "/etc/passwd")
    assert build.link_escapes("a/link", "x/../../../y")


def test_build_output_is_cut_into_lines() -> None:
    lines: list[str] = []
    splitter = build.LineSplitter(lines.append)
    splitter.feed(b"STEP 1/2: FROM scratch\r\nSTEP 2")
    splitter.feed(b"/2: COPY\r\n" + b"x" * (build.MAX_LINE_CHARS + 10))
    splitter.close()
    assert lines[:2] == ["STEP 1/2: FROM scratch", "STEP 2/2: COPY"]
    assert [len(line) for line in lines[2:]] == [build.MAX_LINE_CHARS, 10]


def test_build_records_and_requests_are_checked() -> None:
    request = wire.BuildRequest("img:v2", "file:///srv/r", "sub")
    assert wire.BuildRequest.from_query(request.to_params()) == request
    with pytest.raises(ValueError, match="sub_dir goes with url only"):
        wire.BuildRequest.from_query({"name": "x", "sub_dir": "a"})
    with pytest.raises(ValueError, match="name is missing"):
        wire.BuildRequest.from_query({})
    result = wire.BuildResult("img:v2", "abc", ("pc-x86-64",), True)
    assert wire.build_record(result.to_json()) == result
    assert wire.build_record({"type": "error", "error": "no"}) == wire.BuildFailed("no")
    with pytest.raises(ValueError, match="replaced must be true or false"):
        wire.build_record({**result.to_json(), "replaced": "yes"})
    with pytest.raises(ValueError, match="unknown type"):
        wire.build_record({"type": "surprise"})


# --- a real daemon -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon for the module (each test builds other names), with a base image `base`."""
    require_root()
    for tool in ("buildah", "podman", "runc", "git", "busybox"):
        require_tool(tool)
    folder = short_dir()
    running = Daemon(folder, write_config(folder))
    try:
        running.start()
        context = folder / "base-context"
        context.mkdir()
        shutil.copy(shutil.which("busybox") or "", context / "busybox")
        (context / "Containerfile").write_text(BASE_FILE)
        res = walt(running.socket, "image", "build", "base", "--from-dir", str(context))
        assert res.returncode == 0, res.stderr
        yield running
    finally:
        running.kill()
        release_storage(folder / "images")
        remove(folder)


def _storage(daemon: Daemon) -> Storage:
    return Storage(daemon.folder / "images", daemon.folder / "state" / "containers")


async def _tool(daemon: Daemon, *argv: str) -> bytes:
    children = Children(daemon.folder / "test-children.json")
    return await tools.run(children, _storage(daemon), argv)


async def _inspect(daemon: Daemon, image: str) -> dict[str, Any]:
    found = json.loads(await _tool(daemon, "podman", "image", "inspect", image))
    assert len(found) == 1
    image_data: dict[str, Any] = found[0]
    return image_data


async def _names(daemon: Daemon) -> list[str]:
    listed = json.loads(await _tool(daemon, "podman", "images", "--all", "--format", "json"))
    return [name for entry in listed for name in entry.get("Names") or ()]


async def _read_file(daemon: Daemon, image: str, path: str) -> str:
    mount = (await _tool(daemon, "podman", "image", "mount", image)).decode().strip()
    try:
        return (Path(mount) / path.lstrip("/")).read_text()
    finally:
        await _tool(daemon, "podman", "image", "unmount", image)


def _no_work_left(daemon: Daemon) -> None:
    tmp = _storage(daemon).tmp
    assert not [p.name for p in tmp.glob("build-*")], "a build folder was left"


def _folder(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


async def test_a_folder_builds_from_the_callers_own_image_and_runs_its_steps(
    daemon: Daemon, tmp_path: Path
) -> None:
    context = _folder(
        tmp_path,
        {
            "Containerfile": (
                "FROM base\n"
                'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox echo ran > /ran.txt"]\n'
                "COPY notes/note.txt /note.txt\n"
            ),
            "notes/note.txt": "from the client\n",
        },
    )
    res = walt(daemon.socket, "image", "build", "child:v1", "--from-dir", str(context))
    assert res.returncode == 0, res.stderr
    assert "STEP 2/3: RUN" in res.stdout
    assert "OK, image child:v1 was built for pc-x86-64." in res.stdout
    image = await _inspect(daemon, "docker.io/root/child:v1")
    base = await _inspect(daemon, "docker.io/root/base:latest")
    # FROM base was the caller's image: its layer is the first of the new one
    assert image["RootFS"]["Layers"][0] == base["RootFS"]["Layers"][0]
    assert image["Labels"]["walt.node.models"] == "pc-x86-64"
    assert await _read_file(daemon, "docker.io/root/child:v1", "/ran.txt") == "ran\n"
    assert await _read_file(daemon, "docker.io/root/child:v1", "/note.txt") == "from the client\n"
    assert not [n for n in await _names(daemon) if n.startswith(STAGING_PREFIX)]
    _no_work_left(daemon)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


async def test_a_git_repository_builds_from_its_sub_folder(daemon: Daemon, tmp_path: Path) -> None:
    repo = _folder(
        tmp_path / "repo",
        {
            "README": "not the build folder\n",
            "image/Dockerfile": "FROM base\nCOPY hello.txt /hello.txt\n",
            "image/hello.txt": "from git\n",
        },
    )
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "image")
    url = f"file://{repo}"
    res = walt(daemon.socket, "image", "build", "fromgit", "--from-url", url, "--sub-dir", "image")
    assert res.returncode == 0, res.stderr
    assert "OK, image fromgit was built for pc-x86-64." in res.stdout
    assert await _read_file(daemon, "docker.io/root/fromgit:latest", "/hello.txt") == ("from git\n")
    res = walt(daemon.socket, "image", "build", "x", "--from-url", url, "--sub-dir", "missing")
    assert res.returncode == 1
    assert "has no folder 'missing'" in res.stderr
    _no_work_left(daemon)


async def test_a_result_without_models_is_refused_and_the_old_image_kept(
    daemon: Daemon, tmp_path: Path
) -> None:
    good = _folder(tmp_path / "good", {"Containerfile": "FROM base\nCOPY a /a\n", "a": "1\n"})
    res = walt(daemon.socket, "image", "build", "kept", "--from-dir", str(good))
    assert res.returncode == 0, res.stderr
    before = await _inspect(daemon, "docker.io/root/kept:latest")
    names_before = await _names(daemon)

    bad = _folder(tmp_path / "bad", {"Containerfile": "FROM scratch\nCOPY a /a\n", "a": "2\n"})
    res = walt(daemon.socket, "image", "build", "kept", "--from-dir", str(bad))
    assert res.returncode == 1
    assert "no walt.node.models label" in res.stderr
    assert "LABEL walt.node.models=" in res.stderr
    assert (await _inspect(daemon, "docker.io/root/kept:latest"))["Id"] == before["Id"]
    assert await _names(daemon) == names_before
    _no_work_left(daemon)


async def test_a_failing_step_leaves_nothing(daemon: Daemon, tmp_path: Path) -> None:
    context = _folder(
        tmp_path,
        {"Containerfile": 'FROM base\nRUN ["/bin/busybox", "sh", "-c", "exit 3"]\n'},
    )
    names_before = await _names(daemon)
    res = walt(daemon.socket, "image", "build", "broken", "--from-dir", str(context))
    assert res.returncode == 1
    assert "the build failed" in res.stderr and "exit status 3" in res.stderr
    assert await _names(daemon) == names_before
    _no_work_left(daemon)


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("Containerfile")
        text = BASE_FILE.encode()
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
        for member, data in members:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return out.getvalue()


async def _post(daemon: Daemon, query: str, body: bytes) -> tuple[int, list[dict[str, Any]]]:
    connector = aiohttp.UnixConnector(path=str(daemon.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post(
            f"http://waltd/v1/images/build?{query}",
            data=body,
            headers={"Content-Type": "application/x-tar"},
        ) as resp:
            text = await resp.text()
    return resp.status, [json.loads(line) for line in text.splitlines() if line]


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _escaped(tmp: Path) -> list[Path]:
    """What a hostile member would have written outside the build folder."""
    return [p for p in (tmp / "escape", Path("/tmp/escape-abs")) if p.exists()]


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../escape"), "leads outside the build folder"),
        (_member("/tmp/escape-abs"), "is an absolute path"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (_member("a/link", tarfile.SYMTYPE, "../../etc"), "points outside"),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "points outside"),
        (_member("dev", tarfile.CHRTYPE), "device"),
    ],
)
async def test_a_hostile_tar_is_refused_before_anything_is_written(
    daemon: Daemon, member: tarfile.TarInfo, why: str
) -> None:
    status, records = await _post(daemon, "name=evil", _tar((member, b"x")))
    assert status == 200
    assert records[-1]["type"] == "error"
    assert why in records[-1]["error"]
    assert not _escaped(_storage(daemon).tmp)
    assert "docker.io/root/evil:latest" not in await _names(daemon)
    _no_work_left(daemon)


async def test_the_daemon_refuses_hostile_urls_names_and_sub_folders(daemon: Daemon) -> None:
    marker = daemon.folder / "pwned"
    for query, why in [
        (f"name=x&url=--upload-pack%3Dtouch+{marker}", "invalid git URL"),
        (f"name=x&url=ext%3A%3Ash+-c+touch%25+{marker}", "invalid git URL"),
        ("name=x&url=file%3A%2F%2F%2Fsrv%2Frepo&sub_dir=..%2F..%2Fetc", "'..' is not allowed"),
        ("name=..%2Fx", "invalid"),
        ("name=someone-else%2Fx", "belongs to user someone-else"),
        ("name=x&sub_dir=a", "sub_dir goes with url only"),
    ]:
        status, records = await _post(daemon, query, b"")
        assert status in (400, 403), (query, records)
        assert why in records[0]["error"], (query, records)
    assert not marker.exists()
    res = walt(daemon.socket, "image", "build", "x", "--from-url", "ext::sh -c reboot")
    assert res.returncode == 1 and "invalid git URL" in res.stderr


def _processes_running(*argv: str) -> list[int]:
    wanted = "\0".join(argv).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_a_caller_who_leaves_ends_the_build_and_leaves_nothing(
    daemon: Daemon, tmp_path: Path
) -> None:
    step = ("/bin/busybox", "sleep", "417")
    context = _folder(tmp_path, {"Containerfile": f"FROM base\nRUN {json.dumps(step)}\n"})
    names_before = await _names(daemon)
    env = {**os.environ, "WALT_SOCKET": str(daemon.socket), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "waltd.cli.walt", "image", "build", "slow"]
    client = await asyncio.create_subprocess_exec(*argv, "--from-dir", str(context), env=env)
    try:
        await until(lambda: _processes_running(*step), what="the RUN step", timeout_s=30)
    finally:
        client.kill()
        await client.wait()
    await until(lambda: not _processes_running(*step), what="the RUN step's end")
    await until(
        lambda: not list(_storage(daemon).tmp.glob("build-*")), what="the build folder's end"
    )
    assert await _names(daemon) == names_before
    assert "docker.io/root/slow:latest" not in names_before
    # buildah stopped its RUN step's container and removed it (none is left mounted)
    assert json.loads(await _tool(daemon, "buildah", "containers", "--json") or b"[]") in ([], None)


# A non-root caller speaks HTTP with the system Python (the venv may be out of its reach).
_BUILD_AS = r"""
import json, socket, sys
path, query = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(path)
s.sendall(b"POST /v1/images/build?%s HTTP/1.0\r\nContent-Length: 0\r\n\r\n" % query.encode())
f = s.makefile("rb")
status = int(f.readline().split()[1])
while f.readline() not in (b"\r\n", b""):
    pass
print(json.dumps({"status": status, "records": [json.loads(l) for l in f if l.strip()]}))
"""


@pytest.fixture
def user() -> Iterator[str]:
    """A real non-root user, made with useradd and removed after the test."""
    with unix_user("waltb") as name:
        yield name


def _give(folder: Path, user: str) -> None:
    """Make `user` the owner of `folder` and everything in it."""
    for path in [folder, *folder.rglob("*")]:
        shutil.chown(path, user, user)


def _repository(folder: Path, files: dict[str, str]) -> Path:
    repo = _folder(folder, files)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "image")
    return repo


async def test_a_file_repository_is_read_with_the_callers_own_rights(
    daemon: Daemon, user: str
) -> None:
    python = require_tool("/usr/bin/python3")
    shared = short_dir()
    try:
        shared.chmod(0o755)
        daemon.folder.chmod(0o755)  # the user reaches the socket inside
        files = {"Containerfile": "FROM root/base\nCOPY f /f\n", "f": "mine\n"}
        own = _repository(shared / "own", files)
        _give(own, user)
        private = _repository(shared / "private", files)
        private.chmod(0o700)

        def build_as(name: str, repo: Path) -> dict[str, Any]:
            query = urlencode({"name": name, "url": f"file://{repo}"})
            argv = ["runuser", "-u", user, "--", python, "-c", _BUILD_AS]
            res = subprocess.run(
                [*argv, str(daemon.socket), query], capture_output=True, text=True, timeout=60
            )
            assert res.returncode == 0, res.stderr
            answer: dict[str, Any] = json.loads(res.stdout)
            return answer

        refused = build_as("stolen", private)
        assert refused["records"][-1]["type"] == "error"
        assert "could not read" in refused["records"][-1]["error"]
        assert f"docker.io/{user}/stolen:latest" not in await _names(daemon)

        built = build_as("mine", own)
        assert built["records"][-1]["type"] == "result", built
        image = f"docker.io/{user}/mine:latest"
        assert await _read_file(daemon, image, "/f") == "mine\n"
        # the record of the build is the caller's (other users do not see it)
        uid = pwd.getpwnam(user).pw_uid
        built_record = is_event("image_built", image=f"{user}/mine", uid=uid)
        assert find_record(daemon.records(), built_record)

        other = build_as("root/taken", own)
        assert other["status"] == 403
        assert (
            "you" in other["records"][0]["error"] and "own images" in other["records"][0]["error"]
        )
    finally:
        daemon.folder.chmod(0o700)
        remove(shared)


def test_build_folders_a_crash_left_are_removed_at_start() -> None:
    require_root()
    require_tool("podman")
    folder = short_dir()
    try:
        left = Storage.of(load_config(write_config(folder))).tmp / "build-0123abcd" / "context"
        left.mkdir(parents=True)
        (left / "Containerfile").write_text(BASE_FILE)
        daemon = Daemon(folder, folder / "server.conf").start()
        try:
            assert not left.parent.exists()
        finally:
            daemon.stop()
    finally:
        release_storage(folder / "images")
        remove(folder)


def test_an_unreachable_https_repository_gives_gits_reason(daemon: Daemon) -> None:
    # port 1 of loopback: nothing listens, git's clone runs and fails at once
    res = walt(daemon.socket, "image", "build", "x", "--from-url", "https://127.0.0.1:1/r.git")
    assert res.returncode == 1
    assert "git could not clone https://127.0.0.1:1/r.git" in res.stderr
    assert "127.0.0.1 port 1" in res.stderr or "Connection refused" in res.stderr, res.stderr
    _no_work_left(daemon)


def test_a_folder_with_a_link_leading_outside_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    context = _folder(tmp_path, {"Containerfile": "FROM base\nCOPY secret /secret\n"})
    (context / "secret").symlink_to("/etc/shadow")
    res = walt(daemon.socket, "image", "build", "leak", "--from-dir", str(context))
    assert res.returncode == 1
    assert "link 'secret' -> '/etc/shadow' points outside the build folder" in res.stderr
    res = walt(daemon.socket, "image", "build", "x", "--from-dir", str(tmp_path / "none"))
    assert res.returncode == 1 and "is not a folder" in res.stderr
    res = walt(daemon.socket, "image", "build", "x", "--from-dir", str(context), "--sub-dir", "a")
    assert res.returncode == 1 and "--sub-dir goes with --from-url" in res.stderr
    _no_work_left(daemon)


async def test_an_image_nodes_use_is_replaced_only_with_force_and_their_models(
    daemon: Daemon, tmp_path: Path
) -> None:
    first = _folder(tmp_path / "one", {"Containerfile": "FROM base\nCOPY a /a\n", "a": "1\n"})
    res = walt(daemon.socket, "image", "build", "inuse", "--from-dir", str(first))
    assert res.returncode == 0, res.stderr
    before = (await _inspect(daemon, "docker.io/root/inuse:latest"))["Id"]
    async with Database(daemon.folder / "state" / "waltd.db") as db:
        await db.upsert_node(
            "52:54:00:00:00:b1", model="pc-x86-64", name="n1", image="docker.io/root/inuse:latest"
        )
    second = _folder(tmp_path / "two", {"Containerfile": "FROM base\nCOPY a /a\n", "a": "2\n"})
    res = walt(daemon.socket, "image", "build", "inuse", "--from-dir", str(second))
    assert res.returncode == 1
    assert "used by node(s) n1" in res.stderr
    assert "walt image build --force inuse" in res.stderr
    other = _folder(
        tmp_path / "three",
        {"Containerfile": "FROM base\nLABEL walt.node.models=rpi-3-b\n"},
    )
    res = walt(daemon.socket, "image", "build", "--force", "inuse", "--from-dir", str(other))
    assert res.returncode == 1
    assert "model(s) pc-x86-64, which the new image does not support" in res.stderr
    assert (await _inspect(daemon, "docker.io/root/inuse:latest"))["Id"] == before
    res = walt(daemon.socket, "image", "build", "--force", "inuse", "--from-dir", str(second))
    assert res.returncode == 0, res.stderr
    assert "it replaces the previous image" in res.stdout
    assert await _read_file(daemon, "docker.io/root/inuse:latest", "/a") == "2\n"
    assert not [n for n in await _names(daemon) if n.startswith(STAGING_PREFIX)]


async def _orphans(daemon: Daemon) -> list[str]:
    """Images of the storage that no name holds and that no named image builds on: what only
    a removal could ever free (the cache steps of a named image's own chain are not)."""
    listed = json.loads(await _tool(daemon, "podman", "images", "--all", "--format", "json"))
    ids = sorted({str(entry["Id"]) for entry in listed or ()})
    images = json.loads(await _tool(daemon, "podman", "image", "inspect", *ids)) if ids else []
    parent = {str(i["Id"]): str(i.get("Parent") or "") for i in images}
    kept: set[str] = set()
    for image in images:
        if image.get("RepoTags"):
            current = str(image["Id"])
            while current and current not in kept:
                kept.add(current)
                current = parent.get(current, "")
    return sorted(set(parent) - kept)


async def test_builds_leave_no_image_that_nothing_uses(daemon: Daemon, tmp_path: Path) -> None:
    def steps(first: str, second: str) -> str:
        run = '["/bin/busybox", "sh", "-c", "/bin/busybox echo {} > /{}"]'
        return f"FROM base\nRUN {run.format(first, 'one')}\nRUN {run.format(second, 'two')}\n"

    assert await _orphans(daemon) == []
    context = _folder(tmp_path / "a", {"Containerfile": steps("a", "b")})
    res = walt(daemon.socket, "image", "build", "cached", "--from-dir", str(context))
    assert res.returncode == 0, res.stderr
    assert await _orphans(daemon) == []
    # the same steps again: taken from the cache of the image's own chain
    res = walt(daemon.socket, "image", "build", "cached", "--from-dir", str(context))
    assert res.returncode == 0, res.stderr
    assert "Using cache" in res.stdout
    assert await _orphans(daemon) == []
    # the first step changed: the chain of the replaced image goes with it
    changed = _folder(tmp_path / "b", {"Containerfile": steps("c", "b")})
    res = walt(daemon.socket, "image", "build", "cached", "--from-dir", str(changed))
    assert res.returncode == 0, res.stderr
    assert await _read_file(daemon, "docker.io/root/cached:latest", "/one") == "c\n"
    assert await _orphans(daemon) == []
    # a build failing after a step that made a layer
    failing = _folder(
        tmp_path / "c",
        {"Containerfile": steps("d", "e") + 'RUN ["/bin/busybox", "sh", "-c", "exit 4"]\n'},
    )
    res = walt(daemon.socket, "image", "build", "cached", "--from-dir", str(failing))
    assert res.returncode == 1
    assert await _orphans(daemon) == []
