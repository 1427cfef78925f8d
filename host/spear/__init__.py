"""spear: the Spear execution system's communication architecture, in Python.

Four layers, one folder each: `invocation/` (deploy, invoke, scale), `runtime/` (WASM,
process, Kubernetes), `channel/` (the `CommunicationChannel` abstraction, factory,
correlation), `transport/` (unix, tcp, grpc, wasm linear memory). What the host and the worker
SDK (`worker/`) share is in `protocol/` (messages, codec, frames, handshake, limits). The
model (ids, config, errors) lives in small modules at the top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spear._version import __version__
from spear.errors import (
    AuthenticationFailed,
    ChannelClosed,
    ChannelCreationFailed,
    CommunicationError,
    ConnectionFailed,
    ExecutionFailed,
    InvalidConfiguration,
    InvalidMessage,
    Timeout,
    UnsupportedChannel,
    UnsupportedRuntime,
    UnsupportedTransport,
)
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.protocol.messages import (
    Ack,
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    Handshake,
    HealthCheck,
    HealthResponse,
    RuntimeMessage,
    Shutdown,
)

if TYPE_CHECKING:
    from spear.channel.base import CommunicationChannel
    from spear.channel.factory import CommunicationFactory
    from spear.channel.strategy import CommunicationStrategy, CommunicationStrategyBuilder
    from spear.config import ChannelConfig
    from spear.invocation.asgi_app import asgi_app
    from spear.invocation.function_spec import FunctionSpec
    from spear.invocation.spearlet import Spearlet
    from spear.runtime.base import Runtime, RuntimeInstance
    from spear.runtime.kubernetes import KubernetesRuntime
    from spear.runtime.process import ProcessRuntime
    from spear.runtime.wasm import WasmRuntime
    from spear.stats import ChannelStats

# Everything but the model (errors, ids, messages) loads on first use, so `import spear`
# stays cheap and the worker SDK (which imports `spear.worker`) never loads the host's layers.
_LAZY = {
    "CommunicationChannel": "spear.channel.base",
    "ChannelConfig": "spear.config",
    "ChannelStats": "spear.stats",
    "Runtime": "spear.runtime.base",
    "RuntimeInstance": "spear.runtime.base",
    "WasmRuntime": "spear.runtime.wasm",
    "ProcessRuntime": "spear.runtime.process",
    "KubernetesRuntime": "spear.runtime.kubernetes",
    "CommunicationFactory": "spear.channel.factory",
    "CommunicationStrategy": "spear.channel.strategy",
    "CommunicationStrategyBuilder": "spear.channel.strategy",
    "Spearlet": "spear.invocation.spearlet",
    "FunctionSpec": "spear.invocation.function_spec",
    "asgi_app": "spear.invocation.asgi_app",
}


def __getattr__(name: str) -> Any:
    if name == "wasm":  # the embedding API: `import spear` then `spear.wasm.load(...)`
        return importlib.import_module("spear.wasm")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spear' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Ack",
    "AuthenticationFailed",
    "Cancel",
    "ChannelClosed",
    "ChannelConfig",
    "ChannelCreationFailed",
    "ChannelStats",
    "CommunicationChannel",
    "CommunicationError",
    "CommunicationFactory",
    "CommunicationStrategy",
    "CommunicationStrategyBuilder",
    "ConnectionFailed",
    "Error",
    "ExecutionFailed",
    "ExecutionRequest",
    "ExecutionResponse",
    "ExecutionStatus",
    "FunctionSpec",
    "Handshake",
    "HealthCheck",
    "HealthResponse",
    "InvalidConfiguration",
    "InvalidMessage",
    "KubernetesRuntime",
    "ProcessRuntime",
    "Runtime",
    "RuntimeInstance",
    "RuntimeInstanceId",
    "RuntimeMessage",
    "RuntimeType",
    "Shutdown",
    "Spearlet",
    "Timeout",
    "UnsupportedChannel",
    "UnsupportedRuntime",
    "UnsupportedTransport",
    "WasmRuntime",
    "__version__",
    "asgi_app",
]
