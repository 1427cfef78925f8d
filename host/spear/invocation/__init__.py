"""The function invocation layer: deploy, invoke, scale (`Spearlet`), and `spear serve`.

One concept per module: `function_spec` (what a function is), `spearlet` (the API),
`pool` (a function's instances and their lifecycle), `balancer`, `queue` (waiting for
capacity), `executions` (submit/result/cancel), `metrics`, `launcher` (runtimes), `errors`;
the server side is `serve_config` (the schema), `server` (start, drain, stop), `asgi_app`
(the HTTP front door) and `http_server` (uvicorn), `grpc_api`, `error_mapping` (one table
for both doors), `request_limits`, `front_door_auth`, `log_attribution`, `pod_follower`
(Kubernetes functions by Service name) and `proto/`.

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
