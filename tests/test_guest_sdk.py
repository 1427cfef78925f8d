"""The guest SDK (spear.h), the build command and the wasm fixtures, driven through the ABI v1
by hand with wasmtime-py (no spear host code involved)."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from guest_oracle import CB_SIZE, MAGIC, PAGE, Host, new_engine

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "wasm_fixtures"
FIXTURE_BUILD = FIXTURES / "build"

try:
    import spear_guest
except ImportError:  # not installed: use the checkout
    sys.path.insert(0, str(ROOT / "guest_sdk"))
    import spear_guest


HANDLERS: dict[str, set[str]] = {
    "echo": {"echo"},
    "multi": {"upper", "reverse", "length", "fail"},
    "metadata": {"get", "dump"},
    "sender": {"emit", "pull", "flood"},
    "logger": {"log", "now"},
    "spin": {"spin", "echo"},
    "trap": {"unreachable", "oob", "divide", "echo"},
    "bad_pointer": {"out_of_bounds", "overflow", "huge_len", "echo"},
    "memory_hog": {"grow", "echo"},
    "recursion": {"recurse", "echo"},
    "large_output": {"large", "echo"},
    "bad_abi": {"echo"},
    "greet": {"greet", "meta", "fail", "pull", "clock"},
}
IMPORTS: dict[str, set[str]] = {
    "sender": {"send", "recv"},
    "logger": {"log", "now"},
    "greet": {"send", "recv", "log", "now"},
}


@pytest.fixture(scope="session")
def fixtures() -> dict[str, Path]:
    """Every fixture, built (or found up to date) in wasm_fixtures/build."""
    return {
        name: spear_guest.build_cached(FIXTURES / f"{name}.c", FIXTURE_BUILD) for name in HANDLERS
    }


@pytest.fixture(scope="session")
def engine() -> wasmtime.Engine:
    return new_engine()


@pytest.fixture
def host(engine: wasmtime.Engine, fixtures: dict[str, Path]) -> Callable[..., Host]:
    def make(name: str, **kwargs: Any) -> Host:
        return Host(engine, fixtures[name], **kwargs)

    return make


# -- exports and the control block -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HANDLERS))
def test_fixture_exports(engine: wasmtime.Engine, fixtures: dict[str, Path], name: str) -> None:
    module = wasmtime.Module.from_file(engine, str(fixtures[name]))
    exports = {e.name: e.type for e in module.exports}
    handlers = {n.removeprefix("spear.handler.") for n in exports if n.startswith("spear.handler.")}
    assert handlers == HANDLERS[name]
    assert set(exports) == {"memory", "spear_abi_version", "spear_init", "spear_reserve"} | {
        f"spear.handler.{h}" for h in HANDLERS[name]
    }
    assert isinstance(exports["memory"], wasmtime.MemoryType)
    i32 = wasmtime.ValType.i32()
    for export, (params, results) in {
        "spear_abi_version": ([], [i32]),
        "spear_init": ([i32], [i32]),
        "spear_reserve": ([i32], [i32]),
        **{f"spear.handler.{h}": ([], [i32]) for h in HANDLERS[name]},
    }.items():
        ty = exports[export]
        assert isinstance(ty, wasmtime.FuncType)
        assert (list(ty.params), list(ty.results)) == (params, results), export
    # freestanding: no WASI, only the spear host calls the module actually uses
    imports = {(i.module, i.name) for i in module.imports}
    assert imports == {("spear", n) for n in IMPORTS.get(name, set())}


def test_init_and_control_block(host: Callable[..., Host]) -> None:
    h = host("echo")
    assert h.func("spear_init")(2) == 0  # refuses other host versions
    cb = h.init()
    assert cb != 0 and cb % 8 == 0 and cb + CB_SIZE <= h.mem_size()
    assert h.u32(cb) == MAGIC and h.u32(cb + 4) == 1
    assert h.memory.read(h.store, cb, cb + 4) == b"SPER"
    req_ptr, req_cap = h.u32(cb + 8), h.u32(cb + 12)
    assert req_cap >= 4096 and req_ptr + req_cap <= h.mem_size()
    assert not (req_ptr < cb + CB_SIZE and cb < req_ptr + req_cap)  # no overlap
    assert h.func("spear_init")(1) == cb  # idempotent


def test_bad_abi_version(host: Callable[..., Host]) -> None:
    h = host("bad_abi")
    assert h.func("spear_abi_version")() == 99


def test_echo_is_zero_copy(host: Callable[..., Host]) -> None:
    h = host("echo")
    for payload in [b"hello", b"", bytes(range(256)) * 10, b"x" * 3]:
        assert h.call("echo", payload) == (0, payload, 0)
        assert h.last["out_ptr"] == h.last["input_ptr"]
        assert h.last["out_len"] == len(payload)


def test_reserve_grows_request_buffer(host: Callable[..., Host]) -> None:
    h = host("echo")
    cb = h.init()
    cap0 = h.u32(cb + 12)
    assert h.func("spear_reserve")(cap0) == 0 and h.u32(cb + 12) == cap0  # no-op
    assert h.func("spear_reserve")(cap0 + 1) == 0
    assert h.u32(cb + 12) >= 2 * cap0  # geometric
    big = 10 * 1024 * 1024 + 3
    assert h.func("spear_reserve")(big) == 0
    req_ptr, req_cap = h.u32(cb + 8), h.u32(cb + 12)
    assert req_cap >= big and req_ptr + req_cap <= h.mem_size()
    payload = bytes(i % 253 for i in range(big))
    status, out, _ = h.call("echo", payload)
    assert status == 0 and out == payload and h.last["out_ptr"] == h.last["input_ptr"]


def test_reserve_out_of_memory_changes_nothing(host: Callable[..., Host]) -> None:
    h = host("multi", memory_limit=4 * 1024 * 1024)
    cb = h.init()
    before = h.memory.read(h.store, cb + 8, cb + 16)
    assert h.func("spear_reserve")(64 * 1024 * 1024) != 0
    assert h.func("spear_reserve")(-1) != 0  # 0xFFFFFFFF bytes
    assert h.memory.read(h.store, cb + 8, cb + 16) == before
    assert h.call("upper", b"still fine") == (0, b"STILL FINE", 0)


def test_arena_is_reset_every_call(host: Callable[..., Host]) -> None:
    h = host("multi")
    payload = b"abc" * 20_000
    h.call("upper", payload)
    size = h.mem_size()
    for _ in range(200):
        assert h.call("upper", payload)[1] == payload.upper()
    assert h.mem_size() == size


# -- fixtures through the ABI ----------------------------------------------------------------


def test_multi(host: Callable[..., Host]) -> None:
    h = host("multi")
    assert h.call("upper", b"Hello, World! \xff") == (0, b"HELLO, WORLD! \xff", 0)
    assert h.call("reverse", b"abcdef") == (0, b"fedcba", 0)
    assert h.call("reverse", b"") == (0, b"", 0)
    assert h.call("length", b"") == (0, b"0", 0)
    assert h.call("length", b"x" * 12345) == (0, b"12345", 0)
    assert h.call("fail", b"boom") == (1, b"failed on purpose: boom", 42)


def test_metadata(host: Callable[..., Host]) -> None:
    h = host("metadata")
    meta = [("a", "1"), ("trace-id", "xyz"), ("empty", ""), ("ü", "ß")]
    assert h.call("get", b"trace-id", meta) == (0, b"xyz", 0)
    assert h.call("get", b"empty", meta) == (0, b"", 0)
    assert h.call("get", "ü".encode(), meta) == (0, "ß".encode(), 0)
    assert h.call("get", b"nope", meta) == (1, b"no such key", 404)
    assert h.call("get", b"a", []) == (1, b"no such key", 404)
    assert h.call("dump", b"", meta) == (0, "a=1\ntrace-id=xyz\nempty=\nü=ß\n".encode(), 0)
    assert h.call("dump", b"", []) == (0, b"", 0)


def test_sender_emit_and_flood(host: Callable[..., Host]) -> None:
    h = host("sender", outbox_limit=5)
    assert h.call("emit", b"3") == (0, b"sent 3", 0)
    assert h.outbox == [(b"tick", b"0"), (b"tick", b"1"), (b"tick", b"2")]
    assert h.call("flood") == (0, b"stopped at 2 code -2", 0)
    assert h.outbox[3:] == [(b"flood", b"0"), (b"flood", b"1")]
    assert h.call("emit", b"1") == (1, b"send failed at 0 code -2", 2)
    assert h.call("emit", b"x")[0::2] == (1, 400)


def test_sender_pull_retries_with_bigger_buffers(host: Callable[..., Host]) -> None:
    h = host("sender")
    assert h.call("pull") == (0, b"", 0)
    big_topic, big_data = b"T" * 100, bytes(i % 200 + 32 for i in range(5000))
    h.inbox = [(b"a", b"1"), (big_topic, b"x"), (b"b", big_data), (b"c", b"")]
    expected = b"a=1;" + big_topic + b"=x;b=" + big_data + b";c=;"
    assert h.call("pull") == (0, expected, 0)
    assert h.inbox == []


def test_logger(host: Callable[..., Host]) -> None:
    h = host("logger")
    assert h.call("log", "hé".encode()) == (0, b"logged", 0)
    assert h.logs == [(level, "hé") for level in range(5)]
    h.clock = 2**63 - 1
    assert h.call("now") == (0, str(2**63 - 1).encode(), 0)


@pytest.mark.parametrize(
    ("handler", "code"),
    [
        ("unreachable", wasmtime.TrapCode.UNREACHABLE),
        ("oob", wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS),
        ("divide", wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO),
    ],
)
def test_traps(host: Callable[..., Host], handler: str, code: wasmtime.TrapCode) -> None:
    h = host("trap")
    with pytest.raises(wasmtime.Trap) as exc:
        h.call(handler)
    assert exc.value.trap_code == code
    h2 = host("trap")
    assert h2.call("echo", b"ok") == (0, b"ok", 0)


def test_recursion_overflows_the_engine_stack(host: Callable[..., Host]) -> None:
    h = host("recursion")
    with pytest.raises(wasmtime.Trap) as exc:
        h.call("recurse")
    assert exc.value.trap_code == wasmtime.TrapCode.STACK_OVERFLOW


def test_spin_runs_until_interrupted(host: Callable[..., Host]) -> None:
    h = host("spin")
    assert h.call("echo", b"hi") == (0, b"hi", 0)
    h.store.set_fuel(50_000_000)
    with pytest.raises(wasmtime.Trap) as exc:
        h.call("spin")
    assert exc.value.trap_code == wasmtime.TrapCode.OUT_OF_FUEL


def test_spin_epoch_interruption(fixtures: dict[str, Path]) -> None:
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)
    instance = wasmtime.Instance(
        store, wasmtime.Module.from_file(engine, str(fixtures["spin"])), []
    )
    exports = instance.exports(store)
    init, spin = exports["spear_init"], exports["spear.handler.spin"]
    assert isinstance(init, wasmtime.Func) and isinstance(spin, wasmtime.Func)
    init(store, 1)
    timer = threading.Timer(0.2, engine.increment_epoch)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(wasmtime.Trap) as exc:
        spin(store)
    assert exc.value.trap_code == wasmtime.TrapCode.INTERRUPT
    assert time.monotonic() - t0 < 10


def test_bad_pointer_outputs_are_returned_raw(host: Callable[..., Host]) -> None:
    h = host("bad_pointer")
    for handler, ptr, length in [
        ("out_of_bounds", 0xFFFFFF00, 4096),
        ("overflow", 0xFFFFFFF0, 0x20),
        ("huge_len", 16, 0x7FFFFFFF),
    ]:
        assert h.call(handler)[0] == 0
        assert (h.last["out_ptr"], h.last["out_len"]) == (ptr, length)
    assert h.call("echo", b"fine") == (0, b"fine", 0)


def test_memory_hog_stops_at_the_limit(host: Callable[..., Host]) -> None:
    h = host("memory_hog", memory_limit=8 * 1024 * 1024)
    status, out, err = h.call("grow")
    pages = h.mem_size() // PAGE
    assert pages <= 128
    assert (status, out, err) == (1, f"out of memory after {pages} pages".encode(), 12)


@pytest.mark.parametrize("n", [0, 1, 250, 251, 252, 100_000, 3_000_000])
def test_large_output(host: Callable[..., Host], n: int) -> None:
    h = host("large_output")
    status, out, _ = h.call("large", str(n).encode())
    assert status == 0 and len(out) == n
    assert out == bytes(i % 251 for i in range(n))


def test_large_output_out_of_memory_is_an_error(host: Callable[..., Host]) -> None:
    h = host("large_output", memory_limit=4 * 1024 * 1024)
    assert h.call("large", b"100000000")[0::2] == (1, 12)
    assert h.call("large", b"12")[0] == 0  # the arena is usable again
    assert h.call("large", b"nan")[0::2] == (1, 400)


# -- SDK features not covered by the fixtures ------------------------------------------------

SDK_EXTRA = r"""
#include "spear.h"

static uint32_t *counter; /* persistent across calls */

SPEAR_HANDLER(count) {
    (void)req;
    if (counter == NULL) {
        counter = (uint32_t *)spear_alloc_persistent(sizeof *counter);
        if (counter == NULL) return spear_error(SPEAR_CODE_NOMEM, "oom");
        *counter = 0;
    }
    spear_buf b;
    spear_buf_init(&b, 0);
    spear_buf_append_u64(&b, ++*counter);
    return spear_output_buf(&b);
}

SPEAR_HANDLER(copy) {
    return spear_output_copy(req->input, req->input_len);
}

SPEAR_HANDLER(realloc) {
    /* grow one allocation in place many times; its address must not change */
    uint8_t *p = (uint8_t *)spear_alloc(1);
    uint8_t *first = p;
    for (uint32_t n = 1; n < 100000; n *= 2) {
        p = (uint8_t *)spear_realloc(p, n, n * 2);
        if (p != first) return spear_error(1, "moved");
    }
    return spear_output_str("in place");
}

SPEAR_HANDLER(info) {
    spear_buf b;
    spear_buf_init(&b, 0);
    spear_buf_append(&b, req->name, req->name_len);
    spear_buf_append_str(&b, " id=");
    spear_buf_append_u64(&b, req->request_id);
    spear_buf_append_str(&b, " i64=");
    spear_buf_append_i64(&b, INT64_MIN);
    return spear_output_buf(&b);
}

SPEAR_HANDLER_AS(dashed, "with-dash.v2") { return spear_output(req->name, req->name_len); }

SPEAR_DISPATCH() {
    if (spear_name_is(req, "hello")) return spear_output_str("hello from dispatch");
    return spear_error_n(7, req->name, req->name_len);
}
"""

SECOND_TU = r"""
#define SPEAR_DECLARE_ONLY
#include "spear.h"

SPEAR_HANDLER(second) { return spear_output_copy(req->input, req->input_len); }
"""


@pytest.fixture(scope="module")
def sdk_extra(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sdk_extra")
    (d / "extra.c").write_text(SDK_EXTRA)
    (d / "second.c").write_text(SECOND_TU)
    return spear_guest.build(d / "extra.c", d / "extra.wasm", extra_flags=[str(d / "second.c")])


def test_sdk_persistent_alloc_dispatch_and_second_tu(
    engine: wasmtime.Engine, sdk_extra: Path
) -> None:
    h = Host(engine, sdk_extra)
    assert {e.name for e in h.module.exports} >= {"spear_dispatch", "spear.handler.second"}
    for i in range(1, 4):
        h.call("copy", b"z" * 5000)  # arena traffic must not clobber the counter
        assert h.call("count") == (0, str(i).encode(), 0)
    status, out, _ = h.call("copy", b"abc")
    assert (status, out) == (0, b"abc") and h.last["out_ptr"] != h.last["input_ptr"]
    assert h.call("second", b"2nd") == (0, b"2nd", 0)
    assert h.call("with-dash.v2")[:2] == (0, b"with-dash.v2")
    assert h.call("realloc") == (0, b"in place", 0)
    assert h.call("info") == (0, b"info id=7 i64=-9223372036854775808", 0)
    # spear_reserve after a persistent allocation moves the buffer past it
    cb = h.cb
    assert h.func("spear_reserve")(h.u32(cb + 12) * 4) == 0
    assert h.call("count") == (0, b"4", 0)
    # the catch-all, called with the name in the control block
    for name, expected in [("hello", (0, b"hello from dispatch", 0)), ("other", (1, b"other", 7))]:
        h.memory.write(h.store, name.encode(), h.u32(cb + 8))
        h.put_u32(cb + 16, h.u32(cb + 8))
        h.put_u32(cb + 20, len(name))
        assert h.func("spear_dispatch")() == expected[0]
        out_ptr, out_len, err = struct.unpack("<IIi", h.memory.read(h.store, cb + 64, cb + 76))
        assert (bytes(h.memory.read(h.store, out_ptr, out_ptr + out_len)), err) == expected[1:]


def test_builds_at_every_optimisation_level(engine: wasmtime.Engine, tmp_path: Path) -> None:
    for opt in ["Debug", "ReleaseSmall", "ReleaseFast", "ReleaseSafe", "-O2", "s"]:
        out = spear_guest.build(FIXTURES / "multi.c", tmp_path / f"multi{opt}.wasm", opt=opt)
        h = Host(engine, out)
        assert h.call("upper", b"abc") == (0, b"ABC", 0), opt
        assert h.call("fail", b"x") == (1, b"failed on purpose: x", 42), opt
    with pytest.raises(spear_guest.BuildError, match="unknown optimisation level"):
        spear_guest.build(FIXTURES / "echo.c", tmp_path / "x.wasm", opt="O9")


def test_echo_handler_is_tiny(fixtures: dict[str, Path]) -> None:
    # the whole echo module (SDK runtime included) stays small: no hidden prologue work
    assert fixtures["echo"].stat().st_size < 2048


# -- the build command -----------------------------------------------------------------------


def test_include_dir() -> None:
    assert (spear_guest.include_dir() / "spear.h").is_file()


def test_build_error_raises_with_compiler_output(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text('#include "spear.h"\nSPEAR_HANDLER(x) { return 0 }\n')
    with pytest.raises(spear_guest.BuildError) as exc:
        spear_guest.build(src, tmp_path / "broken.wasm")
    assert "error" in exc.value.stderr and "broken.c:2" in exc.value.stderr
    assert "\n" not in exc.value.summary and "broken.c:2" in exc.value.summary
    assert not (tmp_path / "broken.wasm").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken.c"]  # no temp files left behind
    with pytest.raises(spear_guest.BuildError, match="no such source file"):
        spear_guest.build(tmp_path / "missing.c", tmp_path / "m.wasm")


def test_link_error_is_a_build_error(tmp_path: Path) -> None:
    src = tmp_path / "undef.c"
    src.write_text(
        '#include "spear.h"\nint nope(void);\nSPEAR_HANDLER(x) { (void)req; return nope(); }\n'
    )
    with pytest.raises(spear_guest.BuildError) as exc:
        spear_guest.build(src, tmp_path / "undef.wasm")
    assert "nope" in exc.value.summary


def test_cli_shows_the_whole_compiler_output_then_one_error_line(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int f(void) { return 1 }\nint g(void) { return x; }\n")
    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "build", str(src), "-o", str(tmp_path / "b.wasm")],
        capture_output=True,
        text=True,
        cwd=ROOT / "guest_sdk",
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # both errors, with clang's source excerpts, not only the first line
    assert any("broken.c:1:" in line and "error" in line for line in lines)
    assert any("broken.c:2:" in line and "undeclared identifier 'x'" in line for line in lines)
    assert "2 errors generated." in proc.stderr
    assert lines[-1].startswith("spear-guest: error: ") and "broken.c:1" in lines[-1]


def test_cli_build_and_build_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spear_guest.cli import main

    out = tmp_path / "echo.wasm"
    args = ["-O", "ReleaseSmall", "--stack-size", "65536"]
    assert main(["build", str(FIXTURES / "echo.c"), "-o", str(out), *args]) == 0
    assert out.is_file() and "built" in capsys.readouterr().out
    assert main(["build", str(FIXTURES / "echo.c"), "-o", str(out), "--stack-size", "100"]) == 1
    assert "multiple of 16" in capsys.readouterr().err
    c_only = tmp_path / "c_only"
    c_only.mkdir()
    for name in HANDLERS:
        (c_only / f"{name}.c").write_text((FIXTURES / f"{name}.c").read_text())
    assert main(["build-all", str(c_only), "-o", str(tmp_path / "all")]) == 0
    assert {p.stem for p in (tmp_path / "all").glob("*.wasm")} == set(HANDLERS)
    assert main(["build-all", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")]) == 1


def test_build_all_says_which_modules_it_built_and_which_were_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spear_guest.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for name in ("echo", "multi"):
        (src / f"{name}.c").write_text((FIXTURES / f"{name}.c").read_text())
    out = tmp_path / "out"
    assert main(["build-all", str(src), "-o", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in first[:2]] == ["built", "built"]
    assert first[-1] == "2 built, 0 up to date"
    (src / "multi.c").write_text((src / "multi.c").read_text() + "\n/* changed */\n")
    assert main(["build-all", str(src), "-o", str(out)]) == 0
    second = capsys.readouterr().out.splitlines()
    assert second[0].startswith(f"up to date {out / 'echo.wasm'} (")
    assert second[1].startswith(f"built {out / 'multi.wasm'} (")
    assert second[-1] == "1 built, 1 up to date"
    results = spear_guest.build_all(src, out)
    assert [(r.path.name, r.status) for r in results] == [
        ("echo.wasm", "up to date"),
        ("multi.wasm", "up to date"),
    ]


def test_stack_size_flag(engine: wasmtime.Engine, tmp_path: Path) -> None:
    small = spear_guest.build(FIXTURES / "echo.c", tmp_path / "small.wasm", stack_size=64 * 1024)
    default = spear_guest.build(FIXTURES / "echo.c", tmp_path / "default.wasm")
    pages = {}
    for p in (small, default):
        module = wasmtime.Module.from_file(engine, str(p))
        mem = next(e.type for e in module.exports if e.name == "memory")
        assert isinstance(mem, wasmtime.MemoryType)
        pages[p] = mem.limits.min
    assert pages[small] < pages[default]


def test_build_cached_skips_up_to_date_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "g.c"
    src.write_text((FIXTURES / "echo.c").read_text())
    out = spear_guest.build_cached(src, tmp_path / "out")
    assert out == tmp_path / "out" / "g.wasm"
    sidecar = out.with_name("g.wasm.hash")
    key, digest = sidecar.read_text().split()
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    mtime = out.stat().st_mtime_ns

    # `spear_guest.build` is the function; the module is spear_guest/build.py
    build_mod = importlib.import_module("spear_guest.build")

    real_compile = build_mod._compile
    compiles: list[Path] = []

    def counting(toolchain: Any, src: Path, out: Path, options: Any) -> Any:
        compiles.append(src)
        return real_compile(toolchain, src, out, options)

    monkeypatch.setattr(build_mod, "_compile", counting)
    assert spear_guest.build_cached(src, tmp_path / "out") == out
    assert compiles == [] and out.stat().st_mtime_ns == mtime

    # other flags, a changed source, or a module replaced behind the cache's back: rebuild
    spear_guest.build_cached(src, tmp_path / "out", opt="ReleaseSmall")
    assert len(compiles) == 1
    spear_guest.build_cached(src, tmp_path / "out")
    assert len(compiles) == 2
    src.write_text(src.read_text() + "\n/* changed */\n")
    spear_guest.build_cached(src, tmp_path / "out")
    assert len(compiles) == 3
    out.write_bytes(b"\0asm junk")
    spear_guest.build_cached(src, tmp_path / "out")
    assert len(compiles) == 4 and out.read_bytes().startswith(b"\0asm\x01")
    assert sidecar.read_text().split()[0] != key


def test_build_cached_concurrent(engine: wasmtime.Engine, tmp_path: Path) -> None:
    src = tmp_path / "c.c"
    src.write_text((FIXTURES / "multi.c").read_text())
    out_dir = tmp_path / "out"
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: spear_guest.build_cached(src, out_dir), range(6)))
    assert set(results) == {out_dir / "c.wasm"}
    assert sorted(p.name for p in out_dir.iterdir()) == ["c.wasm", "c.wasm.hash"]
    assert Host(engine, results[0]).call("reverse", b"ab") == (0, b"ba", 0)
    # and it is a cache hit now
    mtime = results[0].stat().st_mtime_ns
    spear_guest.build_cached(src, out_dir)
    assert results[0].stat().st_mtime_ns == mtime


# -- what the build does for C guests ---------------------------------------------------------

C_LIBC_NAMES = r"""
#include "spear.h"

/* strlen, memcmp and memcpy are spear.h's own (freestanding); clang must not compile their
 * loops into calls to themselves */
SPEAR_HANDLER(len) {
    char *s = (char *)spear_alloc(req->input_len + 1);
    if (s == NULL) return spear_error(SPEAR_CODE_NOMEM, "oom");
    memcpy(s, req->input, req->input_len);
    s[req->input_len] = 0;
    char *out = (char *)spear_alloc(20);
    return spear_output(out, spear_fmt_u64(out, strlen(s)));
}

SPEAR_HANDLER(cmp) {
    uint32_t half = req->input_len / 2;
    int c = memcmp(req->input, req->input + half, half);
    return spear_output_str(c == 0 ? "same" : c < 0 ? "less" : "more");
}

/* 128-bit multiply and divide: compiler-rt's __multi3 and __udivti3 */
SPEAR_HANDLER(wide) {
    uint64_t a, b;
    if (req->input_len != 16) return spear_error(400, "16 bytes");
    memcpy(&a, req->input, 8);
    memcpy(&b, req->input + 8, 8);
    unsigned __int128 p = (unsigned __int128)a * b;
    unsigned __int128 q = p / (b | 1);
    uint64_t *out = (uint64_t *)spear_alloc(32);
    out[0] = (uint64_t)p;
    out[1] = (uint64_t)(p >> 64);
    out[2] = (uint64_t)q;
    out[3] = (uint64_t)(q >> 64);
    return spear_output(out, 32);
}
"""


@pytest.fixture(scope="module")
def libc_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("libc_names")
    (d / "names.c").write_text(C_LIBC_NAMES)
    return spear_guest.build(d / "names.c", d / "names.wasm")


def test_strlen_and_memcmp_answer_instead_of_calling_themselves(
    engine: wasmtime.Engine, libc_names: Path
) -> None:
    h = Host(engine, libc_names)
    for text in [b"", b"a", b"hello world", b"x" * 5000]:
        assert h.call("len", text) == (0, str(len(text)).encode(), 0)
    assert h.call("cmp", b"abab") == (0, b"same", 0)
    assert h.call("cmp", b"abac") == (0, b"less", 0)
    assert h.call("cmp", b"acab") == (0, b"more", 0)


def test_128_bit_arithmetic_links_against_compiler_rt(
    engine: wasmtime.Engine, libc_names: Path
) -> None:
    h = Host(engine, libc_names)
    for a, b in [(3, 5), (2**64 - 1, 2**64 - 1), (0x123456789ABCDEF, 0xFEDCBA987654321), (7, 0)]:
        status, out, _ = h.call("wide", struct.pack("<QQ", a, b))
        assert status == 0
        lo, hi, qlo, qhi = struct.unpack("<QQQQ", out)
        product = a * b
        assert lo + (hi << 64) == product
        assert qlo + (qhi << 64) == product // (b | 1)


def test_debug_sections_are_stripped_unless_debug(tmp_path: Path) -> None:
    from guest_support import wasm_sections

    plain = spear_guest.build(FIXTURES / "multi.c", tmp_path / "plain.wasm")
    debug = spear_guest.build(FIXTURES / "multi.c", tmp_path / "debug.wasm", debug=True)
    plain_sections = wasm_sections(plain.read_bytes())
    assert "name" in plain_sections  # traps still name functions
    assert not [s for s in plain_sections if s.startswith(".debug")]
    assert ".debug_info" in wasm_sections(debug.read_bytes())
    assert plain.stat().st_size < debug.stat().st_size


WARNS = """#include "spear.h"
static int f(int x) { if (x) return 1; }
SPEAR_HANDLER(w) { int x = 2; x == 3; return spear_output_str(f(x) ? "a" : "b"); }
"""


def test_compiler_warnings_are_shown_whole_and_the_module_is_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "warns.c"
    src.write_text(WARNS)
    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "build", str(src), "-o", str(tmp_path / "w.wasm")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warns.c:2:" in proc.stderr and "-Wreturn-type" in proc.stderr
    assert "warns.c:3:" in proc.stderr and "-Wunused-comparison" in proc.stderr
    assert "2 warnings generated." in proc.stderr
    assert proc.stdout.startswith(f"built {tmp_path / 'w.wasm'} (")
    # the library returns them and logs them at WARNING
    with caplog.at_level(logging.WARNING, logger="spear_guest"):
        result = spear_guest.build_module(src, tmp_path / "w2.wasm")
    assert "-Wreturn-type" in result.diagnostics and "-Wunused-comparison" in result.diagnostics
    assert any("-Wreturn-type" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ('#include <stdio.h>\n#include "spear.h"\nSPEAR_HANDLER(x) { return 0; }\n', "stdio.h"),
        ('#include "spear.h"\nvoid *malloc(unsigned long);\n'
         "SPEAR_HANDLER(x) { return spear_output(malloc(4), 4); }\n", "malloc"),
    ],
)
def test_libc_in_a_freestanding_guest_suggests_wasi(
    tmp_path: Path, source: str, needle: str
) -> None:
    src = tmp_path / "libc.c"
    src.write_text(source)
    with pytest.raises(spear_guest.BuildError) as exc:
        spear_guest.build(src, tmp_path / "libc.wasm")
    assert needle in exc.value.hint and "--wasi" in exc.value.hint
    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "build", str(src), "-o", str(tmp_path / "l.wasm")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("spear-guest: hint: ") and "--wasi" in last and needle in last


def test_slow_compiles_report_progress_while_they_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spear_guest import runner

    monkeypatch.setattr(runner, "PROGRESS_AFTER_S", 0.05)
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.1)
    with caplog.at_level(logging.INFO, logger="spear_guest"):
        done = runner.run_compiler(
            [sys.executable, "-c",
             "import sys, time; time.sleep(0.6); print('e', file=sys.stderr)"],
            src=tmp_path / "slow.c", what="compiling", slow_hint="because it is slow",
        )
    assert done.returncode == 0 and done.output == "e\n"
    messages = [r.getMessage() for r in caplog.records]
    assert "still running" in messages[0] and "because it is slow" in messages[0]
    assert len([m for m in messages if "still running" in m]) >= 2
    assert "finished after" in messages[-1]


def test_a_compiler_that_hangs_is_stopped(tmp_path: Path) -> None:
    from spear_guest import runner

    with pytest.raises(spear_guest.BuildError, match="timed out"):
        runner.run_compiler([sys.executable, "-c", "import time; time.sleep(30)"],
                            src=tmp_path / "hang.c", what="compiling", timeout=0.5)


def test_build_all_names_a_missing_toolchain_and_skips_it_only_when_asked(
    tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "echo.c").write_text((FIXTURES / "echo.c").read_text())
    (src / "echo.rs").write_text((FIXTURES / "echo.rs").read_text())
    env = {**os.environ, "SPEAR_GUEST_RUSTC": str(tmp_path / "no-such-rustc")}
    cmd = [sys.executable, "-m", "spear_guest", "build-all", str(src), "-o", str(tmp_path / "o")]
    strict = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert strict.returncode == 1
    assert "no rustc with the wasm32-unknown-unknown standard library" in strict.stderr
    assert "no-such-rustc" in strict.stderr and "libstd-rust-dev-wasm32" in strict.stderr
    lenient = subprocess.run([*cmd, "--skip-unavailable"], capture_output=True, text=True,
                             env=env, check=False)
    assert lenient.returncode == 0, lenient.stderr
    lines = lenient.stdout.splitlines()
    assert any(line.startswith(f"skipped {src / 'echo.rs'}: no rustc") for line in lines)
    assert lines[-1] == "0 built, 1 up to date, 1 skipped"  # echo.c was built by the first run
    assert not (tmp_path / "o" / "echo.rs.wasm").exists()


def test_output_names_keep_languages_apart() -> None:
    assert spear_guest.output_name(Path("a/echo.c")) == "echo.wasm"
    assert spear_guest.output_name(Path("a/echo.rs")) == "echo.rs.wasm"
    assert spear_guest.output_name(Path("a/echo.zig")) == "echo.zig.wasm"
    with pytest.raises(spear_guest.BuildError, match=r"don't know how to build \.cpp"):
        spear_guest.output_name(Path("a/echo.cpp"))


def test_sdk_paths_point_at_the_files_the_build_uses() -> None:
    assert (spear_guest.sdk_path("c") / "spear.h").is_file()
    assert (spear_guest.sdk_path("rust") / "Cargo.toml").is_file()
    assert (spear_guest.sdk_path("rust") / "src" / "lib.rs").is_file()
    assert spear_guest.sdk_path("zig").name == "spear.zig" and spear_guest.sdk_path("zig").is_file()
