"""Exports of the wrong type: every export the host calls is checked against its ABI type when
the module is loaded, and a mismatch is a clear load error naming the export, the type the ABI
needs and the one it has (wrong slot counts used to crash the host with SIGILL; wrong types that
fit one slot were silently accepted). Each test runs in a child process, on both call paths.
"""

from __future__ import annotations

import sys

import pytest
import spear
from hostile_guests import ECHO, guest, memory64_guest
from spear import wasm
from wasm_isolation import in_child

I32_RESULT = "(result i32)"

# (case, guest keyword arguments, export named, expected type, actual type)
WRONG_TYPES: list[tuple[str, dict[str, str], str, str, str]] = [
    ("handler with two results",
     {"body": '(func (export "spear.handler.two") (result i32 i32) (i32.const 0) (i32.const 0))'},
     "spear.handler.two", "() -> (i32)", "() -> (i32 i32)"),
    ("handler with four i64 params",
     {"body": '(func (export "spear.handler.wide") (param i64 i64 i64 i64) (result i32) '
              "(i32.const 0))"},
     "spear.handler.wide", "() -> (i32)", "(i64 i64 i64 i64) -> (i32)"),
    ("handler without a result",
     {"body": '(func (export "spear.handler.void"))'},
     "spear.handler.void", "() -> (i32)", "() -> ()"),
    ("handler taking an f64",
     {"body": '(func (export "spear.handler.float") (param f64) (result i32) (i32.const 0))'},
     "spear.handler.float", "() -> (i32)", "(f64) -> (i32)"),
    ("handler returning an i64 status",
     {"body": '(func (export "spear.handler.long") (result i64) (i64.const 0))'},
     "spear.handler.long", "() -> (i32)", "() -> (i64)"),
    ("dispatch with two results",
     {"body": '(func (export "spear_dispatch") (result i32 i32) (i32.const 0) (i32.const 0))'},
     "spear_dispatch", "() -> (i32)", "() -> (i32 i32)"),
    ("abi version with a parameter",
     {"abi_version": '(func (export "spear_abi_version") (param i32) (result i32) '
                     "(i32.const 1))"},
     "spear_abi_version", "() -> (i32)", "(i32) -> (i32)"),
    ("abi version with two results",
     {"abi_version": '(func (export "spear_abi_version") (result i32 i32) '
                     "(i32.const 1) (i32.const 1))"},
     "spear_abi_version", "() -> (i32)", "() -> (i32 i32)"),
    ("abi version as i64",
     {"abi_version": '(func (export "spear_abi_version") (result i64) (i64.const 1))'},
     "spear_abi_version", "() -> (i32)", "() -> (i64)"),
    ("init without a parameter",
     {"init_export": '(func (export "spear_init") (result i32) (i32.const 1024))'},
     "spear_init", "(i32) -> (i32)", "() -> (i32)"),
    ("init with an i64 parameter",
     {"init_export": '(func (export "spear_init") (param i64) (result i32) (i32.const 1024))'},
     "spear_init", "(i32) -> (i32)", "(i64) -> (i32)"),
    ("init with many results",
     {"init_export": '(func (export "spear_init") (param i32) (result i32 i32 i32 i32 i32) '
                     "(i32.const 1024) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))"},
     "spear_init", "(i32) -> (i32)", "(i32) -> (i32 i32 i32 i32 i32)"),
    ("reserve with two parameters",
     {"reserve_export": '(func (export "spear_reserve") (param i32 i32) (result i32) '
                        "(i32.const 0))"},
     "spear_reserve", "(i32) -> (i32)", "(i32 i32) -> (i32)"),
    ("reserve without a result",
     {"reserve_export": '(func (export "spear_reserve") (param i32))'},
     "spear_reserve", "(i32) -> (i32)", "(i32) -> ()"),
    ("_initialize with a result",
     {"body": '(func (export "_initialize") (result i32) (i32.const 0))'},
     "_initialize", "() -> ()", "() -> (i32)"),
    ("_initialize with parameters",
     {"body": '(func (export "_initialize") (param i64 i64 i64 i64))'},
     "_initialize", "() -> ()", "(i64 i64 i64 i64) -> ()"),
]

WRONG_KINDS: list[tuple[str, dict[str, str], str, str]] = [
    ("handler that is a global",
     {"body": '(global (export "spear.handler.g") i32 (i32.const 0))'},
     "spear.handler.g", "a global"),
    ("init that is a global",
     {"init_export": '(global (export "spear_init") i32 (i32.const 1024))'},
     "spear_init", "a global"),
    ("memory that is a global",
     {"memory": '(memory 1) (global (export "memory") i32 (i32.const 0))'},
     "memory", "a global"),
    ("memory that is a table",
     {"memory": '(memory 1) (table (export "memory") 1 funcref)'},
     "memory", "a table"),
    ("memory that is a function",
     {"memory": '(memory 1) (func (export "memory"))'},
     "memory", "a function"),
    ("64-bit memory", {}, "memory", "64-bit"),
    ("shared memory", {"memory": '(memory (export "memory") 1 2 shared)'}, "memory", "shared"),
]


def _case(name: str) -> None:
    print(f"case: {name}", file=sys.stderr, flush=True)  # names the case a crash happened in


def _good_guest_still_works() -> None:
    with wasm.load(guest()).instantiate() as instance:
        assert instance.call("echo", b"after") == b"after"


@in_child
def test_every_called_export_of_a_wrong_type_fails_the_load_naming_both_types(
    call_path: str,
) -> None:
    for name, kwargs, export, expected, actual in WRONG_TYPES:
        _case(name)
        with pytest.raises(spear.ExecutionFailed) as info:
            wasm.load(guest(**kwargs))
        message = str(info.value)
        assert info.value.code == "abi", message
        assert repr(export) in message and expected in message and actual in message, message
        assert "\n" not in message
    _good_guest_still_works()


@in_child
def test_an_export_of_the_wrong_kind_fails_the_load_naming_what_it_is(call_path: str) -> None:
    for name, kwargs, export, what in WRONG_KINDS:
        _case(name)
        with pytest.raises(spear.ExecutionFailed) as info:
            wasm.load(guest(**kwargs) if kwargs else memory64_guest())
        message = str(info.value)
        assert info.value.code == "abi", message
        assert repr(export) in message and what in message, message
    _good_guest_still_works()


@in_child
def test_exports_the_host_never_calls_may_have_any_type(call_path: str) -> None:
    module = wasm.load(guest(
        '(func (export "helper") (param i64 f64) (result i32 i32) (i32.const 0) (i32.const 0))'
        '(global (export "spear_version_string") i32 (i32.const 0))'))
    assert module.handlers == ["echo", "ok"]
    with module.instantiate() as instance:
        assert instance.call("echo", b"x") == b"x"


@in_child
def test_a_wrongly_typed_handler_never_runs_even_through_dispatch(call_path: str) -> None:
    # A dispatch catch-all does not make a mistyped handler reachable: the load fails first.
    with pytest.raises(spear.ExecutionFailed, match=r"spear\.handler\.bad"):
        wasm.load(guest(ECHO.replace("echo", "other") +
                        '(func (export "spear_dispatch") (result i32) (i32.const 0))'
                        '(func (export "spear.handler.bad") (param i32) (result i32) '
                        "(i32.const 0))", handlers=""))
    _good_guest_still_works()
