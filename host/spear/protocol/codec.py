"""The msgpack codec for runtime messages, strict on decode.

Wire form: a msgpack array `[version, tag, field, ...]` with fields in declaration order.
Arrays (not maps) keep frames small and decoding fast; `docs/wire-protocol.md` lists the
layout of every tag. Decoding never trusts the peer: every field's type is checked and any
problem raises `InvalidMessage` naming the tag and field.

The functions every message goes through (`decode`, `request_frame`, `success_frame`) have a
C hot path (`native/wire.c`, built with the package) for the plain shapes of the two messages
on every request's path; it hands everything else to the pure-Python code here, so both
agree on every input. Without the C helper (or with `SPEAR_NO_NATIVE=1`) the pure-Python
functions do everything.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from spear.errors import InvalidMessage
from spear.protocol.framing import HEADER
from spear.protocol.messages import (
    Ack,
    Cancel,
    Error,
    ExecutionRequest,
    ExecutionResponse,
    ExecutionStatus,
    Handshake,
    HealthCheck,
    HealthResponse,
    RuntimeMessage,
    Shutdown,
)
from spear.protocol.wire_native import load_wire

log = logging.getLogger("spear.protocol")

CODEC_VERSION = 1

_STATUS_BY_VALUE = {status.value: status for status in ExecutionStatus}
_SUCCESS = ExecutionStatus.SUCCESS
_ERROR = ExecutionStatus.ERROR
# One packer for the process: `pack` holds the GIL for its whole call, so threads share it
# safely, and it saves building a Packer per message (what `msgpack.packb` does).
_pack = msgpack.Packer(use_bin_type=True).pack
# msgpack's defaults are the strict ones we want (raw=False, strict_map_key=True,
# use_list=True); passing them again costs a keyword parse per message.
_unpackb = msgpack.unpackb
_pack_header = HEADER.pack


def _status_value(status: ExecutionStatus) -> str:
    # Identity tests: an Enum member's `.value` is a Python-level descriptor.
    if status is _SUCCESS:
        return "success"
    if status is _ERROR:
        return "error"
    return str(status.value)


def _fields(message: RuntimeMessage) -> list[Any]:
    cls = type(message)
    if cls is ExecutionRequest:
        return [
            CODEC_VERSION, "exec", message.request_id, message.function_name,  # type: ignore[union-attr]
            message.input_data, message.timeout_ms, message.metadata,  # type: ignore[union-attr]
        ]
    if cls is ExecutionResponse:
        return [
            CODEC_VERSION, "result", message.request_id, message.output_data,  # type: ignore[union-attr]
            _status_value(message.status), message.error_message,  # type: ignore[union-attr,arg-type]
            message.error_code, float(message.execution_time_ms),  # type: ignore[union-attr]
            message.metadata,  # type: ignore[union-attr]
        ]
    if cls is HealthCheck:
        return [CODEC_VERSION, "health", message.request_id]  # type: ignore[union-attr]
    if cls is HealthResponse:
        return [CODEC_VERSION, "health_ok", message.request_id, message.status,  # type: ignore[union-attr]
                message.metrics]  # type: ignore[union-attr]
    if cls is Ack:
        return [CODEC_VERSION, "ack", message.request_id]  # type: ignore[union-attr]
    if cls is Shutdown:
        return [CODEC_VERSION, "shutdown", message.graceful, message.timeout_ms]  # type: ignore[union-attr]
    if cls is Error:
        return [CODEC_VERSION, "error", message.request_id, message.message,  # type: ignore[union-attr]
                message.code]  # type: ignore[union-attr]
    if cls is Cancel:
        return [CODEC_VERSION, "cancel", message.request_id]  # type: ignore[union-attr]
    if cls is Handshake:
        return [CODEC_VERSION, "hello", message.instance_id, message.token,  # type: ignore[union-attr]
                message.protocol_version]  # type: ignore[union-attr]
    raise InvalidMessage(f"cannot encode {cls.__name__}: not a RuntimeMessage")


def encode_request(request: ExecutionRequest) -> bytes:
    """`encode` for the message every request sends, one call shorter."""
    try:
        packed: bytes = _pack([CODEC_VERSION, "exec", request.request_id, request.function_name,
                               request.input_data, request.timeout_ms, request.metadata])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(f"cannot encode 'exec' message: {exc}") from exc
    return packed


def _request_frame(request: ExecutionRequest) -> bytes:
    """`encode_request`, framed: the bytes the host writes for every request."""
    packed = encode_request(request)
    return _pack_header(len(packed)) + packed


def encode_success(request_id: str, output: bytes, elapsed_ms: float) -> bytes:
    """The payload of a successful `ExecutionResponse` without building one (the worker's
    answer to every request that went well)."""
    packed: bytes = _pack([CODEC_VERSION, "result", request_id, output, "success", None, None,
                           elapsed_ms, {}])
    return packed


def _success_frame(request_id: str, output: bytes, elapsed_ms: float) -> bytes:
    """`encode_success`, framed: the bytes a worker writes for a request that went well."""
    packed: bytes = _pack([CODEC_VERSION, "result", request_id, output, "success", None, None,
                           elapsed_ms, {}])
    return _pack_header(len(packed)) + packed


def encode(message: RuntimeMessage) -> bytes:
    """Encode one message to bytes (no framing)."""
    fields = _fields(message)
    try:
        packed: bytes = _pack(fields)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(f"cannot encode {fields[1]!r} message: {exc}") from exc
    return packed


class _Fields:
    """Checked access to the fields of one decoded message."""

    __slots__ = ("_tag", "_values")

    def __init__(self, tag: str, values: list[Any]) -> None:
        self._tag = tag
        self._values = values

    def _bad(self, index: int, name: str, expected: str) -> InvalidMessage:
        got = type(self._values[index]).__name__
        return InvalidMessage(
            f"{self._tag!r} message: field {name!r} must be {expected}, got {got}"
        )

    def text(self, index: int, name: str) -> str:
        value = self._values[index]
        if type(value) is not str:
            raise self._bad(index, name, "a string")
        return value

    def opt_text(self, index: int, name: str) -> str | None:
        value = self._values[index]
        if value is not None and type(value) is not str:
            raise self._bad(index, name, "a string or nil")
        return value

    def binary(self, index: int, name: str) -> bytes:
        value = self._values[index]
        if type(value) is not bytes:
            raise self._bad(index, name, "binary")
        return value

    def integer(self, index: int, name: str) -> int:
        value = self._values[index]
        if type(value) is not int:
            raise self._bad(index, name, "an integer")
        return value

    def boolean(self, index: int, name: str) -> bool:
        value = self._values[index]
        if type(value) is not bool:
            raise self._bad(index, name, "a boolean")
        return value

    def number(self, index: int, name: str) -> float:
        value = self._values[index]
        if type(value) not in (int, float):
            raise self._bad(index, name, "a number")
        return float(value)

    def text_map(self, index: int, name: str) -> dict[str, str]:
        value = self._values[index]
        if type(value) is not dict or not all(
            type(k) is str and type(v) is str for k, v in value.items()
        ):
            raise self._bad(index, name, "a map of string to string")
        return value

    def number_map(self, index: int, name: str) -> dict[str, float]:
        value = self._values[index]
        if type(value) is not dict or not all(
            type(k) is str and type(v) in (int, float) for k, v in value.items()
        ):
            raise self._bad(index, name, "a map of string to number")
        return {k: float(v) for k, v in value.items()}


def _status(fields: _Fields, index: int) -> ExecutionStatus:
    value = fields.text(index, "status")
    status = _STATUS_BY_VALUE.get(value)
    if status is None:
        raise InvalidMessage(f"'result' message: unknown status {value!r}")
    return status


_DECODERS: dict[str, tuple[int, Callable[[_Fields], RuntimeMessage]]] = {
    "exec": (5, lambda f: ExecutionRequest(
        f.text(0, "request_id"), f.text(1, "function_name"), f.binary(2, "input_data"),
        f.integer(3, "timeout_ms"), f.text_map(4, "metadata"))),
    "result": (7, lambda f: ExecutionResponse(
        f.text(0, "request_id"), f.binary(1, "output_data"), _status(f, 2),
        f.opt_text(3, "error_message"), f.opt_text(4, "error_code"),
        f.number(5, "execution_time_ms"), f.text_map(6, "metadata"))),
    "health": (1, lambda f: HealthCheck(f.text(0, "request_id"))),
    "health_ok": (3, lambda f: HealthResponse(
        f.text(0, "request_id"), f.text(1, "status"), f.number_map(2, "metrics"))),
    "ack": (1, lambda f: Ack(f.text(0, "request_id"))),
    "shutdown": (2, lambda f: Shutdown(f.boolean(0, "graceful"), f.integer(1, "timeout_ms"))),
    "error": (3, lambda f: Error(f.text(0, "request_id"), f.text(1, "message"), f.text(2, "code"))),
    "cancel": (1, lambda f: Cancel(f.text(0, "request_id"))),
    "hello": (3, lambda f: Handshake(
        f.text(0, "instance_id"), f.text(1, "token"), f.integer(2, "protocol_version"))),
}

MESSAGE_TAGS = tuple(_DECODERS)


def _is_text_map(value: Any) -> bool:
    return type(value) is dict and (
        not value or all(type(k) is str and type(v) is str for k, v in value.items())
    )


def _fast_exec(v: list[Any]) -> RuntimeMessage | None:
    if len(v) != 7:
        return None
    _, _, request_id, function_name, input_data, timeout_ms, metadata = v
    if (type(request_id) is str and type(function_name) is str and type(input_data) is bytes
            and type(timeout_ms) is int and type(metadata) is dict
            and (not metadata or _is_text_map(metadata))):
        return ExecutionRequest(request_id, function_name, input_data, timeout_ms, metadata)
    return None


def _fast_result(v: list[Any]) -> RuntimeMessage | None:
    if len(v) != 9:
        return None
    _, _, request_id, output_data, status, error_message, error_code, elapsed, metadata = v
    if status == "success":
        status_value = _SUCCESS
    elif type(status) is str:
        status_value = _STATUS_BY_VALUE.get(status)  # type: ignore[assignment]
        if status_value is None:
            return None
    else:
        return None
    if (type(request_id) is str and type(output_data) is bytes
            and (error_message is None or type(error_message) is str)
            and (error_code is None or type(error_code) is str)
            and (type(elapsed) is float or type(elapsed) is int)
            and type(metadata) is dict and (not metadata or _is_text_map(metadata))):
        return ExecutionResponse(request_id, output_data, status_value, error_message,
                                 error_code, float(elapsed), metadata)
    return None


# The two messages on every request's path skip `_Fields` when every field is well-typed;
# anything else takes the checked path above, which names the offending field.
_FAST: dict[str, Callable[[list[Any]], RuntimeMessage | None]] = {
    "exec": _fast_exec,
    "result": _fast_result,
}


def _decode(data: bytes | bytearray | memoryview) -> RuntimeMessage:
    """Decode one message; anything malformed raises `InvalidMessage` saying what is wrong."""
    try:
        value = _unpackb(data)
    except msgpack.ExtraData as exc:
        raise InvalidMessage("trailing bytes after the message") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise InvalidMessage(f"not a msgpack message: {exc}") from exc
    if type(value) is list and len(value) >= 2 and value[0] == 1 and type(value[0]) is int:
        tag = value[1]
        if type(tag) is str:
            fast = _FAST.get(tag)
            if fast is not None:
                message = fast(value)
                if message is not None:
                    return message
    return _checked(value)


def _checked(value: Any) -> RuntimeMessage:
    """The slow, strict path: names exactly what is wrong with a message."""
    if type(value) is not list or len(value) < 2:
        raise InvalidMessage("a message must be an array [version, tag, fields...]")
    version, tag = value[0], value[1]
    if version != CODEC_VERSION or type(version) is not int:
        raise InvalidMessage(f"unsupported message version {version!r} (expected {CODEC_VERSION})")
    if type(tag) is not str:
        raise InvalidMessage(f"message tag must be a string, got {type(tag).__name__}")
    entry = _DECODERS.get(tag)
    if entry is None:
        raise InvalidMessage(f"unknown message type {tag!r}")
    arity, build = entry
    values = value[2:]
    if len(values) != arity:
        raise InvalidMessage(f"{tag!r} message needs {arity} fields, got {len(values)}")
    return build(_Fields(tag, values))


# -- the C hot path ------------------------------------------------------------------------

REQUEST_FIELDS = ("request_id", "function_name", "input_data", "timeout_ms", "metadata")
RESPONSE_FIELDS = ("request_id", "output_data", "status", "error_message", "error_code",
                   "execution_time_ms", "metadata")


def _made_of_fields(cls: type, names: tuple[str, ...]) -> bool:
    """Whether setting `names` (in this order) is all it takes to make an instance of `cls`:
    a slotted dataclass with exactly these fields and an `__init__` that only assigns them.
    The C codec then builds instances without running `__init__`."""
    return (dataclasses.is_dataclass(cls)
            and tuple(f.name for f in dataclasses.fields(cls)) == names
            and getattr(cls, "__slots__", None) == names
            and not hasattr(cls, "__post_init__")
            and cls.__new__ is object.__new__)


Decoder = Callable[[bytes | bytearray | memoryview], RuntimeMessage]

#: Decode one message; anything malformed raises `InvalidMessage` saying what is wrong.
decode: Decoder = _decode
#: The framed bytes of an `ExecutionRequest` (what the host writes for every request).
request_frame: Callable[[ExecutionRequest], bytes] = _request_frame
#: The framed bytes of a successful reply (what a worker writes for a request that went well).
success_frame: Callable[[str, bytes, float], bytes] = _success_frame

_wire = load_wire()
if _wire is not None:
    if (_made_of_fields(ExecutionRequest, REQUEST_FIELDS)
            and _made_of_fields(ExecutionResponse, RESPONSE_FIELDS)):
        _wire.configure(ExecutionRequest, REQUEST_FIELDS, ExecutionResponse, RESPONSE_FIELDS,
                        _STATUS_BY_VALUE, _SUCCESS, _decode, _request_frame, _success_frame,
                        True)
        decode = _wire.decode
        request_frame = _wire.request_frame
        success_frame = _wire.success_frame
    else:
        log.warning("the message classes are not plain slotted dataclasses any more; the "
                    "wire codec's C helper is not used")
        _wire = None


def native_active() -> bool:
    """Whether the C hot path is in use (False: the pure-Python codec does everything)."""
    return _wire is not None
