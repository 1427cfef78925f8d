"""Runtime types and the instance identity every channel carries."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class RuntimeType(enum.Enum):
    PROCESS = "process"
    KUBERNETES = "kubernetes"
    WASM = "wasm"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class RuntimeInstanceId:
    """Names one runtime instance; channels, pools and stats are keyed by it."""

    runtime_type: RuntimeType
    instance_id: str
    namespace: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.runtime_type, RuntimeType):
            raise TypeError(f"runtime_type must be a RuntimeType, not {self.runtime_type!r}")
        if not self.instance_id:
            raise ValueError("instance_id must be a non-empty string")

    @property
    def full_id(self) -> str:
        base = f"{self.runtime_type.value}:{self.instance_id}"
        return f"{self.namespace}:{base}" if self.namespace else base

    def __str__(self) -> str:
        return self.full_id
