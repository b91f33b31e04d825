"""`walt image show [--all]`, `rename`, `duplicate`, `remove` and `squash`.

`show` draws tables of what GET /v1/images sends (`--json`: that data as is); the others send
one `wire.ImageOperation` and print its steps (stderr) and result (stdout), or with `--json`
every record of the daemon's stream as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

from waltd.api import wire
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable, table

NO_IMAGES = (
    "You have no images yet: find some with `walt image search`, then `walt image clone URL`."
)
MINE_HEADERS = ("Name", "In use", "Created", "Size", "Layers", "Compatibility")
OTHERS_HEADERS = ("User", "Name", "In use", "Created", "Size", "Compatibility", "Clonable link")


def size_text(count: int) -> str:
    """`count` bytes for a person: `512 B`, `3.2 MiB`..."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _created(text: str | None) -> str:
    # podman's RFC 3339 time, to the minute: "2026-12-01T12:32:27.68Z" -> "2026-12-01 12:32"
    return text[:16].replace("T", " ") if text else "-"


def _local(row: wire.StoredImageRow) -> str:
    return row.name if row.tag == "latest" else f"{row.name}:{row.tag}"


def _in_use(row: wire.StoredImageRow) -> str:
    return ", ".join(row.nodes) if row.nodes else "no"


def show_text(listing: wire.ImageListing, everyone: bool) -> str:
    """What `walt image show [--all]` prints."""
    mine = [r for r in listing.images if r.mine]
    parts = [
        table(
            [
                (
                    _local(r),
                    _in_use(r),
                    _created(r.created),
                    size_text(r.size),
                    str(r.layers),
                    ",".join(r.models),
                )
                for r in mine
            ],
            MINE_HEADERS,
        )
        if mine
        else NO_IMAGES
    ]
    if everyone:
        for title, rows in (
            ("Other users' images:", [r for r in listing.images if not r.mine and not r.default]),
            ("Default images:", [r for r in listing.images if not r.mine and r.default]),
        ):
            body = (
                table(
                    [
                        (
                            r.user,
                            _local(r),
                            _in_use(r),
                            _created(r.created),
                            size_text(r.size),
                            ",".join(r.models),
                            r.clone_url,
                        )
                        for r in rows
                    ],
                    OTHERS_HEADERS,
                )
                if rows
                else "none"
            )
            parts.append(f"{title}\n{body}")
    return "\n\n".join(parts)


async def _show(args: argparse.Namespace) -> int:
    async with Client() as client:
        raw = await client.get_json("/v1/images?all=1" if args.all else "/v1/images")
    try:
        listing = wire.ImageListing.from_json(raw)
    except ValueError as err:
        raise ClientError(f"waltd sent an unreadable image list: {err}") from err
    if args.json:
        print(json.dumps(listing.to_json()["images"], indent=2))
    else:
        print(show_text(listing, args.all))
    return 0


async def _operate(path: str, request: wire.ImageOperation, as_json: bool) -> int:
    result: wire.OperationResult | None = None
    async with Client() as client:
        async for raw in client.stream(path, request.to_json()):
            if as_json:
                print(json.dumps(raw), flush=True)
            try:
                record = wire.operation_record(raw)
            except ValueError as err:
                raise ClientError(f"waltd sent an unreadable record: {err}") from err
            if isinstance(record, wire.OperationError):
                if as_json:
                    return 1
                raise ClientError(record.error)
            if isinstance(record, wire.OperationStep):
                if not as_json:
                    print(printable(record.step), file=sys.stderr, flush=True)
            else:
                result = record
    if result is None:
        raise ClientError("waltd ended the operation without a result")
    if not as_json:
        print(printable(result.message))
    return 0


async def _rename(args: argparse.Namespace) -> int:
    request = wire.ImageOperation(args.old, args.new, args.force)
    return await _operate("/v1/images/rename", request, args.json)


async def _duplicate(args: argparse.Namespace) -> int:
    request = wire.ImageOperation(args.src, args.new, args.force)
    return await _operate("/v1/images/duplicate", request, args.json)


async def _remove(args: argparse.Namespace) -> int:
    request = wire.ImageOperation(args.name, None, args.force)
    return await _operate("/v1/images/remove", request, args.json)


async def _squash(args: argparse.Namespace) -> int:
    request = wire.ImageOperation(args.name, None, args.force)
    return await _operate("/v1/images/squash", request, args.json)


def register(images: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add show, rename, duplicate, remove and squash to `walt image`."""
    show = images.add_parser("show", help="your images (--all: every image of the server)")
    show.add_argument("--all", action="store_true", help="add other users' and default images")
    show.add_argument("--json", action="store_true", help="print the images as JSON")
    show.set_defaults(func=_show)
    force_help = "also when nodes use the image, or an image of that name exists"
    commands = (
        ("rename", _rename, ("old", "new"), "give one of your images another name"),
        ("duplicate", _duplicate, ("src", "new"), "give an image a second name of yours"),
        ("remove", _remove, ("name",), "remove one of your images"),
        ("squash", _squash, ("name",), "make one of your images a single layer"),
    )
    for name, func, positionals, help_text in commands:
        cmd = images.add_parser(name, help=help_text)
        cmd.add_argument("--force", action="store_true", help=force_help)
        cmd.add_argument("--json", action="store_true", help="print the daemon's records as JSON")
        for positional in positionals:
            cmd.add_argument(positional, metavar=positional.upper())
        cmd.set_defaults(func=func)
