"""The runtime messages live in `spear.protocol.messages`; this name keeps old imports working."""

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
]
