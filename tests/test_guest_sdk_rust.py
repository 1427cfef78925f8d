"""The Rust guest SDK (guest_sdk/rust, the `spear` crate) driven through ABI v1 by the oracle
host (wasmtime-py, no spear host code), the rustc it is built with, and the Cargo route."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import spear_guest
import wasmtime
from guest_oracle import ABI_FUNCTIONS, PAGE, Host, new_engine
from guest_support import build_source, toolchains_required
from spear_guest.toolchains.rustc import find_rustc, rustc_candidates

pytestmark = pytest.mark.timeout(300)

# Every SDK feature the fixtures do not use, in a #![no_std] guest (core only).
NO_STD_GUEST = r"""
#![no_std]
use core::fmt::Write;
use spear::{Error, Output, Request, Result};

spear::panic_handler!();
spear::handler!(count);
spear::handler!(copy);
spear::handler!(grow);
spear::handler!(info);
spear::handler!(large);
spear::handler!(panics);
spear::handler!(empty);
spear::handler!("with-dash.v2" => dashed);
spear::dispatch!(route);

static mut COUNTER: *mut u32 = core::ptr::null_mut();

fn count(req: &Request) -> Result {
    let n = unsafe {
        if COUNTER.is_null() {
            let block = spear::alloc_persistent(4).ok_or(Error::new(12, "oom"))?;
            COUNTER = block.as_mut_ptr() as *mut u32;
        }
        *COUNTER += 1;
        *COUNTER
    };
    let mut b = req.buf();
    write!(b, "{}", n)?;
    Ok(b.into())
}

fn copy(req: &Request) -> Result {
    Ok(req.copy(req.input())?.into())
}

// A buffer grown from 1 byte to 64 KiB stays where it started (the arena grows it in place).
fn grow(req: &Request) -> Result {
    let mut b = req.buf();
    b.push_byte(b'x')?;
    let first = b.as_bytes().as_ptr();
    while b.len() < 65536 {
        let n = b.len();
        for _ in 0..n {
            b.push_byte(b'x')?;
        }
    }
    if b.as_bytes().as_ptr() != first {
        return Err(Error::new(1, "moved"));
    }
    let mut out = req.buf();
    write!(out, "in place {}", b.len())?;
    Ok(out.into())
}

fn info(req: &Request) -> Result {
    let mut b = req.buf_with_capacity(8)?;
    write!(b, "{} id={} deadline={:?} i64={}", req.name(), req.request_id(), req.deadline_ns(),
           i64::MIN)?;
    Ok(b.into())
}

// Input: decimal N. Output: N bytes, byte i = i % 251, built in the arena.
fn large(req: &Request) -> Result {
    let text = core::str::from_utf8(req.input()).map_err(|_| Error::new(400, "not text"))?;
    let n: usize = text.parse().map_err(|_| Error::new(400, "not a number"))?;
    let out = req.alloc(n)?;
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    Ok(out.into())
}

fn panics(req: &Request) -> Result {
    if req.input().is_empty() {
        panic!("no input");
    }
    Ok(b"fine".into())
}

fn empty(_req: &Request) -> Result {
    Ok(Output::empty())
}

fn dashed(req: &Request) -> Result {
    Ok(req.name_bytes().into())
}

fn route(req: &Request) -> Result {
    if req.name() == "hello" {
        return Ok("hello from dispatch".into());
    }
    Err(Error::bytes(7, req.name_bytes()))
}
"""

# A guest that uses std: std's allocator and the SDK's arena share memory without overlap.
STD_GUEST = r"""
use spear::{Error, Request, Result};

spear::handler!(mix);

fn mix(req: &Request) -> Result {
    let input = req.input();
    if input.is_empty() {
        return Err(Error::new(400, "input must not be empty"));
    }
    let mut out = req.buf();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..48u8 {
        blocks.push(vec![b'a' + i % 26; 70000]);
        out.push(input)?;
        for byte in req.alloc(50000)?.iter_mut() {
            *byte = 0xEE;
        }
    }
    for (i, block) in blocks.iter().enumerate() {
        if block.iter().any(|&b| b != b'a' + (i as u8) % 26) {
            return Err(Error::new(1, "a std block was clobbered"));
        }
    }
    if out.as_bytes().chunks(input.len()).any(|c| c != input) {
        return Err(Error::new(2, "the arena was clobbered"));
    }
    Ok(out.into())
}
"""


@pytest.fixture(scope="module")
def engine() -> wasmtime.Engine:
    return new_engine()


@pytest.fixture(scope="module")
def no_std_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_source(tmp_path_factory.mktemp("rs"), "features.rs", NO_STD_GUEST)


@pytest.fixture(scope="module")
def std_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_source(tmp_path_factory.mktemp("rs"), "mix.rs", STD_GUEST)


def function_exports(path: Path) -> dict[str, wasmtime.FuncType]:
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(path))
    return {e.name: e.type for e in module.exports if isinstance(e.type, wasmtime.FuncType)}


def test_a_no_std_guest_exports_the_abi_and_its_handlers_and_imports_nothing(
    no_std_guest: Path,
) -> None:
    functions = function_exports(no_std_guest)
    handlers = {"count", "copy", "grow", "info", "large", "panics", "empty", "with-dash.v2"}
    assert set(functions) == ABI_FUNCTIONS | {"spear_dispatch"} | {
        f"spear.handler.{h}" for h in handlers
    }
    i32 = wasmtime.ValType.i32()
    assert list(functions["spear_init"].params) == [i32]
    assert all(list(functions[f"spear.handler.{h}"].results) == [i32] for h in handlers)
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(no_std_guest))
    assert list(module.imports) == []


def test_persistent_memory_survives_calls_and_arena_traffic(
    engine: wasmtime.Engine, no_std_guest: Path
) -> None:
    h = Host(engine, no_std_guest)
    for i in range(1, 4):
        status, out, _ = h.call("copy", b"z" * 5000)
        assert (status, out) == (0, b"z" * 5000)
        assert h.last["out_ptr"] != h.last["input_ptr"]  # a copy, in the arena
        assert h.call("count") == (0, str(i).encode(), 0)
    cb = h.cb
    assert h.func("spear_reserve")(h.u32(cb + 12) * 4) == 0  # moves past the persistent block
    assert h.call("count") == (0, b"4", 0)


def test_request_fields_names_and_dispatch(engine: wasmtime.Engine, no_std_guest: Path) -> None:
    h = Host(engine, no_std_guest)
    assert h.call("info") == (0, b"info id=7 deadline=None i64=-9223372036854775808", 0)
    assert h.call("with-dash.v2")[:2] == (0, b"with-dash.v2")
    assert h.call("empty") == (0, b"", 0)
    assert h.call("grow") == (0, b"in place 65536", 0)
    cb = h.cb
    for name, expected in [("hello", (0, b"hello from dispatch", 7)), ("other", (1, b"other", 7))]:
        h.memory.write(h.store, name.encode(), h.u32(cb + 8))
        h.put_u32(cb + 16, h.u32(cb + 8))
        h.put_u32(cb + 20, len(name))
        h.put_u32(cb + 72, 7)  # err_code is only meaningful with status 1
        assert h.func("spear_dispatch")() == expected[0]
        out_ptr, out_len, err = struct.unpack("<IIi", h.memory.read(h.store, cb + 64, cb + 76))
        assert bytes(h.memory.read(h.store, out_ptr, out_ptr + out_len)) == expected[1]
        assert err == expected[2]


def test_echo_fixture_is_zero_copy_and_grows_the_request_buffer(
    engine: wasmtime.Engine, wasm_fixture: Callable[[str], Path]
) -> None:
    h = Host(engine, wasm_fixture("echo.rs"))
    cb = h.init()
    assert cb % 8 == 0 and h.u32(cb + 12) >= 4096
    for payload in [b"", b"a", bytes(range(256)) * 100, b"q" * (3 * 1024 * 1024 + 5)]:
        assert h.call("echo", payload) == (0, payload, 0)
        assert h.last["out_ptr"] == h.last["input_ptr"] and h.last["out_len"] == len(payload)


@pytest.mark.parametrize("n", [0, 1, 250, 251, 100_000, 3_000_000])
def test_arena_outputs_of_any_size(engine: wasmtime.Engine, no_std_guest: Path, n: int) -> None:
    h = Host(engine, no_std_guest)
    status, out, _ = h.call("large", str(n).encode())
    assert status == 0 and out == bytes(i % 251 for i in range(n))


def test_the_arena_is_reused_and_out_of_memory_is_an_error(
    engine: wasmtime.Engine, no_std_guest: Path
) -> None:
    h = Host(engine, no_std_guest, memory_limit=8 * 1024 * 1024)
    h.call("large", b"2000000")
    size = h.mem_size()
    for _ in range(20):
        assert h.call("large", b"2000000")[0] == 0
    assert h.mem_size() == size
    assert h.call("large", b"100000000")[0::2] == (1, 12)
    assert h.call("large", b"12") == (0, bytes(range(12)), 0)  # usable again
    assert h.call("large", b"x")[0::2] == (1, 400)
    cb = h.cb
    before = h.memory.read(h.store, cb + 8, cb + 16)
    assert h.func("spear_reserve")(64 * 1024 * 1024) != 0
    assert h.func("spear_reserve")(-1) != 0
    assert h.memory.read(h.store, cb + 8, cb + 16) == before
    assert h.mem_size() <= 8 * 1024 * 1024 and h.mem_size() % PAGE == 0


def test_a_panic_traps(engine: wasmtime.Engine, no_std_guest: Path) -> None:
    h = Host(engine, no_std_guest)
    assert h.call("panics", b"x") == (0, b"fine", 0)
    with pytest.raises(wasmtime.Trap) as exc:
        h.call("panics", b"")
    assert exc.value.trap_code == wasmtime.TrapCode.UNREACHABLE


def test_std_allocations_and_the_arena_never_overlap(
    engine: wasmtime.Engine, std_guest: Path
) -> None:
    h = Host(engine, std_guest)
    sizes = []
    for k in range(6):
        payload = bytes([97 + k]) * (1000 * (k % 3 + 1))
        assert h.call("mix", payload) == (0, payload * 48, 0)
        sizes.append(h.mem_size())
    assert sizes[-1] == sizes[-4]
    assert h.call("mix", b"")[0::2] == (1, 400)


# -- the toolchain -----------------------------------------------------------------------------


def test_the_build_uses_a_rustc_that_has_the_wasm32_standard_library() -> None:
    try:
        rustc = find_rustc()
    except spear_guest.ToolchainMissing as exc:
        if toolchains_required():
            raise
        pytest.skip(str(exc))
    libdir = rustc.sysroot / "lib" / "rustlib" / "wasm32-unknown-unknown" / "lib"
    assert list(libdir.glob("libcore-*.rlib"))
    assert rustc.version.startswith("rustc ")


def test_a_rustc_without_the_target_is_passed_over_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        real = find_rustc()
    except spear_guest.ToolchainMissing as exc:
        if toolchains_required():
            raise
        pytest.skip(str(exc))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    sysroot = tmp_path / "sysroot"
    (sysroot / "lib" / "rustlib" / "x86_64-unknown-linux-gnu" / "lib").mkdir(parents=True)
    fake = fake_bin / "rustc"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "print('rustc 9.9.9 (fake)' if sys.argv[1] == '-V' else "
        f"{str(sysroot)!r})\n"
    )
    fake.chmod(0o755)
    monkeypatch.delenv("SPEAR_GUEST_RUSTC", raising=False)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{real.path.parent}")
    assert rustc_candidates()[:2] == [fake, real.path]
    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "toolchains"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"passed over {fake}: rustc 9.9.9 (fake), but {sysroot} has no " \
           "wasm32-unknown-unknown standard library" in proc.stderr
    assert f"Rust  {real.version} ({real.path})" in proc.stdout
    # told to use only the fake one, the build fails with what to install
    monkeypatch.setenv("SPEAR_GUEST_RUSTC", str(fake))
    src = tmp_path / "e.rs"
    src.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "spear_guest", "build", str(src), "-o", str(tmp_path / "e.wasm")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1
    assert "no rustc with the wasm32-unknown-unknown standard library" in proc.stderr
    assert "rustup target add wasm32-unknown-unknown" in proc.stderr
    assert "apt-get install rustc libstd-rust-dev-wasm32" in proc.stderr


def test_compile_errors_come_whole_with_a_hint(tmp_path: Path) -> None:
    src = tmp_path / "bad.rs"
    src.write_text("#![no_std]\nspear::handler!(echo);\n"
                   "fn echo(req: &spear::Request) -> spear::Result { Ok(req.input().into()) }\n")
    try:
        find_rustc()
    except spear_guest.ToolchainMissing as exc:
        if toolchains_required():
            raise
        pytest.skip(str(exc))
    with pytest.raises(spear_guest.BuildError) as exc:
        spear_guest.build(src, tmp_path / "bad.wasm")
    assert "#[panic_handler]" in exc.value.stderr
    assert "spear::panic_handler!();" in exc.value.hint


def test_a_cargo_project_builds_against_the_crate_by_path(tmp_path: Path) -> None:
    """guest_sdk/README.md's Cargo route: a path dependency on the crate, built with cargo for
    wasm32-unknown-unknown using the rustc spear-guest found."""
    try:
        rustc = find_rustc()
    except spear_guest.ToolchainMissing as exc:
        if toolchains_required():
            raise
        pytest.skip(str(exc))
    cargo = rustc.path.parent / "cargo"  # a cargo of another release may not fit this rustc
    if not cargo.is_file():
        if toolchains_required():
            pytest.fail(f"no cargo next to {rustc.path} (Debian: apt-get install cargo)")
        pytest.skip(f"no cargo next to {rustc.path}")
    project = tmp_path / "echo"
    (project / "src").mkdir(parents=True)
    (project / "Cargo.toml").write_text(
        "[package]\nname = \"echo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n"
        "[lib]\ncrate-type = [\"cdylib\"]\n\n"
        f"[dependencies]\nspear-guest = {{ path = \"{spear_guest.rust_crate_dir()}\" }}\n\n"
        "[profile.release]\npanic = \"abort\"\nopt-level = \"s\"\nstrip = \"debuginfo\"\n"
    )
    (project / "src" / "lib.rs").write_text(
        (Path(__file__).resolve().parents[1] / "wasm_fixtures" / "echo.rs").read_text()
    )
    env = {
        **os.environ,
        "RUSTC": str(rustc.path),
        "CARGO_HOME": str(tmp_path / "cargo-home"),  # nothing in HOME
        "CARGO_TARGET_DIR": str(tmp_path / "target"),
        "RUSTUP_AUTO_INSTALL": "0",
    }
    proc = subprocess.run(
        [str(cargo), "build", "--release", "--offline", "--target", "wasm32-unknown-unknown"],
        cwd=project, env=env, capture_output=True, text=True, check=False, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    module = tmp_path / "target" / "wasm32-unknown-unknown" / "release" / "echo.wasm"
    h = Host(new_engine(), module)
    for payload in [b"", b"cargo", b"x" * 100_000]:
        assert h.call("echo", payload) == (0, payload, 0)
