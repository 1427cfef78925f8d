"""The pod worker: gRPC and/or framed TCP in front of one `Dispatcher`, drained on SIGTERM.

Kubernetes stops a pod by sending SIGTERM and, at the same time, removing it from the
Service. The worker then flips its gRPC health to NOT_SERVING (so readiness probes agree),
tells connected hosts with an unsolicited `Shutdown`, refuses new requests, lets requests in
flight finish for up to `drain_timeout` seconds, and exits. A `Shutdown` message from an
authenticated host starts the same sequence; a worker without a token takes one from the
network only with `allow_remote_shutdown`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from spear.protocol.limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    WORKER_MAX_IN_FLIGHT,
    WORKER_MAX_THREADS,
)
from spear.protocol.messages import Shutdown
from spear.transport.tls import TlsConfig
from spear.worker.dispatcher import Dispatcher
from spear.worker.handler import Handler
from spear.worker.tcp_listener import listen_address

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PodWorkerConfig:
    grpc_address: str | None = None
    tcp_address: str | None = None
    token: str | None = None
    tls: TlsConfig | None = None
    # With TLS, kubelet gRPC probes (which cannot do TLS) need health on a plaintext port.
    health_address: str | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    drain_timeout: float = 25.0
    # Without a token anyone who reaches the worker could stop it; it takes a `Shutdown`
    # from the network only when this says so.
    allow_remote_shutdown: bool = False
    max_threads: int = WORKER_MAX_THREADS
    max_in_flight: int = WORKER_MAX_IN_FLIGHT


def announce(line: str) -> None:
    """One line on stdout per listener, so supervisors (and tests) learn bound ports."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve_pod(
    handler: Handler,
    config: PodWorkerConfig,
    *,
    ready: Callable[[str], None] = announce,
) -> int:
    """Serve until SIGTERM/SIGINT or a `Shutdown` message, then drain. Returns an exit code."""
    from spear.worker.grpc_server import GrpcWorkerServer

    if config.grpc_address is None and config.tcp_address is None:
        raise ValueError("serve_pod needs a gRPC or a TCP address")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain_timeout = config.drain_timeout
    dispatcher = Dispatcher(handler, max_threads=config.max_threads)

    def shutdown_requested(message: Shutdown) -> None:  # on the loop
        nonlocal drain_timeout
        drain_timeout = min(drain_timeout, message.timeout_ms / 1000.0) if message.graceful else 0
        stop.set()

    def on_shutdown(message: Shutdown) -> None:  # on the loop (gRPC) or a TCP thread
        loop.call_soon_threadsafe(shutdown_requested, message)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    grpc_server: GrpcWorkerServer | None = None
    tcp_server = None
    try:
        if config.grpc_address is not None:
            grpc_server = GrpcWorkerServer(
                dispatcher, token=config.token, tls=config.tls,
                max_message_size=config.max_message_size,
                health_address=config.health_address, on_shutdown=on_shutdown,
                allow_remote_shutdown=config.allow_remote_shutdown,
                max_in_flight=config.max_in_flight,
            )
            port = await grpc_server.start(config.grpc_address)
            ready(f"spear-worker listening grpc={listen_address(config.grpc_address, port)}")
            if config.health_address is not None:
                health = listen_address(config.health_address, grpc_server.health_port)
                ready(f"spear-worker listening health={health}")
        if config.tcp_address is not None:
            from spear.worker.async_bridge import AsyncBridge
            from spear.worker.tcp_listener import TcpWorkerListener
            from spear.worker.thread_budget import ThreadBudget

            tcp_server = TcpWorkerListener(
                handler, bridge=AsyncBridge(dispatcher, loop) if dispatcher.is_async else None,
                threads=ThreadBudget(config.max_threads), token=config.token, tls=config.tls,
                max_message_size=config.max_message_size, on_shutdown=on_shutdown,
                allow_remote_shutdown=config.allow_remote_shutdown,
                drain_timeout=config.drain_timeout, max_in_flight=config.max_in_flight,
            )
            port = tcp_server.start(config.tcp_address)
            ready(f"spear-worker listening tcp={listen_address(config.tcp_address, port)}")
        ready("spear-worker ready")
        await stop.wait()
        log.info("draining: up to %.1f s for %d requests in flight",
                 drain_timeout, dispatcher.in_flight)
        if grpc_server is not None:
            await grpc_server.begin_drain(drain_timeout)
        if tcp_server is not None:
            tcp_server.begin_drain(drain_timeout)
        finished = await dispatcher.drain(drain_timeout)
        if tcp_server is not None:
            finished = await asyncio.to_thread(tcp_server.wait_drained, drain_timeout) and finished
        if not finished:
            log.warning("drain timed out with requests in flight")
        if grpc_server is not None:
            grpc_server.service.end_streams()
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if grpc_server is not None:
            await grpc_server.stop(grace=0.5)
        if tcp_server is not None:
            tcp_server.close()
        dispatcher.close()
