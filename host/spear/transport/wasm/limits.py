"""Everything a guest can make the host hold or wait for, bounded; the defaults live here.

docs/wasm-abi.md ("Limits and defaults") lists the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from spear.errors import InvalidConfiguration

KiB = 1024
MiB = 1024 * KiB

DEFAULT_MEMORY_LIMIT = 64 * MiB  # linear memory per instance (per module: `memory_limit=`)
MAX_MEMORY_LIMIT = 4 * 1024 * MiB  # a 32-bit memory cannot exceed it
DEFAULT_MAX_MESSAGE = 64 * MiB  # request, `spear.send` message, queued message
SETUP_TIMEOUT = 5.0  # seconds: start function + _initialize + spear_init of a new instance
DEFAULT_LOOP_BUDGET = 0.005  # seconds guest code may hold the event loop (channel calls)
MAX_TIMEOUT = 365 * 24 * 3600.0  # the longest timeout a call accepts, in seconds


@dataclass(frozen=True, slots=True)
class GuestLimits:
    """Per-instance bounds on what a guest can make the host hold (beyond its memory).

    - `table_elements`, `tables`, `memories`: wasmtime's store limits (a `table.grow` past them
      returns -1, a module declaring more fails to instantiate).
    - `outbox_messages`, `outbox_bytes`: messages the guest sent (`spear.send`) that the host
      has not taken yet, across calls; beyond them `send` returns -2 (back-pressure).
    - `inbox_messages`, `inbox_bytes`: messages queued for the guest (`spear.recv`).
    - `log_records_per_s`, `log_burst_records`, `log_bytes_per_s`, `log_burst_bytes`: a token
      bucket over `spear.log` records and WASI stderr lines; what exceeds it is dropped and
      counted.
    """

    table_elements: int = 65_536
    tables: int = 16
    memories: int = 1
    outbox_messages: int = 1024
    outbox_bytes: int = 64 * MiB
    inbox_messages: int = 1024
    inbox_bytes: int = 64 * MiB
    log_records_per_s: float = 100.0
    log_burst_records: int = 200
    log_bytes_per_s: float = 64 * KiB
    log_burst_bytes: int = 256 * KiB

    def __post_init__(self) -> None:
        for name in ("table_elements", "tables", "memories", "outbox_messages", "outbox_bytes",
                     "inbox_messages", "inbox_bytes", "log_burst_records", "log_burst_bytes"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidConfiguration(f"limits.{name} must be a positive int, got {value!r}")
        for name in ("log_records_per_s", "log_bytes_per_s"):
            value = getattr(self, name)
            if (type(value) not in (int, float) or not 0 <= value < float("inf")):
                raise InvalidConfiguration(
                    f"limits.{name} must be a finite number >= 0, got {value!r}")


DEFAULT_LIMITS = GuestLimits()
