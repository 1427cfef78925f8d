"""The wire codec's C hot path (`spear.protocol._wire`) against the pure-Python codec: the same
bytes out, the same messages in, the same errors for everything else; and without the helper
the pure-Python codec does everything, saying so once."""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from spear.errors import InvalidMessage
from spear.messages import ExecutionRequest, ExecutionResponse, ExecutionStatus
from spear.protocol import codec

wire = codec._wire
needs_wire = pytest.mark.skipif(wire is None, reason="the C helper is not active here")

# Lengths on both sides of every msgpack size class (fix / 8 / 16 / 32 bits).
EDGES = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536, 70000]
text = st.text(max_size=40) | st.sampled_from(EDGES).map(lambda n: "é" * (n // 2) + "x" * (n % 2))
binary = st.binary(max_size=300) | st.sampled_from(EDGES).map(lambda n: b"\xff" * n)
integers = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.sampled_from(
    [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
     -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)])
text_map = st.dictionaries(text, text, max_size=20)
requests = st.builds(ExecutionRequest, text, text, binary, integers, text_map)
responses = st.builds(ExecutionResponse, text, binary, st.sampled_from(ExecutionStatus),
                      st.none() | text, st.none() | text,
                      st.floats(allow_nan=False) | integers.map(float), text_map)


def outcome(decode: Callable[[bytes], object], data: bytes) -> tuple[str, object]:
    try:
        return "ok", decode(data)
    except InvalidMessage as exc:
        return "invalid", str(exc)


def test_the_c_codec_in_this_installation_is_active_and_inside_the_package() -> None:
    if os.environ.get("SPEAR_NO_NATIVE"):
        pytest.skip("SPEAR_NO_NATIVE is set: the Python codec is under test")
    assert codec.native_active(), (
        "the wire codec's C helper was not built with this installation "
        "(was there a C compiler when it was installed?)")
    assert wire is not None and wire.__file__ is not None
    assert Path(wire.__file__).parent == Path(codec.__file__).parent
    assert codec.decode is wire.decode


@needs_wire
@given(requests)
def test_a_request_frame_is_byte_for_byte_the_python_codecs(request: ExecutionRequest) -> None:
    framed = wire.request_frame(request)
    assert framed == codec._request_frame(request)
    assert struct.unpack(">I", framed[:4])[0] == len(framed) - 4
    assert wire.decode_hot(framed[4:]) == request  # decoded by C, not handed back to Python


@needs_wire
@given(responses)
def test_a_reply_decodes_in_c_to_what_the_python_codec_gives(response: ExecutionResponse) -> None:
    payload = codec.encode(response)
    decoded = wire.decode_hot(payload)
    assert decoded == codec._decode(payload) == response
    assert type(decoded) is ExecutionResponse and decoded.status is response.status


@needs_wire
@given(text, binary, st.floats(allow_nan=False))
def test_a_success_frame_is_byte_for_byte_the_python_codecs(
        request_id: str, output: bytes, elapsed: float) -> None:
    framed = wire.success_frame(request_id, output, elapsed)
    assert framed == codec._success_frame(request_id, output, elapsed)
    reply = wire.decode_hot(framed[4:])
    assert reply == ExecutionResponse(request_id, output, ExecutionStatus.SUCCESS, None, None,
                                      elapsed, {})


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    cut = st.integers(0, len(data))
    return st.one_of(
        cut.map(lambda i: data[:i]),
        st.tuples(cut, st.binary(min_size=1, max_size=3)).map(
            lambda p: data[:p[0]] + p[1] + data[p[0] + len(p[1]):]),
        st.binary(min_size=1, max_size=4).map(lambda extra: data + extra),
    )


@needs_wire
@given(st.one_of(requests, responses).map(codec.encode).flatmap(_mutations))
def test_broken_messages_get_the_same_answer_from_both_codecs(data: bytes) -> None:
    assert outcome(wire.decode, data) == outcome(codec._decode, data)


@needs_wire
@given(st.binary(max_size=80))
def test_random_bytes_get_the_same_answer_from_both_codecs(data: bytes) -> None:
    assert outcome(wire.decode, data) == outcome(codec._decode, data)


def _packed(*values: object) -> bytes:
    return msgpack.packb(list(values), use_bin_type=True)


@needs_wire
@pytest.mark.parametrize("data", [
    # encodings msgpack-python reads but never writes for these values
    b"\x97\xcd\x00\x01\xa4exec\xd9\x01r\xa1f\xc4\x00\x00\x80",  # uint16 version, str8 id
    b"\x97\x01\xd9\x04exec\xa1r\xa1f\xc5\x00\x01x\xd0\x05\xde\x00\x00",  # int8, bin16, map16
    b"\x99\x01\xa6result\xa1r\xc4\x00\xa7success\xc0\xc0\xca\x3f\xc0\x00\x00\x80",  # float32
    b"\x99\x01\xa6result\xa1r\xc4\x00\xa5error\xa1m\xa1c\xd3" + b"\x80" + b"\x00" * 7 + b"\x80",
    b"\xdc\x00\x07\x01\xa4exec\xa1r\xa1f\xc4\x00\x00\x81\xa1k\xa1v",  # array16
    _packed(1, "exec", "r", "f", b"", 0, {"k": "a", "k2": "b"}),
])
def test_every_msgpack_encoding_of_a_plain_message_is_decoded_in_c(data: bytes) -> None:
    message = wire.decode_hot(data)
    assert message is not None
    assert message == codec._decode(data)


@needs_wire
@pytest.mark.parametrize("data", [
    _packed(1, "exec", "r", "f", "text, not bytes", 0, {}),
    _packed(1, "exec", "r", "f", b"", True, {}),
    _packed(1, "exec", "r", "f", b"", 1.0, {}),
    _packed(1, "exec", "r", "f", b"", 0, {"k": 1}),
    _packed(1, "exec", "r", "f", b"", 0, {b"k": "v"}),
    _packed(True, "exec", "r", "f", b"", 0, {}),
    _packed(1, "exec", "r", "f", b"", 0, {}, "extra"),
    _packed(1, "result", "r", b"", "sideways", None, None, 0.0, {}),
    _packed(1, "result", "r", b"", "success", None, None, "1.5", {}),
    _packed(1, "result", "r", b"", "success", None, None, True, {}),
    _packed(1, "exec", "r", "f", b"", 0, {}) + b"\x00",
    b"\x97\x01\xa4exec\xa2\xed\xa0\xa1f\xc4\x00\x00\x80",  # a lone surrogate: not UTF-8
    b"\x97\x01\xa4exec\xdb\xff\xff\xff\xff",  # a length far beyond the data
])
def test_what_is_not_a_plain_message_goes_to_the_python_codec(data: bytes) -> None:
    assert wire.decode_hot(data) is None
    assert outcome(wire.decode, data) == outcome(codec._decode, data)


@needs_wire
@pytest.mark.parametrize("request_", [
    ExecutionRequest("r", "f", bytearray(b"buffer"), 0, {}),  # type: ignore[arg-type]
    ExecutionRequest("r", "f", b"", True, {}),
    ExecutionRequest("r", "f", b"", 2**64, {}),
    ExecutionRequest("r", "f", b"", -(2**63) - 1, {}),
    ExecutionRequest("r\ud800", "f", b"", 0, {}),
    ExecutionRequest("r", "f", b"", 0, {"k": 1}),  # type: ignore[dict-item]
    ExecutionRequest("r", "f", b"", 0, None),  # type: ignore[arg-type]
    ExecutionRequest(7, "f", b"", 0, {}),  # type: ignore[arg-type]
])
def test_an_unusual_request_is_framed_or_refused_as_the_python_codec_does(
        request_: ExecutionRequest) -> None:
    def frame_or_error(encode: Callable[[ExecutionRequest], bytes]) -> tuple[str, object]:
        try:
            return "ok", encode(request_)
        except InvalidMessage as exc:
            return "invalid", str(exc)

    assert frame_or_error(wire.request_frame) == frame_or_error(codec._request_frame)


@needs_wire
def test_a_success_frame_of_unusual_arguments_is_the_python_codecs() -> None:
    for args in [("r", bytearray(b"x"), 1.0), ("r", b"x", 3), ("r", b"x", math.inf)]:
        assert wire.success_frame(*args) == codec._success_frame(*args)  # type: ignore[arg-type]


def test_without_the_c_helper_the_python_codec_is_used_and_said_once_at_warning() -> None:
    # An sdist installed without a C compiler has no helper; hide ours from the import system.
    script = textwrap.dedent("""
        import importlib.abc, logging, sys
        class NoHelper(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "spear.protocol._wire":
                    raise ImportError("not built")
                return None
        sys.meta_path.insert(0, NoHelper())
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger().addHandler(Keep())
        from spear.messages import ExecutionRequest
        from spear.protocol import codec
        import spear.worker.stream_server, spear.channel.stream
        request = ExecutionRequest("r", "f", b"x" * 64, 5, {"k": "v"})
        for _ in range(3):
            assert codec.decode(codec.request_frame(request)[4:]) == request
        assert not codec.native_active()
        said = [r for r in records if r.name == "spear.protocol"]
        assert len(said) == 1, said
        assert said[0].levelno == logging.WARNING, said[0].levelno
        assert "pure Python" in said[0].getMessage()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_wire_helper_others_could_have_written_is_not_loaded(tmp_path: Path) -> None:
    # A copy of the package whose wire helper is group-writable: the helper is refused (the
    # same check as the fast-call helper and libwasmtime) and the Python codec does the work.
    package = Path(codec.__file__).parent.parent
    if not list((package / "protocol").glob("_wire*.so")):
        pytest.skip("the wire codec's C helper is not built in this installation")
    copy = tmp_path / "spear"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for helper in (copy / "protocol").glob("_wire*.so"):
        helper.chmod(0o664)
    script = textwrap.dedent("""
        import logging, sys
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        logging.getLogger().addHandler(Keep())
        from spear.messages import ExecutionRequest
        from spear.protocol import codec
        assert codec.__file__.startswith(sys.argv[1]), codec.__file__
        assert not codec.native_active()
        assert any("writable by other users" in message for message in records), records
        request = ExecutionRequest("r", "f", b"x", 5, {})
        assert codec.decode(codec.request_frame(request)[4:]) == request
    """)
    done = subprocess.run([sys.executable, "-c", script, str(copy)], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
