"""`waltd`: the daemon's entry point."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from waltd import __version__, credentials, log
from waltd import config as configuration
from waltd.daemon import run
from waltd.events import EventBus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="waltd", description="WalT provisioning daemon")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"configuration file (default {configuration.DEFAULT_PATH}; "
        "built-in defaults when that file does not exist)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--version", action="version", version=f"waltd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load the configuration (exit 78 when invalid), then run the daemon."""
    args = parse_args(argv)
    bus = EventBus()
    log.setup(bus=bus, level=args.log_level)
    logger = log.get("daemon")
    path: Path | None = args.config
    if path is None and configuration.DEFAULT_PATH.exists():
        path = configuration.DEFAULT_PATH
    try:
        config = configuration.load(path) if path else configuration.default_config()
        if path:
            # Checked here so an unusable secrets file also stops the start with 78.
            credentials.load(credentials.secrets_path(path))
    except configuration.ConfigError as err:
        logger.error("config_invalid", path=str(path), error=str(err))
        print(f"waltd: invalid configuration:\n{err}", file=sys.stderr)
        return configuration.EX_CONFIG
    try:
        return asyncio.run(run(config, config_path=path, bus=bus))
    except Exception as err:
        # A start-up failure (e.g. an unusable state folder): a JSON, redacted record rather
        # than a bare traceback, and status 1 (systemd's start limit ends a restart loop).
        logger.exception("daemon_failed", error=f"{type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
