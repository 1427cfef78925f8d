"""`spear` command line: each subcommand lives in its own module under `spear.cli`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from spear.errors import CommunicationError

# Each module exposes `register(subparsers)`; the parser it adds sets `func(args) -> int`.
SUBCOMMANDS = ["run", "inspect", "worker", "k8s", "serve", "invoke"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spear", description="Spear function host")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"spear.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"spear.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except (CommunicationError, OSError, ValueError) as exc:
        # One clear line, no traceback: the user gave us something we cannot use.
        print(f"spear: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
