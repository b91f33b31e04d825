"""`walt image clone` and `walt image publish`: the request, the progress, the result.

On a terminal the copy shows as a bar on stderr (layers done, bytes when the daemon knows
them); with `--json` every record of the daemon's stream is printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from waltd.api import wire
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable
from waltd.cli.user_credentials import CredentialsError, for_registries

_BAR = 24
_REDRAW_S = 0.1


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    return f"{count} B"  # not reached


class ProgressView:
    """The state of a copy as the daemon reports it, drawn as one line."""

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], wire.CopyProgress] = {}
        self.manifest = False

    def update(self, record: wire.CopyProgress) -> None:
        """Take one progress record."""
        if record.step == "manifest":
            self.manifest = True
        else:
            self.steps[record.step, record.id] = record

    def line(self) -> str:
        """`[====      ] 3/7 layers (2 already here), 120.3 MiB / 450.0 MiB`."""
        blobs = [s for (step, _), s in self.steps.items() if step == "blob"]
        finished = [b for b in blobs if b.state in ("done", "skipped")]
        skipped = sum(1 for b in blobs if b.state == "skipped")
        done = sum(b.done or 0 for b in blobs if b.state != "skipped")
        total = sum(b.total or 0 for b in blobs if b.state != "skipped")
        if total:
            ratio = done / total
        else:
            ratio = len(finished) / len(blobs) if blobs else 0.0
        filled = round(_BAR * min(ratio, 1.0))
        text = f"[{'=' * filled}{' ' * (_BAR - filled)}] {len(finished)}/{len(blobs)} layers"
        if skipped:
            text += f" ({skipped} already here)"
        if total:
            text += f", {_size(done)} / {_size(total)}"
        if self.manifest:
            text += ", writing the image"
        return text


async def _logins(client: Client, labels: Sequence[str | None]) -> dict[str, wire.Login]:
    """The caller's logins for the registries among `labels` (None: every one)."""
    status = wire.Status.from_json(await client.get_json("/v1/status"))
    wanted = [r for r in status.registries if None in labels or r.label in labels]
    try:
        return for_registries(wanted)
    except CredentialsError as err:
        raise ClientError(str(err)) from err


async def _transfer(
    client: Client,
    path: str,
    body: dict[str, Any],
    result_type: type[wire.CloneResult] | type[wire.PublishResult],
    as_json: bool,
) -> wire.CloneResult | wire.PublishResult:
    """Send the request; show the progress; the result record (ClientError on an error one)."""
    view = ProgressView()
    bar = sys.stderr.isatty() and not as_json
    drawn = 0.0
    result: wire.CloneResult | wire.PublishResult | None = None
    try:
        async for raw in client.stream(path, body):
            try:
                record = wire.transfer_record(raw, result_type)
            except ValueError as err:
                raise ClientError(f"waltd sent an unreadable record: {err}") from err
            if as_json:
                print(json.dumps(raw), flush=True)
            if isinstance(record, wire.OperationError):
                lines = record.error.split("\n")  # a table of choices keeps its lines
                raise ClientError("\n".join(printable(line) for line in lines))
            if isinstance(record, wire.CopyProgress):
                view.update(record)
                now = time.monotonic()
                if bar and (now - drawn >= _REDRAW_S or record.state != "copying"):
                    drawn = now
                    _draw(sys.stderr, view.line())
            else:
                result = record
    finally:
        if bar and drawn:
            print(file=sys.stderr)
    if result is None:
        raise ClientError("waltd ended the operation without a result")
    return result


def _draw(out: TextIO, text: str) -> None:
    print(f"\r\x1b[K{text}", end="", file=out, flush=True)


async def _clone(args: argparse.Namespace) -> int:
    location = args.url.partition(":")[0]
    async with Client() as client:
        logins = await _logins(client, [location])
        body = wire.CloneRequest(args.url, args.name, args.force, logins).to_json()
        result = await _transfer(client, "/v1/images/clone", body, wire.CloneResult, args.json)
    assert isinstance(result, wire.CloneResult)
    if not args.json:
        print(printable(f"OK, {result.url} was cloned as {result.image}."))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    async with Client() as client:
        logins = await _logins(client, [args.registry])
        body = wire.PublishRequest(args.image, args.registry, logins).to_json()
        path = "/v1/images/publish"
        result = await _transfer(client, path, body, wire.PublishResult, args.json)
    assert isinstance(result, wire.PublishResult)
    if not args.json:
        print("OK, image was published at:")
        print(printable(result.url))
    return 0


def register(images: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `clone` and `publish` to the `walt image` commands."""
    clone = images.add_parser("clone", help="copy an image of a clone URL into your images")
    clone.add_argument("--force", action="store_true", help="replace an image of that name")
    clone.add_argument("--json", action="store_true", help="print the progress records as JSON")
    clone.add_argument("url", help="walt:, hub:, docker: or <registry label>:<user>/<name>[:tag]")
    clone.add_argument("name", nargs="?", help="the image's name (default: the URL's)")
    clone.set_defaults(func=_clone)
    publish = images.add_parser("publish", help="push one of your images to a registry")
    publish.add_argument("--registry", help="the registry label (needed with several)")
    publish.add_argument("--json", action="store_true", help="print the progress records as JSON")
    publish.add_argument("image", help="the image: <name>[:tag]")
    publish.set_defaults(func=_publish)
