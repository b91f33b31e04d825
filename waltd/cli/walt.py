"""`walt`: the users' command-line client."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from waltd.api import wire
from waltd.cli import images_build, images_store, images_transfer, nodes
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable, table
from waltd.cli.user_credentials import CredentialsError, for_registries

_LEVEL_COLOURS = {"debug": "2", "info": "32", "warning": "33", "error": "31", "critical": "31;1"}
_FIXED = ("seq", "event", "level", "timestamp", "component")
NO_MATCH = "Sorry, no image could match your request."
HEADERS = ("User", "Image name", "Location", "Compatibility", "Clonable link")


def format_event(event: dict[str, Any], colour: bool = False) -> str:
    """One readable line for a log event: time, level, event, then key=value pairs.

    Events carry text from the network (DHCP options, registry answers): every
    non-printable character is shown escaped, never sent to the terminal as is.
    """
    stamp = printable(str(event.get("timestamp", "")))
    clock = stamp[11:19] if len(stamp) >= 19 else stamp
    level = str(event.get("level", "info"))
    tag = f"{printable(level):<7}"
    if colour:
        tag = f"\x1b[{_LEVEL_COLOURS.get(level, '0')}m{tag}\x1b[0m"
    pairs = " ".join(
        f"{printable(str(key))}={_value(val)}"
        for key, val in event.items()
        if key not in _FIXED and key != "exception"
    )
    name = printable(str(event.get("event", "?")))
    line = f"{clock} {tag} {name}" + (f" {pairs}" if pairs else "")
    if "exception" in event:
        # A traceback keeps its lines; only "\n" separates them here.
        lines = str(event["exception"]).rstrip().split("\n")
        line += "\n" + "\n".join(printable(text) for text in lines)
    return line


def _value(val: Any) -> str:
    if isinstance(val, list) and all(isinstance(v, str | int | float) for v in val):
        text = ",".join(str(v) for v in val)
    else:
        text = val if isinstance(val, str) else json.dumps(val, default=str)
    if " " in text or not text:
        text = json.dumps(text, ensure_ascii=False)
    return printable(text)


def row(image: wire.ImageRow, server_version: int) -> tuple[str, str, str, str, str]:
    """One row of the search table; an image needing a newer server says so instead of
    giving its link."""
    needed = image.minversion
    link = (
        f"[Need server upgrade, version>={needed}]"
        if needed is not None and needed > server_version
        else image.clone_url
    )
    tag = "" if image.tag == "latest" else f":{image.tag}"
    return (image.user, f"{image.name}{tag}", image.kind, ",".join(image.models), link)


def image_table(result: wire.SearchResult) -> str:
    """What `walt image search` prints (warnings excluded: they go to stderr)."""
    if not result.images:
        return NO_MATCH
    return table([row(i, result.server_version) for i in result.images], HEADERS)


def _print_status(status: wire.Status, out: TextIO) -> None:
    print(
        f"waltd {printable(status.version)} (pid {status.pid}), up {status.uptime_s:.0f} s",
        file=out,
    )
    net = printable(status.node_network) if status.node_network else None
    print(f"node network: {net or 'none (no DHCP served)'}", file=out)
    regs = ", ".join(printable(f"{r.label} ({r.api})") for r in status.registries)
    print(f"registries: {regs or 'none'}", file=out)
    if status.nodes is not None:
        print(f"nodes: {status.nodes}", file=out)
    print(f"you are: {printable(status.caller.walt_user)}", file=out)
    print("services:", file=out)
    for svc in status.services:
        extra = f", restarts {svc.restarts}" if svc.restarts else ""
        err = f", last error: {svc.last_error}" if svc.last_error else ""
        print(printable(f"  {svc.name:<12} {svc.state}{extra}{err}"), file=out)


async def _get_status(client: Client) -> wire.Status:
    try:
        return wire.Status.from_json(await client.get_json("/v1/status"))
    except ValueError as err:
        raise ClientError(f"waltd sent an unreadable status: {err}") from err


async def _status(args: argparse.Namespace) -> int:
    async with Client() as client:
        status = await _get_status(client)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        _print_status(status, sys.stdout)
    return 0


async def _log_show(args: argparse.Namespace) -> int:
    try:
        query = wire.EventsQuery(args.since, args.limit, args.follow).to_query()
    except ValueError as err:
        raise ClientError(str(err)) from err
    as_json = args.json
    colour = sys.stdout.isatty()
    async with Client() as client:
        async for event in client.stream(f"/v1/events{query}"):
            print(json.dumps(event) if as_json else format_event(event, colour), flush=True)
    return 0


async def _image_search(args: argparse.Namespace) -> int:
    progress = sys.stderr.isatty()
    async with Client() as client:
        status = await _get_status(client)
        try:
            logins = for_registries(status.registries)
        except CredentialsError as err:
            raise ClientError(str(err)) from err
        done: list[str] = []
        result: wire.SearchResult | None = None
        body = wire.SearchRequest(args.keyword, logins).to_json()
        async for raw in client.stream("/v1/images/search", body):
            try:
                record = wire.search_record(raw)
            except ValueError as err:
                raise ClientError(f"waltd sent an unreadable search record: {err}") from err
            if isinstance(record, wire.SearchProgress):
                done.append(printable(f"{record.source} {record.status}"))
                if progress:
                    print(f"\rSearching... {', '.join(done)}", end="", file=sys.stderr, flush=True)
            else:
                result = record
    if progress:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    if result is None:
        raise ClientError("waltd ended the search without a result")
    for warning in result.warnings:
        print(printable(warning), file=sys.stderr)
    if args.json:
        print(json.dumps([i.to_json() for i in result.images], indent=2))
    else:
        print(image_table(result))
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line grammar."""
    p = argparse.ArgumentParser(prog="walt", description="WalT testbed client")
    cats = p.add_subparsers(dest="category", required=True, metavar="CATEGORY")
    st = cats.add_parser("status", help="the daemon's state")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=_status)
    logs = cats.add_parser("log", help="the server's event log")
    logcmds = logs.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = logcmds.add_parser("show", help="show recent events")
    show.add_argument("--follow", "-f", action="store_true", help="keep showing new events")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.add_argument("--since", type=int, default=0, help="only events after this number")
    show.add_argument("--limit", type=int, default=100, help="at most this many past events")
    show.set_defaults(func=_log_show)
    image = cats.add_parser("image", help="WalT images")
    imagecmds = image.add_subparsers(dest="command", required=True, metavar="COMMAND")
    search = imagecmds.add_parser("search", help="search registries and the docker daemon")
    search.add_argument("keyword", nargs="?", help="keep images whose clone URL holds it")
    search.add_argument("--json", action="store_true", help="print the images as JSON")
    search.set_defaults(func=_image_search)
    images_build.register(imagecmds)
    images_transfer.register(imagecmds)
    images_store.register(imagecmds)
    nodes.register(cats)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `walt`."""
    args = parser().parse_args(argv)
    try:
        return asyncio.run(args.func(args))
    except ClientError as err:
        print(f"walt: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
