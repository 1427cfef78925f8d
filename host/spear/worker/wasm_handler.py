"""Serve a WASM module from a pod worker: `spear worker --grpc ADDR --wasm MODULE.wasm`.

The module is loaded (compiled) once; each dispatcher thread gets its own instance, since an
instance is single-threaded state and WASM execution releases the GIL, so threads run guests
in parallel. `ExecutionRequest.function_name` names the guest handler; the request's
`timeout_ms` becomes the call's epoch deadline, so a guest stuck in a loop is preempted, not
abandoned. After a trap or timeout the thread's instance is dropped and the next call gets a
fresh one.
"""

from __future__ import annotations

import threading
from typing import Any

from spear.errors import ExecutionFailed, InvalidConfiguration, Timeout
from spear.messages import ExecutionRequest


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
        timeout = request.timeout_ms / 1000.0 if request.timeout_ms > 0 else None
        instance = self._instance()
        try:
            output: bytes = instance.call(
                request.function_name, request.input_data, timeout=timeout,
                metadata=request.metadata or None,
            )
        except (ExecutionFailed, Timeout):
            self._local.instance = None  # state unknown after a trap or interrupt
            raise
        return output
