"""A TCP proxy that delays every chunk by a fixed time each way: a server across a WAN.

`python -I wan_proxy.py LISTEN_PORT UPSTREAM_PORT ONE_WAY_MS` listens on 127.0.0.1:LISTEN_PORT
and joins each connection to 127.0.0.1:UPSTREAM_PORT. Every chunk read from either side is
written to the other ONE_WAY_MS later, in order, so an exchange costs twice that in round-trip
time. A new connection's handshake is not delayed (only the data is). Half-closes are passed on,
a reset on either side closes both. Standard library only: the benchmark runs it isolated
(`-I`), in its own process, so that it takes no CPU from the process being measured.
"""

from __future__ import annotations

import asyncio
import sys

_CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy one direction, each chunk (and the end) `delay_s` after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(_CHUNK):
            queue.put_nowait((loop.time() + delay_s, data))
        queue.put_nowait((loop.time() + delay_s, b""))  # the end of this direction

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if not writer.is_closing() and writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    async with asyncio.TaskGroup() as group:
        group.create_task(receive())
        group.create_task(send())


async def _join(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    upstream_port: int,
    delay_s: float,
) -> None:
    try:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_w.close()
        return
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_pipe(client_r, upstream_w, delay_s))
            group.create_task(_pipe(upstream_r, client_w, delay_s))
    except* OSError:
        pass  # a reset on either side ends both directions; closing tells the other side
    finally:
        upstream_w.close()
        client_w.close()


async def _serve(listen_port: int, upstream_port: int, delay_s: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _join(r, w, upstream_port, delay_s), "127.0.0.1", listen_port, backlog=512
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Entry point: `wan_proxy.py LISTEN_PORT UPSTREAM_PORT ONE_WAY_MS`; runs until killed."""
    listen, upstream, one_way_ms = argv if argv is not None else sys.argv[1:]
    asyncio.run(_serve(int(listen), int(upstream), float(one_way_ms) / 1000))


if __name__ == "__main__":
    main()
