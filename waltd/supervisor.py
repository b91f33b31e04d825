"""The supervisor: services started in order, kept alive, stopped in reverse within a budget.

Each service runs under its own keeper task. A service that raises is logged with its
traceback and restarted with backoff by its keeper; the others keep running (a bare
TaskGroup would cancel them all). SIGTERM/SIGINT stop intake, give running work the
shutdown budget to finish, cancel what remains, stop child processes, and return 0.
SIGHUP reloads the reloadable sections of the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from waltd import config as configuration
from waltd import log
from waltd.process import Children
from waltd.sdnotify import Notifier, watchdog_interval

_log = log.get("supervisor")

# After this long without a crash a service's restart delay goes back to the minimum.
_STABLE_AFTER_S = 60.0
# What shutdown may need beyond its budget: stopping children, closing, exiting.
_STOP_MARGIN_S = 5.0
# How long children get between SIGTERM and SIGKILL at the end of shutdown.
_CHILD_GRACE_S = 1.0
_CHILD_GRACE_MIN_S = 0.2


class Service:
    """Base class of every service: an async context manager with a body.

    `__aenter__` acquires what the service needs, `serve` runs until cancelled (raising
    means a crash), `drain` stops intake and waits for running work, `reload` takes the
    reloadable part of a new configuration, `__aexit__` releases.
    """

    name = "service"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def serve(self) -> None:
        """The service's body; the default only holds its resources until cancelled."""
        await asyncio.Future()

    async def drain(self) -> None:
        """Stop taking work and wait for running work; cut short by the shutdown budget."""

    async def reload(self, config: configuration.Config) -> None:
        """Apply a new configuration (only its reloadable sections differ)."""


class RunningConfig:
    """The configuration in force and the file it came from; a reload replaces `current`."""

    def __init__(self, config: configuration.Config, path: Path | None) -> None:
        self.current = config
        self.path = path


@dataclass
class ServiceStatus:
    """What `walt status` shows of a service."""

    name: str
    state: str = "starting"  # starting | running | backoff | stopped
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs services until a stop signal, then shuts them down within the budget."""

    def __init__(
        self,
        running: RunningConfig,
        services: list[Service],
        *,
        children: Children,
        statuses: dict[str, ServiceStatus] | None = None,
        notifier: Notifier | None = None,
        restart_min_s: float = 1.0,
        restart_max_s: float = 60.0,
        reload_files: Callable[[], None] | None = None,
    ) -> None:
        self.running = running
        self.services = services
        self.children = children
        # Filled here, read by whoever handed it over (the API's status).
        self.statuses = statuses if statuses is not None else {}
        self.statuses.update({svc.name: ServiceStatus(svc.name) for svc in services})
        self._notifier = notifier or Notifier()
        self._restart = (restart_min_s, restart_max_s)
        self._stop = asyncio.Event()
        self._stopping = False
        self._keepers: list[asyncio.Task[None]] = []
        self._helpers: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        # Re-reads the files that go with the configuration (the secrets file); raises
        # ConfigError to refuse the reload.
        self._reload_files = reload_files

    @property
    def stopping(self) -> bool:
        """True once shutdown began: services must not take new work."""
        return self._stopping

    def request_stop(self) -> None:
        """Begin shutdown (what SIGTERM does); a repeated request changes nothing."""
        if self._stop.is_set():
            _log.info("stop_already_requested")
        self._stop.set()

    async def run(self) -> int:
        """Start every service, wait for a stop request, shut down; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            for svc in self.services:
                started = asyncio.Event()
                task = asyncio.create_task(self._keep(svc, started), name=f"service:{svc.name}")
                self._keepers.append(task)
                # Later services may rely on earlier ones (the API on the database).
                await _first(started.wait(), self._stop.wait())
                if self._stop.is_set():
                    break
            interval = watchdog_interval()
            if interval:
                self._own(self._watchdog(interval))
            self._notifier.ready()
            _log.info("daemon_ready", services=[s.name for s in self.services])
            await self._stop.wait()
        finally:
            # Handlers stay during shutdown: a second SIGTERM must not kill the daemon
            # before it has stopped its children.
            try:
                await self._shutdown()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        return 0

    async def _keep(self, svc: Service, started: asyncio.Event) -> None:
        status = self.statuses[svc.name]
        try:
            await self._keep_running(svc, status, started)
        finally:
            status.state = "stopped"

    async def _keep_running(
        self, svc: Service, status: ServiceStatus, started: asyncio.Event
    ) -> None:
        delay = self._restart[0]
        while not self._stopping:
            began = time.monotonic()
            try:
                async with svc:
                    status.state = "running"
                    started.set()
                    await svc.serve()
                if self._stopping:
                    break
                raise RuntimeError(f"service {svc.name} stopped by itself")
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
                if self._stopping:
                    # Its release failed while shutdown cancelled it (an `__aexit__` raising
                    # replaces the cancellation): not a crash, and nothing to restart.
                    _log.error("service_stop_failed", service=svc.name, error=error)
                    return
                status.restarts += 1
                status.last_error = error
                _log.exception("service_crashed", service=svc.name, error=error)
            started.set()
            if time.monotonic() - began > _STABLE_AFTER_S:
                delay = self._restart[0]
            status.state = "backoff"
            wait = delay * random.uniform(0.8, 1.2)
            _log.info("service_restart_scheduled", service=svc.name, in_s=round(wait, 2))
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._restart[1])

    async def _shutdown(self) -> None:
        """Stop in three named stages, each with its own deadline (`shutdown_stage` records).

        drain: services in reverse order stop intake and finish running work, until the
        budget minus a reserve; cancel: keepers are cancelled in reverse order and their
        `__aexit__` releases resources, until the budget's end; children: every child left
        gets SIGTERM then SIGKILL after a short grace, even when the budget is spent
        (systemd's stop timeout leaves `_STOP_MARGIN_S` beyond the budget for it).
        """
        self._stopping = True
        budget = self.running.current.daemon.shutdown_budget_s
        self._notifier.stopping(needs_s=budget + _STOP_MARGIN_S)
        deadline = time.monotonic() + budget
        _log.info("daemon_stopping", budget_s=budget)
        reserve = min(2.0, budget * 0.25)
        await self._stage("drain", deadline - reserve, self._drain_services)
        await self._stage("cancel", deadline, self._cancel_keepers)
        grace = min(_CHILD_GRACE_S, max(_CHILD_GRACE_MIN_S, deadline - time.monotonic()))
        await self._stage(
            "children", time.monotonic() + grace + 1.0, lambda: self.children.stop_all(grace)
        )
        self._notifier.close()
        _log.info("daemon_stopped")

    async def _stage(self, name: str, until: float, run: Callable[[], Awaitable[None]]) -> None:
        began = time.monotonic()
        timed_out = False
        try:
            async with asyncio.timeout_at(_loop_time(until)):
                await run()
        except TimeoutError:
            timed_out = True
        _log.info(
            "shutdown_stage",
            stage=name,
            duration_s=round(time.monotonic() - began, 3),
            timed_out=timed_out,
        )

    async def _drain_services(self) -> None:
        running = [s for s, t in zip(self.services, self._keepers, strict=False) if not t.done()]
        for svc in reversed(running):
            try:
                await svc.drain()
            except asyncio.CancelledError:
                _log.warning("drain_budget_exceeded", service=svc.name)
                raise
            except Exception as err:
                _log.exception("drain_failed", service=svc.name, error=str(err))

    async def _cancel_keepers(self) -> None:
        for task in list(self._helpers):
            task.cancel()
        try:
            for task in reversed(self._keepers):
                task.cancel()
                # shielded: the stage's deadline stops the wait, never the release half way
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
        finally:
            # past the deadline the keepers not reached yet are still told to stop
            for task in self._keepers:
                task.cancel()
        for task in list(self._helpers):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_sighup(self) -> None:
        if not self._stopping:
            self._own(self.reload())

    async def reload(self) -> bool:
        """Re-read the configuration file and apply its reloadable sections.

        A broken file is refused with a log line and the running configuration stays.
        """
        if self.running.path is None:
            _log.warning("config_reload_refused", error="the daemon runs on built-in defaults")
            return False
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(configuration.load, self.running.path)
                if self._reload_files is not None:
                    await asyncio.to_thread(self._reload_files)
            except configuration.ConfigError as err:
                _log.error("config_reload_refused", path=str(self.running.path), error=str(err))
                return False
            needs = configuration.restart_needed(self.running.current, new)
            if needs:
                _log.warning("config_change_needs_restart", sections=needs)
            applied = replace(
                self.running.current,
                **{name: getattr(new, name) for name in configuration.RELOADABLE},
            )
            self._notifier.reloading()
            self.running.current = applied
            for svc in self.services:
                try:
                    await svc.reload(applied)
                except Exception as err:
                    _log.exception("service_reload_failed", service=svc.name, error=str(err))
            self._notifier.ready()
            _log.info(
                "config_reloaded",
                path=str(self.running.path),
                registries=[r.label for r in applied.registries],
            )
            return True

    async def _watchdog(self, interval: float) -> None:
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)

    def _own(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helper_done)

    def _helper_done(self, task: asyncio.Future[Any]) -> None:
        # a helper (a reload, the watchdog) that fails is logged here, not left to asyncio's
        # "exception was never retrieved" at garbage collection
        self._helpers.discard(task)
        if not task.cancelled() and (err := task.exception()) is not None:
            _log.error(
                "supervisor_task_failed",
                error=f"{type(err).__name__}: {err}",
                exc_info=(type(err), err, err.__traceback__),
            )


def _loop_time(monotonic_deadline: float) -> float:
    """A `time.monotonic()` deadline on the event loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of `aws` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
