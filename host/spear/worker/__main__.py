"""`python -m spear.worker MODULE:FUNCTION` (or `spear-worker`): the process runtime's worker.

It reads its endpoint, instance id and token from the environment (see
`spear.protocol.environment`), takes the token out of the environment before the handler's
module is even imported, dials the host, authenticates, and serves requests until the host
sends `Shutdown` (or SIGTERM arrives), then drains and exits 0.

Synchronous handlers run on the threads that read the socket (`spear.worker.stream_server`);
async ones on an event loop thread (uvloop where installed).

Exit codes: 0 after a shutdown or when the host hangs up, 1 when the host cannot be reached
or refuses the handshake, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from spear.errors import CommunicationError, InvalidConfiguration
from spear.protocol.environment import WorkerEnvironment
from spear.protocol.limits import WORKER_MAX_IN_FLIGHT, WORKER_MAX_THREADS
from spear.transport.tcp import connect_tcp_socket
from spear.transport.unix import connect_unix_socket
from spear.worker.handler import Handler, is_async, load_handler
from spear.worker.handshake import present_token
from spear.worker.scrub import remove_from_environment
from spear.worker.stream_server import DEFAULT_DRAIN_TIMEOUT, StreamServer
from spear.worker.thread_budget import ThreadBudget

log = logging.getLogger("spear.worker")

CONNECT_TIMEOUT = 10.0


def run_worker(
    environment: WorkerEnvironment,
    handler: Handler,
    *,
    max_threads: int = WORKER_MAX_THREADS,
    max_in_flight: int = WORKER_MAX_IN_FLIGHT,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> int:
    """Dial, authenticate, serve until shutdown. Returns the process exit code."""
    bridge = None
    if is_async(handler):
        # Before dialling: the host sends work as soon as the handshake is done.
        from spear.worker.async_bridge import AsyncBridge
        from spear.worker.dispatcher import Dispatcher

        bridge = AsyncBridge(Dispatcher(handler, max_threads=max_threads))
    endpoint = environment.endpoint
    try:
        if endpoint.kind == "unix":
            sock = connect_unix_socket(endpoint.address, timeout=CONNECT_TIMEOUT)
        else:
            sock = connect_tcp_socket(endpoint.address, timeout=CONNECT_TIMEOUT)
        try:
            received = present_token(
                sock, instance_id=environment.instance_id, token=environment.token,
                timeout=CONNECT_TIMEOUT, max_message_size=environment.max_message_size,
            )
        except BaseException:
            sock.close()
            raise
    except BaseException:
        if bridge is not None:
            bridge.close()
        raise
    log.debug("connected to %s as %s", endpoint, environment.instance_id)
    server = StreamServer(
        sock, handler, received=received, bridge=bridge, threads=ThreadBudget(max_threads),
        max_in_flight=max_in_flight, drain_timeout=drain_timeout, name=environment.instance_id,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Not here: the handler runs in the main thread between two bytecodes, maybe while it
        # holds one of the server's locks. A thread of its own takes them safely.
        threading.Thread(target=server.stop, name="spear-stop", daemon=True).start()

    previous = {signum: signal.signal(signum, on_signal)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        reason = server.serve()
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)
        if bridge is not None:
            bridge.close()
    log.debug("connection ended: %s", reason)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-worker",
        description="Serve one Python function to the spear host that started this process.",
    )
    parser.add_argument("handler", help="the function to serve, as MODULE:FUNCTION")
    parser.add_argument("--max-threads", type=int, default=WORKER_MAX_THREADS,
                        help=f"threads for synchronous handlers (default {WORKER_MAX_THREADS})")
    parser.add_argument("--max-in-flight", type=int, default=WORKER_MAX_IN_FLIGHT,
                        help="requests in flight before more are refused with "
                             f"too_many_requests (default {WORKER_MAX_IN_FLIGHT})")
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT,
                        help="seconds to finish requests in flight on SIGTERM")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        environment = WorkerEnvironment.from_environ()
        # Before the handler's module is imported: no user code ever sees the token there.
        remove_from_environment(WorkerEnvironment.token_variables())
        handler = load_handler(args.handler)
    except InvalidConfiguration as exc:
        print(f"spear-worker: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_worker(environment, handler, max_threads=args.max_threads,
                          max_in_flight=args.max_in_flight, drain_timeout=args.drain_timeout)
    except CommunicationError as exc:
        print(f"spear-worker: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
