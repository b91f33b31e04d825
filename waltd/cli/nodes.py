"""`walt node show [--all] [--json]`: the nodes, the unknown devices, the default images.

The tables are drawn from what GET /v1/nodes sends (`wire.NodeListing`; `--json` prints it
as is). Names, models and IPs come from the node network: `terminal.table` escapes them.
"""

from __future__ import annotations

import argparse
import json
import time

from waltd.api import wire
from waltd.cli import vnodes
from waltd.cli.client import Client, ClientError
from waltd.cli.terminal import printable, table

NO_NODES = "No nodes detected yet."
DEVICES_TITLE = "Unknown devices (not WalT nodes):"
MODELS_TITLE = "Default images:"
NODE_HEADERS = ("Name", "Model", "Image", "State", "IP")
DEVICE_HEADERS = ("MAC", "IP", "First seen")
MODEL_HEADERS = ("Model", "Default image", "Status", "Last error")
# A fetch error may list every source's failure: the table shows its start (--json all).
ERROR_SHOWN_CHARS = 100


def _when(stamp: float, shape: str) -> str:
    return time.strftime(shape, time.localtime(stamp))


def _status(model: wire.ModelRow) -> str:
    if model.next_retry is None:
        return model.status
    return f"{model.status} (next try {_when(model.next_retry, '%H:%M:%S')})"


def _error(text: str | None) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())  # one line: several sources' errors may span many
    return line if len(line) <= ERROR_SHOWN_CHARS else line[: ERROR_SHOWN_CHARS - 3] + "..."


def show_text(listing: wire.NodeListing, everyone: bool) -> str:
    """What `walt node show [--all]` prints: nodes by name, then unknown devices by MAC
    (when any), then with `everyone` each model's default image."""
    nodes = sorted(listing.nodes, key=lambda n: (n.name, n.mac))
    parts = [
        table(
            [(n.name, n.model or "-", n.image or "-", n.state, n.ip or "-") for n in nodes],
            NODE_HEADERS,
        )
        if nodes
        else NO_NODES
    ]
    if listing.devices:
        devices = sorted(listing.devices, key=lambda d: d.mac)
        rows = [(d.mac, d.ip or "-", _when(d.first_seen, "%Y-%m-%d %H:%M")) for d in devices]
        parts.append(f"{DEVICES_TITLE}\n{table(rows, DEVICE_HEADERS)}")
    if everyone:
        models = sorted(listing.models, key=lambda m: m.model)
        body = (
            table(
                [(m.model, m.image, _status(m), _error(m.last_error)) for m in models],
                MODEL_HEADERS,
            )
            if models
            else "none"
        )
        parts.append(f"{MODELS_TITLE}\n{body}")
    if listing.omitted:
        parts.append(
            f"({listing.omitted} more entries not shown, the least recently seen: the "
            f"server sends at most {wire.MAX_NODES} of each kind)"
        )
    return "\n\n".join(parts)


async def _show(args: argparse.Namespace) -> int:
    async with Client() as client:
        raw = await client.get_json("/v1/nodes")
    try:
        listing = wire.NodeListing.from_json(raw)
    except ValueError as err:
        raise ClientError(f"waltd sent an unreadable node list: {err}") from err
    if args.json:
        print(json.dumps(listing.to_json(), indent=2))
    else:
        print(show_text(listing, args.all))
    return 0


async def _boot(args: argparse.Namespace) -> int:
    # WalT users also write a node set as one comma-separated word
    nodes = [n for word in args.nodes for n in word.split(",") if n]
    request = wire.NodeBootRequest(tuple(nodes), args.image)
    async with Client() as client:
        async for record in client.records(
            "/v1/nodes/boot", request.to_json(), wire.node_boot_record
        ):
            if isinstance(record, wire.OperationError):
                raise ClientError(record.error)
            if isinstance(record, wire.NodeBooting):
                then = "reset now" if record.action == "reset" else "reboot it to boot it"
                print(printable(f"{record.name} will boot {record.image}: {then}"))
    return 0


def register(categories: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `walt node show` (and the virtual nodes' commands) to the command line."""
    node = categories.add_parser("node", help="WalT nodes")
    commands = node.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("show", help="the nodes and unknown devices of the node network")
    show.add_argument("--all", action="store_true", help="add each model's default image status")
    show.add_argument("--json", action="store_true", help="print the listing as JSON")
    show.set_defaults(func=_show)
    boot = commands.add_parser("boot", help="the image nodes boot (yours, or default)")
    boot.add_argument("nodes", nargs="+", metavar="NODE", help="node names (or NODE,NODE,...)")
    boot.add_argument("image", metavar="IMAGE", help="an image of yours, or `default`")
    boot.set_defaults(func=_boot)
    vnodes.register(commands)
