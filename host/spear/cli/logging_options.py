"""`-v` / `--log-level`, accepted before the subcommand and after it (`spear serve -v`)."""

from __future__ import annotations

import argparse
import logging

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _level(text: str) -> str:
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(LEVELS)} (got {text!r})")
    return level


def add_logging_options(parser: argparse.ArgumentParser, *, subcommand: bool) -> None:
    """Add the options; a subcommand's copies leave the top-level values alone when absent."""
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count",
                       dest="sub_verbose" if subcommand else "verbose",
                       default=argparse.SUPPRESS if subcommand else 0,
                       help="more logging (-v: INFO, -vv: DEBUG)")
    group.add_argument("--log-level", type=_level, metavar="LEVEL",
                       default=argparse.SUPPRESS if subcommand else None,
                       help=f"log level: {', '.join(LEVELS)} (overrides -v)")


def log_level(args: argparse.Namespace) -> int:
    named: str | None = getattr(args, "log_level", None)
    if named is not None:
        return int(getattr(logging, named))
    verbose = int(getattr(args, "verbose", 0)) + int(getattr(args, "sub_verbose", 0))
    return logging.WARNING - 10 * min(verbose, 2)
