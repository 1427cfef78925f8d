"""`python -m spear.worker MODULE:FUNCTION` (or `spear-worker`): the process runtime's worker.

It reads its endpoint, instance id and token from the environment (see
`spear.worker.environment`), dials the host, authenticates, and serves requests until the
host sends `Shutdown` (or SIGTERM arrives), then drains and exits 0.

Exit codes: 0 after a shutdown or when the host hangs up, 1 when the host cannot be reached
or refuses the handshake, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from spear.channel.handshake import send_handshake
from spear.errors import CommunicationError, InvalidConfiguration
from spear.transport.tcp import dial_tcp
from spear.transport.unix import dial_unix
from spear.worker.dispatcher import Dispatcher, load_handler
from spear.worker.environment import WorkerEnvironment
from spear.worker.stream_server import DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, serve_stream

log = logging.getLogger("spear.worker")

CONNECT_TIMEOUT = 10.0


async def run_worker(
    environment: WorkerEnvironment,
    dispatcher: Dispatcher,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
) -> int:
    """Dial, authenticate, serve until shutdown. Returns the process exit code."""
    endpoint = environment.endpoint
    if endpoint.kind == "unix":
        reader, writer = await dial_unix(endpoint.address, timeout=CONNECT_TIMEOUT)
    else:
        reader, writer = await dial_tcp(endpoint.address, timeout=CONNECT_TIMEOUT)
    try:
        await send_handshake(
            reader, writer, instance_id=environment.instance_id, token=environment.token,
            timeout=CONNECT_TIMEOUT, max_message_size=environment.max_message_size,
        )
    except BaseException:
        writer.close()
        raise
    log.debug("connected to %s as %s", endpoint, environment.instance_id)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await serve_stream(
            reader, writer, dispatcher, max_message_size=environment.max_message_size,
            stop=stop, max_in_flight=max_in_flight, drain_timeout=drain_timeout,
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        dispatcher.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spear-worker",
        description="Serve one Python function to the spear host that started this process.",
    )
    parser.add_argument("handler", help="the function to serve, as MODULE:FUNCTION")
    parser.add_argument("--max-threads", type=int, default=32,
                        help="threads for synchronous handlers (default 32)")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                        help="requests served at once before reading pauses")
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
        dispatcher = Dispatcher(load_handler(args.handler), max_threads=args.max_threads)
    except InvalidConfiguration as exc:
        print(f"spear-worker: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_worker(
            environment, dispatcher, max_in_flight=args.max_in_flight,
            drain_timeout=args.drain_timeout,
        ))
    except CommunicationError as exc:
        print(f"spear-worker: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
