"""A registry cannot send a caller's password to another host through its token realm.

Against a live daemon: a registry (a small aiohttp server: a real one cannot be told to name
any realm) answers 401 with `Bearer realm="http://127.0.0.2:PORT/token"`, a plain-HTTP token
service on another loopback address, which records what it receives. It must receive nothing,
and the user sees the refusal naming the realm. A second registry whose plain-HTTP realm is on
its own host gets the credentials, as before.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.hostile.registry_env import live_daemon, serving, v2_entry, walt_search
from waltd.registries.base import Credentials, RegistryError
from waltd.registries.v2.client import V2Client

pytestmark = pytest.mark.asyncio

USER, PASSWORD = "alice", "realm-test-password"
TOKEN = "token-for-alice"
ELSEWHERE = "127.0.0.2"


def registry(realm: str | None, received: list[str | None]) -> list[web.RouteDef]:
    """A registry asking for a token from `realm` (None: its own /token route). That route
    records the Authorization header of its callers and answers a token."""

    async def api(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") == f"Bearer {TOKEN}":
            return web.json_response({"repositories": []})
        where = realm or f"http://{request.host}/token"
        challenge = f'Bearer realm="{where}",service="test",scope="registry:catalog:*"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def token(request: web.Request) -> web.Response:
        received.append(request.headers.get("Authorization"))
        return web.json_response({"token": TOKEN})

    return [web.get("/v2/", api), web.get("/v2/_catalog", api), web.get("/token", token)]


async def test_a_plain_http_realm_on_another_host_gets_no_credentials() -> None:
    elsewhere: list[str | None] = []
    own: list[str | None] = []
    async with (
        serving(registry(None, elsewhere), host=ELSEWHERE) as realm_port,
        serving(registry(f"http://{ELSEWHERE}:{realm_port}/token", [])) as sneaky_port,
        serving(registry(None, own)) as own_port,
    ):
        registries = [
            v2_entry("sneaky", sneaky_port, auth="basic"),
            v2_entry("own", own_port, auth="basic"),
        ]
        logins = {"sneaky": (USER, PASSWORD), "own": (USER, PASSWORD)}
        async with live_daemon(registries) as daemon:
            result = await walt_search(daemon, logins=logins)
    assert elsewhere == []  # not a request, let alone a password
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        f"Warning: sneaky: the token service http://{ELSEWHERE}:{realm_port}/token is plain "
        "HTTP on another host than the registry: credentials not sent"
    ], result.stderr
    # the registry's own host may have them over plain HTTP, as the registry itself does
    assert own == [aiohttp.encode_basic_auth(USER, PASSWORD)]


async def test_an_https_realm_on_another_host_is_used_as_docker_hub_needs() -> None:
    """Docker Hub's realm is https on another host: the client goes there with the login.

    The realm here is a bare TCP listener on another loopback address: a TLS handshake
    reaching it shows the client set out to send the request (it fails there, no certificate).
    """
    connected = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()

    listener = await asyncio.start_server(accept, ELSEWHERE, 0)
    realm_port = listener.sockets[0].getsockname()[1]
    try:
        routes = registry(f"https://{ELSEWHERE}:{realm_port}/token", [])
        async with serving(routes) as port:
            creds = Credentials(USER, PASSWORD)
            async with V2Client("hubby", f"http://127.0.0.1:{port}", creds=creds) as client:
                with pytest.raises(RegistryError) as caught:
                    await client.catalog()
    finally:
        listener.close()
        await listener.wait_closed()
    assert connected.is_set()
    assert "credentials not sent" not in str(caught.value)
