"""One image copy with skopeo, its progress as events.

`copy` runs one `skopeo copy SOURCE DEST` through the repository: logins only by temporary
auth files (`--src-authfile`/`--dest-authfile`, `registries.base.authfile`), TLS checks off
for plain-HTTP and unverified registries, a docker daemon named by `--src-daemon-host`.
skopeo draws its byte progress only on a terminal, so its stdout is a pseudo-terminal
(`Repository.run_streaming`); `ProgressParser` turns what it draws there into `Progress`
events: a blob, the config, the manifest, with bytes when skopeo shows them. Blobs already
in the destination storage are not fetched again: skopeo reports them `skipped`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from waltd.images.repository import Repository
from waltd.registries.base import Credentials, ImageInfo, authfile

# A copy that writes nothing on its terminal for this long is stalled (a registry that stopped
# sending): it is ended. Committing a large layer into storage is silent for a while, hence
# minutes rather than seconds.
IDLE_TIMEOUT_S = 600.0
# Byte progress of one blob is reported at most this often; state changes always are.
PROGRESS_INTERVAL_S = 0.25
# A terminal line longer than this is no progress line of skopeo's: dropped unread.
_MAX_LINE = 4096
# CSI sequences (cursor moves, line erasing) of skopeo's progress bars.
_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(r"Copying (blob|config) (?:sha256:)?([0-9a-f]{6,64})\b\s*(.*)")
_BYTES = re.compile(
    r"([0-9]+(?:\.[0-9]+)?)\s?(b|B|KiB|MiB|GiB|TiB)\s*/\s*([0-9]+(?:\.[0-9]+)?)\s?(b|B|KiB|MiB|GiB|TiB)"
)
_UNITS = {"b": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
SHORT_ID = 12


@dataclass(frozen=True)
class Progress:
    """One step of a copy: a blob (a layer), the config, or the manifest.

    `state` is `copying`, `done` or `skipped` (a blob the destination already holds);
    `done`/`total` are bytes when skopeo shows them (its figures, rounded to 0.1 of a unit).
    """

    step: str
    id: str
    state: str
    done: int | None = None
    total: int | None = None


def _bytes(number: str, unit: str) -> int:
    return round(float(number) * _UNITS[unit])


def parse_line(line: str) -> Progress | None:
    """The progress one line of skopeo's terminal says, or None for any other line."""
    if line.startswith("Writing manifest"):
        return Progress("manifest", "", "copying")
    found = _STEP.match(line)
    if found is None:
        return None
    step, digest, rest = found.groups()
    ident = digest[:SHORT_ID]
    if rest.startswith("done"):
        return Progress(step, ident, "done")
    if rest.startswith("skipped"):
        return Progress(step, ident, "skipped")
    size = _BYTES.search(rest)
    if size is None:
        return Progress(step, ident, "copying")
    return Progress(step, ident, "copying", _bytes(*size.group(1, 2)), _bytes(*size.group(3, 4)))


class ProgressParser:
    """skopeo's terminal output (bytes as they come) -> `Progress` events, each change once.

    Lines end with CR LF; a redraw moves the cursor up and erases before writing the bars
    again, so escape sequences are removed and each line read on its own. A `done` step keeps
    the total its last bar showed.
    """

    def __init__(self) -> None:
        self._partial = b""
        self._last: dict[tuple[str, str], Progress] = {}

    def feed(self, data: bytes) -> list[Progress]:
        """The new events in `data`."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > _MAX_LINE:
            self._partial = b""  # no line of skopeo's: not kept
        events = []
        for raw in lines:
            if len(raw) > _MAX_LINE:
                continue
            line = _CSI.sub("", raw.decode(errors="replace")).replace("\r", "").strip()
            event = parse_line(line)
            if event is None:
                continue
            key = (event.step, event.id)
            last = self._last.get(key)
            if event.state == "done" and last is not None:
                event = Progress(event.step, event.id, "done", last.total, last.total)
            if event != last:
                self._last[key] = event
                events.append(event)
        return events

    @property
    def steps(self) -> dict[tuple[str, str], Progress]:
        """The last state of each step seen."""
        return dict(self._last)


@dataclass(frozen=True)
class Side:
    """One end of a copy: a skopeo transport reference and how to reach it.

    `ref` is e.g. `docker://host:port/user/name:tag`, `containers-storage:docker.io/u/n:t` or
    `docker-daemon:user/name:tag`; `tls_verify` False for a plain-HTTP or unverified registry;
    `registry_host` the auth file's key for `creds`; `daemon_host` a docker daemon's socket URL.
    """

    ref: str
    tls_verify: bool = True
    registry_host: str | None = None
    creds: Credentials | None = None
    daemon_host: str | None = None

    def secrets(self) -> list[str]:
        """What must not show in an error: the password, and the auth file's token."""
        if self.creds is None:
            return []
        token = f"{self.creds.username}:{self.creds.password}".encode()
        return [self.creds.password, base64.b64encode(token).decode()]


def _options(side: Side, prefix: str, auth: str | None) -> list[str]:
    options = []
    if side.ref.startswith("docker://") and not side.tls_verify:
        options.append(f"--{prefix}-tls-verify=false")
    if auth is not None:
        options += [f"--{prefix}-authfile", auth]
    if side.daemon_host is not None:
        options += [f"--{prefix}-daemon-host", side.daemon_host]
    return options


def platform_options(platform: str | None) -> list[str]:
    """skopeo's options choosing `platform` (`os/arch[/variant]`) in a manifest list."""
    if platform is None:
        return []
    os_name, arch, *variant = platform.split("/")
    options = ["--override-os", os_name, "--override-arch", arch]
    return options + (["--override-variant", variant[0]] if variant else [])


def pinned(ref: str, tag: str, digest: str) -> str:
    """`docker://host/repo@digest` from skopeo's `docker://host/repo:tag`: the copy takes the
    manifest that was checked even if the tag moves meanwhile (`ref` as it is when it does not
    end with the tag)."""
    if not ref.startswith("docker://") or not ref.endswith(f":{tag}"):
        return ref
    return f"{ref[: -len(tag) - 1]}@{digest}"


def checked_copy(ref: str, tag: str, info: ImageInfo | None) -> tuple[str, str | None]:
    """What to copy once a registry's API checked the image (`info`; None: not checked): `ref`
    pinned to the manifest checked (`pinned`), and the id of the image the copy makes when
    that is known already: one image, not a list (in a list skopeo may choose another
    platform than the check did), whose id containers/image makes its config's digest."""
    if info is None or info.digest is None:
        return ref, None
    ref = pinned(ref, tag, info.digest)
    if ref.endswith(f"@{info.digest}") and not info.platforms and info.config_digest:
        return ref, info.config_digest.partition(":")[2] or None
    return ref, None


async def copy(
    repo: Repository,
    source: Side,
    dest: Side,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    manifest_format: str | None = None,
    platform: str | None = None,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> None:
    """`skopeo copy` from `source` to `dest`; `on_progress` receives the copy's steps.

    `manifest_format` (`v2s2`) converts the manifest; `platform` (`os/arch[/variant]`) is the
    image taken from a manifest list (by default skopeo takes the server's own). ToolError
    (secrets removed) when skopeo fails, TimeoutError when it shows nothing for
    `idle_timeout_s`.
    """
    parser = ProgressParser()
    shown: dict[tuple[str, str], float] = {}

    def output(data: bytes) -> None:
        deadline.reschedule(asyncio.get_running_loop().time() + idle_timeout_s)
        if on_progress is None:
            return
        now = time.monotonic()
        for event in parser.feed(data):
            key = (event.step, event.id)
            # byte updates of one blob at most every PROGRESS_INTERVAL_S; changes of state always
            if event.state == "copying" and event.done is not None:
                if now - shown.get(key, 0.0) < PROGRESS_INTERVAL_S:
                    continue
            shown[key] = now
            on_progress(event)

    async with contextlib.AsyncExitStack() as files:
        src_auth = await files.enter_async_context(
            authfile(source.registry_host or "", source.creds)
        )
        dest_auth = await files.enter_async_context(authfile(dest.registry_host or "", dest.creds))
        argv = ["skopeo", "copy"]
        argv += _options(source, "src", str(src_auth) if src_auth else None)
        argv += _options(dest, "dest", str(dest_auth) if dest_auth else None)
        if manifest_format is not None:
            argv += ["--format", manifest_format]
        argv += platform_options(platform)
        argv += [source.ref, dest.ref]
        try:
            async with asyncio.timeout(idle_timeout_s) as deadline:
                await repo.run_streaming(argv, output, secrets=source.secrets() + dest.secrets())
        except TimeoutError:
            raise TimeoutError(
                f"the copy of {source.ref} showed no progress for {idle_timeout_s:g} s"
            ) from None
