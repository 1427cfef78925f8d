"""The msgpack codec: every message round-trips, and decoding refuses anything malformed."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from spear import codec
from spear.errors import InvalidMessage
from spear.messages import (
    Ack,
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    Handshake,
    HealthCheck,
    HealthResponse,
    Shutdown,
)

text = st.text(max_size=40)
int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
text_map = st.dictionaries(text, text, max_size=5)

messages = st.one_of(
    st.builds(ExecutionRequest, text, text, st.binary(max_size=256), int64, text_map),
    st.builds(ExecutionResponse, text, st.binary(max_size=256), st.sampled_from(ExecutionStatus),
              st.none() | text, st.none() | text, finite, text_map),
    st.builds(HealthCheck, text),
    st.builds(HealthResponse, text, text, st.dictionaries(text, finite, max_size=5)),
    st.builds(Ack, text),
    st.builds(Shutdown, st.booleans(), int64),
    st.builds(Error, text, text, text),
    st.builds(Cancel, text),
    st.builds(Handshake, text, text, int64),
)


@given(messages)
def test_every_message_round_trips(message: object) -> None:
    assert codec.decode(codec.encode(message)) == message  # type: ignore[arg-type]


@given(messages)
def test_decode_accepts_any_buffer_type(message: object) -> None:
    data = codec.encode(message)  # type: ignore[arg-type]
    assert codec.decode(memoryview(data)) == codec.decode(bytearray(data)) == message


def test_every_tag_has_a_round_trip_case() -> None:
    samples = [
        ExecutionRequest("r", "f", b"in", 5, {"k": "v"}),
        ExecutionResponse("r", b"out", ExecutionStatus.TIMEOUT, "late", "timeout", 1.5, {}),
        HealthCheck("h"), HealthResponse("h", "serving", {"load": 0.5}), Ack("a"),
        Shutdown(False, 10), Error("e", "bad", "code"), Cancel("c"), Handshake("i", "t", 1),
    ]
    tags = {msgpack.unpackb(codec.encode(m))[1] for m in samples}
    assert tags == set(codec.MESSAGE_TAGS)
    for message in samples:
        assert codec.decode(codec.encode(message)) == message


def test_handshake_token_is_not_in_its_repr() -> None:
    assert "s3cret" not in repr(Handshake("worker-1", "s3cret"))


def _packed(*values: object) -> bytes:
    return msgpack.packb(list(values), use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (_packed(1, "exec", "r", "f", "not-bytes", 0, {}), "input_data"),
        (_packed(1, "exec", 7, "f", b"", 0, {}), "request_id"),
        (_packed(1, "exec", "r", "f", b"", 1.5, {}), "timeout_ms"),
        (_packed(1, "exec", "r", "f", b"", 0, {"k": 1}), "metadata"),
        (_packed(1, "exec", "r", "f", b"", True, {}), "timeout_ms"),
        (_packed(1, "exec", "r", "f", b"", 0, []), "metadata"),
        (_packed(1, "result", "r", b"", "success", None, None, "1.5", {}), "execution_time_ms"),
        (_packed(1, "result", "r", b"", "success", None, None, 1.5, {"k": b"v"}), "metadata"),
        (_packed(1, "result", "r", b"", "sideways", None, None, 0.0, {}), "status"),
        (_packed(1, "result", "r", b"", "success", 3, None, 0.0, {}), "error_message"),
        (_packed(1, "health_ok", "h", "serving", {"x": "high"}), "metrics"),
        (_packed(1, "shutdown", 1, 10), "graceful"),
        (_packed(1, "hello", "i", b"token", 1), "token"),
    ],
)
def test_wrong_field_types_are_named(data: bytes, complaint: str) -> None:
    with pytest.raises(InvalidMessage, match=complaint):
        codec.decode(data)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (_packed(1, "teleport", "x"), "unknown message type"),
        (_packed(1, "ack"), "needs 1 fields, got 0"),
        (_packed(1, "ack", "a", "extra"), "needs 1 fields, got 2"),
        (_packed(2, "ack", "a"), "unsupported message version"),
        (_packed(True, "ack", "a"), "unsupported message version"),
        (_packed(1, 5, "a"), "tag must be a string"),
        (_packed(1), "array"),
        (msgpack.packb({"tag": "ack"}), "array"),
        (codec.encode(Ack("a")) + b"\x00", "trailing bytes"),
        (b"\xc1\xc1\xc1", "not a msgpack message"),
        (b"", "not a msgpack message"),
        (b"\x95\x01", "not a msgpack message"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, complaint: str) -> None:
    with pytest.raises(InvalidMessage, match=complaint):
        codec.decode(data)


@given(st.binary(max_size=64))
def test_garbage_never_escapes_as_anything_but_invalid_message(data: bytes) -> None:
    with contextlib.suppress(InvalidMessage):
        codec.decode(data)


def test_encode_refuses_what_is_not_a_message() -> None:
    with pytest.raises(InvalidMessage):
        codec.encode("hello")  # type: ignore[arg-type]
