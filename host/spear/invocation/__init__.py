"""The function invocation layer: deploy, invoke, scale (`Spearlet`), and `spear serve`.

One concept per module: `function_spec` (what a function is), `spearlet` (the API),
`pool` (a function's instances and their lifecycle), `balancer`, `queue` (waiting for
capacity), `executions` (submit/result/cancel), `metrics`, `launcher` (runtimes), `errors`;
the server side is `serve_config`, `server`, `http_api`, `grpc_api` and `proto/`.

Only the light modules are imported here; `Spearlet` is `spear.Spearlet`.
"""

from spear.invocation.errors import (
    ExecutionCancelled,
    ExecutionNotFound,
    FunctionNotFound,
    InstanceStartFailed,
    QueueFull,
)
from spear.invocation.function_spec import FunctionSpec, Limits

__all__ = [
    "ExecutionCancelled",
    "ExecutionNotFound",
    "FunctionNotFound",
    "FunctionSpec",
    "InstanceStartFailed",
    "Limits",
    "QueueFull",
]
