"""The suite itself refuses traffic beyond loopback."""

import asyncio
import socket

import pytest

from tests.support.labs import running_lab
from tests.support.search_lab import in_netns, listen_in


def test_connect_outside_loopback_fails_the_test() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s, pytest.raises(AssertionError, match="only loopback"):
        s.connect(("192.0.2.1", 9))


def test_loopback_is_allowed() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    with srv, socket.create_connection(srv.getsockname(), timeout=2):
        pass


def test_a_datagram_outside_loopback_fails_the_test() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s, pytest.raises(AssertionError, match="only loopback"):
        s.sendto(b"x", ("192.0.2.1", 9))


async def test_asyncio_connections_are_guarded_too() -> None:
    with pytest.raises(AssertionError, match="only loopback"):
        await asyncio.open_connection("192.0.2.1", 9)


@pytest.mark.lab
async def test_a_thread_inside_a_lab_namespace_may_reach_it() -> None:
    async with running_lab() as lab:
        server = lab.netns_path(lab.server_netns)
        # the server's address on the node network: not loopback, and not on the host
        with listen_in(server, 0, host=str(lab.server_ip)) as listener:
            address = listener.getsockname()
            with pytest.raises(AssertionError, match="only loopback"):
                socket.create_connection(address, timeout=5)
            in_netns(server, lambda: socket.create_connection(address, timeout=5).close())


@pytest.mark.lab
async def test_a_socket_made_inside_a_lab_namespace_may_send_from_any_thread() -> None:
    async with running_lab() as lab:
        server = lab.netns_path(lab.server_netns)
        made_there = in_netns(server, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        made_here = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with made_there, made_here:
            made_there.sendto(b"x", (str(lab.server_ip), 9))  # from this thread
            with pytest.raises(AssertionError, match="only loopback"):
                made_here.sendto(b"x", (str(lab.server_ip), 9))
