"""The gRPC front door of `spear serve`: `spear.invocation.v1.FunctionService`, health and
server reflection.

Errors map through `error_mapping` (the table the HTTP side uses too): a function's own
failure is a normal reply with status ERROR; a timeout, wherever it happened, is
`DEADLINE_EXCEEDED`; every abort carries `x-spear-request-id` and `x-spear-error-code` in its
trailing metadata. `timeout_s` is checked (finite, positive, bounded) before any capacity is
taken; the shorter of it and the call's own deadline applies.

`grpc.health.v1.Health` answers for "" (the server) and each function (SERVING while it has
an instance); it and reflection need no token. The listening port is bound without
`SO_REUSEPORT`, so a second server on a taken port fails instead of sharing its traffic.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from spear.errors import InvalidConfiguration
from spear.invocation.error_mapping import (
    Failure,
    draining_failure,
    failure_of,
    failure_of_reply,
    log_failure,
)
from spear.invocation.errors import InvalidRequest
from spear.invocation.front_door_auth import BearerTokens
from spear.invocation.generated import function_service_pb2 as pb
from spear.invocation.generated import function_service_pb2_grpc as pb_grpc
from spear.invocation.request_limits import (
    MAX_TIMEOUT_S,
    check_metadata,
    describe_bad_timeout,
)
from spear.invocation.spearlet import Spearlet
from spear.messages import ExecutionStatus

log = logging.getLogger("spear.serve.grpc")

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_RPCS = 1024
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FunctionService"].full_name


class FunctionServicer(pb_grpc.FunctionServiceServicer):
    def __init__(self, spearlet: Spearlet, *, tokens: BearerTokens | None = None,
                 new_request_id: Any = None) -> None:
        self.spearlet = spearlet
        self.tokens = tokens
        self.draining = False
        self.in_flight = 0
        self._new_request_id = new_request_id or _counter_ids()

    async def _check_token(self, context: grpc.aio.ServicerContext[Any, Any],
                           request_id: str) -> None:
        if self.tokens is None:
            return
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and self.tokens.accepts_header(value):
                return
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "a valid bearer token is required (authorization: Bearer TOKEN)",
                            trailing_metadata=(("x-spear-request-id", request_id),
                                               ("x-spear-error-code", "unauthenticated")))

    async def Invoke(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        request_id = self._new_request_id()
        name = request.function
        await self._check_token(context, request_id)
        try:
            timeout = _timeout(request.timeout_s, context.time_remaining())
            metadata = check_metadata(request.metadata.items()) if request.metadata else None
        except InvalidRequest as exc:
            await _abort(context, failure_of(exc, name, None), name, request_id)
        if self.draining:
            await _abort(context, draining_failure(), name, request_id)
        self.in_flight += 1
        try:
            response = await self.spearlet.invoke(name, request.input, timeout=timeout,
                                                  metadata=metadata, request_id=request_id)
        except Exception as exc:
            effective = timeout if timeout is not None else _default_timeout(self.spearlet, name)
            await _abort(context, failure_of(exc, name, effective), name, request_id, exc)
        finally:
            self.in_flight -= 1
        if response.status is ExecutionStatus.TIMEOUT:
            effective = timeout if timeout is not None else _default_timeout(self.spearlet, name)
            await _abort(context, failure_of_reply(response, name, effective), name,
                         request_id)
        if response.status is not ExecutionStatus.SUCCESS:
            log_failure(failure_of_reply(response, name, timeout), name, request_id, "grpc")
        return pb.InvokeResponse(
            request_id=response.request_id, output=response.output_data,
            status=(pb.InvokeResponse.SUCCESS if response.status is ExecutionStatus.SUCCESS
                    else pb.InvokeResponse.ERROR),
            error_message=response.error_message or "",
            error_code=response.error_code or "", execution_time_ms=response.execution_time_ms,
            metadata=response.metadata,
        )

    async def ListFunctions(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await self._check_token(context, self._new_request_id())
        return pb.ListFunctionsResponse(functions=[
            pb.FunctionInfo(name=spec.name, runtime=spec.runtime.value,
                            instances=len(self.spearlet.instances(spec.name)),
                            min_instances=spec.min_instances, max_instances=spec.max_instances)
            for spec in self.spearlet.functions()
        ])


def _counter_ids() -> Any:
    import itertools
    import secrets

    prefix = secrets.token_hex(4) + "-g"
    counter = itertools.count(1)
    return lambda: prefix + str(next(counter))


def _timeout(timeout_s: float, remaining: float | None) -> float | None:
    """The request's `timeout_s` (0: the function's default), bounded by the call's deadline."""
    if timeout_s == 0.0:
        timeout: float | None = None
    elif not math.isfinite(timeout_s) or not 0.0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidRequest(describe_bad_timeout(f"{timeout_s!r}"))
    else:
        timeout = timeout_s
    if remaining is not None and math.isfinite(remaining) and (timeout is None
                                                               or remaining < timeout):
        timeout = min(max(remaining, 0.001), MAX_TIMEOUT_S)
    return timeout


def _default_timeout(spearlet: Spearlet, name: str) -> float | None:
    try:
        return spearlet.function(name).limits.timeout_s
    except Exception:
        return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], failure: Failure, name: str,
                 request_id: str, exc: BaseException | None = None) -> None:
    log_failure(failure, name, request_id, "grpc", exc)
    await context.abort(getattr(grpc.StatusCode, failure.grpc_code), failure.message,
                        trailing_metadata=(("x-spear-request-id", request_id),
                                           ("x-spear-error-code", failure.kind)))


DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0


class GrpcApi:
    """Serves one `Spearlet` over gRPC. `start()` binds and returns the port.

    `tls_*` files turn on TLS (`tls_client_ca_file`: clients must present a certificate it
    signed); `tokens` requires a bearer token on FunctionService calls."""

    def __init__(
        self, spearlet: Spearlet, *, tokens: BearerTokens | None = None,
        tls_cert_file: str | None = None, tls_key_file: str | None = None,
        tls_client_ca_file: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.spearlet = spearlet
        self.health = health.aio.HealthServicer()
        self.servicer = FunctionServicer(spearlet, tokens=tokens)
        self._tls = (tls_cert_file, tls_key_file, tls_client_ca_file)
        self._max_message = max_message_bytes
        self._max_rpcs = max_concurrent_rpcs
        self._max_connections = max_connections
        self._handshake_timeout_ms = max(1, int(handshake_timeout_s * 1000))
        self._server: grpc.aio.Server | None = None

    @property
    def in_flight(self) -> int:
        return self.servicer.in_flight

    async def start(self, address: str) -> int:
        options = [("grpc.max_receive_message_length", self._max_message),
                   ("grpc.max_send_message_length", self._max_message),
                   ("grpc.so_reuseport", 0),
                   # Bounded before trusted: connections (more are closed as they are
                   # accepted) and the time one may take to start speaking HTTP/2.
                   ("grpc.max_allowed_incoming_connections", self._max_connections),
                   ("grpc.server_handshake_timeout_ms", self._handshake_timeout_ms)]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=self._max_rpcs)
        pb_grpc.add_FunctionServiceServicer_to_server(  # type: ignore[no-untyped-call]
            self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), server)
        cert, key, client_ca = self._tls
        try:
            if cert:
                from spear.transport.tls import TlsConfig

                credentials = TlsConfig(ca_file=client_ca, cert_file=cert,
                                        key_file=key).grpc_server_credentials()
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises this when it cannot bind
            await server.stop(None)
            raise InvalidConfiguration(f"cannot listen for gRPC on {address}: {exc}") from None
        if port == 0:
            await server.stop(None)
            raise InvalidConfiguration(f"cannot listen for gRPC on {address} "
                                       "(the port is taken, or the address is not local)")
        await server.start()
        self._server = server
        await self.refresh_health()
        return int(port)

    async def refresh_health(self) -> None:
        if self.servicer.draining:
            return
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        for spec in self.spearlet.functions():
            up = bool(self.spearlet.instances(spec.name))
            await self.health.set(
                spec.name, serving if up else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def start_draining(self) -> None:
        """Health says NOT_SERVING, new invocations get UNAVAILABLE; running ones go on."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        if not self.servicer.draining:
            await self.start_draining()
        await server.stop(grace)
