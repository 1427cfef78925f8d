"""An oracle host for the guest SDK tests: the host side of ABI v1 written by hand on
wasmtime-py's stock API, independent of spear's own host (no spear code involved), so the
SDKs are checked against the contract rather than against our implementation of it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

MAGIC = 0x52455053
CB_SIZE = 80
PAGE = 65536
ABI_FUNCTIONS = {"spear_abi_version", "spear_init", "spear_reserve"}


def new_engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.consume_fuel = True
    return wasmtime.Engine(config)


class Host:
    """A minimal by-hand implementation of the host side of the ABI v1."""

    def __init__(
        self,
        engine: wasmtime.Engine,
        path: Path,
        *,
        memory_limit: int | None = None,
        outbox_limit: int = 1024,
    ) -> None:
        self.store = wasmtime.Store(engine)
        self.store.set_fuel(10**12)
        if memory_limit is not None:
            self.store.set_limits(memory_size=memory_limit)
        self.module = wasmtime.Module.from_file(engine, str(path))
        self.outbox: list[tuple[bytes, bytes]] = []
        self.inbox: list[tuple[bytes, bytes]] = []
        self.logs: list[tuple[int, str]] = []
        self.clock = 123_456_789_012
        self.outbox_limit = outbox_limit
        linker = wasmtime.Linker(engine)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("spear", "send", wasmtime.FuncType([i32] * 4, [i32]), self._send, True)
        linker.define_func("spear", "recv", wasmtime.FuncType([i32] * 5, [i32]), self._recv, True)
        linker.define_func("spear", "log", wasmtime.FuncType([i32] * 3, []), self._log, True)
        linker.define_func("spear", "now", wasmtime.FuncType([], [i64]), self._now)
        self.uses_wasi = any(i.module == "wasi_snapshot_preview1" for i in self.module.imports)
        if self.uses_wasi:
            linker.define_wasi()
            self.store.set_wasi(wasmtime.WasiConfig())  # no files, env, args
        self.instance = linker.instantiate(self.store, self.module)
        exports = self.instance.exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self.exports = exports
        self.cb = 0

    # -- host imports ---------------------------------------------------------------------
    def _mem(self, caller: wasmtime.Caller) -> wasmtime.Memory:
        mem = caller.get("memory")
        assert isinstance(mem, wasmtime.Memory)
        return mem

    def _send(self, caller: wasmtime.Caller, tp: int, tl: int, dp: int, dl: int) -> int:
        if len(self.outbox) >= self.outbox_limit:
            return -2
        mem = self._mem(caller)
        self.outbox.append(
            (bytes(mem.read(caller, tp, tp + tl)), bytes(mem.read(caller, dp, dp + dl)))
        )
        return 0

    def _recv(self, caller: wasmtime.Caller, tb: int, tc: int, db: int, dc: int, sp: int) -> int:
        if not self.inbox:
            return 0
        mem = self._mem(caller)
        topic, data = self.inbox[0]
        mem.write(caller, struct.pack("<II", len(topic), len(data)), sp)
        if len(topic) > tc or len(data) > dc:
            return -4
        mem.write(caller, topic, tb)
        mem.write(caller, data, db)
        self.inbox.pop(0)
        return 1

    def _log(self, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
        self.logs.append((level, self._mem(caller).read(caller, ptr, ptr + length).decode()))

    def _now(self) -> int:
        return self.clock

    # -- ABI ------------------------------------------------------------------------------
    def func(self, name: str) -> Callable[..., Any]:
        f = self.exports[name]
        assert isinstance(f, wasmtime.Func)
        return lambda *args: f(self.store, *args)

    def u32(self, addr: int) -> int:
        value: int = struct.unpack("<I", self.memory.read(self.store, addr, addr + 4))[0]
        return value

    def put_u32(self, addr: int, value: int) -> None:
        self.memory.write(self.store, struct.pack("<I", value & 0xFFFFFFFF), addr)

    def init(self) -> int:
        if "_initialize" in self.exports:  # WASI reactor: libc's constructors first
            self.func("_initialize")()
        assert self.func("spear_abi_version")() == 1
        self.cb = self.func("spear_init")(1)
        return self.cb

    def mem_size(self) -> int:
        return self.memory.data_len(self.store)

    def call(
        self, handler: str, data: bytes = b"", meta: list[tuple[str, str]] | None = None
    ) -> tuple[int, bytes, int]:
        """Returns (status, output, err_code); self.last holds the raw pointers."""
        if not self.cb:
            self.init()
        name = handler.encode()
        enc_meta = b"".join(
            struct.pack("<I", len(k.encode()))
            + k.encode()
            + struct.pack("<I", len(v.encode()))
            + v.encode()
            for k, v in (meta or [])
        )
        total = len(name) + len(enc_meta) + len(data)
        if total > self.u32(self.cb + 12):
            assert self.func("spear_reserve")(total) == 0
        req_ptr, req_cap = self.u32(self.cb + 8), self.u32(self.cb + 12)
        assert req_cap >= total and req_ptr + req_cap <= self.mem_size()
        name_ptr = req_ptr
        meta_ptr = name_ptr + len(name)
        input_ptr = meta_ptr + len(enc_meta)
        self.memory.write(self.store, name + enc_meta + data, req_ptr)
        fields = struct.pack(
            "<IIIIIIIIQQIII",
            name_ptr,
            len(name),
            meta_ptr,
            len(enc_meta),
            input_ptr,
            len(data),
            len(meta or []),
            0,
            7,
            0,
            0,
            0,
            0,
        )
        self.memory.write(self.store, fields, self.cb + 16)
        status = self.func(f"spear.handler.{handler}")()
        out_ptr, out_len, err = struct.unpack(
            "<IIi", self.memory.read(self.store, self.cb + 64, self.cb + 76)
        )
        self.last = {"input_ptr": input_ptr, "out_ptr": out_ptr, "out_len": out_len}
        if out_ptr + out_len > self.mem_size():
            return status, b"<out of bounds>", err
        return status, bytes(self.memory.read(self.store, out_ptr, out_ptr + out_len)), err
