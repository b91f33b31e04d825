"""The HTTP boot server: nodes fetch their boot files and report booted.

An aiohttp server on the node network's server address (`network.walt-net`, port
`boot.http-port`), for the nodes only: a request's caller is known by its source address,
which the state database maps to a node (the address its last lease gave it).

- `GET /boot/booted`: the calling node is `booted` (`node.booted`); 404 for an address that
  is no node.
- `GET|HEAD /boot/<path>`: the file at <path> in the calling node's boot folder (its
  R/nodes/<mac>/tftp link, which must lead under R/boot/), sent with sendfile, with Range,
  If-Modified-Since and ETag as aiohttp's FileResponse gives them. No listing; a path
  leading out, a folder, an unknown caller or file: 404.

Bounds: connections are accepted here (not by aiohttp's TCPSite) so that each one is counted
when it arrives: at most `MAX_CONNECTIONS` at once (never more than a quarter of the
descriptor limit in force) and `MAX_CONNECTIONS_PER_ADDRESS` from one address; one more is
closed at once. Request line and header sizes and counts are aiohttp's bounds set low; a
connection must send its request within `IDLE_TIMEOUT_S` of being accepted, and is closed
after as long idle. No access log: one `boot_http_served` debug record per file.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Self

from aiohttp import web

from waltd import log
from waltd.config import Config
from waltd.connections import Counted, KeyCounts
from waltd.context import Context
from waltd.db import Node
from waltd.node_events import emit
from waltd.provision import nodes as states
from waltd.provision.layout import boot_path, node_boot_file
from waltd.supervisor import Service

_log = log.get("boot_http")

# Connections at once, all nodes together; never more than a quarter of the descriptor
# limit (the rest: the API, dnsmasq's TFTP transfers, the database, children).
MAX_CONNECTIONS = 1024
# Connections at once from one address: a booting node uses one or two.
MAX_CONNECTIONS_PER_ADDRESS = 16
# The kernel's queue of connections not yet accepted.
BACKLOG = 256
# Seconds a connection has to send its request after being accepted, and the most it may
# stay idle between two requests (aiohttp's keepalive_timeout covers both).
IDLE_TIMEOUT_S = 10.0
# A request line holds `GET /boot/<path> HTTP/1.1` (paths of boot.PATH_MAX characters,
# percent-encoded at worst three bytes each); headers are few and short.
MAX_LINE_SIZE = 4096
MAX_FIELD_SIZE = 4096
MAX_HEADERS = 32

_CONTEXT = web.AppKey("context", Context)


def connection_limit() -> int:
    """Connections at once under the descriptor limit in force now."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 4))


class Admission:
    """Connections held per address; `admit` says why one more is refused."""

    def __init__(self) -> None:
        self._held: KeyCounts[str] = KeyCounts()

    @property
    def total(self) -> int:
        """Connections held now."""
        return self._held.total

    def admit(self, address: str, limit: int) -> str | None:
        """Count one more connection from `address`, or return why it is refused."""
        if self._held.total >= limit:
            return f"the boot server holds its maximum of {limit} connections"
        if self._held.held(address) >= MAX_CONNECTIONS_PER_ADDRESS:
            return f"{address} holds {MAX_CONNECTIONS_PER_ADDRESS} connections, the most one may"
        self._held.add(address)
        return None

    def release(self, address: str) -> None:
        """One connection from `address` ended."""
        self._held.release(address)


class _Admitting(asyncio.Protocol):
    """A connection admitted or refused on arrival (its address is known only then);
    admitted, aiohttp's protocol takes the transport over, counted until it ends."""

    def __init__(self, server: web.Server, admission: Admission) -> None:
        self._server = server
        self._admission = admission

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        refusal = self._admission.admit(address, connection_limit())
        if refusal is not None:
            _log.warning("boot_http_connection_refused", address=address, error=refusal)
            transport.abort()
            return
        counted = Counted(self._server(), lambda: self._admission.release(address))
        transport.set_protocol(counted)
        counted.connection_made(transport)


def _not_found() -> web.Response:
    return web.Response(status=404, text="not found\n")


async def _caller_node(request: web.Request) -> Node | None:
    """The node whose address the request comes from, or None."""
    db = request.app[_CONTEXT].db
    if not db.is_open:
        raise web.HTTPServiceUnavailable(text="the daemon is starting or stopping\n")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return None
    return await db.node_by_ip(str(peer[0]))


async def booted(request: web.Request) -> web.Response:
    """GET /boot/booted: the calling node finished booting (`node.booted`, once)."""
    ctx = request.app[_CONTEXT]
    node = await _caller_node(request)
    if node is None:
        return _not_found()
    if node.state != states.BOOTED:
        # From the state read only: of two reports at once, one is recorded.
        updated = await ctx.db.set_node_state(node.mac, states.BOOTED, expect=node.state)
        if updated is not None:
            emit(ctx.nodes, states.state_event(updated))
    return web.Response(text="ok\n")


async def boot_file(request: web.Request) -> web.StreamResponse:
    """GET|HEAD /boot/<path>: the file at <path> in the calling node's boot folder."""
    ctx = request.app[_CONTEXT]
    try:
        rel = boot_path(request.match_info["path"])
    except ValueError:
        return _not_found()
    node = await _caller_node(request)
    if node is None:
        return _not_found()
    path = await asyncio.to_thread(node_boot_file, ctx.config.exports.root, node.mac, rel)
    if path is None:
        return _not_found()
    _log.debug("boot_http_served", mac=node.mac, path=rel, method=request.method)
    return web.FileResponse(path)


def make_boot_app(ctx: Context) -> web.Application:
    """The boot server's application for a daemon context."""
    app = web.Application(client_max_size=1024)  # no request has a body
    app[_CONTEXT] = ctx
    app.router.add_get("/boot/booted", booted, allow_head=False)
    app.router.add_get("/boot/{path:.+}", boot_file)
    return app


class BootHttpService(Service):
    """Serves boot files and booted reports over HTTP on the node network."""

    name = "boot-http"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._port = ctx.config.boot.http_port
        self.admission = Admission()

    async def __aenter__(self) -> Self:
        self._runner = web.AppRunner(
            make_boot_app(self._ctx),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._ctx.config.daemon.shutdown_budget_s,
            keepalive_timeout=IDLE_TIMEOUT_S,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
        )
        await self._runner.setup()
        try:
            self._server = await self._listen(self._ctx.config, self._port)
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        return self

    async def _listen(self, config: Config, port: int) -> asyncio.Server:
        net = config.walt_net
        assert net is not None, "the boot server runs only with a node network"
        assert self._runner is not None and self._runner.server is not None
        server = self._runner.server
        address = str(net.ip.ip)
        try:
            listening = await asyncio.get_running_loop().create_server(
                lambda: _Admitting(server, self.admission),
                host=address,
                port=port,
                reuse_address=True,
                backlog=BACKLOG,
            )
        except OSError as err:
            raise RuntimeError(f"the boot server cannot listen on {address}:{port}: {err}") from err
        _log.info("boot_http_listening", address=address, port=port)
        return listening

    async def reload(self, config: Config) -> None:
        """A new `boot.http-port`: listen there, then stop listening on the old one
        (connections under way finish)."""
        port = config.boot.http_port
        if port == self._port or self._runner is None:
            return
        new = await self._listen(config, port)
        old, self._server, self._port = self._server, new, port
        if old is not None:
            old.close()

    async def drain(self) -> None:
        """Stop listening; let the transfers under way finish within the budget."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aexit__(self, *exc: object) -> None:
        await self.drain()
