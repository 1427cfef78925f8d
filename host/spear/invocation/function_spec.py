"""What a deployed function is: where its code lives, how many instances, how to share load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeType
from spear.invocation.request_limits import MAX_TIMEOUT_S

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
        timeout = self.timeout_s
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float)
                                    or not 0 < timeout <= MAX_TIMEOUT_S):  # NaN fails too
            raise InvalidConfiguration(
                f"limits.timeout_s must be seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout!r}")
        budget = self.loop_budget_ms
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int | float)
                                   or not 0 < budget <= 1000):  # NaN fails too
            raise InvalidConfiguration(
                f"limits.loop_budget_ms must be a number in (0, 1000], got {budget!r}")
        for name in ("max_input_bytes", "max_message_size", "memory_bytes", "fuel"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise InvalidConfiguration(f"limits.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A Kubernetes function's pods, found by the DNS name of their headless Service (one A
    record per ready pod): `dns_name` (e.g. `echo.default.svc.cluster.local`), each pod's
    gRPC `port` and optional TCP fallback `tcp_port`, re-resolved every `interval_s`.
    `resolver(name, port) -> addresses` replaces the system resolver (tests, odd setups)."""

    dns_name: str
    port: int = 50051
    tcp_port: int | None = None
    interval_s: float = 5.0
    resolver: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.dns_name or not isinstance(self.dns_name, str):
            raise InvalidConfiguration("service needs a DNS name")
        for key in ("port", "tcp_port"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or not 0 < value < 65536):
                raise InvalidConfiguration(f"service {key} must be a port number, got {value!r}")
        if not isinstance(self.interval_s, int | float) or not 0 < self.interval_s <= 3600:
            raise InvalidConfiguration("service interval_s must be seconds in (0, 3600]")


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function to deploy on a `Spearlet`.

    - WASM: `artifact` is the `.wasm` path or bytes; `handler` names the guest's handler
      export (`spear.handler.NAME`), defaulting to the function's `name`.
    - Process: `command` starts one worker (e.g. `["python", "-m", "spear.worker", "m:f"]`).
    - Kubernetes: `endpoints` lists the pod workers' gRPC addresses (`HOST:PORT`); instance
      *i* talks to endpoint *i*, so `max_instances` is at most the number of endpoints.
      `tcp_ports` (optional, same order) names each pod's TCP fallback port. Or `service`
      (a `ServiceRef`): the pods behind a headless Service, one instance per ready pod,
      following them as they come and go (`min_instances`/`max_instances` do not apply).

    Scaling: `min_instances` start at deploy; while every instance is at
    `concurrency_per_instance`, requests queue (at most `queue_limit`, then `QueueFull`) and
    one more instance starts, up to `max_instances`. Instances beyond `min_instances` that stay
    unneeded for `scale_in_after_s` are stopped.

    `idempotent=True` lets a request whose instance died be retried once on another one.
    `weights` (for `balancing="weighted"`) gives instance *i* weight `weights[i]` (default 1).

    WASM only: `host_functions` (`{"name": fn}`, fn taking and returning bytes, sync or
    `async def`, or a `spear.wasm.HostFunction`) are what the guest calls with
    `spear.host_call`; `config` (`{"key": "value"}`) is what it reads with
    `spear.config_get`; `wasi` (a `spear.wasm.WasiConfig`) is what WASI grants it. Every
    instance of the function gets them (docs/embedding.md).
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
    # WASM: where calls run (the memory channel's `dispatch`): "auto" learns per handler,
    # "inline" runs every call on the event loop (short handlers only), "thread" never does.
    dispatch: Literal["auto", "inline", "thread"] = "auto"
    # Kubernetes by Service name instead of `endpoints`: instances follow the ready pods.
    service: ServiceRef | None = None
    # Kubernetes: the pod workers' shared token and TLS settings (never shown in reprs).
    token: str | None = field(default=None, repr=False)
    tls: object | None = None
    host_functions: Mapping[str, Any] | None = field(default=None, repr=False)
    config: Mapping[str, str] | None = None
    wasi: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name \
                or not self.name.isprintable():
            raise InvalidConfiguration(
                f"function name must be a non-empty printable string without '/': "
                f"{self.name!r}"
            )
        for key in ("min_instances", "max_instances", "queue_limit"):
            if not _is_int(getattr(self, key)):
                raise InvalidConfiguration(
                    f"function {self.name!r}: {key} must be an int, got "
                    f"{getattr(self, key)!r}")
        if self.concurrency_per_instance is not None \
                and not _is_int(self.concurrency_per_instance):
            raise InvalidConfiguration(
                f"function {self.name!r}: concurrency_per_instance must be an int")
        if not isinstance(self.limits, Limits):
            raise InvalidConfiguration(f"function {self.name!r}: limits must be a Limits")
        scale_in = self.scale_in_after_s
        if isinstance(scale_in, bool) or not isinstance(scale_in, int | float) \
                or not 0 < scale_in <= MAX_TIMEOUT_S:
            raise InvalidConfiguration(
                f"function {self.name!r}: scale_in_after_s must be seconds > 0, got {scale_in!r}")
        if self.command is not None and (
                isinstance(self.command, str | bytes)
                or not all(isinstance(arg, str) for arg in self.command)):
            raise InvalidConfiguration(
                f"function {self.name!r}: command must be a list of strings (arguments), "
                f"not {type(self.command).__name__}"
            )
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
            RuntimeType.KUBERNETES: ("endpoints or service", self.endpoints or self.service),
        }[self.runtime]
        if not need[1]:
            raise InvalidConfiguration(
                f"function {self.name!r}: a {self.runtime} function needs {need[0]}"
            )
        if isinstance(self.command, str):
            raise InvalidConfiguration(
                f"function {self.name!r}: command must be a list of arguments, not a string"
            )
        if self.service is not None and (self.runtime is not RuntimeType.KUBERNETES
                                         or self.endpoints):
            raise InvalidConfiguration(
                f"function {self.name!r}: service is for Kubernetes functions, instead of "
                "endpoints")
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
        if self.dispatch not in ("auto", "inline", "thread"):
            raise InvalidConfiguration(
                f"function {self.name!r}: dispatch must be auto, inline or thread, "
                f"got {self.dispatch!r}")
        if any(not _is_int(w) or w < 1 for w in self.weights):
            raise InvalidConfiguration(f"function {self.name!r}: weights must be >= 1")
        self._check_wasm_bindings()

    def _check_wasm_bindings(self) -> None:
        given = [key for key in ("host_functions", "config", "wasi")
                 if getattr(self, key) is not None]
        if not given:
            return
        if self.runtime is not RuntimeType.WASM:
            raise InvalidConfiguration(
                f"function {self.name!r}: {', '.join(given)} apply to WASM functions only")
        # Light imports: no wasmtime is loaded to check a spec.
        from spear.transport.wasm.guest_config import check_config
        from spear.transport.wasm.host_functions import check_host_functions
        from spear.transport.wasm.wasi_config import WasiConfig

        try:
            if self.host_functions is not None:
                object.__setattr__(self, "host_functions",
                                   check_host_functions(self.host_functions))
            if self.config is not None:
                object.__setattr__(self, "config", check_config(self.config))
        except (TypeError, InvalidConfiguration) as exc:
            raise InvalidConfiguration(f"function {self.name!r}: {exc}") from None
        if self.wasi is not None and not isinstance(self.wasi, WasiConfig):
            raise InvalidConfiguration(f"function {self.name!r}: wasi must be a "
                                       f"spear.wasm.WasiConfig, not {type(self.wasi).__name__}")

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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
