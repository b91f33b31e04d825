"""The suite itself refuses traffic beyond loopback."""

import socket

import pytest


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
