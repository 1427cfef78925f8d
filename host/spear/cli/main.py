"""`spear` command line: each subcommand lives in its own module under `spear.cli`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from spear._version import __version__
from spear.cli.logging_options import add_logging_options, configure_logging
from spear.errors import CommunicationError

# Each module exposes `register(subparsers)`; the parser it adds sets `func(args) -> int`.
SUBCOMMANDS = ["run", "inspect", "worker", "k8s", "serve", "invoke"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spear", description="Spear function host")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version, wasmtime's and the WASM call path, and exit")
    add_logging_options(parser, subcommand=False)
    subparsers = parser.add_subparsers(dest="command", required=True,
                                       parser_class=_SubcommandParser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"spear.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"spear.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


class _Version(argparse.Action):
    """`spear --version`: what a bug report needs, computed only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from spear.transport.wasm.capi import WASMTIME_VERSION
        from spear.wasm import native_active

        path = "native helper" if native_active() else "pure-Python fallback"
        print(f"spear {__version__} (wasmtime {WASMTIME_VERSION}, WASM call path: {path})")
        parser.exit(0)


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser (nested ones too): it takes the logging options as well."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_logging_options(self, subcommand=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
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
