"""The channel interface every runtime speaks (the seed's `CommunicationChannel`)."""

from __future__ import annotations

import abc

from spear.channel.capabilities import ChannelCapabilities
from spear.errors import ChannelClosed
from spear.instance_id import RuntimeInstanceId
from spear.protocol.messages import RuntimeMessage
from spear.stats import ChannelStats

# What a channel that declares nothing is: in-process, no close notification, no redial (the
# WASM memory channel).
IN_PROCESS = ChannelCapabilities("memory")


class CommunicationChannel(abc.ABC):
    """One live, bidirectional channel to one runtime instance.

    `request_response` correlates by `request_id` and allows many requests in flight;
    `send`/`receive` carry unsolicited messages in each direction. `timeout=None` means the
    channel's configured `request_timeout_ms`. `capabilities` says what else it offers.
    """

    @property
    def capabilities(self) -> ChannelCapabilities:
        return IN_PROCESS

    @property
    @abc.abstractmethod
    def instance_id(self) -> RuntimeInstanceId: ...

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Synchronous view of `is_connected()`, for pools that check many channels."""

    @abc.abstractmethod
    async def send(self, message: RuntimeMessage) -> None: ...

    @abc.abstractmethod
    async def receive(self) -> RuntimeMessage: ...

    @abc.abstractmethod
    async def request_response(
        self, request: RuntimeMessage, timeout: float | None = None
    ) -> RuntimeMessage: ...

    async def is_connected(self) -> bool:
        return self.connected

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected. A channel that does not reconnect (see `capabilities`)
        raises `ChannelClosed` when it is closed; one that does waits for its next
        connection."""
        if not self.connected:
            raise ChannelClosed(f"channel to {self.instance_id.full_id} is closed")

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def get_stats(self) -> ChannelStats: ...

    async def __aenter__(self) -> CommunicationChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
