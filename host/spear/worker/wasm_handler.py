"""Serve a WASM module from a pod worker: `spear worker --grpc ADDR --wasm MODULE.wasm`.

The module is loaded (compiled) once; each dispatcher thread gets its own instance, since an
instance is single-threaded state and WASM execution releases the GIL, so threads run guests
in parallel. `ExecutionRequest.function_name` names the guest handler; the request's
`timeout_ms` becomes the call's epoch deadline, so a guest stuck in a loop is preempted, not
abandoned; `ExecutionFailed` and `Timeout` become error and timeout responses.
"""

from __future__ import annotations

import threading
from typing import Any

from spear.errors import InvalidConfiguration
from spear.messages import ExecutionRequest

GUEST_DEADLINE_SLACK = 0.025
# spear.wasm.MAX_TIMEOUT, not imported: the WASM runtime is optional here.
MAX_TIMEOUT = 365 * 24 * 3600.0


class WasmHandler:
    """A sync dispatcher handler backed by one compiled module and per-thread instances."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._local = threading.local()

    @classmethod
    def load(cls, path: str) -> WasmHandler:
        try:
            from spear import wasm
        except ImportError as exc:
            raise InvalidConfiguration(f"the WASM runtime is not available: {exc}") from exc
        return cls(wasm.load(path))

    def _instance(self) -> Any:
        instance = getattr(self._local, "instance", None)
        if instance is None:
            instance = self._module.instantiate()
            self._local.instance = instance
        return instance

    def __call__(self, request: ExecutionRequest) -> bytes:
        # The guest's epoch deadline trails the dispatcher's by a hair, so the caller always
        # gets a TIMEOUT response (from the dispatcher) and the guest is still preempted
        # right after, freeing the thread.
        # A remote caller's timeout is clamped to what a guest call accepts.
        timeout = (min(request.timeout_ms / 1000.0 + GUEST_DEADLINE_SLACK, MAX_TIMEOUT)
                   if request.timeout_ms else None)
        # After a trap or timeout the instance replaces its own guest state (docs/wasm-abi.md).
        output: bytes = self._instance().call(
            request.function_name, request.input_data, timeout=timeout,
            metadata=request.metadata or None,
        )
        return output
