"""What a caller may ask of one invocation, checked the same way by both front doors.

Every value a client sends (a timeout, metadata) is checked here before any capacity is
taken: a timeout must be a finite number of seconds in (0, MAX_TIMEOUT_S] (NaN, infinity and
1e300 are refused, not turned into a deadline that never comes); metadata is bounded in count
and bytes and free of control characters. Durations in messages go through `format_seconds`,
never as raw floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from spear.invocation.errors import InvalidRequest

# The longest timeout a request may ask for: one day. Beyond that a "timeout" is a mistake.
MAX_TIMEOUT_S = 86_400.0
MAX_METADATA_ENTRIES = 64
MAX_METADATA_BYTES = 16 * 1024  # keys and values together


def format_seconds(seconds: float) -> str:
    """`0.2 s`, `1.5 ms`, `30 s`: a duration for people, never `0.19999999999 s`."""
    if not math.isfinite(seconds):
        return str(seconds)
    if 0 < abs(seconds) < 1.0:
        millis = seconds * 1000.0
        return f"{millis:.3g} ms" if millis < 1.0 else f"{round(millis, 1):g} ms"
    return f"{round(seconds, 3):g} s"


def describe_bad_timeout(value: object) -> str:
    shown = value if isinstance(value, str) else repr(value)
    if isinstance(shown, str) and len(shown) > 40:
        shown = shown[:40] + "..."
    return (f"timeout must be a number of seconds greater than 0 and at most "
            f"{MAX_TIMEOUT_S:g}, got {shown}")


def check_timeout(value: float) -> float:
    """`value` if it is a usable timeout in seconds, else `InvalidRequest`."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0.0 < value <= MAX_TIMEOUT_S:  # NaN fails the comparison too
        raise InvalidRequest(describe_bad_timeout(value))
    return float(value)


def parse_timeout(text: str) -> float:
    """A timeout from a query string (`?timeout=2.5`)."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(describe_bad_timeout(text)) from None
    if not math.isfinite(value):
        raise InvalidRequest(describe_bad_timeout(text))
    return check_timeout(value)


def check_metadata(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Request metadata as a dict, refused when too many, too big, or with control
    characters (which would otherwise travel into logs and guest code)."""
    metadata: dict[str, str] = {}
    size = 0
    for key, value in items:
        if not key:
            raise InvalidRequest("metadata keys must not be empty")
        if _has_control(key) or _has_control(value):
            raise InvalidRequest(f"metadata {key[:40]!r} contains control characters")
        size += len(key) + len(value)
        metadata[key] = value
        if len(metadata) > MAX_METADATA_ENTRIES:
            raise InvalidRequest(f"at most {MAX_METADATA_ENTRIES} metadata entries are allowed")
        if size > MAX_METADATA_BYTES:
            raise InvalidRequest(f"metadata exceeds {MAX_METADATA_BYTES} bytes")
    return metadata


def _has_control(text: str) -> bool:
    return any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in text)
