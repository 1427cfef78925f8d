"""The runtime messages that travel on every channel (the seed's `RuntimeMessage`).

Plain slotted dataclasses: they are built on every request, so construction must be cheap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ExecutionStatus(enum.Enum):
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(slots=True)
class ExecutionRequest:
    """Run `function_name` on `input_data`. Also the shape of messages guests exchange."""

    request_id: str
    function_name: str
    input_data: bytes = b""
    timeout_ms: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ExecutionResponse:
    request_id: str
    output_data: bytes = b""
    status: ExecutionStatus = ExecutionStatus.SUCCESS
    error_message: str | None = None
    error_code: str | None = None
    execution_time_ms: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is ExecutionStatus.SUCCESS


@dataclass(slots=True)
class HealthCheck:
    request_id: str


@dataclass(slots=True)
class HealthResponse:
    request_id: str
    status: str = "serving"
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Ack:
    request_id: str


@dataclass(slots=True)
class Shutdown:
    """Ask the peer to stop; `graceful` means finish in-flight requests first."""

    graceful: bool = True
    timeout_ms: int = 5000


@dataclass(slots=True)
class Error:
    request_id: str
    message: str
    code: str = "error"


@dataclass(slots=True)
class Cancel:
    """Tell the peer that the caller gave up on `request_id` (it timed out or was cancelled)."""

    request_id: str


@dataclass(slots=True)
class Handshake:
    """First frame a worker sends on a socket channel. The token never appears in reprs."""

    instance_id: str
    token: str = field(repr=False)
    protocol_version: int = 1


RuntimeMessage = (
    ExecutionRequest
    | ExecutionResponse
    | HealthCheck
    | HealthResponse
    | Ack
    | Shutdown
    | Error
    | Cancel
    | Handshake
)

# Messages that answer an earlier request and so complete a pending `request_response`.
REPLY_TYPES: tuple[type, ...] = (ExecutionResponse, HealthResponse, Ack, Error)
