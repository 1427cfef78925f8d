"""The gRPC front door of `spear serve`: `spear.invocation.v1.FunctionService` and health.

The status mapping is documented in `proto/function_service.proto`. `grpc.health.v1.Health`
answers SERVING for "" (the server) and for each deployed function's name while it has an
instance.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from spear.errors import ChannelClosed, CommunicationError, ExecutionFailed, InvalidConfiguration
from spear.errors import Timeout as SpearTimeout
from spear.invocation.errors import FunctionNotFound, QueueFull
from spear.invocation.generated import function_service_pb2 as pb
from spear.invocation.generated import function_service_pb2_grpc as pb_grpc
from spear.invocation.spearlet import Spearlet
from spear.messages import ExecutionStatus

log = logging.getLogger("spear.serve.grpc")

_STATUS = {
    ExecutionStatus.SUCCESS: pb.InvokeResponse.SUCCESS,
    ExecutionStatus.ERROR: pb.InvokeResponse.ERROR,
    ExecutionStatus.TIMEOUT: pb.InvokeResponse.TIMEOUT,
}
MAX_MESSAGE = 64 * 1024 * 1024


class FunctionServicer(pb_grpc.FunctionServiceServicer):
    def __init__(self, spearlet: Spearlet) -> None:
        self.spearlet = spearlet

    async def Invoke(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        timeout: float | None = request.timeout_s if request.timeout_s > 0 else None
        remaining = context.time_remaining()
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = max(remaining, 0.001)
        try:
            response = await self.spearlet.invoke(
                request.function, request.input, timeout=timeout,
                metadata=dict(request.metadata))
        except FunctionNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except QueueFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except SpearTimeout as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except ChannelClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ExecutionFailed as exc:
            code = (grpc.StatusCode.INVALID_ARGUMENT if exc.code == "input_too_large"
                    else grpc.StatusCode.INTERNAL)
            await context.abort(code, str(exc))
        except InvalidConfiguration as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CommunicationError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return pb.InvokeResponse(
            request_id=response.request_id, output=response.output_data,
            status=_STATUS[response.status], error_message=response.error_message or "",
            error_code=response.error_code or "", execution_time_ms=response.execution_time_ms,
            metadata=response.metadata,
        )

    async def ListFunctions(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        return pb.ListFunctionsResponse(functions=[
            pb.FunctionInfo(name=spec.name, runtime=spec.runtime.value,
                            instances=len(self.spearlet.instances(spec.name)),
                            min_instances=spec.min_instances, max_instances=spec.max_instances)
            for spec in self.spearlet.functions()
        ])


class GrpcApi:
    """Serves one `Spearlet` over gRPC. `start()` binds and returns the port."""

    def __init__(self, spearlet: Spearlet) -> None:
        self.spearlet = spearlet
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self, address: str) -> int:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE)]
        server = grpc.aio.server(options=options)
        pb_grpc.add_FunctionServiceServicer_to_server(  # type: ignore[no-untyped-call]
            FunctionServicer(self.spearlet), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        port = server.add_insecure_port(address)
        if port == 0:
            raise InvalidConfiguration(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server = server
        await self.refresh_health()
        return int(port)

    async def refresh_health(self) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        for spec in self.spearlet.functions():
            up = bool(self.spearlet.instances(spec.name))
            await self.health.set(
                spec.name, serving if up else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
