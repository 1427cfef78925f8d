"""The embedding API (`spear.wasm`): load, instantiate, call, close; real wasmtime, real guests
built from wasm_fixtures/ with the guest SDK."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import spear
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spear import wasm
from spear.transport.wasm.instance import DEFAULT_MAX_MESSAGE, WasmInstance

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def echo_module(echo_wasm: Path) -> wasm.WasmModule:
    return wasm.load(echo_wasm)


@pytest.fixture(scope="module")
def echo(echo_module: wasm.WasmModule) -> Iterator[WasmInstance]:
    instance = echo_module.instantiate()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def multi(wasm_fixture: Callable[[str], Path]) -> Iterator[WasmInstance]:
    instance = wasm.load(wasm_fixture("multi")).instantiate()
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def metadata(wasm_fixture: Callable[[str], Path]) -> Iterator[WasmInstance]:
    instance = wasm.load(wasm_fixture("metadata")).instantiate()
    yield instance
    instance.close()


# --------------------------------------------------------------------------- loading


def test_load_accepts_a_path_a_string_and_bytes(echo_wasm: Path) -> None:
    for source in (echo_wasm, str(echo_wasm), echo_wasm.read_bytes()):
        module = wasm.load(source)
        with module.instantiate() as instance:
            assert instance.call("echo", b"abc") == b"abc"


def test_module_reports_its_handlers_and_abi_version(
    wasm_fixture: Callable[[str], Path], echo_module: wasm.WasmModule
) -> None:
    assert echo_module.handlers == ["echo"]
    assert echo_module.abi_version == 1
    multi = wasm.load(wasm_fixture("multi"))
    assert multi.handlers == ["fail", "length", "reverse", "upper"]
    assert multi.abi_version == 1
    assert not multi.has_dispatch


def test_loading_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        wasm.load(tmp_path / "nope.wasm")
    assert info.value.filename == str(tmp_path / "nope.wasm")


def test_loading_a_directory_raises_the_os_error(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        wasm.load(tmp_path)


def test_loading_bytes_that_are_not_wasm_is_a_clear_error() -> None:
    with pytest.raises(spear.ExecutionFailed, match="not a WebAssembly module") as info:
        wasm.load(b"#!/bin/sh\necho definitely not wasm\n")
    assert info.value.code == "invalid_module"


def test_loading_a_corrupt_wasm_body_is_a_clear_error() -> None:
    with pytest.raises(spear.ExecutionFailed, match="invalid WebAssembly module") as info:
        wasm.load(b"\0asm\x01\0\0\0\xff\xff\xff garbage")
    assert info.value.code == "invalid_module"


def test_loading_a_wasm_module_that_is_not_a_spear_guest_names_the_missing_exports() -> None:
    plain = wasmtime.wat2wasm(
        '(module (memory (export "memory") 1)'
        ' (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
    )
    with pytest.raises(spear.ExecutionFailed, match="not a spear guest") as info:
        wasm.load(plain)
    message = str(info.value)
    for export in ("spear_abi_version", "spear_init", "spear_reserve"):
        assert export in message
    assert info.value.code == "invalid_module"


def test_loading_a_module_with_an_import_the_host_lacks_names_the_import() -> None:
    module = wasmtime.wat2wasm(
        """
        (module
          (import "spear" "nope" (func $nope))
          (memory (export "memory") 1)
          (func (export "spear_abi_version") (result i32) (i32.const 1))
          (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
          (func (export "spear_reserve") (param i32) (result i32) (i32.const 1)))
        """
    )
    with pytest.raises(spear.ExecutionFailed, match="nope") as info:
        wasm.load(module)
    assert "cannot link module" in str(info.value)
    assert info.value.code == "link_error"


def test_loading_a_module_importing_a_host_call_with_the_wrong_signature_fails() -> None:
    module = wasmtime.wat2wasm(
        """
        (module
          (import "spear" "log" (func $log (param i64)))
          (memory (export "memory") 1)
          (func (export "spear_abi_version") (result i32) (i32.const 1))
          (func (export "spear_init") (param i32) (result i32) (i32.const 1024))
          (func (export "spear_reserve") (param i32) (result i32) (i32.const 1)))
        """
    )
    with pytest.raises(spear.ExecutionFailed, match="cannot link module") as info:
        wasm.load(module)
    assert info.value.code == "link_error"


def test_a_module_speaking_another_abi_version_is_refused_at_load(
    wasm_fixture: Callable[[str], Path],
) -> None:
    with pytest.raises(spear.ExecutionFailed, match="ABI v99") as info:
        wasm.load(wasm_fixture("bad_abi"))
    assert "supports v1" in str(info.value)


def test_invalid_limits_are_refused(echo_wasm: Path) -> None:
    with pytest.raises(spear.InvalidConfiguration):
        wasm.load(echo_wasm, memory_limit=1024)
    with pytest.raises(spear.InvalidConfiguration):
        wasm.load(echo_wasm, fuel=0)


# --------------------------------------------------------------------------- echo


@pytest.mark.parametrize(
    "size", [0, 1, 64, 4 * KiB, 16 * KiB, 16 * KiB + 1, 1 * MiB, 8 * MiB],
    ids=["0", "1", "64", "4KiB", "16KiB", "16KiB+1", "1MiB", "8MiB"],
)
def test_echo_returns_the_input_unchanged(echo: WasmInstance, size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert echo.call("echo", data) == data


def test_a_request_larger_than_any_before_grows_the_guest_buffer(
    echo_module: wasm.WasmModule,
) -> None:
    with echo_module.instantiate() as instance:
        before = instance.memory_size
        data = bytes(range(256)) * (12 * KiB)  # 3 MiB, well past the 16 KiB initial buffer
        assert instance.call("echo", data) == data
        assert instance.memory_size > before + len(data) - 1
        # The grown buffer is reused: smaller and equal requests still round-trip.
        assert instance.call("echo", b"small") == b"small"
        assert instance.call("echo", data) == data


@settings(
    max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=2048), size=st.integers(min_value=0, max_value=300 * KiB))
def test_echo_round_trips_random_inputs(echo: WasmInstance, data: bytes, size: int) -> None:
    assert echo.call("echo", data) == data
    big = random.Random(size).randbytes(size)
    assert echo.call("echo", big) == big


# --------------------------------------------------------------------------- multi


def test_multi_handlers_each_do_their_own_job(multi: WasmInstance) -> None:
    assert multi.call("upper", b"Hello, World 123") == b"HELLO, WORLD 123"
    assert multi.call("reverse", b"abcdef") == b"fedcba"
    assert multi.call("length", b"x" * 1234) == b"1234"
    assert multi.call("length", b"") == b"0"
    assert multi.call("upper", b"") == b""


def test_application_error_is_execution_failed_with_code_and_message(multi: WasmInstance) -> None:
    with pytest.raises(spear.ExecutionFailed) as info:
        multi.call("fail", b"because")
    assert str(info.value) == "failed on purpose: because"
    assert info.value.code == "42"
    # An application error is not a trap: the instance is kept.
    assert multi.call("upper", b"ok") == b"OK"


def test_missing_handler_is_execution_failed_naming_the_available_handlers(
    multi: WasmInstance,
) -> None:
    with pytest.raises(spear.ExecutionFailed) as info:
        multi.call("nope", b"")
    message = str(info.value)
    assert "nope" in message
    for name in ("fail", "length", "reverse", "upper"):
        assert name in message
    assert info.value.code == "no_such_handler"
    assert multi.call("reverse", b"ab") == b"ba"


def test_error_code_is_a_subclass_of_communication_error(multi: WasmInstance) -> None:
    with pytest.raises(spear.CommunicationError):
        multi.call("fail", b"")


# --------------------------------------------------------------------------- metadata


def test_metadata_get_returns_the_value_of_the_named_key(metadata: WasmInstance) -> None:
    meta = {"user": "alice", "trace": "abc-123", "empty": ""}
    assert metadata.call("get", b"user", metadata=meta) == b"alice"
    assert metadata.call("get", b"trace", metadata=meta) == b"abc-123"
    assert metadata.call("get", b"empty", metadata=meta) == b""


def test_metadata_get_of_a_missing_key_is_an_application_error(metadata: WasmInstance) -> None:
    with pytest.raises(spear.ExecutionFailed, match="no such key") as info:
        metadata.call("get", b"absent", metadata={"present": "1"})
    assert info.value.code == "404"
    with pytest.raises(spear.ExecutionFailed, match="no such key"):
        metadata.call("get", b"present")  # no metadata at all


def test_metadata_dump_lists_every_pair_in_order(metadata: WasmInstance) -> None:
    meta = {"b": "2", "a": "1", "c": "three"}
    assert metadata.call("dump", b"", metadata=meta) == b"b=2\na=1\nc=three\n"
    assert metadata.call("dump", b"") == b""
    assert metadata.call("dump", b"", metadata={}) == b""


def test_metadata_keys_and_values_may_be_unicode(metadata: WasmInstance) -> None:
    meta = {"ключ": "значение", "键": "值🙂", "e\u0301": "\u00e9"}
    expected = "".join(f"{k}={v}\n" for k, v in meta.items()).encode()
    assert metadata.call("dump", b"", metadata=meta) == expected
    assert metadata.call("get", "键".encode(), metadata=meta) == "值🙂".encode()


def test_large_metadata_grows_the_request_buffer(metadata: WasmInstance) -> None:
    meta = {f"key{i}": "v" * 500 for i in range(200)}  # ~100 KiB of metadata
    assert metadata.call("get", b"key199", metadata=meta) == b"v" * 500
    dumped = metadata.call("dump", b"", metadata=meta)
    assert dumped.count(b"\n") == 200


def test_metadata_does_not_leak_into_the_next_call(metadata: WasmInstance) -> None:
    assert metadata.call("get", b"k", metadata={"k": "v"}) == b"v"
    with pytest.raises(spear.ExecutionFailed, match="no such key"):
        metadata.call("get", b"k")


# --------------------------------------------------------------------------- lifecycle


def test_calling_a_closed_instance_raises_channel_closed(echo_module: wasm.WasmModule) -> None:
    instance = echo_module.instantiate()
    assert instance.call("echo", b"x") == b"x"
    instance.close()
    assert instance.closed
    with pytest.raises(spear.ChannelClosed):
        instance.call("echo", b"x")
    instance.close()  # closing twice is harmless
    assert instance.memory_size == 0


def test_instance_context_manager_closes_the_instance(echo_module: wasm.WasmModule) -> None:
    with echo_module.instantiate() as instance:
        assert instance.call("echo", b"inside") == b"inside"
    assert instance.closed
    with pytest.raises(spear.ChannelClosed):
        instance.call("echo", b"after")


def test_instances_of_one_module_do_not_share_memory(echo_module: wasm.WasmModule) -> None:
    with echo_module.instantiate() as a, echo_module.instantiate() as b:
        big = b"a" * (2 * MiB)
        assert a.call("echo", big) == big
        assert b.memory_size < a.memory_size
        assert b.call("echo", b"b") == b"b"


# --------------------------------------------------------------------------- max message size


def test_default_max_message_size_is_64_mib(echo_module: wasm.WasmModule) -> None:
    with echo_module.instantiate() as instance:
        assert instance.max_message_size == DEFAULT_MAX_MESSAGE == 64 * MiB
        with pytest.raises(spear.ExecutionFailed, match="exceeds the maximum") as info:
            instance.call("echo", bytes(64 * MiB + 1))
        assert info.value.code == "too_large"
        assert instance.call("echo", b"still fine") == b"still fine"


def test_request_over_max_message_size_is_refused_before_growing_the_guest(
    echo_module: wasm.WasmModule,
) -> None:
    with WasmInstance(echo_module, max_message_size=32 * KiB) as instance:
        before = instance.memory_size
        with pytest.raises(spear.ExecutionFailed, match="exceeds the maximum") as info:
            instance.call("echo", bytes(64 * KiB))
        assert info.value.code == "too_large"
        assert instance.memory_size == before
        assert instance.call("echo", bytes(1000)) == bytes(1000)


def test_request_over_max_message_size_is_refused_even_when_it_fits_the_guest_buffer(
    echo_module: wasm.WasmModule,
) -> None:
    # The guest's initial request buffer is 16 KiB; a 2 KiB request to an instance limited to
    # 1 KiB messages must still be refused.
    with WasmInstance(echo_module, max_message_size=1 * KiB) as instance:
        with pytest.raises(spear.ExecutionFailed, match="exceeds the maximum") as info:
            instance.call("echo", bytes(2 * KiB))
        assert info.value.code == "too_large"


# --------------------------------------------------------------------------- host calls


@pytest.fixture(scope="module")
def sender_module(wasm_fixture: Callable[[str], Path]) -> wasm.WasmModule:
    return wasm.load(wasm_fixture("sender"))


@pytest.mark.parametrize("n", [0, 1, 10, 1024])
def test_emit_sends_n_tick_messages(sender_module: wasm.WasmModule, n: int) -> None:
    with sender_module.instantiate() as instance:
        assert instance.call("emit", b"%d" % n) == b"sent %d" % n
        assert instance.mailbox.take_sent() == [("tick", b"%d" % i) for i in range(n)]
        assert instance.mailbox.take_sent() == []


def test_emit_with_bad_input_is_an_application_error(sender_module: wasm.WasmModule) -> None:
    with sender_module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="decimal count") as info:
            instance.call("emit", b"many")
        assert info.value.code == "400"


def test_flood_stops_at_the_outbox_limit_with_code_minus_2(
    sender_module: wasm.WasmModule,
) -> None:
    with sender_module.instantiate() as instance:
        assert instance.call("flood", b"") == b"stopped at 1024 code -2"
        sent = instance.mailbox.take_sent()
        assert sent == [("flood", b"%d" % i) for i in range(1024)]
        # Taking the messages empties the outbox: the guest may send again.
        assert instance.call("flood", b"payload") == b"stopped at 1024 code -2"
        assert instance.mailbox.take_sent() == [("flood", b"payload")] * 1024


def test_send_failure_reaches_the_caller_as_an_application_error(
    sender_module: wasm.WasmModule,
) -> None:
    with sender_module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="send failed at 1024 code -2") as info:
            instance.call("emit", b"2000")
        assert info.value.code == "2"  # sender.c reports err_code = -C (positive)
        assert len(instance.mailbox.take_sent()) == 1024


def test_pull_reads_the_messages_queued_with_push(sender_module: wasm.WasmModule) -> None:
    with sender_module.instantiate() as instance:
        assert instance.call("pull", b"") == b""
        instance.mailbox.push("a", b"1")
        instance.mailbox.push("b", b"")
        instance.mailbox.push("ключ", "значение".encode())
        assert instance.call("pull", b"") == "a=1;b=;ключ=значение;".encode()
        assert not instance.mailbox.queued()
        assert instance.call("pull", b"") == b""


def test_pull_reads_messages_larger_than_the_guests_first_buffers(
    sender_module: wasm.WasmModule,
) -> None:
    with sender_module.instantiate() as instance:
        big_topic = "t" * 300  # first topic buffer: 64 bytes
        big_data = bytes(range(97, 123)) * 4000  # ~100 KiB; first data buffer: 256 bytes
        instance.mailbox.push("small", b"x")
        instance.mailbox.push(big_topic, big_data)
        instance.mailbox.push("after", b"y")
        expected = b"small=x;" + big_topic.encode() + b"=" + big_data + b";after=y;"
        assert instance.call("pull", b"") == expected
        assert not instance.mailbox.queued()


def test_guest_log_lines_reach_the_spear_guest_logger_at_five_levels(
    wasm_fixture: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(1, logger="spear.guest")
    with wasm.load(wasm_fixture("logger")).instantiate() as instance:
        assert instance.call("log", "hello, wörld".encode()) == b"logged"
        records = [r for r in caplog.records if r.name == "spear.guest"]
        assert [r.getMessage() for r in records] == ["hello, wörld"] * 5
        assert [r.levelno for r in records] == [
            5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
        ]
        assert all(getattr(r, "instance", None) == instance.label for r in records)


def test_guest_now_is_the_monotonic_clock_in_nanoseconds(
    wasm_fixture: Callable[[str], Path],
) -> None:
    with wasm.load(wasm_fixture("logger")).instantiate() as instance:
        readings = []
        for _ in range(5):
            before = time.monotonic_ns()
            value = int(instance.call("now", b""))
            after = time.monotonic_ns()
            assert before <= value <= after
            readings.append(value)
        assert readings == sorted(readings)


def test_the_pure_python_call_path_behaves_like_the_native_one() -> None:
    # SPEAR_NO_NATIVE=1 (or a machine where the native helper cannot be built) takes the
    # Python path; run the embedding and bad-guest suites on it in a child process.
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-k", "not pure_python_call_path",
         str(here / "test_wasm_embedding.py"), str(here / "test_wasm_bad_guests.py")],
        env={**os.environ, "SPEAR_NO_NATIVE": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_spear_wasm_is_reachable_after_import_spear_alone() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import spear; print(spear.wasm.load.__name__, "
         "spear.wasm.Module is spear.wasm.WasmModule, spear.wasm.Instance.__name__)"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["load", "True", "WasmInstance"]


def test_application_error_codes_arrive_as_integers_beside_the_string_code(
    wasm_fixture: Callable[[str], Path],
) -> None:
    with (wasm.load(wasm_fixture("multi")).instantiate() as instance,
          pytest.raises(spear.ExecutionFailed) as info):
        instance.call("fail", b"x")
    assert info.value.error_code == 42 and info.value.code == "42"  # as before, for old callers
    with (wasm.load(wasm_fixture("echo")).instantiate() as instance,
          pytest.raises(spear.ExecutionFailed) as missing):
        instance.call("nope", b"")
    assert missing.value.code == "no_such_handler" and missing.value.error_code is None


def test_execution_failed_reads_an_integer_code_from_its_string_code() -> None:
    assert spear.ExecutionFailed("m", "-3").error_code == -3
    assert spear.ExecutionFailed("m", 7).error_code == 7
    assert spear.ExecutionFailed("m", "trap:unreachable").error_code is None
    assert spear.ExecutionFailed("m", "exit:3", error_code=3).error_code == 3
    assert spear.ExecutionFailed("m", "٣").error_code is None  # only ASCII digits
