"""One guest instance and the fast call path through its linear memory.

The request goes straight into the guest's memory (one copy in), the handler is entered once
through `wasmtime_func_call_unchecked` with handles prepared at instantiation, and the
response is copied straight out (one copy out). Every pointer the guest hands back is checked
against the memory size after the call. A trap or timeout leaves the guest in an unknown
state, so the instance replaces its store with a fresh instance of the same module.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from spear.errors import ChannelClosed, ExecutionFailed, Timeout
from spear.transport.wasm import abi
from spear.transport.wasm.capi import (
    EXTERN_FUNC,
    EXTERN_MEMORY,
    TRAP_INTERRUPT,
    TRAP_NAMES,
    error_message,
    ffi,
    lib,
    one_line,
    trap_details,
)
from spear.transport.wasm.host_calls import GuestFault
from spear.transport.wasm.native_call import FUNCTIONS, from_native, native, native_ffi, to_native

if TYPE_CHECKING:
    from spear.transport.wasm.module import WasmModule

log = logging.getLogger("spear.wasm")

NO_DEADLINE = 1 << 62  # epoch ticks: effectively never
MAX_OUTBOX = 1024
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024

_REQUEST_pack_into = abi.REQUEST.pack_into
_RESPONSE_unpack_from = abi.RESPONSE.unpack_from
_call_unchecked = lib.wasmtime_func_call_unchecked
_memory_size = lib.wasmtime_memory_data_size
_set_deadline = lib.wasmtime_context_set_epoch_deadline
_monotonic_ns = time.monotonic_ns
_call: Any = native.spear_call if native is not None else None
_call_meta: Any = native.spear_call_meta if native is not None else None
FAST_TRAPPED = -1
FAST_BAD_POINTER = -4
FAST_STATUS = -3
_NULL = ffi.NULL


class CallFailure:
    """Why a guest call produced no output. Success is plain `bytes`, with nothing to build."""

    __slots__ = ("code", "message", "timed_out")

    def __init__(self, timed_out: bool, message: str, code: str | None) -> None:
        self.timed_out = timed_out
        self.message = message
        self.code = code

    def __repr__(self) -> str:
        return f"CallFailure({self.message!r}, code={self.code!r})"


CallResult = bytes | CallFailure


SETUP_TIMEOUT = 5.0  # seconds a guest gets for spear_init, spear_reserve, _initialize


class GuestTrapped(ExecutionFailed):
    """A set-up export trapped; carries the trap so callers can report it like any other."""

    def __init__(self, export: str, trap_code: int | None, message: str) -> None:
        self.export = export
        self.kind = _trap_kind(trap_code, message)
        self.reason = one_line(message) or self.kind
        super().__init__(f"guest trapped in {export}: {self.reason}", f"trap:{self.kind}")

    def result(self) -> CallResult:
        if self.kind == "interrupt":
            return CallFailure(
                False, f"guest did not finish {self.export} within {SETUP_TIMEOUT} s",
                "trap:interrupt")
        return CallFailure(False, str(self), f"trap:{self.kind}")


def _trap_kind(code: int | None, message: str) -> str:
    if code is not None:
        return TRAP_NAMES.get(code, "trap")
    # Traps raised by our host calls carry no wasmtime code; their message names the call.
    return "bad_host_call" if "spear." in message else "trap"


def _signed(err_code: int) -> str:
    """The guest's `err_code` is an i32 (docs/wasm-abi.md); it arrives as a u32."""
    return str(err_code - (1 << 32) if err_code >= 1 << 31 else err_code)


class WasmInstance:
    """A live instance of a `WasmModule`. Not thread-safe by design: calls are serialised."""

    def __init__(self, module: WasmModule, *, label: str | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.module = module
        self.label = label or module.name
        self.max_message_size = max_message_size
        self.outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self.inbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._calls = 0  # request ids on the pure-Python path
        self.replacements = 0
        self._lock = threading.Lock()
        self._ticker = module.engine.ticker
        self._handle = ffi.new_handle(self)
        self._slots = ffi.new("wasmtime_val_raw_t[1]")
        self._trap = ffi.new("wasm_trap_t **")
        self._status = ffi.cast("int32_t *", self._slots)  # the handler's i32 result
        self._fast: Any = native_ffi.new("spear_fast_t *") if native is not None else None
        self._fuel = module.fuel
        self._live = False
        self._store: Any = _NULL
        self._closed = False
        self._new_store()

    # ----------------------------------------------------------------- set-up

    def _new_store(self) -> None:
        module = self.module
        store = lib.wasmtime_store_new(module.engine.ptr, self._handle, _NULL)
        lib.wasmtime_store_limiter(store, module.memory_limit, -1, -1, -1, -1)
        context = lib.wasmtime_store_context(store)
        instance = ffi.new("wasmtime_instance_t *")
        try:
            lib.wasmtime_context_set_epoch_deadline(context, NO_DEADLINE)
            if module.fuel is not None:
                self._check(lib.wasmtime_context_set_fuel(context, module.fuel))
            if module.uses_wasi:
                self._check(lib.wasmtime_context_set_wasi(context, self._wasi_config()))
            module._instantiate_raw(context, instance)
            self._store, self._context, self._instance = store, context, instance
            self._live = True
            self._funcs: dict[str, Any] = {}
            self._handlers: dict[str, tuple[Any, bytes, int, Any]] = {}
            self._keepalive: list[Any] = []
            self._deadline_armed = False
            memory = self._export(abi.EXPORT_MEMORY, EXTERN_MEMORY)
            self._memory = ffi.new("wasmtime_memory_t *", memory.of.memory)
            if self._fast is not None:
                fast = self._fast
                fast.call_unchecked = FUNCTIONS["call_unchecked"]
                fast.set_deadline = FUNCTIONS["set_deadline"]
                fast.memory_size = FUNCTIONS["memory_size"]
                fast.context = to_native(context)
                fast.memory = to_native(self._memory)
                fast.deadline_armed = 0
                fast.ticker = module.engine.ticker_state
                fast.tick_ns = int(self._ticker.tick * 1e9)
            self._refresh_memory()
            if module.has_initialize:
                self._call_plain(abi.EXPORT_INITIALIZE, ())
            self._negotiate()
        except BaseException:
            self._store = _NULL
            self._live = False
            lib.wasmtime_store_delete(store)
            raise

    def _wasi_config(self) -> Any:
        """A WASI context that grants nothing but a clock, randomness and stderr."""
        config = lib.wasi_config_new()
        program = ffi.new("char[]", self.module.name.encode())
        argv = ffi.new("const char *[]", [program])
        lib.wasi_config_set_argv(config, 1, argv)
        lib.wasi_config_inherit_stderr(config)
        return config

    def _export(self, name: str, kind: int) -> Any:
        item = ffi.new("wasmtime_extern_t *")
        encoded = name.encode()
        found = lib.wasmtime_instance_export_get(self._context, self._instance, encoded,
                                                 len(encoded), item)
        if not found or item.kind != kind:
            raise ExecutionFailed(f"module has no export {name!r} of the right kind", "abi")
        return item

    def _func(self, export: str) -> Any:
        func = self._funcs.get(export)
        if func is None:
            item = self._export(export, EXTERN_FUNC)
            func = self._funcs[export] = ffi.new("wasmtime_func_t *", item.of.func)
        return func

    def _check(self, error: Any) -> None:
        if error != _NULL:
            raise ExecutionFailed(error_message(error), "wasmtime")

    def _call_plain(self, export: str, args: tuple[int, ...]) -> int:
        """Call a setup export (`spear_init`, `spear_reserve`...) with i32 arguments.

        Not the hot path. Such calls get a fresh fuel budget and their own deadline of
        SETUP_TIMEOUT, so a guest cannot hang the host in set-up, and a deadline left over
        from an earlier call cannot interrupt them.
        """
        slots = ffi.new("wasmtime_val_raw_t[]", max(1, len(args)))
        for i, value in enumerate(args):
            slots[i].i32 = value
        trap = ffi.new("wasm_trap_t **")
        context = self._context
        if self._fuel is not None:
            self._check(lib.wasmtime_context_set_fuel(context, self._fuel))
        ticker = self._ticker
        _set_deadline(context, ticker.ticks_for(SETUP_TIMEOUT))
        self._deadline_armed = True
        if self._fast is not None:
            self._fast.deadline_armed = 1  # the next call without a timeout disarms it
        ticker.call_started()
        try:
            error = _call_unchecked(context, self._func(export), slots, len(slots), trap)
        finally:
            ticker.call_finished()
        self._check(error)
        if trap[0] != _NULL:
            code, message = trap_details(trap[0])
            raise GuestTrapped(export, code, message)
        return int(slots[0].i32)

    def _negotiate(self) -> None:
        version = self._call_plain(abi.EXPORT_ABI_VERSION, ())
        if version not in abi.SUPPORTED_ABI_VERSIONS:
            supported = ", ".join(f"v{v}" for v in sorted(abi.SUPPORTED_ABI_VERSIONS))
            raise ExecutionFailed(
                f"module speaks spear ABI v{version}; this host supports {supported}", "abi")
        ctrl = self._call_plain(abi.EXPORT_INIT, (abi.ABI_VERSION,)) & abi.U32_MAX
        if ctrl == 0:
            raise ExecutionFailed(f"module refused host ABI v{abi.ABI_VERSION}", "abi")
        if ctrl % 8 or ctrl + abi.CTRL_SIZE > self._size:
            raise ExecutionFailed(f"control block at {ctrl:#x} is misaligned or outside memory",
                                  "abi")
        magic, version_field, _, _ = abi.HEADER.unpack_from(self._view, ctrl)
        if magic != abi.CTRL_MAGIC or version_field != version:
            raise ExecutionFailed("control block has a wrong magic or ABI version", "abi")
        self._ctrl = ctrl
        if self._fast is not None:
            self._fast.ctrl = ctrl
        self._ctrl_request = ctrl + abi.CTRL_REQUEST
        self._ctrl_response = ctrl + abi.CTRL_RESPONSE
        self._read_request_buffer()
        self.module.abi_version = version

    def _refresh_memory(self) -> None:
        size = _memory_size(self._context, self._memory)
        base = lib.wasmtime_memory_data(self._context, self._memory)
        self._size = size
        self._view = memoryview(ffi.buffer(base, size)) if size else memoryview(b"")
        if self._fast is not None:
            self._fast.base = native_ffi.cast("uint8_t *", to_native(base))
            self._fast.size = size

    def _read_request_buffer(self) -> None:
        ptr, cap = abi.REQ_BUFFER.unpack_from(self._view, self._ctrl + abi.CTRL_REQ)
        if ptr + cap > self._size:
            raise ExecutionFailed(
                f"guest request buffer [{ptr:#x}, +{cap}) lies outside its memory", "abi")
        self._req_ptr, self._req_cap = ptr, cap
        # One comparison per call covers both "grow the buffer" and "too large".
        self._room = min(cap, self.max_message_size)
        if self._fast is not None:
            self._fast.req_ptr, self._fast.req_cap = ptr, cap

    def _reserve(self, size: int) -> None:
        status = self._call_plain(abi.EXPORT_RESERVE, (size,))
        self._refresh_memory()
        if status != 0:
            raise ExecutionFailed(
                f"guest could not reserve {size} bytes for the request (out of memory)", "oom")
        self._read_request_buffer()
        if self._req_cap < size:
            raise ExecutionFailed(
                f"guest reserved {self._req_cap} bytes, {size} were asked for", "abi")

    # ------------------------------------------------------------- hot path

    def call(self, function: str, input: bytes, *, timeout: float | None = None,
             metadata: dict[str, str] | None = None) -> bytes:
        """Run handler `function` on `input`; raises `ExecutionFailed` or `Timeout`."""
        result = self.execute(function, input, timeout, metadata)
        if type(result) is bytes:
            return result
        assert isinstance(result, CallFailure)
        if result.timed_out:
            raise Timeout(result.message)
        raise ExecutionFailed(result.message, result.code)

    def execute(self, function: str, input: bytes, timeout: float | None,
                metadata: dict[str, str] | None) -> CallResult:
        """Like `call`, but a failure comes back as a `CallFailure` (no exception cost)."""
        with self._lock:
            if not self._live:
                self._revive()
            entry = self._handlers.get(function)
            if entry is None:
                entry = self._resolve_handler(function)
                if entry is None:
                    return CallFailure(
                        False, f"module has no handler named {function!r} (handlers: "
                        f"{', '.join(self.module.handlers) or 'none'})", "no_such_handler")
            func, name, n_name, _ = entry
            if type(input) is not bytes:
                input = bytes(input)  # bytearray/memoryview: the native call takes bytes
            n_input = len(input)
            if metadata:
                meta = abi.encode_metadata(metadata)
                n_meta = len(meta)
            else:
                meta = b""
                n_meta = 0
            total = n_name + n_meta + n_input
            if total > self._room:
                failure = self._make_room(total)
                if failure is not None:
                    return failure
            fast = self._fast
            if fast is not None:
                timeout_ns = 0 if timeout is None else max(1, int(timeout * 1e9))
                if n_meta:
                    result = _call_meta(fast, entry[3], input, n_input, timeout_ns, meta, n_meta,
                                        len(metadata))  # type: ignore[arg-type]
                else:
                    result = _call(fast, entry[3], input, n_input, timeout_ns)
                if result >= 0:
                    out_ptr = result & 0xFFFFFFFF
                    end = out_ptr + (result >> 32)
                    if end > self._size:
                        self._refresh_memory()
                    return self._view[out_ptr:end].tobytes()
                return self._fast_outcome(result, function, timeout)
            self._calls += 1
            view = self._view
            ptr = self._req_ptr
            view[ptr:ptr + n_name] = name
            meta_ptr = ptr + n_name
            if n_meta:
                view[meta_ptr:meta_ptr + n_meta] = meta
            input_ptr = meta_ptr + n_meta
            view[input_ptr:input_ptr + n_input] = input
            context = self._context
            ticker = self._ticker
            if timeout is not None:
                deadline_ns = _monotonic_ns() + int(timeout * 1e9)
                _set_deadline(context, ticker.ticks_for(timeout))
                self._deadline_armed = True
                ticker.call_started()
            else:
                deadline_ns = 0
                if self._deadline_armed:
                    _set_deadline(context, NO_DEADLINE)
                    self._deadline_armed = False
            if self._fuel is not None:
                lib.wasmtime_context_set_fuel(context, self._fuel)
            _REQUEST_pack_into(view, self._ctrl_request, ptr, n_name, meta_ptr, n_meta,
                               input_ptr, n_input, len(metadata) if metadata else 0, 0,
                               self._calls, deadline_ns, 0, 0, 0)
            trap = self._trap
            try:
                error = _call_unchecked(context, func, self._slots, 1, trap)
            finally:
                if timeout is not None:
                    ticker.call_finished()
            if error or trap[0]:
                return self._failed(error, function, timeout)
            status = self._status[0]
            # Host calls during the guest call may have grown memory and replaced the view.
            view = self._view
            out_ptr, out_len, err_code = _RESPONSE_unpack_from(view, self._ctrl_response)
            end = out_ptr + out_len
            if end > self._size:
                # Memory never shrinks and never moves, so only a grown memory needs a new view.
                self._refresh_memory()
                view = self._view
                if end > self._size:
                    return CallFailure(False, f"guest returned an output of {out_len} bytes at "
                            f"{out_ptr:#x}, outside its {self._size}-byte memory", "bad_pointer")
            if status == 0:
                return view[out_ptr:end].tobytes()
            if status == 1:
                return CallFailure(False, view[out_ptr:end].tobytes().decode("utf-8", "replace"),
                        _signed(err_code))
            return CallFailure(False, f"guest returned invalid status {status}", "bad_status")

    def _fast_outcome(self, result: int, function: str, timeout: float | None) -> CallResult:
        """Everything but plain success from the native call."""
        fast = self._fast
        if result == FAST_TRAPPED:
            error = from_native(fast.error, "wasmtime_error_t *") if fast.error else _NULL
            fast.error = native_ffi.NULL
            if fast.trap:
                self._trap[0] = from_native(fast.trap, "wasm_trap_t *")
                fast.trap = native_ffi.NULL
            return self._failed(error, function, timeout)
        if result == FAST_BAD_POINTER:
            return CallFailure(False, f"guest returned an output of {fast.out_len} bytes at "
                    f"{fast.out_ptr:#x}, outside its {fast.size}-byte memory", "bad_pointer")
        if result == FAST_STATUS:
            status = fast.status
            if status == 1:
                self._refresh_memory()
                message = self._view[fast.out_ptr:fast.out_ptr + fast.out_len].tobytes()
                return CallFailure(False, message.decode("utf-8", "replace"),
                                   _signed(fast.err_code))
            return CallFailure(False, f"guest returned invalid status {status}", "bad_status")
        return CallFailure(False, f"native call failed with {result}", "internal")

    def _revive(self) -> None:
        if self._closed:
            raise ChannelClosed(f"WASM instance {self.label} is closed")
        self._new_store()

    def _make_room(self, total: int) -> CallResult | None:
        if total > self.max_message_size:
            return CallFailure(False, f"request of {total} bytes exceeds the maximum of "
                    f"{self.max_message_size}", "too_large")
        try:
            self._reserve(total)
        except GuestTrapped as trapped:
            self._replace()  # the guest died half-way through growing its buffer
            return trapped.result()
        except ExecutionFailed as exc:
            return CallFailure(False, str(exc), str(exc.code))
        return None

    def _resolve_handler(self, function: str) -> tuple[Any, bytes, int, Any] | None:
        if function in self.module.handlers:
            func = self._func(abi.HANDLER_PREFIX + function)
        elif self.module.has_dispatch:
            func = self._func(abi.EXPORT_DISPATCH)
        else:
            return None
        name = function.encode()
        native_handler = _NULL
        if self._fast is not None:
            # The C struct points at `name_buffer`; the entry keeps both alive together.
            name_buffer = native_ffi.new("uint8_t[]", name)
            native_handler = native_ffi.new("spear_handler_t *", {
                "func": to_native(func), "name": name_buffer, "name_len": len(name)})
            self._keepalive.append(name_buffer)
        entry = self._handlers[function] = (func, name, len(name), native_handler)
        return entry

    def _failed(self, error: Any, function: str, timeout: float | None) -> CallResult:
        """Turn a trap or error into a result and replace the now-unknown guest state."""
        if error != _NULL:
            code: int | None = None
            message = error_message(error)
        else:
            code, message = trap_details(self._trap[0])
            self._trap[0] = _NULL
        self._replace()
        if code == TRAP_INTERRUPT:
            return CallFailure(True, f"{function!r} did not finish within {timeout} s "
                    "(guest interrupted)", "timeout")
        kind = _trap_kind(code, message)
        return CallFailure(False, f"guest trapped in {function!r}: {one_line(message) or kind}",
                f"trap:{kind}")

    def _replace(self) -> None:
        """Drop the store (and the instance in it) and start over from the compiled module."""
        self.replacements += 1
        old, self._store = self._store, _NULL
        self._live = False
        lib.wasmtime_store_delete(old)
        try:
            self._new_store()
        except ExecutionFailed as exc:
            # Leave the instance store-less; the next call tries again.
            log.error("could not replace WASM instance %s: %s", self.label, exc)

    # ------------------------------------------------------ host-call support

    def check_guest_range(self, ptr: int, length: int, what: str) -> None:
        ptr &= abi.U32_MAX
        length &= abi.U32_MAX
        size = _memory_size(self._context, self._memory)
        if ptr + length > size:
            raise GuestFault(f"{what}: pointer out of bounds ({ptr:#x}+{length} > {size})")

    def read_guest(self, ptr: int, length: int, what: str) -> bytes:
        ptr &= abi.U32_MAX
        length &= abi.U32_MAX
        size = _memory_size(self._context, self._memory)
        if size != self._size:
            self._refresh_memory()
        if ptr + length > size:
            raise GuestFault(f"{what}: pointer out of bounds ({ptr:#x}+{length} > {size})")
        return self._view[ptr:ptr + length].tobytes()

    def write_guest(self, ptr: int, data: bytes, what: str) -> None:
        ptr &= abi.U32_MAX
        size = _memory_size(self._context, self._memory)
        if size != self._size:
            self._refresh_memory()
        if ptr + len(data) > size:
            raise GuestFault(f"{what}: pointer out of bounds ({ptr:#x}+{len(data)} > {size})")
        self._view[ptr:ptr + len(data)] = data

    def guest_sent(self, topic: bytes, data: bytes) -> int:
        if len(topic) + len(data) > self.max_message_size:
            return abi.ERR_TOO_LARGE
        if len(self.outbox) >= MAX_OUTBOX:
            return abi.ERR_FULL
        self.outbox.append((topic.decode("utf-8", "replace"), data))
        return abi.OK

    def guest_recv(self, topic_buf: int, topic_cap: int, data_buf: int, data_cap: int,
                   sizes_ptr: int) -> int:
        if not self.inbox:
            return 0
        topic, data = self.inbox[0]
        encoded = topic.encode()
        self.write_guest(sizes_ptr, len(encoded).to_bytes(4, "little") +
                         len(data).to_bytes(4, "little"), "spear.recv sizes")
        if len(encoded) > (topic_cap & abi.U32_MAX) or len(data) > (data_cap & abi.U32_MAX):
            return abi.ERR_BUFFER_TOO_SMALL
        self.write_guest(topic_buf, encoded, "spear.recv topic")
        self.write_guest(data_buf, data, "spear.recv data")
        self.inbox.popleft()
        return 1

    # ------------------------------------------------------------ lifecycle

    def push(self, topic: str, data: bytes) -> None:
        """Queue a message the guest can pull with `spear.recv`."""
        self.inbox.append((topic, data))

    def take_sent(self) -> list[tuple[str, bytes]]:
        """Messages the guest sent since the last call to this."""
        taken = []
        while self.outbox:
            taken.append(self.outbox.popleft())
        return taken

    @property
    def call_count(self) -> int:
        """Calls made into the guest's handlers so far."""
        return int(self._fast.calls) if self._fast is not None else self._calls

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def memory_size(self) -> int:
        """Size of the guest's linear memory in bytes (0 once closed).

        Never waits: while a call is running it reports the size last seen, so a health
        check on the event loop does not stall behind a long guest call.
        """
        if not self._lock.acquire(blocking=False):
            return int(self._size) if self._live else 0
        try:
            if not self._live:
                return 0
            self._refresh_memory()
            return int(self._size)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._live = False
            if self._store != _NULL:
                store, self._store = self._store, _NULL
                lib.wasmtime_store_delete(store)

    def __enter__(self) -> WasmInstance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        store = getattr(self, "_store", _NULL)
        if store != _NULL:
            self._store = _NULL
            lib.wasmtime_store_delete(store)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._size} bytes of memory"
        return f"<WasmInstance {self.label} ({state})>"
