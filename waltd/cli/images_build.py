"""`walt image build NAME --from-dir DIR | --from-url URL [--sub-dir D]`.

With `--from-dir` the client makes the tar of the folder itself (Python's tarfile, in a
thread) and streams it as the request body: the daemon never reads the user's files as root.
With `--from-url` the daemon fetches the git repository. buildah's output is printed as it
comes; the image is installed only when the build succeeded and carries `walt.node.models`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlencode

from waltd.api import wire
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable
from waltd.names import InvalidName, check_git_url, parse_owned_local, parse_sub_dir

# The files a build folder holds its instructions in (checked before sending it).
CONTAINERFILES = ("Containerfile", "Dockerfile")
# The tar is sent in chunks of this size; at most this many wait to be sent.
_CHUNK = 1024**2
_QUEUED = 8


class ContextTar:
    """The tar of a build folder, made in a thread and read as chunks by the upload.

    The tar stops with ClientError past `limit` bytes (the daemon's bound) or when a file
    cannot be read; `error` keeps why, for the message shown instead of aiohttp's.
    """

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.sent = 0
        self.error: ClientError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The tar's bytes, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUED)

        def put(item: bytes | None) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        # a daemon thread: an interrupted `walt` must not wait for it to end
        thread = threading.Thread(target=self._make, args=(put,), daemon=True)
        thread.start()
        while (chunk := await queue.get()) is not None:
            yield chunk
        if self.error is not None:
            raise self.error

    def _make(self, put: Callable[[bytes | None], None]) -> None:
        writer = _Writer(self, put)
        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for entry in sorted(os.listdir(self.folder)):
                    tar.add(self.folder / entry, arcname=entry, filter=_member)
            writer.flush()
        except ClientError as err:
            self.error = err
        except OSError as err:
            self.error = ClientError(f"cannot read the build folder: {err}")
        finally:
            put(None)


class _Writer:
    """The file tarfile writes to: buffers, counts and hands on chunks."""

    def __init__(self, tar: ContextTar, put: Callable[[bytes | None], None]) -> None:
        self._tar = tar
        self._put = put
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._tar.sent += len(data)
        if self._tar.sent > self._tar.limit:
            raise ClientError(
                f"the build folder {self._tar.folder} makes a tar over "
                f"{self._tar.limit // 1024**2} MiB, the limit: build from a smaller folder"
            )
        self._buffer += data
        if len(self._buffer) >= _CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._put(bytes(self._buffer))
            self._buffer.clear()


def _member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A file of the build folder as sent: no owner names; devices and FIFOs refused."""
    if info.isdev() or info.isfifo():
        raise ClientError(f"the build folder holds a device or FIFO: {info.name}")
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ClientError(f"{folder} is not a folder")
    if not any((folder / name).is_file() for name in CONTAINERFILES):
        raise ClientError(f"{folder} holds no {' nor '.join(CONTAINERFILES)} at its top")


async def _build(args: argparse.Namespace) -> int:
    try:
        parse_owned_local(args.name, "you")
        url = None if args.from_url is None else check_git_url(args.from_url)
        sub_dir = None if args.sub_dir is None else parse_sub_dir(args.sub_dir)
    except InvalidName as err:
        raise ClientError(str(err)) from err
    request = wire.BuildRequest(args.name, url, sub_dir if url is not None else None, args.force)
    path = f"/v1/images/build?{urlencode(request.to_params())}"
    tar: ContextTar | None = None
    if url is None:
        folder = Path(args.from_dir)
        _check_folder(folder)
        tar = ContextTar(folder, wire.MAX_BUILD_CONTEXT_BYTES)
    result: wire.BuildResult | None = None
    async with Client() as client:
        try:
            records = (
                client.stream(path, data=tar.chunks(), content_type="application/x-tar")
                if tar is not None
                else client.stream(path, data=b"", content_type="application/octet-stream")
            )
            async for raw in records:
                try:
                    record = wire.build_record(raw)
                except ValueError as err:
                    raise ClientError(f"waltd sent an unreadable build record: {err}") from err
                if isinstance(record, wire.BuildProgress):
                    print(printable(record.line), flush=True)
                elif isinstance(record, wire.BuildFailed):
                    raise ClientError(record.error)
                else:
                    result = record
        except ClientError:
            if tar is not None and tar.error is not None:
                raise tar.error from None
            raise
    if result is None:
        raise ClientError("waltd ended the build without a result")
    replaced = " (it replaces the previous image of that name)" if result.replaced else ""
    models = ",".join(result.models)
    print(printable(f"OK, image {result.image} was built for {models}{replaced}."))
    return 0


def register(images: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`walt image build`."""
    build = images.add_parser(
        "build",
        help="build an image from a Containerfile or Dockerfile",
        description=(
            "Build image NAME from a folder or a git repository holding a Containerfile or "
            "Dockerfile. FROM <name>[:<tag>] names one of your images first. The result "
            "must carry the label walt.node.models."
        ),
    )
    build.add_argument("name", metavar="NAME", help="the image to make: <name>[:<tag>]")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dir", metavar="DIR", help="a folder of this machine")
    source.add_argument(
        "--from-url", metavar="URL", help="a git repository (https, ssh or file URL)"
    )
    build.add_argument(
        "--sub-dir", metavar="D", help="with --from-url: the folder of the repository to build"
    )
    build.add_argument(
        "--force", action="store_true", help="replace the image even if nodes use it"
    )
    build.set_defaults(func=_build_checked)


async def _build_checked(args: argparse.Namespace) -> int:
    if args.sub_dir is not None and args.from_url is None:
        raise ClientError("--sub-dir goes with --from-url (with --from-dir, give the folder)")
    return await _build(args)
