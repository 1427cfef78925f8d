"""What a deployed function is: where its code lives, how many instances, how to share load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeType

Balancing = Literal["round_robin", "weighted", "least_outstanding"]
BALANCING_NAMES: tuple[str, ...] = ("round_robin", "weighted", "least_outstanding")

# Requests one instance takes at once, unless the spec says otherwise. A WASM instance is one
# store, entered by one call at a time; socket and gRPC workers multiplex many requests.
DEFAULT_CONCURRENCY: dict[RuntimeType, int] = {
    RuntimeType.WASM: 1,
    RuntimeType.PROCESS: 64,
    RuntimeType.KUBERNETES: 64,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-request and per-instance limits of a function.

    `timeout_s` is the default for `invoke(..., timeout=None)`; `max_input_bytes` refuses
    bigger inputs before they reach an instance; `max_message_size` bounds every frame on the
    instance's channel; `memory_bytes` and `fuel` are passed to WASM instances;
    `loop_budget_ms` is how long a WASM guest may hold the event loop per call (None: the
    runtime's default, 5 ms; see docs/wasm-abi.md).
    """

    timeout_s: float | None = 30.0
    max_input_bytes: int | None = None
    max_message_size: int | None = None
    memory_bytes: int | None = None
    fuel: int | None = None
    loop_budget_ms: float | None = None

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise InvalidConfiguration(f"limits.timeout_s must be positive, got {self.timeout_s}")
        budget = self.loop_budget_ms
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)
                                   or not 0 < budget <= 1000):
            raise InvalidConfiguration(
                f"limits.loop_budget_ms must be a number in (0, 1000], got {budget!r}")
        for name in ("max_input_bytes", "max_message_size", "memory_bytes", "fuel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise InvalidConfiguration(f"limits.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function to deploy on a `Spearlet`.

    - WASM: `artifact` is the `.wasm` path or bytes; `handler` names the guest's handler
      export (`spear.handler.NAME`), defaulting to the function's `name`.
    - Process: `command` starts one worker (e.g. `["python", "-m", "spear.worker", "m:f"]`).
    - Kubernetes: `endpoints` lists the pod workers' gRPC addresses (`HOST:PORT`); instance
      *i* talks to endpoint *i*, so `max_instances` is at most the number of endpoints.
      `tcp_ports` (optional, same order) names each pod's TCP fallback port.

    Scaling: `min_instances` start at deploy; while every instance is at
    `concurrency_per_instance`, requests queue (at most `queue_limit`, then `QueueFull`) and
    one more instance starts, up to `max_instances`. Instances beyond `min_instances` that stay
    unneeded for `scale_in_after_s` are stopped.

    `idempotent=True` lets a request whose instance died be retried once on another one.
    `weights` (for `balancing="weighted"`) gives instance *i* weight `weights[i]` (default 1).
    """

    name: str
    runtime: RuntimeType
    artifact: str | Path | bytes | None = None
    command: Sequence[str] | None = None
    endpoints: Sequence[str] | None = None
    min_instances: int = 1
    max_instances: int = 4
    concurrency_per_instance: int | None = None
    env: Mapping[str, str] | None = None
    cwd: str | Path | None = None
    limits: Limits = field(default_factory=Limits)
    idempotent: bool = False
    balancing: Balancing = "round_robin"
    queue_limit: int = 1024
    handler: str | None = None
    weights: Sequence[int] = ()
    tcp_ports: Sequence[int] = ()
    scale_in_after_s: float = 30.0
    # Kubernetes: the pod workers' shared token and TLS settings (never shown in reprs).
    token: str | None = field(default=None, repr=False)
    tls: object | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise InvalidConfiguration(
                f"function name must be non-empty and without '/': {self.name!r}"
            )
        if not isinstance(self.runtime, RuntimeType):
            try:
                object.__setattr__(self, "runtime", RuntimeType(self.runtime))
            except ValueError:
                raise InvalidConfiguration(
                    f"function {self.name!r}: unknown runtime {self.runtime!r}; "
                    f"use one of {[t.value for t in RuntimeType]}"
                ) from None
        need = {
            RuntimeType.WASM: ("artifact", self.artifact),
            RuntimeType.PROCESS: ("command", self.command),
            RuntimeType.KUBERNETES: ("endpoints", self.endpoints),
        }[self.runtime]
        if not need[1]:
            raise InvalidConfiguration(
                f"function {self.name!r}: a {self.runtime} function needs {need[0]}"
            )
        if isinstance(self.command, str):
            raise InvalidConfiguration(
                f"function {self.name!r}: command must be a list of arguments, not a string"
            )
        if self.min_instances < 0 or self.max_instances < 1:
            raise InvalidConfiguration(
                f"function {self.name!r}: need min_instances >= 0 and max_instances >= 1"
            )
        if self.min_instances > self.max_instances:
            raise InvalidConfiguration(
                f"function {self.name!r}: min_instances {self.min_instances} exceeds "
                f"max_instances {self.max_instances}"
            )
        if (self.endpoints is not None and self.runtime is RuntimeType.KUBERNETES
                and self.max_instances > len(self.endpoints)):
            # One instance per endpoint: more would not add capacity.
            object.__setattr__(self, "max_instances", len(self.endpoints))
            if self.min_instances > self.max_instances:
                object.__setattr__(self, "min_instances", self.max_instances)
        if self.concurrency_per_instance is not None and self.concurrency_per_instance < 1:
            raise InvalidConfiguration(
                f"function {self.name!r}: concurrency_per_instance must be >= 1"
            )
        if self.balancing not in BALANCING_NAMES:
            raise InvalidConfiguration(
                f"function {self.name!r}: balancing must be one of {list(BALANCING_NAMES)}, "
                f"got {self.balancing!r}"
            )
        if self.queue_limit < 0:
            raise InvalidConfiguration(f"function {self.name!r}: queue_limit must be >= 0")
        if any(w < 1 for w in self.weights):
            raise InvalidConfiguration(f"function {self.name!r}: weights must be >= 1")
        if self.scale_in_after_s <= 0:
            raise InvalidConfiguration(f"function {self.name!r}: scale_in_after_s must be > 0")

    @property
    def capacity(self) -> int:
        """Requests one instance takes at once."""
        if self.concurrency_per_instance is not None:
            return self.concurrency_per_instance
        return DEFAULT_CONCURRENCY[self.runtime]

    @property
    def handler_name(self) -> str:
        return self.handler or self.name

    def weight(self, index: int) -> int:
        return self.weights[index] if index < len(self.weights) else 1
