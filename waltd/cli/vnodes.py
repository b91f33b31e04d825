"""`walt node create NAME`, `walt node remove NAME`, `walt node console NAME`.

A virtual node's console comes from its emulated serial port, so from whatever runs on the
node: every line is printed escaped (`terminal.printable`), never sent to the terminal as is.
"""

from __future__ import annotations

import argparse
import sys

from waltd.api import wire
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable


async def _operation(path: str, name: str) -> int:
    result: wire.VNodeResult | None = None
    async with Client() as client:
        request = wire.VNodeRequest(name).to_json()
        async for record in client.records(path, request, wire.vnode_record):
            if isinstance(record, wire.OperationError):
                raise ClientError(record.error)
            result = record
    if result is None:
        raise ClientError("waltd ended the operation without a result")
    print(printable(result.message))
    return 0


async def _create(args: argparse.Namespace) -> int:
    return await _operation("/v1/nodes/create", args.name)


async def _remove(args: argparse.Namespace) -> int:
    return await _operation("/v1/nodes/remove", args.name)


async def _console(args: argparse.Namespace) -> int:
    query = wire.ConsoleQuery(args.name, follow=not args.no_follow).to_query()
    async with Client() as client:
        async for record in client.records(f"/v1/nodes/console{query}", None, wire.console_record):
            if isinstance(record, wire.OperationError):
                raise ClientError(record.error)
            if isinstance(record, wire.ConsoleDropped):
                print(f"[{record.count} lines not shown: too slow]", file=sys.stderr)
            else:
                print(printable(record.line), flush=True)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `create`, `remove` and `console` to `walt node`."""
    create = commands.add_parser("create", help="create a virtual node (QEMU) and boot it")
    create.add_argument("name", help="its name: lower-case letters, digits and '-'")
    create.set_defaults(func=_create)
    remove = commands.add_parser("remove", help="stop a virtual node and forget it")
    remove.add_argument("name")
    remove.set_defaults(func=_remove)
    console = commands.add_parser(
        "console", help="a virtual node's serial console, followed until Ctrl-C"
    )
    console.add_argument("name")
    console.add_argument(
        "--no-follow", action="store_true", help="print the lines kept so far, then stop"
    )
    console.set_defaults(func=_console)
