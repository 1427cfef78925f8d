"""What every runtime offers: start and stop instances, each with its own channel."""

from __future__ import annotations

import abc
from typing import Any

from spear.channel.base import CommunicationChannel
from spear.instance_id import RuntimeInstanceId, RuntimeType


class RuntimeInstance:
    """A running instance: its identity and the channel to talk to it."""

    def __init__(self, instance_id: RuntimeInstanceId, channel: CommunicationChannel) -> None:
        self.instance_id = instance_id
        self.channel = channel

    @property
    def alive(self) -> bool:
        return self.channel.connected

    @property
    def recovers(self) -> bool:
        """True when a lost connection comes back by itself: the channel redials (a pod that
        restarts), or the runtime restarts the instance (a process with a restart policy)."""
        return self.channel.capabilities.reconnects

    async def wait_ready(self, timeout: float | None = None) -> CommunicationChannel:
        """The connected channel, once it is (at once if it is now); `ChannelClosed` when
        it will not be."""
        await self.channel.wait_connected(timeout)
        return self.channel

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.instance_id.full_id}>"


class Runtime(abc.ABC):
    """A kind of place where functions run (WASM in-process, child processes, pods)."""

    runtime_type: RuntimeType

    @abc.abstractmethod
    async def start_instance(
        self, instance_id: RuntimeInstanceId | str, **options: Any
    ) -> RuntimeInstance: ...

    @abc.abstractmethod
    async def stop_instance(self, instance: RuntimeInstance) -> None: ...

    @abc.abstractmethod
    def instances(self) -> list[RuntimeInstance]: ...

    async def close(self) -> None:
        """Stop every instance this runtime started."""
        for instance in list(self.instances()):
            await self.stop_instance(instance)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _coerce_id(self, instance_id: RuntimeInstanceId | str) -> RuntimeInstanceId:
        if isinstance(instance_id, str):
            return RuntimeInstanceId(self.runtime_type, instance_id)
        if instance_id.runtime_type is not self.runtime_type:
            raise ValueError(
                f"{type(self).__name__} runs {self.runtime_type} instances, "
                f"not {instance_id.runtime_type}"
            )
        return instance_id
