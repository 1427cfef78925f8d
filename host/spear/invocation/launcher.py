"""Starts and stops function instances on the right runtime, from a `FunctionSpec`.

The spearlet creates each runtime on first use (so a WASM-only host never imports grpc)
and closes the ones it created; runtimes passed in by the caller stay the caller's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spear.config import ChannelConfig
from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.invocation.function_spec import FunctionSpec
from spear.runtime.base import Runtime, RuntimeInstance
from spear.runtime.discovery import Endpoint

_RUNTIME_CLASSES: dict[RuntimeType, str] = {
    RuntimeType.WASM: "spear.runtime.wasm:WasmRuntime",
    RuntimeType.PROCESS: "spear.runtime.process:ProcessRuntime",
    RuntimeType.KUBERNETES: "spear.runtime.kubernetes:KubernetesRuntime",
}


class Launcher:
    def __init__(
        self, runtimes: Mapping[RuntimeType, Runtime] | None = None, *,
        namespace: str | None = None,
    ) -> None:
        self._runtimes: dict[RuntimeType, Runtime] = dict(runtimes or {})
        self._owned: list[Runtime] = []
        self.namespace = namespace
        # Kubernetes functions by Service name: which pod the next instance dials.
        self._endpoint_sources: dict[str, Callable[[], Endpoint]] = {}

    def follow_endpoints(self, function: str, source: Callable[[], Endpoint] | None) -> None:
        """Let `source()` choose the pod endpoint of `function`'s next instance."""
        if source is None:
            self._endpoint_sources.pop(function, None)
        else:
            self._endpoint_sources[function] = source

    def runtime(self, runtime_type: RuntimeType) -> Runtime:
        runtime = self._runtimes.get(runtime_type)
        if runtime is None:
            module_name, _, cls_name = _RUNTIME_CLASSES[runtime_type].partition(":")
            cls = getattr(importlib.import_module(module_name), cls_name)
            runtime = self._runtimes[runtime_type] = cls()
            self._owned.append(runtime)
        return runtime

    async def launch(self, spec: FunctionSpec, index: int, name: str) -> RuntimeInstance:
        """Start instance number `index` of `spec` under the instance name `name`."""
        runtime = self.runtime(spec.runtime)
        instance_id = RuntimeInstanceId(spec.runtime, name, self.namespace)
        config = _channel_config(spec)
        options: dict[str, Any] = {"config": config}
        if spec.runtime is RuntimeType.WASM:
            artifact = spec.artifact
            options["artifact"] = artifact if isinstance(artifact, bytes) else str(artifact)
            if spec.limits.memory_bytes is not None:
                options["memory_limit"] = spec.limits.memory_bytes
            if spec.limits.fuel is not None:
                options["fuel"] = spec.limits.fuel
            if spec.limits.loop_budget_ms is not None:
                options["loop_budget_ms"] = spec.limits.loop_budget_ms
            if spec.host_functions:
                options["host_functions"] = spec.host_functions
            if spec.config is not None:
                options["guest_config"] = spec.config
            if spec.wasi is not None:
                options["wasi"] = spec.wasi
        elif spec.runtime is RuntimeType.PROCESS:
            options["command"] = [str(arg) for arg in spec.command or ()]
            if spec.env is not None:
                options["env"] = dict(spec.env)
            if spec.cwd is not None:
                options["cwd"] = str(Path(spec.cwd))
        else:
            source = self._endpoint_sources.get(spec.name)
            if spec.service is not None and source is not None:
                options["config"] = source().channel_config(config)
            else:
                endpoints = list(spec.endpoints or ())
                extra = dict(config.extra)
                if index < len(spec.tcp_ports):
                    extra["tcp_port"] = str(spec.tcp_ports[index])
                options["config"] = config.with_changes(
                    address=endpoints[index % len(endpoints)], extra=extra)
            if spec.token is not None:
                options["token"] = spec.token
            if spec.tls is not None:
                options["tls"] = spec.tls
        instance = await runtime.start_instance(instance_id, **options)
        if spec.runtime is RuntimeType.WASM:
            try:
                check_wasm_handler(spec, instance)
            except InvalidConfiguration:
                await runtime.stop_instance(instance)
                raise
        return instance

    async def stop(self, instance: RuntimeInstance) -> None:
        await self.runtime(instance.instance_id.runtime_type).stop_instance(instance)

    async def close(self) -> None:
        owned, self._owned = self._owned, []
        for runtime in owned:
            await runtime.close()


def check_wasm_handler(spec: FunctionSpec, instance: RuntimeInstance) -> None:
    """A WASM function must name a handler its module exports (or the module must dispatch
    by name itself): refused at deploy, not on every request. A WASI command has one
    function, `_start`; a function without `handler` runs it under its own name."""
    module = getattr(instance, "module", None)
    handlers = getattr(module, "handlers", None)
    if handlers is None or getattr(module, "has_dispatch", False):
        return
    if getattr(module, "kind", None) == "wasi_command" and spec.handler is None:
        instance.channel.session.answer_as_start(spec.name)  # type: ignore[attr-defined]
        return
    if spec.handler_name not in handlers:
        shown = ", ".join(handlers) or "none"
        raise InvalidConfiguration(
            f"function {spec.name!r}: the module exports no handler {spec.handler_name!r} "
            f"(its handlers: {shown}); set handler = one of them")


def _channel_config(spec: FunctionSpec) -> ChannelConfig:
    limits = spec.limits
    changes: dict[str, Any] = {}
    if limits.timeout_s is not None:
        changes["request_timeout_ms"] = int(limits.timeout_s * 1000)
    if limits.max_message_size is not None:
        changes["max_message_size"] = limits.max_message_size
    if spec.runtime is RuntimeType.WASM and spec.dispatch != "auto":
        changes["extra"] = {"dispatch": spec.dispatch}
    return ChannelConfig(**changes)
