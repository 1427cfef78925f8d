"""`spear serve`: run a spearlet whose functions answer over HTTP and gRPC.

    spear serve                          # the demo: prebuilt guests from wasm_fixtures/build
    spear serve --config spear.toml      # your functions (format: docs/serve.md)
    spear serve --config spear.toml --http 127.0.0.1:8080 --grpc off

It prints where it listens and an example `curl` and `spear invoke` line, then serves until
SIGTERM or Ctrl-C, and drains (`[server] drain_s`, `--drain SECONDS`) before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import math
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
    parser.add_argument("--drain", type=_seconds, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long running invocations may finish "
                             "(default from config, else 10)")
    parser.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import uvloop

    from spear.invocation.serve_config import demo_config, load_config
    from spear.invocation.server import run_server

    config = load_config(args.config) if args.config else demo_config()
    config = config.with_addresses(args.http, args.grpc)
    if args.drain is not None:
        config = config.with_server(drain_s=args.drain)
    config.check_serves_something()

    def announce(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_server(config, announce=announce))
