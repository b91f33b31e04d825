"""Expose a TCP port of the lab's server namespace on the host's loopback, same port number.

The lab runs it as `nsenter --net=SERVER-NS python -I forward.py FD PORT`, where FD is a socket
the lab opened and put in listening state on the host's 127.0.0.1 before entering the namespace:
each connection accepted there is joined to 127.0.0.1:PORT of the server namespace. So
`http://127.0.0.1:PORT` names the same server from both namespaces. Standard library only: it
runs isolated (`-I`), without the project on its path.
"""

from __future__ import annotations

import asyncio
import socket
import sys

_CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; pass its end on as a half-close, as TCP would."""
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if not writer.is_closing():
        writer.write_eof()


async def _join(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, port: int) -> None:
    try:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        client_w.close()
        return
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_pipe(client_r, upstream_w))
            group.create_task(_pipe(upstream_r, client_w))
    except* OSError:
        pass  # a reset on either side ends both directions; closing tells the other side
    finally:
        upstream_w.close()
        client_w.close()


async def _serve(fd: int, port: int) -> None:
    listener = socket.socket(fileno=fd)
    server = await asyncio.start_server(lambda r, w: _join(r, w, port), sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Entry point: `forward.py FD PORT`; runs until SIGTERM."""
    fd, port = (int(arg) for arg in (argv if argv is not None else sys.argv[1:]))
    asyncio.run(_serve(fd, port))


if __name__ == "__main__":
    main()
