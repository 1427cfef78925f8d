"""Which channel types a runtime speaks, in order of preference (the seed's strategy).

A strategy is data, not behaviour: the factory walks `channel_order` and dials each type with
the connector registered for it until one connects. Strategies are immutable so a factory can
hand them out without copying; build variations with `CommunicationStrategyBuilder`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from spear.config import ChannelConfig
from spear.errors import InvalidConfiguration
from spear.instance_id import RuntimeType


@dataclass(frozen=True, slots=True)
class CommunicationStrategy:
    """Preferred channel type first, then fallbacks tried in order when connecting fails."""

    runtime_type: RuntimeType
    preferred_channel: str
    fallback_channels: tuple[str, ...] = ()
    default_config: ChannelConfig = field(default_factory=ChannelConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.runtime_type, RuntimeType):
            raise InvalidConfiguration(
                f"strategy runtime_type must be a RuntimeType, got {self.runtime_type!r}"
            )
        if not self.preferred_channel:
            raise InvalidConfiguration("strategy needs a preferred channel type")
        # Accept any iterable (a list reads naturally at call sites) but store a tuple.
        fallbacks = tuple(self.fallback_channels)
        object.__setattr__(self, "fallback_channels", fallbacks)
        order = (self.preferred_channel, *fallbacks)
        if len(set(order)) != len(order):
            raise InvalidConfiguration(f"strategy names a channel type twice: {list(order)}")

    @property
    def channel_order(self) -> tuple[str, ...]:
        return (self.preferred_channel, *self.fallback_channels)

    def supports(self, channel_type: str) -> bool:
        return channel_type in self.channel_order


class CommunicationStrategyBuilder:
    """Fluent construction that refuses a strategy missing its runtime type or preferred channel.

    >>> (CommunicationStrategyBuilder().runtime(RuntimeType.PROCESS)
    ...     .prefer("unix").fallback("tcp").build()).channel_order
    ('unix', 'tcp')
    """

    def __init__(self, base: CommunicationStrategy | None = None) -> None:
        self._runtime_type: RuntimeType | None = base.runtime_type if base else None
        self._preferred: str | None = base.preferred_channel if base else None
        self._fallbacks: list[str] = list(base.fallback_channels) if base else []
        self._config: ChannelConfig = base.default_config if base else ChannelConfig()

    def runtime(self, runtime_type: RuntimeType) -> CommunicationStrategyBuilder:
        self._runtime_type = runtime_type
        return self

    def prefer(self, channel_type: str) -> CommunicationStrategyBuilder:
        self._preferred = channel_type
        return self

    def fallback(self, *channel_types: str) -> CommunicationStrategyBuilder:
        self._fallbacks.extend(channel_types)
        return self

    def fallbacks(self, channel_types: Iterable[str]) -> CommunicationStrategyBuilder:
        """Replace the fallback list."""
        self._fallbacks = list(channel_types)
        return self

    def config(self, config: ChannelConfig) -> CommunicationStrategyBuilder:
        self._config = config
        return self

    def build(self) -> CommunicationStrategy:
        if self._runtime_type is None:
            raise InvalidConfiguration("a communication strategy needs a runtime type")
        if not self._preferred:
            raise InvalidConfiguration(
                f"a communication strategy for {self._runtime_type} needs a preferred channel"
            )
        return CommunicationStrategy(
            self._runtime_type, self._preferred, tuple(self._fallbacks), self._config
        )


def default_strategies() -> dict[RuntimeType, CommunicationStrategy]:
    """The seed's strategies: Process unix then tcp, Kubernetes grpc then tcp, WASM memory."""
    return {
        RuntimeType.PROCESS: CommunicationStrategy(RuntimeType.PROCESS, "unix", ("tcp",)),
        RuntimeType.KUBERNETES: CommunicationStrategy(RuntimeType.KUBERNETES, "grpc", ("tcp",)),
        RuntimeType.WASM: CommunicationStrategy(RuntimeType.WASM, "memory"),
    }
