"""What a channel declares about itself, so callers never guess from class names or probe
with `getattr`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChannelCapabilities:
    # The transport underneath: "unix", "tcp", "grpc" or "memory" (metrics label it so).
    transport: str
    # `add_close_callback` / `wait_closed` tell when the channel closes, without polling.
    notifies_close: bool = False
    # The channel redials by itself after its peer goes away (`wait_connected` waits for it);
    # a channel that does not is finished once closed.
    reconnects: bool = False
