"""The WASM runtime: function instances run in this process, in wasmtime."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from spear.channel.memory import MemoryChannel, open_memory_channel
from spear.config import ChannelConfig
from spear.errors import InvalidConfiguration, UnsupportedChannel
from spear.instance_id import RuntimeInstanceId, RuntimeType
from spear.runtime.base import Runtime, RuntimeInstance
from spear.transport.wasm.module import WasmModule


class WasmRuntimeInstance(RuntimeInstance):
    channel: MemoryChannel

    def __init__(self, instance_id: RuntimeInstanceId, channel: MemoryChannel,
                 module: WasmModule) -> None:
        super().__init__(instance_id, channel)
        self.module = module


class WasmRuntime(Runtime):
    """Starts instances of WASM modules; each instance has its own store and channel.

    Modules are compiled once per artifact and shared by every instance started from it.
    """

    runtime_type = RuntimeType.WASM

    def __init__(self, *, memory_limit: int | None = None, fuel: int | None = None) -> None:
        self._memory_limit = memory_limit
        self._fuel = fuel
        self._instances: dict[RuntimeInstanceId, WasmRuntimeInstance] = {}
        self._modules: dict[tuple[str, int | None, int | None], WasmModule] = {}

    async def start_instance(
        self,
        instance_id: RuntimeInstanceId | str,
        *,
        artifact: str | Path | bytes | WasmModule | None = None,
        config: ChannelConfig | None = None,
        memory_limit: int | None = None,
        fuel: int | None = None,
        **options: Any,
    ) -> WasmRuntimeInstance:
        if options:
            raise InvalidConfiguration(f"unknown WASM instance options: {sorted(options)}")
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
        channel = await open_memory_channel(iid, module, config)
        instance = WasmRuntimeInstance(iid, channel, module)
        self._instances[iid] = instance
        return instance

    async def _module_for(self, artifact: str | Path | bytes | WasmModule,
                          memory_limit: int | None, fuel: int | None) -> WasmModule:
        if isinstance(artifact, WasmModule):
            return artifact
        key_source = (artifact if isinstance(artifact, bytes)
                      else str(Path(artifact).resolve()).encode())
        key = (hashlib.sha256(key_source).hexdigest(), memory_limit, fuel)
        module = self._modules.get(key)
        if module is None:
            module = await asyncio.to_thread(
                WasmModule.load, artifact, memory_limit=memory_limit, fuel=fuel)
            self._modules[key] = module
        return module

    async def stop_instance(self, instance: RuntimeInstance) -> None:
        self._instances.pop(instance.instance_id, None)
        await instance.channel.close()

    def instances(self) -> list[RuntimeInstance]:
        return list(self._instances.values())
