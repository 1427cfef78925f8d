"""`spear serve` as a library: a Spearlet with its functions deployed behind HTTP and gRPC.

`FunctionServer` starts the spearlet, deploys every function (all at once; any failure stops
the start with that error), then opens the front doors. `run_server` adds the process part:
announce where it listens, serve until SIGTERM or SIGINT, then drain:

1. `/healthz` answers 503 and gRPC health NOT_SERVING; new invocations are refused (503 /
   UNAVAILABLE, with `Connection: close`) while the listeners stay open;
2. invocations in flight finish, or `drain_s` passes;
3. functions are undeployed at once (what still runs fails with 503 / UNAVAILABLE: every
   request gets an answer), the listeners close, and the process exits 0 without a
   traceback. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from collections.abc import Callable

from spear.channel.connectors import split_host_port
from spear.errors import InvalidConfiguration
from spear.invocation.asgi_app import SpearAsgiApp
from spear.invocation.error_mapping import flush_failure_lines
from spear.invocation.front_door_auth import BearerTokens
from spear.invocation.grpc_api import GrpcApi
from spear.invocation.http_protocol import flush_refusal_lines
from spear.invocation.http_server import HttpLimits, HttpServer
from spear.invocation.log_attribution import attribute_instance_logs
from spear.invocation.serve_config import ServeConfig
from spear.invocation.spearlet import Spearlet

log = logging.getLogger("spear.serve")


class FunctionServer:
    def __init__(self, config: ServeConfig) -> None:
        config.check_serves_something()
        self.config = config
        server = config.server
        self.spearlet = Spearlet(
            namespace=server.namespace, scale_interval_s=server.scale_interval_s,
            result_ttl_s=server.result_ttl_s, max_results=server.max_results)
        self.tokens = _tokens(config)
        self.app = SpearAsgiApp(
            self.spearlet, max_body_bytes=server.max_body_bytes,
            max_buffered_bytes=server.max_buffered_bytes, tokens=self.tokens,
            protect_metrics=bool(server.auth and server.auth.protect_metrics))
        self.http: HttpServer | None = None
        self.grpc: GrpcApi | None = None
        self.http_address: str | None = None
        self.grpc_address: str | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._detach_logs: Callable[[], None] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.config.server.tls else "http"

    async def start(self) -> None:
        server = self.config.server
        tls = server.tls
        cert = self.config.resolve(tls.cert_file) if tls else None
        key = self.config.resolve(tls.key_file) if tls else None
        client_ca = self.config.resolve(tls.client_ca_file) if tls and tls.client_ca_file \
            else None
        self._detach_logs = attribute_instance_logs(self.spearlet)
        try:
            await asyncio.gather(*(self.spearlet.deploy(spec)
                                   for spec in self.config.functions))
            if self.config.http is not None:
                host, port = _host_port(self.config.http, "http")
                limits = HttpLimits(
                    head_timeout_s=server.head_timeout_s, body_timeout_s=server.body_timeout_s,
                    keep_alive_s=server.keep_alive_s, max_connections=server.max_connections,
                    tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=client_ca)
                self.http = HttpServer(self.app, limits)
                bound = await self.http.start(host, port)
                self.http_address = f"{_bracket(host)}:{bound}"
                _warn_if_exposed("HTTP", host, self.tokens, tls is not None)
            if self.config.grpc is not None:
                host, port = _host_port(self.config.grpc, "grpc")
                self.grpc = GrpcApi(
                    self.spearlet, tokens=self.tokens, tls_cert_file=cert, tls_key_file=key,
                    tls_client_ca_file=client_ca, max_message_bytes=server.max_body_bytes,
                    max_concurrent_rpcs=server.max_concurrent_rpcs,
                    max_connections=server.max_connections,
                    handshake_timeout_s=server.head_timeout_s)
                bound = await self.grpc.start(f"{_bracket(host)}:{port}")
                self.grpc_address = f"{_bracket(host)}:{bound}"
                _warn_if_exposed("gRPC", host, self.tokens, tls is not None)
                self._health_task = asyncio.get_running_loop().create_task(
                    self._refresh_health())
        except BaseException:
            await self.stop()
            raise

    async def _refresh_health(self) -> None:
        while self.grpc is not None:
            await asyncio.sleep(1.0)
            await self.grpc.refresh_health()

    @property
    def in_flight(self) -> int:
        return self.app.in_flight + (self.grpc.in_flight if self.grpc is not None else 0)

    async def drain(self, drain_s: float, hurry: asyncio.Event | None = None) -> None:
        """Refuse new invocations, wait up to `drain_s` for those in flight."""
        self.app.draining = True
        if self.grpc is not None:
            await self.grpc.start_draining()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.in_flight and loop.time() < deadline and not (hurry and hurry.is_set()):
            await asyncio.sleep(0.02)
        if self.in_flight:
            log.warning("drain time is up with %d invocation(s) still running; they are "
                        "answered 503 / UNAVAILABLE", self.in_flight,
                        extra={"event": "drain_timeout", "in_flight": self.in_flight})

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
            self._health_task = None
        # Undeploy first: whatever still runs fails now and gets its 503 / UNAVAILABLE
        # while the connections are still open.
        for spec in self.spearlet.functions():
            with contextlib.suppress(Exception):
                await self.spearlet.undeploy(spec.name, grace=0)
        if self.http is not None:
            http, self.http = self.http, None
            await http.stop()
        if self.grpc is not None:
            grpc, self.grpc = self.grpc, None
            await grpc.stop()
        await self.spearlet.close()
        flush_failure_lines()  # what the bounded logs held back, said before the end
        flush_refusal_lines()
        if self._detach_logs is not None:
            self._detach_logs()
            self._detach_logs = None

    def banner(self) -> list[str]:
        """What a new user needs to see: where it listens, what runs, how to call it."""
        lines = []
        if self.http_address:
            lines.append(f"spear serve listening http={self.scheme}://{self.http_address}")
        if self.grpc_address:
            lines.append(f"spear serve listening grpc={self.grpc_address}")
        specs = self.spearlet.functions()
        lines.append(f"spear serve: {len(specs)} function(s) from {self.config.source}:")
        for spec in specs:
            count = len(self.spearlet.instances(spec.name))
            lines.append(f"  {spec.name:<16} {spec.runtime.value:<10} {count} instance(s)")
        example = specs[0].name if specs else "NAME"
        auth = " -H 'Authorization: Bearer TOKEN'" if self.tokens else ""
        if self.http_address:
            lines.append(f"try: curl -s{auth} --data-binary 'hello' "
                         f"{self.scheme}://{self.http_address}/functions/{example}/invoke")
        if self.grpc_address and not self.config.server.tls and not self.tokens:
            lines.append(f"     spear invoke {example} --input hello --server {self.grpc_address}")
        if self.http_address:
            lines.append(f"metrics: {self.scheme}://{self.http_address}/metrics   "
                         f"health: {self.scheme}://{self.http_address}/healthz")
        return lines


async def run_server(config: ServeConfig, *, announce: Callable[[str], None] = print) -> int:
    """Serve until SIGTERM/SIGINT, drain, stop; returns the exit code."""
    server = FunctionServer(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()  # a second signal: stop waiting for the drain
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    try:
        await server.start()
        for line in server.banner():
            announce(line)
        await stop.wait()
        log.info("draining (up to %g s)", config.server.drain_s, extra={"event": "draining"})
        await server.drain(config.server.drain_s, hurry)
    finally:
        await server.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped", extra={"event": "stopped"})
    return 0


def _tokens(config: ServeConfig) -> BearerTokens | None:
    auth = config.server.auth
    if auth is None:
        return None
    if bool(auth.token_file) == bool(auth.token_env):
        raise InvalidConfiguration(
            f"{config.source}: [server.auth] needs token_file or token_env (one of them)")
    if auth.token_file:
        return BearerTokens.from_file(config.resolve(auth.token_file))
    assert auth.token_env is not None
    return BearerTokens.from_env(auth.token_env)


def _warn_if_exposed(door: str, host: str, tokens: BearerTokens | None, tls: bool) -> None:
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and (tokens is None or not tls):
        missing = " and ".join(x for x, absent in (("TLS", not tls), ("auth", tokens is None))
                               if absent)
        log.warning("%s listens on %s without %s: anyone who can reach it can call every "
                    "function (see docs/serve.md, Security)", door, host, missing,
                    extra={"event": "exposed"})


def _host_port(address: str, what: str) -> tuple[str, int]:
    parts = split_host_port(address)
    if parts is None:
        raise InvalidConfiguration(f"{what} address must be HOST:PORT, got {address!r}")
    return parts


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
