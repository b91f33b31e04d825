"""The systemd unit agrees with the daemon: budget, exit status, no private mounts."""

from __future__ import annotations

import configparser
from pathlib import Path

from waltd import config as configuration
from waltd.sdnotify import watchdog_interval

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "waltd.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def _seconds(value: str) -> float:
    value = value.strip()
    if value.endswith("min"):
        return float(value[:-3]) * 60
    return float(value.rstrip("s"))


def test_stop_timeout_covers_the_shutdown_budget() -> None:
    svc = _unit()["Service"]
    budget = configuration.default_config().daemon.shutdown_budget_s
    # Room beyond the budget for the final kill of children and the exit itself.
    assert _seconds(svc["TimeoutStopSec"]) >= budget + 5


def test_notify_watchdog_and_restart_policy() -> None:
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["Restart"] == "on-failure"
    assert str(configuration.EX_CONFIG) in svc["RestartPreventExitStatus"].split()
    usec = int(_seconds(svc["WatchdogSec"]) * 1_000_000)
    assert watchdog_interval({"WATCHDOG_USEC": str(usec)}) == _seconds(svc["WatchdogSec"]) / 2
    assert svc["StateDirectory"] and svc["RuntimeDirectory"] == "waltd"
    # the spool and the children's record outlive a stop or a crash, until a reboot
    assert svc["RuntimeDirectoryPreserve"] == "yes"
    daemon = configuration.default_config().daemon
    assert daemon.run_dir == Path("/run") / svc["RuntimeDirectory"]
    assert "--config /etc/walt/server.conf" in svc["ExecStart"]


def test_no_private_mount_namespace() -> None:
    svc = _unit()["Service"]
    forbidden = {
        "PrivateTmp",
        "ProtectSystem",
        "ProtectHome",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "MountFlags",
        "PrivateMounts",
        "RootDirectory",
        "RootImage",
        "ProtectKernelModules",
        "ProtectProc",
    }
    assert forbidden.isdisjoint(svc.keys())


def test_capabilities_listed() -> None:
    caps = set(_unit()["Service"]["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_ADMIN"} <= caps


def test_a_daemon_failing_at_start_is_not_restarted_forever() -> None:
    unit = _unit()
    interval = _seconds(unit["Unit"]["StartLimitIntervalSec"])
    burst = int(unit["Unit"]["StartLimitBurst"])
    restart = _seconds(unit["Service"]["RestartSec"])
    assert burst >= 2  # one crash in a long while is still restarted
    # A daemon that fails at once starts every RestartSec: it must hit the limit.
    assert burst * restart < interval
