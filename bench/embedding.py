"""Embedding rows: a Python host function round trip, and a WASI command as a function.

- relay: guest -> Python host function -> guest, 64 B. spear: handler `relay` of
  wasm_fixtures/host_call.c calling host function `transform` (`spear.wasm.load(...,
  host_functions=...)`, `WasmInstance.call`); anchor: Extism `Plugin.call` on
  bench/extism_relay.wat, which hands its input to a `@extism.host_fn` the same way. Both host
  functions return their input.
- WASI command: bench/wasi_cat.wat (`_start` copies stdin to stdout, no SDK), 64 B in and
  out. spear: `call("_start", input)` (a fresh instance from InstancePre per call); anchor:
  wasmtime-py running the same command with a fresh store per call (Linker with WASI, stdin
  from a file, stdout through a custom callback: the stock API has no stdin from memory).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import spear_guest

from bench.table import Row, interleaved_us

ROOT = Path(__file__).resolve().parent.parent
SECTION = "embedding"
PAYLOAD = b"x" * 64


def _repeat(fn: Callable[[], object]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            fn()
    return run


def _extism_relay() -> Callable[[bytes], bytes]:
    import extism
    import wasmtime

    @extism.host_fn(name="transform")  # type: ignore[untyped-decorator]
    def transform(data: bytes) -> bytes:
        return data

    wasm = bytes(wasmtime.wat2wasm((Path(__file__).parent / "extism_relay.wat").read_text()))
    plugin = extism.Plugin(wasm, wasi=False, functions=[transform])
    return lambda data: bytes(plugin.call("relay", data))


class StockCommand:
    """The command run the stock wasmtime-py way: a new store (and WASI context) per call."""

    def __init__(self, wasm: bytes, stdin: Path) -> None:
        import wasmtime

        self.wasmtime = wasmtime
        self.engine = wasmtime.Engine()
        self.module = wasmtime.Module(self.engine, wasm)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()
        self.pre = self.linker.instantiate_pre(self.module)
        self.stdin = str(stdin)

    def call(self) -> bytes:
        wasmtime = self.wasmtime
        out = bytearray()
        config = wasmtime.WasiConfig()
        config.argv = ["cat"]
        config.stdin_file = self.stdin
        config.stdout_custom = out.extend
        store = wasmtime.Store(self.engine)
        store.set_wasi(config)
        instance = self.pre.instantiate(store)
        instance.exports(store)["_start"](store)
        return bytes(out)


def run(args: argparse.Namespace) -> list[Row]:
    import wasmtime
    from spear import wasm as spear_wasm

    host_call = spear_guest.build_cached(ROOT / "wasm_fixtures" / "host_call.c",
                                         ROOT / "wasm_fixtures" / "build")
    module = spear_wasm.load(host_call, host_functions={"transform": lambda data: data})
    instance = module.instantiate()
    extism_relay = _extism_relay()
    assert instance.call("relay", PAYLOAD) == PAYLOAD
    assert extism_relay(PAYLOAD) == PAYLOAD
    batch = 250 if args.quick else 1000
    rounds = 9 if args.quick else 21
    timed = interleaved_us(
        {"extism": _repeat(lambda: extism_relay(PAYLOAD)),
         "spear": _repeat(lambda: instance.call("relay", PAYLOAD))},
        {"extism": max(3, batch // 10), "spear": batch}, rounds=rounds)
    rows = [Row(SECTION, "extism relay 64 B", timed["extism"],
                note="anchor: Plugin.call -> @host_fn"),
            Row(SECTION, "spear relay 64 B", timed["spear"], "extism relay 64 B",
                timed["spear"] / timed["extism"], target="<= 0.20x",
                met=timed["spear"] / timed["extism"] <= 0.2,
                note="call -> Python host function")]
    instance.close()

    cat = bytes(wasmtime.wat2wasm((Path(__file__).parent / "wasi_cat.wat").read_text()))
    command = spear_wasm.load(cat).instantiate()
    with tempfile.TemporaryDirectory() as tmp:
        stdin = Path(tmp) / "stdin"
        stdin.write_bytes(PAYLOAD)
        stock = StockCommand(cat, stdin)
        assert stock.call() == PAYLOAD
        assert command.call("_start", PAYLOAD) == PAYLOAD
        batch = 25 if args.quick else 100
        timed = interleaved_us(
            {"stock": _repeat(stock.call),
             "spear": _repeat(lambda: command.call("_start", PAYLOAD))},
            {"stock": batch, "spear": batch}, rounds=rounds)
    command.close()
    rows.append(Row(SECTION, "wasmtime-py WASI command 64 B", timed["stock"],
                    note="anchor: fresh store per call"))
    rows.append(Row(SECTION, "spear WASI command 64 B", timed["spear"],
                    "wasmtime-py WASI command 64 B", timed["spear"] / timed["stock"],
                    target="<= 1.00x", met=timed["spear"] / timed["stock"] <= 1.0,
                    note='call("_start", input)'))
    return rows
