"""`spear worker`: serve a function in a pod (gRPC and/or TCP) or as a process-runtime child.

    spear worker --grpc 0.0.0.0:50051 myapp.handlers:resize
    spear worker --grpc 0.0.0.0:50051 --tcp 0.0.0.0:50052 --wasm /app/fn.wasm
    spear worker myapp.handlers:resize          # no address: the env-based process worker

The token comes from `--token-file` (a mounted Secret) or `$SPEAR_TOKEN`; without one the
worker serves unauthenticated on the address it was given.
"""

from __future__ import annotations

import argparse
from typing import Any

from spear.config import DEFAULT_MAX_MESSAGE_SIZE
from spear.errors import InvalidConfiguration
from spear.protocol.address import HostPort
from spear.protocol.environment import ENV_TOKEN as TOKEN_ENV
from spear.protocol.limits import WORKER_MAX_IN_FLIGHT
from spear.transport.tls import TlsConfig


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="serve a function over gRPC/TCP (pods) or as a process-runtime child",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("handler", nargs="?", metavar="MODULE:FUNCTION",
                        help="the Python handler to serve")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="serve gRPC here (port 0: any)")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="serve the framed TCP protocol here")
    parser.add_argument("--wasm", metavar="MODULE.wasm", help="serve this WASM module")
    parser.add_argument("--token-file", metavar="PATH",
                        help="file holding the token hosts must present (default: $SPEAR_TOKEN)")
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="server private key")
    parser.add_argument("--tls-client-ca", metavar="PEM",
                        help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("--health-port", type=int, metavar="PORT",
                        help="serve grpc.health.v1 on this plaintext port (for kubelet probes "
                             "when the main port uses TLS)")
    parser.add_argument("--max-threads", type=int, default=32,
                        help="threads for sync handlers (default 32)")
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE,
                        metavar="BYTES")
    parser.add_argument("--max-in-flight", type=int, default=WORKER_MAX_IN_FLIGHT, metavar="N",
                        help="requests one host connection or stream may have in flight; more "
                             f"are answered too_many_requests (default {WORKER_MAX_IN_FLIGHT})")
    parser.add_argument("--drain-timeout", type=float, metavar="SECONDS",
                        help="on SIGTERM, wait this long for requests in flight (pods: 25)")
    parser.add_argument("--allow-remote-shutdown", action="store_true",
                        help="without a token, still honour a Shutdown message from the "
                             "network (anyone who can reach the port could stop the worker)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.grpc is None and args.tcp is None:
        for flag in ("wasm", "token_file", "tls_cert", "tls_key", "tls_client_ca", "health_port",
                     "allow_remote_shutdown"):
            if getattr(args, flag) not in (None, False):
                option = "--" + flag.replace("_", "-")
                raise InvalidConfiguration(f"{option} needs --grpc or --tcp")
        from spear.worker.__main__ import main as process_worker_main

        argv = [args.handler] if args.handler else []
        argv += ["--max-threads", str(args.max_threads),
                 "--max-in-flight", str(args.max_in_flight)]
        if args.drain_timeout is not None:
            argv += ["--drain-timeout", str(args.drain_timeout)]
        return int(process_worker_main(argv))
    from spear.worker.event_loop import run as run_loop

    return run_loop(_serve(args))


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise InvalidConfiguration("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    return TlsConfig(ca_file=args.tls_client_ca, cert_file=args.tls_cert, key_file=args.tls_key)


async def _serve(args: argparse.Namespace) -> int:
    from spear.worker.auth import load_token
    from spear.worker.handler import Handler, load_handler
    from spear.worker.pod import PodWorkerConfig, serve_pod
    from spear.worker.scrub import remove_from_environment

    if (args.handler is None) == (args.wasm is None):
        raise InvalidConfiguration("give either MODULE:FUNCTION or --wasm MODULE.wasm")
    # Read the token, then take it out of the environment before the handler is imported.
    token = load_token(args.token_file)
    remove_from_environment([TOKEN_ENV])
    handler: Handler
    if args.wasm is not None:
        from spear.worker.wasm_handler import WasmHandler

        handler = WasmHandler.load(args.wasm)
    else:
        handler = load_handler(args.handler)
    health_address = None
    if args.health_port is not None:
        if args.grpc is None:
            raise InvalidConfiguration("--health-port needs --grpc")
        health_address = str(HostPort.parse(args.grpc).with_port(args.health_port))
    config = PodWorkerConfig(
        grpc_address=args.grpc,
        tcp_address=args.tcp,
        token=token,
        tls=_tls(args),
        health_address=health_address,
        max_message_size=args.max_message_size,
        drain_timeout=25.0 if args.drain_timeout is None else args.drain_timeout,
        allow_remote_shutdown=args.allow_remote_shutdown,
        max_threads=args.max_threads,
        max_in_flight=args.max_in_flight,
    )
    return await serve_pod(handler, config)
