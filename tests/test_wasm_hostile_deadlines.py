"""Every entry into guest code has a deadline, and host calls work from any of them.

Start functions, `_initialize`, `spear_abi_version` and `spear_init` run within the set-up
timeout (at load) or the call's deadline (a replacement instance); `spear_reserve` within the
call's deadline, raising `Timeout`; a WASI `poll_oneoff` sleep never outlasts the call. A
start function may use the `spear` host calls, on the first instance and on every
replacement (this used to crash the host). Each test runs in a child process, on both call
paths; a hang or a crash fails it.
"""

from __future__ import annotations

import struct

import pytest
import spear
from hostile_guests import ECHO, POLL_IMPORT, SLEEP, SPEAR_IMPORTS, SPIN, guest
from spear import wasm
from wasm_isolation import in_child

TRAP = '(func (export "spear.handler.trap") (result i32) (unreachable))'
HOUR_NS = 3600 * 10**9


def sleep_guest(start: str | None = None) -> bytes:
    return guest(SLEEP + TRAP, imports=SPEAR_IMPORTS + POLL_IMPORT, start=start)


# ------------------------------------------------------------------ set-up entries


@in_child
def test_a_guest_spinning_in_any_setup_export_fails_the_load_with_timeout(
    call_path: str,
) -> None:
    spinning = {
        "the start function": {"start": SPIN},
        "_initialize": {"body": f'(func (export "_initialize") {SPIN})'},
        "spear_abi_version": {"abi_version": '(func (export "spear_abi_version") (result i32) '
                                             f"{SPIN} (i32.const 1))"},
        "spear_init": {"init": f"{SPIN} (i32.const 1024)"},
    }
    for where, kwargs in spinning.items():
        with pytest.raises(spear.Timeout) as info:
            wasm.load(guest(**kwargs), setup_timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert where in str(info.value), str(info.value)
    with wasm.load(guest()).instantiate() as instance:
        assert instance.call("echo", b"after") == b"after"


@in_child
def test_a_replacement_whose_start_function_spins_times_out_at_the_calls_deadline(
    call_path: str,
) -> None:
    # The start function spins only when a message is queued, which it is by then.
    start = ("(if (i32.eq (call $recv (i32.const 200) (i32.const 16) (i32.const 300) "
             f"(i32.const 16) (i32.const 400)) (i32.const 1)) (then {SPIN}))")
    module = wasm.load(guest(TRAP, start=start))
    with module.instantiate() as instance:
        instance.mailbox.push("spin", b"please")
        with pytest.raises(spear.ExecutionFailed, match="unreachable"):
            instance.call("trap", b"")
        with pytest.raises(spear.Timeout, match="start function"):
            instance.call("echo", b"x", timeout=0.2)
        # The message was consumed by the start function that timed out; the next one is fine.
        assert instance.call("echo", b"recovered", timeout=5.0) == b"recovered"


@in_child
def test_a_spinning_reserve_raises_timeout_at_the_calls_deadline(call_path: str) -> None:
    module = wasm.load(guest(reserve=f"{SPIN} (i32.const 0)"))
    with module.instantiate() as instance:
        with pytest.raises(spear.Timeout) as info:
            instance.call("echo", bytes(8000), timeout=0.2)
        assert "spear_reserve" in str(info.value)
        assert instance.replacements == 1
        assert instance.call("echo", b"small", timeout=5.0) == b"small"


# ------------------------------------------------------------------ host calls before init


@in_child
def test_host_calls_from_the_start_function_work_on_every_instance_and_replacement(
    call_path: str,
) -> None:
    reach_all = ("(call $log (i32.const 2) (i32.const 0) (i32.const 4))"
                 "(drop (call $send (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 4)))"
                 "(drop (call $now))"
                 "(drop (call $recv (i32.const 200) (i32.const 16) (i32.const 300) "
                 "(i32.const 16) (i32.const 400)))")
    init_too = f"{reach_all} (i32.const 1024)"
    module = wasm.load(guest(TRAP + f'(func (export "_initialize") {reach_all})',
                             start=reach_all, init=init_too))
    with module.instantiate() as instance:
        for round_ in range(20):
            instance.mailbox.push("for-the-start", b"%d" % round_)
            with pytest.raises(spear.ExecutionFailed, match="unreachable"):
                instance.call("trap", b"")
            assert instance.call("echo", b"%d" % round_) == b"%d" % round_
        assert instance.replacements == 20
        # start, _initialize and spear_init each sent one message per instance
        sent = instance.mailbox.take_sent()
        assert sent == [("tick", b"tick")] * 3 * 21
        assert instance.mailbox.queued() == []  # each replacement's start took its message


@in_child
def test_a_bad_pointer_in_a_start_function_host_call_is_a_clean_load_error(
    call_path: str,
) -> None:
    start = "(call $log (i32.const 2) (i32.const 65530) (i32.const 100))"
    with pytest.raises(spear.ExecutionFailed, match=r"spear\.log: pointer out of bounds"):
        wasm.load(guest(start=start))
    with wasm.load(guest()).instantiate() as instance:
        assert instance.call("echo", b"fine") == b"fine"


# ------------------------------------------------------------------ blocking WASI calls


def _event(output: bytes) -> tuple[int, int, int, int, int]:
    errno, nevents = struct.unpack_from("<II", output)
    userdata, error, kind = struct.unpack_from("<QHB", output, 8)
    return errno, nevents, userdata, error, kind


@in_child
def test_a_wasi_sleep_longer_than_the_timeout_raises_timeout(call_path: str) -> None:
    module = wasm.load(sleep_guest())
    with module.instantiate() as instance:
        with pytest.raises(spear.Timeout):
            instance.call("sleep", struct.pack("<Q", HOUR_NS), timeout=0.3)
        assert instance.replacements == 1
        # A short sleep inside the deadline is a normal, successful poll; so is one in a call
        # without a deadline (the deadline of the call that timed out is long gone).
        output = instance.call("sleep", struct.pack("<Q", 10**6), timeout=5.0)
        assert _event(output) == (0, 1, 7, 0, 0)
        with pytest.raises(spear.Timeout):
            instance.call("sleep", struct.pack("<Q", HOUR_NS), timeout=0.05)
        assert _event(instance.call("sleep", struct.pack("<Q", 10**6))) == (0, 1, 7, 0, 0)


@in_child
def test_a_wasi_sleep_in_the_start_function_is_bounded_by_the_setup_timeout(
    call_path: str,
) -> None:
    start = ("(i64.store (i32.const 9024) (i64.const 3600000000000))"
             "(i32.store (i32.const 9016) (i32.const 1))"
             "(drop (call $poll (i32.const 9000) (i32.const 9100) (i32.const 1) "
             "(i32.const 9200)))")
    with pytest.raises(spear.Timeout, match="start function"):
        wasm.load(sleep_guest(start=start), setup_timeout=0.3)


@in_child
def test_poll_oneoff_refuses_bad_arguments_with_wasi_errors(call_path: str) -> None:
    handlers = ECHO + """
      (func (export "spear.handler.none") (result i32)
        (call $out_rc (call $poll (i32.const 9000) (i32.const 9100) (i32.const 0)
                                  (i32.const 9200))))
      (func (export "spear.handler.outside") (result i32)
        (call $out_rc (call $poll (i32.const 65500) (i32.const 9100) (i32.const 1)
                                  (i32.const 9200))))
      (func (export "spear.handler.too_many") (result i32)
        (call $out_rc (call $poll (i32.const 0) (i32.const 0) (i32.const 0x7fffffff)
                                  (i32.const 9200))))
      (func (export "spear.handler.fd") (result i32)
        (i32.store8 (i32.const 9008) (i32.const 2))
        (i32.store (i32.const 9016) (i32.const 1))
        (call $out_rc (call $poll (i32.const 9000) (i32.const 9100) (i32.const 1)
                                  (i32.const 9200))))
    """
    module = wasm.load(guest(handlers=handlers, imports=SPEAR_IMPORTS + POLL_IMPORT))
    with module.instantiate() as instance:
        def errno(handler: str) -> int:
            return int.from_bytes(instance.call(handler, b"", timeout=5.0), "little")

        assert errno("none") == 28  # EINVAL
        assert errno("outside") == 21  # EFAULT
        assert errno("too_many") == 28
        assert errno("fd") == 0  # stdout is always ready: no wait at all
        assert instance.replacements == 0
