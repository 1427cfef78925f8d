"""WASM rows: spear's sync call and async channel against Extism and stock wasmtime-py.

All four run the same job, an echo, in the same process and the same run:
- spear: `WasmInstance.call` and `MemoryChannel.request_response` on wasm_fixtures/echo.c;
- wasmtime-py: the same echo.wasm driven through the ABI with `Func.__call__` and
  `Memory.read/write` (the stock Python API);
- Extism: `Plugin.call` on bench/extism_echo.wat, which moves data the way Extism's C PDK does.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import spear_guest

from bench.table import Row, interleaved_us, median_us

ROOT = Path(__file__).resolve().parent.parent
SIZES = [("64 B", 64), ("4 KiB", 4096), ("1 MiB", 1 << 20)]
SECTION = "wasm"


def _echo_wasm() -> Path:
    return spear_guest.build_cached(ROOT / "wasm_fixtures" / "echo.c",
                                    ROOT / "wasm_fixtures" / "build")


def _batch(size: int, quick: bool) -> int:
    base = 1000 if size <= 4096 else 20
    return max(5, base // (4 if quick else 1))


class WasmtimePyEcho:
    """The echo guest driven through wasmtime-py's generic API (the stock way)."""

    def __init__(self, wasm: bytes) -> None:
        import wasmtime

        self.store = wasmtime.Store()
        module = wasmtime.Module(self.store.engine, wasm)
        instance = wasmtime.Instance(self.store, module, [])
        exports = instance.exports(self.store)
        self.memory = exports["memory"]
        exports["spear_abi_version"](self.store)
        self.ctrl = exports["spear_init"](self.store, 1)
        self.reserve = exports["spear_reserve"]
        self.handler = exports["spear.handler.echo"]

    def call(self, data: bytes) -> bytes:
        store, memory, ctrl = self.store, self.memory, self.ctrl
        req_ptr, req_cap = struct.unpack("<II", memory.read(store, ctrl + 8, ctrl + 16))
        if len(data) + 4 > req_cap:
            self.reserve(store, len(data) + 4)
            req_ptr, req_cap = struct.unpack("<II", memory.read(store, ctrl + 8, ctrl + 16))
        memory.write(store, b"echo", req_ptr)
        memory.write(store, data, req_ptr + 4)
        memory.write(store, struct.pack("<IIIIIIIIQQIII", req_ptr, 4, req_ptr + 4, 0,
                                        req_ptr + 4, len(data), 0, 0, 1, 0, 0, 0, 0), ctrl + 16)
        status = self.handler(store)
        out_ptr, out_len, _ = struct.unpack("<III", memory.read(store, ctrl + 64, ctrl + 76))
        assert status == 0
        return bytes(memory.read(store, out_ptr, out_ptr + out_len))


def _extism_plugin() -> object:
    import extism
    import wasmtime

    wasm = bytes(wasmtime.wat2wasm((Path(__file__).parent / "extism_echo.wat").read_text()))
    return extism.Plugin(wasm, wasi=False)


def _repeat(fn: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()
    return run


def _async_runner(loop: asyncio.AbstractEventLoop, channel: object,
                  data: bytes) -> Callable[[int], None]:
    from spear.messages import ExecutionRequest

    call = channel.request_response  # type: ignore[attr-defined]
    request = ExecutionRequest("bench", "echo", data)

    async def calls(n: int) -> None:
        for _ in range(n):
            await call(request)

    return lambda n: loop.run_until_complete(calls(n))


def run(args: argparse.Namespace) -> list[Row]:
    import wasmtime
    from spear import wasm as spear_wasm
    from spear.channel.memory import MemoryChannel, open_memory_channel
    from spear.instance_id import RuntimeInstanceId, RuntimeType

    path = _echo_wasm()
    wasm_bytes = path.read_bytes()
    module = spear_wasm.load(path)
    instance = module.instantiate()
    stock = WasmtimePyEcho(wasm_bytes)
    plugin = _extism_plugin()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def make_channel() -> MemoryChannel:
        iid = RuntimeInstanceId(RuntimeType.WASM, "bench")
        return await open_memory_channel(iid, module)

    channel = loop.run_until_complete(make_channel())
    rows: list[Row] = []
    for label, size in SIZES:
        data = bytes(range(256)) * (size // 256) if size >= 256 else b"x" * size
        assert instance.call("echo", data) == data
        assert stock.call(data) == data
        assert plugin.call("echo", data) == data  # type: ignore[attr-defined]
        batch = _batch(size, args.quick)
        timed = interleaved_us(
            {
                "extism": _repeat(lambda d=data: plugin.call("echo", d)),  # type: ignore[attr-defined]
                "stock": _repeat(lambda d=data: stock.call(d)),
                "sync": _repeat(lambda d=data: instance.call("echo", d)),
                "async": _async_runner(loop, channel, data),
            },
            {"extism": max(3, batch // (10 if size > 4096 else 1)), "stock": batch,
             "sync": batch, "async": batch},
            rounds=9 if args.quick else 21,
        )
        extism_us, stock_us, sync_us, async_us = (
            timed["extism"], timed["stock"], timed["sync"], timed["async"])
        anchor = f"extism {label}"
        rows.append(Row(SECTION, anchor, extism_us, note="anchor: Plugin.call"))
        rows.append(Row(SECTION, f"wasmtime-py {label}", stock_us, anchor, stock_us / extism_us,
                        note="Func.__call__"))
        sync_target = 0.1 if size <= 64 else (0.2 if size >= 1 << 20 else None)
        rows.append(Row(SECTION, f"spear sync {label}", sync_us, anchor, sync_us / extism_us,
                        target=f"<= {sync_target:.2f}x" if sync_target else "",
                        met=(sync_us / extism_us <= sync_target) if sync_target else None))
        async_target = 0.2
        rows.append(Row(SECTION, f"spear async {label}", async_us, anchor, async_us / extism_us,
                        target=f"<= {async_target:.2f}x" if size in (64, 1 << 20) else "",
                        met=(async_us / extism_us <= async_target)
                        if size in (64, 1 << 20) else None))

    compile_us = median_us(lambda: wasmtime.Module(wasmtime.Engine(), wasm_bytes), batch=3,
                           rounds=7)
    rows.append(Row(SECTION, "Module compile (echo)", compile_us, note="anchor"))
    start_us = median_us(lambda: module.instantiate().close(), batch=50)
    rows.append(Row(SECTION, "new instance from compiled module", start_us,
                    "Module compile (echo)", start_us / compile_us, target="< 1 ms",
                    met=start_us < 1000))
    loop.run_until_complete(channel.close())
    loop.close()
    instance.close()
    return rows
