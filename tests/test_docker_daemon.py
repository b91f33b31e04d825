"""The docker daemon source against a REAL dockerd started by the test (a WalT server's flags).

Images are built offline with buildah in the lab's storage and loaded into dockerd with
`skopeo copy containers-storage:X docker-daemon:X`; dockerd is stopped by PID at the end, and
the fixture checks that it left no process and no mount behind.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lab import Lab, build_image
from tests.support.dockerd import Dockerd, dockerd, load_image
from tests.support.labs import running_lab
from waltd.registries.base import LOCATION_DOCKER, NotFound, RegistryError
from waltd.registries.docker_daemon import DockerDaemonSource, _created, split_repo_tag

module = pytest.mark.asyncio(loop_scope="module")

RPI = "docker.io/tester/rpi-image:latest"
PC = "docker.io/tester/pc-image:latest"
PLAIN = "docker.io/tester/plain:latest"
EMPTY = "docker.io/tester/empty:latest"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon() -> AsyncIterator[tuple[Lab, Dockerd]]:
    """A lab whose dockerd holds WalT images under several names, and non-WalT images."""
    async with (
        running_lab("dockerd", "containerd", "skopeo", "buildah") as lab,
        dockerd(lab) as running,
    ):
        await build_image(lab, RPI, ["rpi-3-b-plus", "rpi-4-b"], {"etc/rpi": "rpi\n"})
        labels = {"walt.server.minversion": "7"}
        await build_image(lab, PC, ["pc-x86-64"], {"etc/pc": "pc\n"}, labels=labels)
        await build_image(lab, EMPTY, [], {"etc/empty": "x\n"})
        await build_image(lab, PLAIN, None, {})
        for image, names in {
            RPI: ["tester/rpi-image:latest", "tester/rpi-image:v2", "other/rpi:1.0"],
            PC: [
                "tester/pc-image:latest",
                "single:latest",  # no user: not `user/name`
                "127.0.0.1:5999/tester/pc-on-registry:latest",  # another registry's name
            ],
            EMPTY: ["tester/empty:latest"],
            PLAIN: ["tester/plain:latest"],
        }.items():
            for name in names:
                await load_image(lab, running, image, name)
        yield lab, running


@module
async def test_lists_walt_images_one_per_user_name_tag(daemon: tuple[Lab, Dockerd]) -> None:
    _, running = daemon
    source = DockerDaemonSource(running.socket)
    images = await source.list_images()
    found = {(i.user, i.name, i.tag): i for i in images}
    assert sorted(found) == [
        ("other", "rpi", "1.0"),
        ("tester", "pc-image", "latest"),
        ("tester", "rpi-image", "latest"),
        ("tester", "rpi-image", "v2"),
    ]
    rpi = found["tester", "rpi-image", "v2"]
    assert rpi.location == "docker" and rpi.kind == LOCATION_DOCKER
    assert rpi.models == ("rpi-3-b-plus", "rpi-4-b")
    assert rpi.clone_url == "docker:tester/rpi-image:v2"
    assert found["tester", "rpi-image", "latest"].clone_url == "docker:tester/rpi-image"
    # one image under three names: one digest (the image id)
    assert rpi.digest and rpi.digest.startswith("sha256:")
    assert found["other", "rpi", "1.0"].digest == rpi.digest
    assert found["tester", "pc-image", "latest"].minversion == 7
    assert rpi.created and rpi.created.endswith("Z")


@module
async def test_resolve_matches_the_listing(daemon: tuple[Lab, Dockerd]) -> None:
    _, running = daemon
    source = DockerDaemonSource(running.socket)
    listed = {(i.user, i.name, i.tag): i for i in await source.list_images()}
    resolved = await source.resolve("tester", "rpi-image", "v2")
    assert resolved == listed["tester", "rpi-image", "v2"]
    # a non-WalT image resolves too: the caller decides what a missing label means
    plain = await source.resolve("tester", "plain", "latest")
    assert not plain.is_walt and plain.digest
    with pytest.raises(NotFound, match=r"^docker daemon: .*tester/absent:latest"):
        await source.resolve("tester", "absent", "latest")


@module
async def test_transport_copies_with_skopeo(daemon: tuple[Lab, Dockerd]) -> None:
    lab, running = daemon
    source = DockerDaemonSource(running.socket)
    target = "docker.io/copier/from-daemon:latest"
    argv = ["skopeo", "copy", "--quiet", *source.skopeo_options()]
    argv += [source.transport("tester", "pc-image", "latest"), f"containers-storage:{target}"]
    assert argv[3:5] == ["--src-daemon-host", running.socket]
    await lab.run(argv, env=lab.containers_env)
    inspect = ["podman", "image", "inspect", "--format", '{{index .Labels "walt.node.models"}}']
    out = await lab.run([*inspect, target], env=lab.containers_env)
    assert out.stdout.strip() == "pc-x86-64"


async def test_daemon_not_running_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "docker.sock"
    with pytest.raises(RegistryError) as caught:
        await DockerDaemonSource(str(missing)).list_images()
    assert str(caught.value) == f"docker daemon: not running at unix://{missing}"
    assert caught.value.retryable

    # a socket file nobody listens on (a daemon that died): refused, the same message
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))
        with pytest.raises(RegistryError, match=r"^docker daemon: not running at unix://"):
            await DockerDaemonSource(f"unix://{dead}").resolve("a", "b", "c")


async def test_a_daemon_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        sock.listen()  # accepts, never answers
        source = DockerDaemonSource(f"unix://{path}", timeout_s=0.3)
        with pytest.raises(RegistryError, match=r"^docker daemon: no answer from unix://.* 0.3 s"):
            await source.list_images()


def test_repo_tags_that_are_walt_names() -> None:
    assert split_repo_tag("tester/img:latest") == ("tester", "img", "latest")
    assert split_repo_tag("docker.io/tester/img:v1.2") == ("tester", "img", "v1.2")
    for other in (
        "img:latest",
        "<none>:<none>",
        "localhost/tester/img:latest",
        "127.0.0.1:5000/tester/img:latest",
        "quay.io/tester/img:latest",
        "a/b/c:latest",
        "Tester/img:latest",
        "tester/img",
        "tester/img@sha256:" + "0" * 64,
    ):
        assert split_repo_tag(other) is None, other


def test_created_is_the_same_text_from_seconds_and_rfc3339() -> None:
    assert _created(1700000000) == "2023-11-14T22:13:20Z"
    assert _created("2023-11-14T22:13:20.123456789Z") == "2023-11-14T22:13:20Z"
    assert _created("2023-11-14T23:13:20.5+01:00") == "2023-11-14T22:13:20Z"
    assert _created("not a date") is None
    assert _created(0) is None
    assert _created(None) is None


def test_options_name_the_socket() -> None:
    assert DockerDaemonSource().skopeo_options() == [
        "--src-daemon-host",
        "unix:///var/run/docker.sock",
    ]
    assert DockerDaemonSource("/run/x.sock").socket == "unix:///run/x.sock"
    assert DockerDaemonSource().transport("u", "n", "t") == "docker-daemon:u/n:t"
