"""The Zig guest SDK (guest_sdk/zig/spear.zig) driven through ABI v1 by the oracle host
(wasmtime-py, no spear host code)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import spear_guest
import wasmtime
from guest_oracle import ABI_FUNCTIONS, Host, new_engine
from guest_support import build_source

pytestmark = pytest.mark.timeout(300)

FEATURES = r"""
const std = @import("std");
const spear = @import("spear");

comptime {
    spear.handler("count", count);
    spear.handler("copy", copy);
    spear.handler("grow", grow);
    spear.handler("info", info);
    spear.handler("large", large);
    spear.handler("panics", panics);
    spear.handler("failing", failing);
    spear.handler("mix", mix);
    spear.handler("with-dash.v2", dashed);
    spear.dispatch(route);
}

var counter: ?*u32 = null;

fn count(_: *const spear.Request) !spear.Response {
    if (counter == null) {
        counter = try spear.persistent.create(u32);
        counter.?.* = 0;
    }
    counter.?.* += 1;
    return spear.output(try std.fmt.allocPrint(spear.arena, "{d}", .{counter.?.*}));
}

fn copy(req: *const spear.Request) !spear.Response {
    return spear.output(try spear.arena.dupe(u8, req.input()));
}

// An ArrayList grown from 1 byte to 64 KiB stays where it started (resized in place).
fn grow(_: *const spear.Request) !spear.Response {
    var list: std.ArrayList(u8) = .empty;
    try list.append(spear.arena, 'x');
    const first = list.items.ptr;
    while (list.items.len < 65536) try list.append(spear.arena, 'x');
    if (list.items.ptr != first) return spear.fail(1, "moved");
    return spear.output(try std.fmt.allocPrint(spear.arena, "in place {d}", .{list.items.len}));
}

fn info(req: *const spear.Request) !spear.Response {
    return spear.output(try std.fmt.allocPrint(spear.arena, "{s} id={d} deadline={?d} i64={d}", .{
        req.name(), req.requestId(), req.deadlineNs(), std.math.minInt(i64),
    }));
}

// Input: decimal N. Output: N bytes, byte i = i % 251, built in the arena.
fn large(req: *const spear.Request) !spear.Response {
    const n = std.fmt.parseInt(usize, req.input(), 10) catch return spear.fail(400, "not a number");
    const out = try spear.arena.alloc(u8, n);
    for (out, 0..) |*b, i| b.* = @intCast(i % 251);
    return spear.output(out);
}

fn panics(req: *const spear.Request) spear.Response {
    if (req.input().len == 0) @panic("no input");
    return spear.output("fine");
}

fn failing(_: *const spear.Request) !spear.Response {
    return error.SomethingBroke;
}

// zig's own page allocator and the SDK's arena share memory without overlap.
fn mix(req: *const spear.Request) !spear.Response {
    const input = req.input();
    if (input.len == 0) return spear.fail(400, "input must not be empty");
    var out: std.ArrayList(u8) = .empty;
    var blocks: [48][]u8 = undefined;
    for (&blocks, 0..) |*block, i| {
        block.* = try std.heap.page_allocator.alloc(u8, 70000);
        @memset(block.*, @intCast('a' + i % 26));
        try out.appendSlice(spear.arena, input);
        @memset(try spear.arena.alloc(u8, 50000), 0xEE);
    }
    for (blocks, 0..) |block, i| {
        for (block) |b| if (b != 'a' + i % 26) return spear.fail(1, "a page block was clobbered");
        std.heap.page_allocator.free(block);
    }
    var chunks = std.mem.window(u8, out.items, input.len, input.len);
    while (chunks.next()) |c| {
        if (!std.mem.eql(u8, c, input)) return spear.fail(2, "the arena was clobbered");
    }
    return spear.output(out.items);
}

fn dashed(req: *const spear.Request) spear.Response {
    return spear.output(req.name());
}

fn route(req: *const spear.Request) spear.Response {
    if (std.mem.eql(u8, req.name(), "hello")) return spear.output("hello from dispatch");
    return spear.fail(7, req.name());
}
"""


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return new_engine()


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_source(tmp_path_factory.mktemp("zig"), "features.zig", FEATURES)


def test_exports_the_abi_and_its_handlers_and_imports_nothing(features: Path) -> None:
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(features))
    functions = {e.name for e in module.exports if isinstance(e.type, wasmtime.FuncType)}
    handlers = {"count", "copy", "grow", "info", "large", "panics", "failing", "mix",
                "with-dash.v2"}
    assert functions == ABI_FUNCTIONS | {"spear_dispatch"} | {
        f"spear.handler.{h}" for h in handlers
    }
    assert list(module.imports) == []


def test_persistent_memory_survives_calls_and_arena_traffic(
    engine: wasmtime.Engine, features: Path
) -> None:
    h = Host(engine, features)
    for i in range(1, 4):
        assert h.call("copy", b"z" * 5000)[:2] == (0, b"z" * 5000)
        assert h.last["out_ptr"] != h.last["input_ptr"]
        assert h.call("count") == (0, str(i).encode(), 0)
    assert h.func("spear_reserve")(h.u32(h.cb + 12) * 4) == 0
    assert h.call("count") == (0, b"4", 0)


def test_request_fields_names_errors_and_dispatch(engine: wasmtime.Engine, features: Path) -> None:
    h = Host(engine, features)
    assert h.call("info") == (0, b"info id=7 deadline=null i64=-9223372036854775808", 0)
    assert h.call("with-dash.v2")[:2] == (0, b"with-dash.v2")
    assert h.call("grow") == (0, b"in place 65536", 0)
    assert h.call("failing") == (1, b"SomethingBroke", 500)
    cb = h.cb
    for name, expected in [("hello", (0, b"hello from dispatch")), ("other", (1, b"other"))]:
        h.memory.write(h.store, name.encode(), h.u32(cb + 8))
        h.put_u32(cb + 16, h.u32(cb + 8))
        h.put_u32(cb + 20, len(name))
        assert h.func("spear_dispatch")() == expected[0]
        out_ptr, out_len, err = struct.unpack("<IIi", h.memory.read(h.store, cb + 64, cb + 76))
        assert bytes(h.memory.read(h.store, out_ptr, out_ptr + out_len)) == expected[1]
        assert expected[0] == 0 or err == 7


def test_echo_fixture_is_zero_copy_and_grows_the_request_buffer(
    engine: wasmtime.Engine, wasm_fixture: Callable[[str], Path]
) -> None:
    h = Host(engine, wasm_fixture("echo.zig"))
    cb = h.init()
    assert cb % 8 == 0 and h.u32(cb + 12) >= 4096
    for payload in [b"", b"a", bytes(range(256)) * 100, b"q" * (3 * 1024 * 1024 + 5)]:
        assert h.call("echo", payload) == (0, payload, 0)
        assert h.last["out_ptr"] == h.last["input_ptr"] and h.last["out_len"] == len(payload)


@pytest.mark.parametrize("n", [0, 1, 250, 251, 100_000, 3_000_000])
def test_arena_outputs_of_any_size(engine: wasmtime.Engine, features: Path, n: int) -> None:
    h = Host(engine, features)
    status, out, _ = h.call("large", str(n).encode())
    assert status == 0 and out == bytes(i % 251 for i in range(n))


def test_the_arena_is_reused_and_out_of_memory_is_an_error(
    engine: wasmtime.Engine, features: Path
) -> None:
    h = Host(engine, features, memory_limit=8 * 1024 * 1024)
    h.call("large", b"2000000")
    size = h.mem_size()
    for _ in range(20):
        assert h.call("large", b"2000000")[0] == 0
    assert h.mem_size() == size
    assert h.call("large", b"100000000") == (1, b"spear: out of memory", 12)
    assert h.call("large", b"12") == (0, bytes(range(12)), 0)
    cb = h.cb
    before = h.memory.read(h.store, cb + 8, cb + 16)
    assert h.func("spear_reserve")(64 * 1024 * 1024) != 0
    assert h.memory.read(h.store, cb + 8, cb + 16) == before


def test_a_panic_traps(engine: wasmtime.Engine, features: Path) -> None:
    h = Host(engine, features)
    assert h.call("panics", b"x") == (0, b"fine", 0)
    with pytest.raises(wasmtime.Trap):
        h.call("panics", b"")


def test_other_allocators_and_the_arena_never_overlap(
    engine: wasmtime.Engine, features: Path
) -> None:
    h = Host(engine, features)
    sizes = []
    for k in range(6):
        payload = bytes([97 + k]) * (1000 * (k % 3 + 1))
        assert h.call("mix", payload) == (0, payload * 48, 0)
        sizes.append(h.mem_size())
    assert sizes[-1] == sizes[-4]


def test_compile_errors_come_whole(tmp_path: Path) -> None:
    src = tmp_path / "bad.zig"
    src.write_text('const spear = @import("spear");\ncomptime { spear.handler("x", nope); }\n')
    with pytest.raises(spear_guest.BuildError) as exc:
        spear_guest.build(src, tmp_path / "bad.wasm")
    assert "bad.zig:2:" in exc.value.stderr and "nope" in exc.value.stderr
