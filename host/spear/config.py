"""Channel configuration (the seed's `ChannelConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from spear.errors import InvalidConfiguration
from spear.protocol.limits import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "ChannelConfig"]


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """How to reach and talk to one instance.

    `channel_type=None` means "follow the runtime's strategy" (preferred, then fallbacks).
    """

    channel_type: str | None = None
    address: str | None = None
    connect_timeout_ms: int = 5000
    request_timeout_ms: int = 30000
    keepalive_interval_ms: int = 10000
    max_retries: int = 3
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("connect_timeout_ms", "request_timeout_ms", "keepalive_interval_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InvalidConfiguration(f"{name} must be a non-negative int, got {value!r}")
        if self.max_retries < 0:
            raise InvalidConfiguration(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_message_size <= 0:
            raise InvalidConfiguration(
                f"max_message_size must be positive, got {self.max_message_size}"
            )

    @property
    def request_timeout(self) -> float:
        return self.request_timeout_ms / 1000.0

    @property
    def connect_timeout(self) -> float:
        return self.connect_timeout_ms / 1000.0

    def with_changes(self, **changes: object) -> ChannelConfig:
        return replace(self, **changes)  # type: ignore[arg-type]
