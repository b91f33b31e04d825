"""Where the internal repository keeps its images, and how podman, buildah and skopeo are
told so: configuration files of the daemon's own, named by environment variables, so that
the tools never read the machine's /etc/containers nor anyone's auth.json.

The storage root comes from server.conf (`daemon.image-storage`); runtime state, temporary
files and the configuration files live in `<state-dir>/containers/`. Tests and labs thus
run a whole repository inside their own folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from waltd import podman_registries
from waltd.atomic import write_atomic
from waltd.config import Config


def toml_str(value: str) -> str:
    """A TOML basic string holding `value`: quotes, backslashes and control characters
    escaped, everything else literal (TOML has no surrogate-pair escapes, which JSON would
    write for characters beyond U+FFFF). ValueError for a lone surrogate, which no TOML file
    can hold."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"{value!r} holds a lone surrogate, which TOML cannot hold")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def render_storage_conf(graphroot: Path, runroot: Path) -> str:
    """containers-storage.conf(5): overlay storage at `graphroot`."""
    return (
        "[storage]\n"
        'driver = "overlay"\n'
        f"graphroot = {toml_str(str(graphroot))}\n"
        f"runroot = {toml_str(str(runroot))}\n"
    )


def render_containers_conf(tmp_dir: Path) -> str:
    """containers.conf(5) for podman and buildah on the machines waltd runs on.

    runc and cgroupfs because crun refuses hybrid cgroup hierarchies; ulimits below a
    20000 open-files hard limit (containers get EPERM above the daemon's own); podman's
    state, events, copy buffers and network configurations under `tmp_dir` instead of
    /run/libpod, the journal, /var/tmp and /etc/cni.
    """
    tmp = str(tmp_dir)
    return (
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
        "\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f"events_logfile_path = {toml_str(tmp + '/events.log')}\n"
        f"tmp_dir = {toml_str(tmp + '/libpod')}\n"
        f"image_copy_tmp_dir = {toml_str(tmp)}\n"
        "\n"
        "[network]\n"
        f"network_config_dir = {toml_str(tmp + '/networks')}\n"
    )


@dataclass(frozen=True)
class Storage:
    """The repository's storage root and its configuration folder."""

    graphroot: Path
    folder: Path

    @classmethod
    def of(cls, config: Config) -> Storage:
        """The storage a configuration names."""
        return cls(config.daemon.image_storage, config.daemon.state_dir / "containers")

    @property
    def runroot(self) -> Path:
        """podman's runtime state (locks, mounts)."""
        return self.folder / "run"

    @property
    def tmp(self) -> Path:
        """Temporary files of copies and builds."""
        return self.folder / "tmp"

    @property
    def auth_file(self) -> Path:
        """An empty auth file: the tools get logins only by an `--authfile` of an operation."""
        return self.folder / "auth.json"

    def written(self) -> bool:
        """Whether podman or buildah ever wrote an image or a container here (their overlay
        driver's records appear with the first): a storage never written holds nothing, which
        is known without starting a tool (the first tool start in a storage sets it up, a
        few tenths of a second)."""
        records = ("overlay-images/images.json", "overlay-containers/containers.json")
        return any((self.graphroot / record).exists() for record in records)

    def env(self) -> dict[str, str]:
        """The environment that points podman, buildah and skopeo at this storage."""
        return {
            "CONTAINERS_STORAGE_CONF": str(self.folder / "storage.conf"),
            "CONTAINERS_CONF": str(self.folder / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.folder / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "TMPDIR": str(self.tmp),
        }

    def remove_work_left(self) -> int:
        """Remove the build folders (`tmp/build-*`) a crash left; how many. Only at start:
        a running build owns its folder."""
        left = list(self.tmp.glob("build-*")) if self.tmp.is_dir() else []
        for folder in left:
            shutil.rmtree(folder, ignore_errors=True)
        return len(left)

    def prepare(self, config: Config) -> None:
        """Write the configuration files (again: the registries may have changed)."""
        for folder in (self.folder, self.runroot, self.tmp, self.graphroot):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = {
            "storage.conf": render_storage_conf(self.graphroot, self.runroot),
            "containers.conf": render_containers_conf(self.tmp),
            # plain-HTTP and unverified-TLS registries of server.conf marked insecure
            "registries.conf": podman_registries.render(config),
        }
        for name, text in files.items():
            write_atomic(self.folder / name, text.encode(), 0o600)
        if not self.auth_file.exists():
            # must exist: buildah refuses an auth file path that does not
            write_atomic(self.auth_file, b'{"auths": {}}', 0o600)
