"""`walt-server-setup`: the operator's configuration tool.

This version validates a configuration file; the interactive editor and the registry
subcommands arrive with the registry work (issue 4).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from waltd import config as configuration


def _check(path: Path) -> int:
    try:
        config = configuration.load(path)
    except configuration.ConfigError as err:
        print(err, file=sys.stderr)
        return configuration.EX_CONFIG
    net = config.walt_net
    print(f"{path}: valid")
    print(f"  node network: {f'{net.interface} {net.ip}' if net else 'none (no DHCP served)'}")
    labels = ", ".join(r.label for r in config.registries) or "none"
    print(f"  registries: {labels}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `walt-server-setup`."""
    parser = argparse.ArgumentParser(prog="walt-server-setup", description=__doc__)
    parser.add_argument("--config", type=Path, default=configuration.DEFAULT_PATH)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("check", help="validate the configuration file")
    args = parser.parse_args(argv)
    return _check(args.config)


if __name__ == "__main__":
    sys.exit(main())
