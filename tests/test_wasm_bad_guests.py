"""Guests that misbehave: loop forever, trap, return bad pointers, exhaust memory, overflow the
stack, run out of fuel, hand bad pointers to host calls or break the ABI handshake. Each gets a
clear error, the instance keeps serving, other instances never notice, and the host process
survives them all (they all run in this one pytest process)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import spear
import wasmtime
from spear import wasm
from spear.transport.wasm.instance import WasmInstance

KiB = 1024
MiB = 1024 * KiB
PAGE = 64 * KiB

Fixture = Callable[[str], Path]


@pytest.fixture(scope="module")
def spin_module(wasm_fixture: Fixture) -> wasm.WasmModule:
    return wasm.load(wasm_fixture("spin"))


@pytest.fixture(scope="module")
def trap_module(wasm_fixture: Fixture) -> wasm.WasmModule:
    return wasm.load(wasm_fixture("trap"))


@pytest.fixture(scope="module")
def bad_pointer_module(wasm_fixture: Fixture) -> wasm.WasmModule:
    return wasm.load(wasm_fixture("bad_pointer"))


# ------------------------------------------------------------------ minimal WAT guests
#
# A hand-written guest implementing ABI v1 just enough: the control block lives at 1024
# (magic "SPER", version 1, request buffer at 2048 with 4096 bytes), one 64 KiB page of memory.

CTRL = 1024
OUT_PTR = CTRL + 64
OUT_LEN = CTRL + 68
CONTROL_BLOCK = r'"SPER\01\00\00\00\00\08\00\00\00\10\00\00"'


def wat_guest(
    handlers: str = "",
    *,
    init: str = "(i32.const 1024)",
    reserve: str = "(i32.const 1)",
    control_block: str = CONTROL_BLOCK,
    version: int = 1,
) -> bytes:
    return wasmtime.wat2wasm(f"""
    (module
      (import "spear" "log" (func $log (param i32 i32 i32)))
      (import "spear" "send" (func $send (param i32 i32 i32 i32) (result i32)))
      (import "spear" "recv" (func $recv (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const {CTRL}) {control_block})
      (data (i32.const 0) "tick")
      (func (export "spear_abi_version") (result i32) (i32.const {version}))
      (func (export "spear_init") (param i32) (result i32) {init})
      (func (export "spear_reserve") (param $size i32) (result i32) {reserve})
      ;; output the i32 `rc` (4 bytes at address 100)
      (func $out_rc (param $rc i32) (result i32)
        (i32.store (i32.const 100) (local.get $rc))
        (i32.store (i32.const {OUT_PTR}) (i32.const 100))
        (i32.store (i32.const {OUT_LEN}) (i32.const 4))
        (i32.const 0))
      (func (export "spear.handler.ok") (result i32) (i32.const 0))
      {handlers}
    )
    """)


HOST_CALL_HANDLERS = """
  (func (export "spear.handler.log_ptr_past_end") (result i32)
    (call $log (i32.const 2) (i32.const 65532) (i32.const 16)) (i32.const 0))
  (func (export "spear.handler.log_len_past_end") (result i32)
    (call $log (i32.const 2) (i32.const 0) (i32.const 0x7fffffff)) (i32.const 0))
  (func (export "spear.handler.send_data_past_end") (result i32)
    (call $out_rc (call $send (i32.const 0) (i32.const 4) (i32.const 65530) (i32.const 100))))
  (func (export "spear.handler.send_topic_wraps") (result i32)
    (call $out_rc (call $send (i32.const 0xfffffff0) (i32.const 0x20) (i32.const 0) (i32.const 4))))
  (func (export "spear.handler.send_2000_bytes") (result i32)
    (call $out_rc (call $send (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 2000))))
  (func (export "spear.handler.recv_sizes_past_end") (result i32)
    (call $out_rc (call $recv (i32.const 0) (i32.const 64) (i32.const 200) (i32.const 256)
                              (i32.const 65536))))
  (func (export "spear.handler.recv_data_past_end") (result i32)
    (call $out_rc (call $recv (i32.const 300) (i32.const 64) (i32.const 65535) (i32.const 256)
                              (i32.const 400))))
  (func (export "spear.handler.bad_status") (result i32) (i32.const 7))
"""


@pytest.fixture(scope="module")
def host_call_guest() -> wasm.WasmModule:
    return wasm.load(wat_guest(HOST_CALL_HANDLERS))


def assert_one_line(message: str) -> None:
    assert "\n" not in message, f"error message spans several lines: {message!r}"


# ------------------------------------------------------------------ timeouts


def test_spinning_guest_times_out_and_the_next_call_works(spin_module: wasm.WasmModule) -> None:
    with spin_module.instantiate() as instance:
        assert instance.call("echo", b"warm") == b"warm"
        started = time.monotonic()
        with pytest.raises(spear.Timeout) as info:
            instance.call("spin", b"", timeout=0.2)
        elapsed = time.monotonic() - started
        assert isinstance(info.value, TimeoutError)
        assert 0.2 <= elapsed < 0.45, elapsed  # a loaded machine can delay the tick
        assert "spin" in str(info.value)
        assert instance.replacements == 1
        assert instance.call("echo", b"after") == b"after"


def test_every_timeout_replaces_the_instance(spin_module: wasm.WasmModule) -> None:
    with spin_module.instantiate() as instance:
        for n in range(1, 4):
            with pytest.raises(TimeoutError):
                instance.call("spin", b"", timeout=0.02)
            assert instance.replacements == n
            assert instance.call("echo", b"%d" % n) == b"%d" % n


def test_a_fast_call_with_a_timeout_is_not_interrupted(spin_module: wasm.WasmModule) -> None:
    with spin_module.instantiate() as instance:
        for _ in range(200):
            assert instance.call("echo", b"quick", timeout=0.05) == b"quick"
        assert instance.replacements == 0


# ------------------------------------------------------------------ traps


@pytest.mark.parametrize(
    ("handler", "kind", "reason"),
    [
        ("unreachable", "unreachable", "unreachable"),
        ("oob", "memory_out_of_bounds", "out of bounds memory access"),
        ("divide", "integer_division_by_zero", "divide by zero"),
    ],
)
def test_trap_is_execution_failed_with_the_reason_and_the_instance_still_works(
    trap_module: wasm.WasmModule, handler: str, kind: str, reason: str
) -> None:
    with trap_module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed) as info:
            instance.call(handler, b"")
        assert info.value.code == f"trap:{kind}"
        assert reason in str(info.value)
        assert handler in str(info.value)
        assert_one_line(str(info.value))
        assert instance.replacements == 1
        assert instance.call("echo", b"alive") == b"alive"


def test_repeated_traps_never_exhaust_the_instance(trap_module: wasm.WasmModule) -> None:
    with trap_module.instantiate() as instance:
        for i in range(30):
            with pytest.raises(spear.ExecutionFailed):
                instance.call(("unreachable", "oob", "divide")[i % 3], b"")
        assert instance.replacements == 30
        assert instance.call("echo", b"x" * 100_000) == b"x" * 100_000


@pytest.mark.parametrize("handler", ["out_of_bounds", "overflow", "huge_len"])
def test_bad_output_pointer_is_execution_failed_and_the_next_call_works(
    bad_pointer_module: wasm.WasmModule, handler: str
) -> None:
    with bad_pointer_module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="outside its") as info:
            instance.call(handler, b"")
        assert info.value.code == "bad_pointer"
        assert instance.call("echo", b"fine") == b"fine"


def test_memory_hog_fails_at_the_limit_and_memory_stays_within_it(
    wasm_fixture: Fixture,
) -> None:
    limit = 8 * MiB
    module = wasm.load(wasm_fixture("memory_hog"), memory_limit=limit)
    with module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match=r"out of memory after \d+ pages") as info:
            instance.call("grow", b"")
        assert info.value.code == "12"
        pages = int(re.search(r"after (\d+) pages", str(info.value)).group(1))  # type: ignore[union-attr]
        assert pages * PAGE <= limit
        assert pages * PAGE > limit - 16 * PAGE  # it really did grow up to the limit
        assert instance.memory_size <= limit
        assert instance.call("echo", b"still here") == b"still here"


def test_request_larger_than_the_memory_limit_is_refused_cleanly(wasm_fixture: Fixture) -> None:
    module = wasm.load(wasm_fixture("memory_hog"), memory_limit=4 * MiB)
    with module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="could not reserve") as info:
            instance.call("echo", bytes(8 * MiB))
        assert info.value.code == "oom"
        assert instance.memory_size <= 4 * MiB
        assert instance.call("echo", b"ok") == b"ok"


def test_unbounded_recursion_is_a_stack_overflow_trap(wasm_fixture: Fixture) -> None:
    with wasm.load(wasm_fixture("recursion")).instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="call stack exhausted") as info:
            instance.call("recurse", b"")
        assert info.value.code == "trap:stack_overflow"
        assert instance.call("echo", b"ok") == b"ok"


def test_fuel_bounds_the_work_of_each_call(wasm_fixture: Fixture) -> None:
    module = wasm.load(wasm_fixture("spin"), fuel=100_000)
    with module.instantiate() as instance:
        started = time.monotonic()
        with pytest.raises(spear.ExecutionFailed, match="fuel") as info:
            instance.call("spin", b"")
        assert time.monotonic() - started < 1.0
        assert info.value.code == "trap:out_of_fuel"
        # Fuel is per call: many cheap calls in a row never run dry.
        for _ in range(100):
            assert instance.call("echo", b"cheap") == b"cheap"


# ------------------------------------------------------------------ host calls with bad pointers


@pytest.mark.parametrize(
    ("handler", "what"),
    [
        ("log_ptr_past_end", "spear.log"),
        ("send_data_past_end", "spear.send data"),
        ("send_topic_wraps", "spear.send topic"),
    ],
)
def test_host_call_with_a_pointer_past_memory_traps_the_guest(
    host_call_guest: wasm.WasmModule, handler: str, what: str
) -> None:
    with host_call_guest.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="pointer out of bounds") as info:
            instance.call(handler, b"")
        assert what in str(info.value)
        assert str(info.value.code).startswith("trap")
        assert instance.mailbox.take_sent() == []
        assert instance.replacements == 1
        assert instance.call("ok", b"") == b""


def test_log_with_a_length_past_memory_traps_the_guest(
    host_call_guest: wasm.WasmModule, caplog: pytest.LogCaptureFixture
) -> None:
    # docs/wasm-abi.md: "a pointer/length outside memory traps the guest". A 2 GiB log line from
    # a 64 KiB memory is out of bounds, whatever the host's log-line cap.
    caplog.set_level(1, logger="spear.guest")
    with (
        host_call_guest.instantiate() as instance,
        pytest.raises(spear.ExecutionFailed, match=r"spear\.log: pointer out of bounds"),
    ):
        instance.call("log_len_past_end", b"")
    assert not [r for r in caplog.records if r.name == "spear.guest"]


@pytest.mark.parametrize(
    ("handler", "what"),
    [("recv_sizes_past_end", "spear.recv sizes"), ("recv_data_past_end", "spear.recv data")],
)
def test_recv_into_a_buffer_past_memory_traps_and_keeps_the_message(
    host_call_guest: wasm.WasmModule, handler: str, what: str
) -> None:
    with host_call_guest.instantiate() as instance:
        instance.mailbox.push("topic", b"data")
        with pytest.raises(spear.ExecutionFailed, match="pointer out of bounds") as info:
            instance.call(handler, b"")
        assert what in str(info.value)
        assert instance.mailbox.queued() == [("topic", b"data")]


def test_send_larger_than_the_max_message_size_returns_too_large(
    host_call_guest: wasm.WasmModule,
) -> None:
    with WasmInstance(host_call_guest, max_message_size=1000) as instance:
        rc = instance.call("send_2000_bytes", b"")
        assert int.from_bytes(rc, "little", signed=True) == -3
        assert instance.mailbox.take_sent() == []
    with WasmInstance(host_call_guest) as instance:
        assert instance.call("send_2000_bytes", b"") == b"\0\0\0\0"
        [(topic, data)] = instance.mailbox.take_sent()
        assert topic == "tick" and len(data) == 2000


def test_invalid_handler_status_is_a_protocol_error(host_call_guest: wasm.WasmModule) -> None:
    with host_call_guest.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="invalid status 7") as info:
            instance.call("bad_status", b"")
        assert info.value.code == "bad_status"
        assert instance.call("ok", b"") == b""


# ------------------------------------------------------------------ hostile handshakes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init": "(i32.const 0)"}, "refused host ABI v1"),
        ({"init": "(i32.const 1028)"}, "misaligned or outside memory"),
        ({"init": "(i32.const 65528)"}, "misaligned or outside memory"),
        ({"init": "(i32.const -8)"}, "misaligned or outside memory"),
        ({"control_block": r'"XXXX\01\00\00\00\00\08\00\00\00\10\00\00"'}, "wrong magic"),
        ({"control_block": r'"SPER\02\00\00\00\00\08\00\00\00\10\00\00"'}, "wrong magic"),
        ({"control_block": r'"SPER\01\00\00\00\00\f8\00\00\00\10\00\00"'}, "outside its memory"),
        ({"control_block": r'"SPER\01\00\00\00\f0\ff\ff\ff\00\10\00\00"'}, "outside its memory"),
        ({"init": "(unreachable)"}, "trapped in spear_init"),
        ({"version": 0}, "ABI v0"),
    ],
)
def test_hostile_handshake_fails_the_load_with_a_clear_error(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(spear.ExecutionFailed, match=re.escape(message)):
        wasm.load(wat_guest(**options))  # type: ignore[arg-type]


def test_reserve_that_lies_about_the_new_capacity_is_refused() -> None:
    module = wasm.load(wat_guest(reserve="(i32.const 0)"))  # "ok", but req_cap stays 4096
    with module.instantiate() as instance:
        with pytest.raises(spear.ExecutionFailed, match="were asked for"):
            instance.call("ok", bytes(8000))
        assert instance.call("ok", bytes(100)) == b""


def test_reserve_that_moves_the_buffer_outside_memory_is_refused() -> None:
    module = wasm.load(wat_guest(
        reserve="(i32.store (i32.const 1032) (i32.const 0xffff0000)) (i32.const 0)"))
    with (
        module.instantiate() as instance,
        pytest.raises(spear.ExecutionFailed, match="outside its memory"),
    ):
        instance.call("ok", bytes(8000))


def test_reserve_that_traps_is_a_one_line_trap_error_and_the_instance_is_replaced() -> None:
    module = wasm.load(wat_guest(reserve="(unreachable)"))
    with module.instantiate() as instance:
        assert instance.call("ok", bytes(100)) == b""  # fits: no reserve
        with pytest.raises(spear.ExecutionFailed, match="unreachable") as info:
            instance.call("ok", bytes(8000))
        assert str(info.value.code).startswith("trap")
        assert_one_line(str(info.value))
        # A trap leaves the guest in an unknown state: docs/wasm-abi.md says it is replaced.
        assert instance.replacements == 1
        assert instance.call("ok", bytes(100)) == b""


# ------------------------------------------------------------------ isolation


def test_one_bad_instance_never_affects_another_running_at_the_same_time(
    trap_module: wasm.WasmModule, spin_module: wasm.WasmModule
) -> None:
    bad_trap, good_trap = trap_module.instantiate(), trap_module.instantiate()
    bad_spin, good_spin = spin_module.instantiate(), spin_module.instantiate()
    stop = threading.Event()
    failures: list[BaseException] = []
    good_calls = 0

    def misbehave() -> None:
        try:
            for i in range(3):
                with pytest.raises(spear.Timeout):
                    bad_spin.call("spin", b"", timeout=0.05)
                for handler in ("unreachable", "oob", "divide"):
                    with pytest.raises(spear.ExecutionFailed):
                        bad_trap.call(handler, b"%d" % i)
        except BaseException as exc:
            failures.append(exc)
        finally:
            stop.set()

    def behave() -> None:
        nonlocal good_calls
        try:
            while not stop.is_set():
                n = good_calls
                data = b"%d" % n * 50
                assert good_trap.call("echo", data) == data
                assert good_spin.call("echo", data, timeout=5.0) == data
                assert good_spin.call("echo", data) == data
                good_calls += 1
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=misbehave), threading.Thread(target=behave)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert not failures, failures
        assert good_calls > 10
        assert good_trap.replacements == 0 and good_spin.replacements == 0
        assert bad_trap.replacements == 9 and bad_spin.replacements == 3
    finally:
        for instance in (bad_trap, good_trap, bad_spin, good_spin):
            instance.close()


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_timeout_elsewhere_never_breaks_a_later_large_request(
    spin_module: wasm.WasmModule, echo_wasm: Path, timeout: float | None
) -> None:
    # Instance `victim` made one quick call with a short timeout (its epoch deadline is then a
    # few ticks away). Another instance spins into its own timeout, so the shared epoch
    # ticker advances past the victim's old deadline. The victim's next request is larger than
    # its request buffer, so the host first calls the guest's `spear_reserve`: that must not
    # run under the stale deadline.
    victim = wasm.load(echo_wasm).instantiate()
    spinner = spin_module.instantiate()
    try:
        assert victim.call("echo", b"a", timeout=0.01) == b"a"
        with pytest.raises(spear.Timeout):
            spinner.call("spin", b"", timeout=0.1)
        big = bytes(100 * KiB)
        assert victim.call("echo", big, timeout=timeout) == big
        assert victim.call("echo", big * 2, timeout=timeout) == big * 2
    finally:
        victim.close()
        spinner.close()


def test_host_survives_every_bad_guest_in_one_run(
    wasm_fixture: Fixture, host_call_guest: wasm.WasmModule
) -> None:
    cases: list[tuple[str, str, dict[str, object]]] = [
        ("spin", "spin", {"timeout": 0.02}),
        ("trap", "unreachable", {}),
        ("trap", "oob", {}),
        ("trap", "divide", {}),
        ("bad_pointer", "out_of_bounds", {}),
        ("bad_pointer", "overflow", {}),
        ("bad_pointer", "huge_len", {}),
        ("recursion", "recurse", {}),
    ]
    instances = {name: wasm.load(wasm_fixture(name)).instantiate() for name, _, _ in cases}
    hog = wasm.load(wasm_fixture("memory_hog"), memory_limit=4 * MiB).instantiate()
    try:
        for _ in range(3):
            for name, handler, kwargs in cases:
                with pytest.raises(spear.CommunicationError):
                    instances[name].call(handler, b"", **kwargs)  # type: ignore[arg-type]
            with pytest.raises(spear.ExecutionFailed):
                hog.call("grow", b"")
            with pytest.raises(spear.ExecutionFailed):
                host_call_guest.instantiate().call("send_data_past_end", b"")
        for instance in [*instances.values(), hog]:
            assert instance.call("echo", b"survived") == b"survived"
    finally:
        for instance in [*instances.values(), hog]:
            instance.close()
