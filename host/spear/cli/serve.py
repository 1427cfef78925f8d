"""`spear serve`: run a spearlet whose functions answer over HTTP and gRPC.

    spear serve                          # the embedded demo: WASM guests built from wasm_fixtures/
    spear serve --config spear.toml      # your functions (format: docs/serve.md)
    spear serve --http 0.0.0.0:8080 --grpc off

It prints where it listens and an example `curl` and `spear invoke` line, then serves until
SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="serve functions over HTTP and gRPC", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="TOML", help="functions and server settings")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="HTTP address (default from config, else 127.0.0.1:8080; 'off')")
    parser.add_argument("--grpc", metavar="HOST:PORT",
                        help="gRPC address (default from config, else 127.0.0.1:50051; 'off')")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spear.invocation.serve_config import demo_config, load_config
    from spear.invocation.server import run_server

    config = load_config(args.config) if args.config else demo_config()
    for key in ("http", "grpc"):
        value = getattr(args, key)
        if value is not None:
            setattr(config, key, None if value in ("off", "") else value)

    def announce(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return asyncio.run(run_server(config, announce=announce))
