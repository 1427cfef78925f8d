"""The WASM runtime: function instances run in this process, in wasmtime."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spear.channel.memory import MemoryChannel, check_loop_budget, open_memory_channel
from spear.config import ChannelConfig
from spear.errors import InvalidConfiguration, UnsupportedChannel
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.runtime.base import Runtime, RuntimeInstance
from spear.transport.wasm.arguments import check_positive_int
from spear.transport.wasm.limits import DEFAULT_LOOP_BUDGET, MAX_MEMORY_LIMIT, GuestLimits
from spear.transport.wasm.module import WasmModule
from spear.transport.wasm.wasi_config import WasiConfig
from spear.transport.wasm.wasm_host import WasmHost, default_host

MAX_KEPT_MODULES = 64  # loaded modules remembered for reuse by later instances


class WasmRuntimeInstance(RuntimeInstance):
    channel: MemoryChannel

    def __init__(self, instance_id: RuntimeInstanceId, channel: MemoryChannel,
                 module: WasmModule) -> None:
        super().__init__(instance_id, channel)
        self.module = module


def _check_limits(memory_limit: Any, fuel: Any, loop_budget_ms: Any, limits: Any) -> None:
    if memory_limit is not None:
        check_positive_int(memory_limit, "memory_limit", 65536, MAX_MEMORY_LIMIT)
    if fuel is not None:
        check_positive_int(fuel, "fuel", 1, (1 << 63) - 1)
    if loop_budget_ms is not None:
        check_loop_budget(loop_budget_ms)
    if limits is not None and not isinstance(limits, GuestLimits):
        raise TypeError(f"limits must be a GuestLimits, not {type(limits).__name__}")


class WasmRuntime(Runtime):
    """Starts instances of WASM modules (spear guests and WASI commands); each instance has
    its own store and channel.

    Modules are compiled once per artifact and shared by every instance started from it.
    `loop_budget_ms` is how long guest code may hold the event loop per call (default 5 ms;
    see docs/wasm-abi.md); `limits` bounds what each guest can make the host hold. Engines and
    compiled modules belong to `host` (default: the process-wide one).

    `start_instance(..., host_functions=, guest_config=, wasi=)` binds Python host functions
    (sync or `async def`; the coroutines run on the loop that started the instance), the
    configuration the guest reads and WASI options to one instance (docs/embedding.md).
    """

    runtime_type = RuntimeType.WASM

    def __init__(self, *, memory_limit: int | None = None, fuel: int | None = None,
                 loop_budget_ms: float = DEFAULT_LOOP_BUDGET * 1000,
                 limits: GuestLimits | None = None, host: WasmHost | None = None) -> None:
        _check_limits(memory_limit, fuel, loop_budget_ms, limits)
        if host is not None and not isinstance(host, WasmHost):
            raise TypeError(f"host must be a WasmHost, not {type(host).__name__}")
        self._memory_limit = memory_limit
        self._fuel = fuel
        self._loop_budget_ms = loop_budget_ms
        self._limits = limits
        self._host = host
        self._instances: dict[RuntimeInstanceId, WasmRuntimeInstance] = {}
        self._modules: collections.OrderedDict[tuple[str, int | None, int | None], WasmModule] \
            = collections.OrderedDict()

    async def start_instance(
        self,
        instance_id: RuntimeInstanceId | str,
        *,
        artifact: str | Path | bytes | WasmModule | None = None,
        config: ChannelConfig | Mapping[str, str] | None = None,
        memory_limit: int | None = None,
        fuel: int | None = None,
        loop_budget_ms: float | None = None,
        limits: GuestLimits | None = None,
        host_functions: Mapping[str, Any] | None = None,
        guest_config: Mapping[str, str] | None = None,
        wasi: WasiConfig | None = None,
        **options: Any,
    ) -> WasmRuntimeInstance:
        """Start an instance of `artifact` (a path, bytes or a loaded module).

        `config` is the instance's `ChannelConfig`; a plain mapping given there is taken as
        the guest's configuration (`guest_config`), so `config={"key": "value"}` works as it
        does in `spear.wasm.load`.
        """
        if options:
            raise InvalidConfiguration(f"unknown WASM instance options: {sorted(options)}")
        _check_limits(memory_limit, fuel, loop_budget_ms, limits)
        if isinstance(config, Mapping):
            if guest_config is not None:
                raise InvalidConfiguration("give the guest's configuration once: config= (a "
                                           "mapping) or guest_config=, not both")
            guest_config, config = config, None
        iid = self._coerce_id(instance_id)
        if iid in self._instances:
            raise InvalidConfiguration(f"instance {iid.full_id} is already running")
        config = config or ChannelConfig()
        if config.channel_type not in (None, "memory"):
            raise UnsupportedChannel(
                f"WASM instances use the 'memory' channel, not {config.channel_type!r}")
        if artifact is None:
            artifact = config.address
        if artifact is None:
            raise InvalidConfiguration("a WASM instance needs artifact= (a .wasm path or bytes)")
        module = await self._module_for(
            artifact,
            memory_limit if memory_limit is not None else self._memory_limit,
            fuel if fuel is not None else self._fuel,
        )
        budget: float | str = (config.extra.get("loop_budget_ms", self._loop_budget_ms)
                               if loop_budget_ms is None else loop_budget_ms)
        channel = await open_memory_channel(iid, module, config, loop_budget_ms=budget,
                                            limits=limits or self._limits,
                                            host_functions=host_functions,
                                            guest_config=guest_config, wasi=wasi)
        instance = WasmRuntimeInstance(iid, channel, module)
        self._instances[iid] = instance
        return instance

    async def _module_for(self, artifact: str | Path | bytes | WasmModule,
                          memory_limit: int | None, fuel: int | None) -> WasmModule:
        if isinstance(artifact, WasmModule):
            return artifact
        if isinstance(artifact, bytearray | memoryview):
            artifact = bytes(artifact)
        if not isinstance(artifact, bytes | str | Path):
            raise TypeError(f"artifact must be a path or bytes, not {type(artifact).__name__}")
        key_source = (artifact if isinstance(artifact, bytes)
                      else str(Path(artifact).resolve()).encode())
        key = (hashlib.sha256(key_source).hexdigest(), memory_limit, fuel)
        module = self._modules.get(key)
        if module is not None and not module.host.closed:
            self._modules.move_to_end(key)
            return module
        host = self._host or default_host()
        module = await asyncio.to_thread(
            host.load, artifact, memory_limit=memory_limit, fuel=fuel)
        self._modules[key] = module
        while len(self._modules) > MAX_KEPT_MODULES:
            self._modules.popitem(last=False)
        return module

    async def stop_instance(self, instance: RuntimeInstance) -> None:
        self._instances.pop(instance.instance_id, None)
        await instance.channel.close()

    def instances(self) -> list[RuntimeInstance]:
        return list(self._instances.values())
