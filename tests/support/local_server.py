"""An aiohttp application on 127.0.0.1 for a test: the base of every fake and proxy here."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Self

from aiohttp import web


class LocalServer:
    """`async with` serves `app` on 127.0.0.1 at a free port (`port`, `url`); HTTPS with `tls`.

    `shutdown_timeout` bounds how long leaving the block waits for handlers still running
    (a fault that hangs on purpose must not hold the end of the test).
    """

    def __init__(
        self, *, tls: ssl.SSLContext | None = None, shutdown_timeout: float = 60.0
    ) -> None:
        self.app = web.Application()
        self.port = 0
        self._tls = tls
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(self.app, shutdown_timeout=self._shutdown_timeout, access_log=None)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._tls)
        await site.start()
        self.port = runner.addresses[0][1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # runs the application's on_cleanup hooks
