"""What the host and the worker SDK share: messages, codec, frames, the handshake, the
worker environment contract, addresses and limits.

Both sides import this package; it imports neither of them (only `spear.errors`), so the
worker SDK never pulls in the host's layers and the host never imports the worker.
"""

from spear.protocol.codec import decode, encode
from spear.protocol.messages import (
    REPLY_TYPES,
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

__all__ = [
    "REPLY_TYPES",
    "Ack",
    "Cancel",
    "Error",
    "ExecutionRequest",
    "ExecutionResponse",
    "ExecutionStatus",
    "Handshake",
    "HealthCheck",
    "HealthResponse",
    "RuntimeMessage",
    "Shutdown",
    "decode",
    "encode",
]
