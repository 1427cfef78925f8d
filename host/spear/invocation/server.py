"""`spear serve` as a library: a Spearlet with its functions deployed behind HTTP and gRPC.

`FunctionServer` starts the spearlet, deploys every function (all at once; any failure stops
the start with that error), then opens the front doors. `run_server` adds the process part:
announce where it listens, run until SIGTERM/SIGINT, then stop in reverse order.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from spear.channel.connectors import split_host_port
from spear.errors import InvalidConfiguration
from spear.invocation.grpc_api import GrpcApi
from spear.invocation.http_api import HttpApi
from spear.invocation.serve_config import ServeConfig
from spear.invocation.spearlet import Spearlet

log = logging.getLogger("spear.serve")


class FunctionServer:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.spearlet = Spearlet(
            namespace=config.namespace, scale_interval_s=config.scale_interval_s,
            result_ttl_s=config.result_ttl_s, max_results=config.max_results)
        self.http: HttpApi | None = None
        self.grpc: GrpcApi | None = None
        self.http_address: str | None = None
        self.grpc_address: str | None = None
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await asyncio.gather(*(self.spearlet.deploy(spec)
                                   for spec in self.config.functions))
            if self.config.http is not None:
                host, port = _host_port(self.config.http, "http")
                self.http = HttpApi(self.spearlet, max_body_bytes=self.config.max_body_bytes)
                bound = await self.http.start(host, port)
                self.http_address = f"{_bracket(host)}:{bound}"
            if self.config.grpc is not None:
                host, port = _host_port(self.config.grpc, "grpc")
                self.grpc = GrpcApi(self.spearlet)
                bound = await self.grpc.start(f"{_bracket(host)}:{port}")
                self.grpc_address = f"{_bracket(host)}:{bound}"
                self._health_task = asyncio.get_running_loop().create_task(
                    self._refresh_health())
        except BaseException:
            await self.stop()
            raise

    async def _refresh_health(self) -> None:
        while self.grpc is not None:
            await asyncio.sleep(1.0)
            await self.grpc.refresh_health()

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self.http is not None:
            await self.http.stop()
        if self.grpc is not None:
            grpc, self.grpc = self.grpc, None
            await grpc.stop()
        await self.spearlet.close()

    def banner(self) -> list[str]:
        """What a new user needs to see: where it listens, what runs, how to call it."""
        lines = []
        if self.http_address:
            lines.append(f"spear serve listening http=http://{self.http_address}")
        if self.grpc_address:
            lines.append(f"spear serve listening grpc={self.grpc_address}")
        specs = self.spearlet.functions()
        lines.append(f"spear serve: {len(specs)} function(s) from {self.config.source}:")
        for spec in specs:
            count = len(self.spearlet.instances(spec.name))
            lines.append(f"  {spec.name:<16} {spec.runtime.value:<10} {count} instance(s)")
        example = specs[0].name if specs else "NAME"
        if self.http_address:
            lines.append(f"try: curl -s --data-binary 'hello' "
                         f"http://{self.http_address}/functions/{example}/invoke")
        if self.grpc_address:
            lines.append(f"     spear invoke {example} --input hello --server {self.grpc_address}")
        if self.http_address:
            lines.append(f"metrics: http://{self.http_address}/metrics   "
                         f"health: http://{self.http_address}/healthz")
        return lines


async def run_server(config: ServeConfig, *, announce: Callable[[str], None] = print) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    server = FunctionServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        for line in server.banner():
            announce(line)
        await stop.wait()
        log.info("stopping")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.stop()
    return 0


def _host_port(address: str, what: str) -> tuple[str, int]:
    parts = split_host_port(address)
    if parts is None:
        raise InvalidConfiguration(f"{what} address must be HOST:PORT, got {address!r}")
    return parts


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
