"""`CommunicationFactory`: picks a channel type by runtime strategy, connects it, pools the
result. It is the one path to a connected channel: the Kubernetes runtime dials pods through
it and the process runtime accepts its workers through it.

Creation walks the runtime's strategy (preferred type, then fallbacks). A fallback happens when
*connecting* fails, not only when a channel object cannot be built: each attempt either
resolves its own address and dials within `connect_timeout_ms`, or, given
`accept=Invitation(...)`, listens on a fresh private endpoint and accepts the peer it invites
(see `spear.channel.connectors` and `spear.channel.rendezvous`); either way it must hand back
a connected channel. When every attempt fails, `ChannelCreationFailed` carries each attempted
type with its cause.

The pool is keyed by `RuntimeInstanceId`. `get_or_create_channel` hands back a live channel
when the instance has one, drops (and closes) dead ones it finds, and dials a new one only
when none is live. At most `max_channels_per_instance` live channels are kept per instance.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from spear.channel.base import CommunicationChannel
from spear.channel.connectors import get_connector
from spear.channel.strategy import CommunicationStrategy, default_strategies
from spear.config import ChannelConfig
from spear.errors import (
    ChannelCreationFailed,
    CommunicationError,
    ConnectionFailed,
    InvalidConfiguration,
    Timeout,
    UnsupportedChannel,
    UnsupportedRuntime,
)
from spear.instance_id import RuntimeInstanceId, RuntimeType

log = logging.getLogger("spear.channel.factory")


class ChannelLimitReached(CommunicationError):
    """The instance already has `max_channels_per_instance` live channels in the pool."""


class CommunicationFactory:
    """Creates channels by runtime strategy and keeps a per-instance pool of them.

    Dial options (`token=`, `ssl=`, `tls=`, `artifact=`) are passed to each transport that
    understands them, so one call can carry what every fallback needs. `accept=` (an
    `Invitation`) makes every attempt listen and accept instead of dial.
    """

    def __init__(
        self,
        strategies: dict[RuntimeType, CommunicationStrategy] | None = None,
        *,
        max_channels_per_instance: int = 1,
    ) -> None:
        if max_channels_per_instance < 1:
            raise InvalidConfiguration(
                f"max_channels_per_instance must be >= 1, got {max_channels_per_instance}"
            )
        self._strategies = dict(default_strategies() if strategies is None else strategies)
        self.max_channels_per_instance = max_channels_per_instance
        self._pool: dict[RuntimeInstanceId, list[CommunicationChannel]] = {}
        self._turn: dict[RuntimeInstanceId, int] = {}
        self._locks: dict[RuntimeInstanceId, asyncio.Lock] = {}
        self._anonymous = itertools.count(1)

    # -- strategies ---------------------------------------------------------------------

    def register_strategy(self, strategy: CommunicationStrategy) -> None:
        """Add or replace the strategy for `strategy.runtime_type`."""
        self._strategies[strategy.runtime_type] = strategy

    def get_strategy(self, runtime_type: RuntimeType) -> CommunicationStrategy:
        strategy = self._strategies.get(runtime_type)
        if strategy is None:
            raise UnsupportedRuntime(f"no communication strategy for runtime {runtime_type}")
        return strategy

    def is_channel_supported(self, runtime_type: RuntimeType, channel_type: str) -> bool:
        strategy = self._strategies.get(runtime_type)
        return strategy is not None and strategy.supports(channel_type)

    def supported_runtimes(self) -> list[RuntimeType]:
        return list(self._strategies)

    # -- creation -----------------------------------------------------------------------

    async def create_channel(
        self, runtime_type: RuntimeType, config: ChannelConfig | None = None, **options: Any
    ) -> CommunicationChannel:
        """A channel for an instance with no name of its own (`anonymous-N`); pooled too."""
        instance_id = RuntimeInstanceId(runtime_type, f"anonymous-{next(self._anonymous)}")
        return await self.create_channel_for_instance(instance_id, config, **options)

    async def create_channel_for_instance(
        self, instance_id: RuntimeInstanceId, config: ChannelConfig | None = None,
        **options: Any,
    ) -> CommunicationChannel:
        """Dial a new channel to `instance_id` and add it to the pool.

        Raises `ChannelLimitReached` when the instance already has the maximum of live
        channels, `ChannelCreationFailed` when every allowed channel type failed.
        """
        async with self._lock(instance_id):
            live = await self._prune(instance_id)
            if len(live) >= self.max_channels_per_instance:
                raise ChannelLimitReached(
                    f"{instance_id.full_id} already has {len(live)} live channel(s); the "
                    f"maximum per instance is {self.max_channels_per_instance}"
                )
            channel = await self._dial(instance_id, config, options)
            self._pool.setdefault(instance_id, []).append(channel)
            return channel

    async def get_or_create_channel(
        self, instance_id: RuntimeInstanceId, config: ChannelConfig | None = None,
        **options: Any,
    ) -> CommunicationChannel:
        """The instance's live pooled channel (rotating when there are several), else a new one.

        `config` and options are used only when a channel has to be dialled.
        """
        channels = self._pool.get(instance_id)
        if channels and len(channels) == 1 and channels[0].connected:
            return channels[0]  # the common case: no lock, no await
        async with self._lock(instance_id):
            live = await self._prune(instance_id)
            if live:
                turn = self._turn.get(instance_id, 0)
                self._turn[instance_id] = turn + 1
                return live[turn % len(live)]
            channel = await self._dial(instance_id, config, options)
            self._pool[instance_id] = [channel]
            return channel

    # -- pool management ----------------------------------------------------------------

    def pooled_channels(self, instance_id: RuntimeInstanceId) -> list[CommunicationChannel]:
        return list(self._pool.get(instance_id, ()))

    def pooled_instances(self) -> list[RuntimeInstanceId]:
        return list(self._pool)

    async def close_channel(self, instance_id: RuntimeInstanceId) -> int:
        """Close and forget every pooled channel of `instance_id`; returns how many."""
        channels = self._pool.pop(instance_id, [])
        self._turn.pop(instance_id, None)
        self._locks.pop(instance_id, None)
        await _close_quietly(channels)
        return len(channels)

    async def close_all_channels(self) -> int:
        pool, self._pool = self._pool, {}
        self._turn.clear()
        self._locks.clear()
        channels = [channel for group in pool.values() for channel in group]
        await _close_quietly(channels)
        return len(channels)

    async def __aenter__(self) -> CommunicationFactory:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all_channels()

    # -- internals ----------------------------------------------------------------------

    def _lock(self, instance_id: RuntimeInstanceId) -> asyncio.Lock:
        lock = self._locks.get(instance_id)
        if lock is None:
            lock = self._locks[instance_id] = asyncio.Lock()
        return lock

    async def _prune(self, instance_id: RuntimeInstanceId) -> list[CommunicationChannel]:
        """Evict dead channels of `instance_id` (closing them); return the live ones."""
        channels = self._pool.get(instance_id, [])
        live = [channel for channel in channels if channel.connected]
        dead = [channel for channel in channels if not channel.connected]
        if dead:
            log.info("evicting %d dead channel(s)", len(dead),
                     extra={"instance_id": instance_id.full_id})
            await _close_quietly(dead)
        if live:
            self._pool[instance_id] = live
        else:
            self._pool.pop(instance_id, None)
        return live

    async def _dial(
        self, instance_id: RuntimeInstanceId, config: ChannelConfig | None,
        options: dict[str, Any],
    ) -> CommunicationChannel:
        strategy = self.get_strategy(instance_id.runtime_type)
        config = config if config is not None else strategy.default_config
        if config.channel_type is not None:
            if not strategy.supports(config.channel_type):
                raise UnsupportedChannel(
                    f"{instance_id.runtime_type} instances do not speak {config.channel_type!r}"
                    f" (strategy: {list(strategy.channel_order)})"
                )
            order: tuple[str, ...] = (config.channel_type,)
        else:
            order = strategy.channel_order
        attempted: list[str] = []
        causes: list[BaseException] = []
        used: list[str] = []
        for channel_type in order:
            attempted.append(channel_type)
            try:
                channel = await self._attempt(channel_type, instance_id, config, options, used)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                causes.append(exc)
                log.info(
                    "channel attempt failed: %s: %s", channel_type, exc,
                    extra={"instance_id": instance_id.full_id, "channel_type": channel_type},
                )
                continue
            if attempted[:-1]:
                log.warning(
                    "connected by fallback %s after %s", channel_type, attempted[:-1],
                    extra={"instance_id": instance_id.full_id, "channel_type": channel_type},
                )
            return channel
        raise ChannelCreationFailed(instance_id.runtime_type, attempted, causes) from (
            causes[-1] if causes else None
        )

    async def _attempt(
        self, channel_type: str, instance_id: RuntimeInstanceId, config: ChannelConfig,
        options: dict[str, Any], used: list[str],
    ) -> CommunicationChannel:
        connector = get_connector(channel_type)
        invitation = options.get("accept")
        if invitation is not None:
            # The connector bounds the wait for the invited peer by the connect timeout.
            channel = await connector.accept(instance_id, config, invitation)
            if not channel.connected:
                await _close_quietly([channel])
                raise ConnectionFailed(f"{channel_type} channel accepted but not connected")
            return channel
        address: str | bytes | None = None
        if connector.address_option is not None:
            address = options.get(connector.address_option)
        if address is None:
            address = connector.resolve_address(instance_id, config, used)
            used.append(address)
        timeout = config.connect_timeout if config.connect_timeout_ms > 0 else None
        shown = address if isinstance(address, str) else f"<{len(address)} bytes>"
        try:
            async with asyncio.timeout(timeout):
                channel = await connector.dial(instance_id, address, config, options)
        except TimeoutError as exc:
            if isinstance(exc, Timeout):
                raise
            raise Timeout(
                f"connecting {channel_type} to {shown} took longer than "
                f"{config.connect_timeout_ms} ms"
            ) from exc
        if not channel.connected:
            await _close_quietly([channel])
            raise ConnectionFailed(f"{channel_type} channel to {shown} is not connected")
        return channel


async def _close_quietly(channels: list[CommunicationChannel]) -> None:
    for channel in channels:
        try:
            await channel.close()
        except Exception as exc:  # closing a broken channel may fail; it is gone either way
            log.debug("closing channel failed: %s", exc)
