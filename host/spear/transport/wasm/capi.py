"""cffi bindings to the subset of the wasmtime C API that spear's fast path uses.

We load the very `libwasmtime` that the `wasmtime` package ships and declare only what we
call. The struct layouts below are those of wasmtime 50; `_check_layout` compares them with
the ctypes bindings generated for the installed package, so a mismatched wasmtime fails at
import with a clear message instead of corrupting memory later.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
from pathlib import Path
from typing import Any

import cffi

SUPPORTED_WASMTIME = range(50, 51)  # major versions whose C structs match the cdef below

CDEF = """
typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasm_config_t wasm_config_t;
typedef struct wasmtime_module wasmtime_module_t;
typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_linker wasmtime_linker_t;
typedef struct wasmtime_instance_pre wasmtime_instance_pre_t;
typedef struct wasmtime_caller wasmtime_caller_t;
typedef struct wasmtime_error wasmtime_error_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasm_functype_t wasm_functype_t;
typedef struct wasm_valtype_t wasm_valtype_t;

typedef struct { size_t size; uint8_t *data; } wasm_byte_vec_t;
typedef struct { size_t size; wasm_valtype_t **data; } wasm_valtype_vec_t;

typedef struct { uint64_t store_id; void *__private; } wasmtime_func_t;
typedef struct { uint64_t store_id; size_t __private; } wasmtime_instance_t;
typedef struct { struct { uint64_t store_id; uint32_t __private1; } _anon;
                 uint32_t __private2; } wasmtime_memory_t;
typedef union {
    wasmtime_func_t func;
    wasmtime_memory_t memory;
    uint8_t _size[24];
} wasmtime_extern_union_t;
typedef struct { uint8_t kind; wasmtime_extern_union_t of; } wasmtime_extern_t;
typedef union {
    int32_t i32; int64_t i64; float f32; double f64; uint8_t v128[16];
    uint32_t anyref; uint32_t externref; void *funcref;
} wasmtime_val_raw_t;

typedef size_t (*wasmtime_func_unchecked_callback_t)(
    void *env, wasmtime_caller_t *caller, wasmtime_val_raw_t *args_and_results, size_t n);

wasm_config_t *wasm_config_new(void);
void wasmtime_config_epoch_interruption_set(wasm_config_t *, bool);
void wasmtime_config_consume_fuel_set(wasm_config_t *, bool);
void wasmtime_config_max_wasm_stack_set(wasm_config_t *, size_t);
void wasmtime_config_parallel_compilation_set(wasm_config_t *, bool);
void wasmtime_config_memory_may_move_set(wasm_config_t *, bool);
void wasmtime_config_memory_reservation_set(wasm_config_t *, uint64_t);
void wasmtime_config_memory_init_cow_set(wasm_config_t *, bool);
wasm_engine_t *wasm_engine_new_with_config(wasm_config_t *);
void wasm_engine_delete(wasm_engine_t *);
void wasmtime_engine_increment_epoch(wasm_engine_t *);

wasmtime_error_t *wasmtime_module_new(wasm_engine_t *, const uint8_t *, size_t,
                                      wasmtime_module_t **);
wasmtime_error_t *wasmtime_module_serialize(wasmtime_module_t *, wasm_byte_vec_t *);
wasmtime_error_t *wasmtime_module_deserialize(wasm_engine_t *, const uint8_t *, size_t,
                                              wasmtime_module_t **);
void wasmtime_module_delete(wasmtime_module_t *);

wasmtime_linker_t *wasmtime_linker_new(wasm_engine_t *);
void wasmtime_linker_delete(wasmtime_linker_t *);
void wasmtime_linker_allow_shadowing(wasmtime_linker_t *, bool);
wasmtime_error_t *wasmtime_linker_define_func_unchecked(
    wasmtime_linker_t *, const char *module, size_t module_len, const char *name,
    size_t name_len, const wasm_functype_t *ty, wasmtime_func_unchecked_callback_t cb,
    void *data, void (*finalizer)(void *));
wasmtime_error_t *wasmtime_linker_instantiate_pre(wasmtime_linker_t *, const wasmtime_module_t *,
                                                  wasmtime_instance_pre_t **);
void wasmtime_instance_pre_delete(wasmtime_instance_pre_t *);
wasmtime_error_t *wasmtime_instance_pre_instantiate(const wasmtime_instance_pre_t *,
                                                    wasmtime_context_t *, wasmtime_instance_t *,
                                                    wasm_trap_t **);

wasmtime_store_t *wasmtime_store_new(wasm_engine_t *, void *data, void (*finalizer)(void *));
void wasmtime_store_delete(wasmtime_store_t *);
wasmtime_context_t *wasmtime_store_context(wasmtime_store_t *);
void wasmtime_store_limiter(wasmtime_store_t *, int64_t memory_size, int64_t table_elements,
                            int64_t instances, int64_t tables, int64_t memories);
void *wasmtime_context_get_data(const wasmtime_context_t *);
wasmtime_error_t *wasmtime_context_set_fuel(wasmtime_context_t *, uint64_t);
wasmtime_error_t *wasmtime_context_get_fuel(const wasmtime_context_t *, uint64_t *);
void wasmtime_context_set_epoch_deadline(wasmtime_context_t *, uint64_t ticks_beyond_current);
wasmtime_context_t *wasmtime_caller_context(wasmtime_caller_t *);
bool wasmtime_caller_export_get(wasmtime_caller_t *, const char *name, size_t name_len,
                                wasmtime_extern_t *item);

bool wasmtime_instance_export_get(wasmtime_context_t *, const wasmtime_instance_t *,
                                  const char *name, size_t name_len, wasmtime_extern_t *item);
bool wasmtime_instance_export_nth(wasmtime_context_t *, const wasmtime_instance_t *, size_t index,
                                  char **name, size_t *name_len, wasmtime_extern_t *item);
wasmtime_error_t *wasmtime_func_call_unchecked(wasmtime_context_t *, const wasmtime_func_t *,
                                               wasmtime_val_raw_t *args_and_results,
                                               size_t args_and_results_len, wasm_trap_t **trap);
wasm_functype_t *wasmtime_func_type(const wasmtime_context_t *, const wasmtime_func_t *);
uint8_t *wasmtime_memory_data(const wasmtime_context_t *, const wasmtime_memory_t *);
size_t wasmtime_memory_data_size(const wasmtime_context_t *, const wasmtime_memory_t *);

wasm_valtype_t *wasm_valtype_new(uint8_t kind);
void wasm_valtype_vec_new(wasm_valtype_vec_t *out, size_t, wasm_valtype_t *const *);
void wasm_valtype_vec_new_empty(wasm_valtype_vec_t *out);
wasm_functype_t *wasm_functype_new(wasm_valtype_vec_t *params, wasm_valtype_vec_t *results);
const wasm_valtype_vec_t *wasm_functype_params(const wasm_functype_t *);
const wasm_valtype_vec_t *wasm_functype_results(const wasm_functype_t *);
uint8_t wasm_valtype_kind(const wasm_valtype_t *);
void wasm_functype_delete(wasm_functype_t *);

typedef struct wasi_config_t wasi_config_t;
wasmtime_error_t *wasmtime_linker_define_wasi(wasmtime_linker_t *);
wasi_config_t *wasi_config_new(void);
void wasi_config_inherit_stderr(wasi_config_t *);
typedef ptrdiff_t (*wasi_output_callback_t)(void *data, const unsigned char *buf, size_t len);
void wasi_config_set_stderr_custom(wasi_config_t *, wasi_output_callback_t, void *data,
                                   void (*finalizer)(void *));
void wasi_config_set_stdout_custom(wasi_config_t *, wasi_output_callback_t, void *data,
                                   void (*finalizer)(void *));
bool wasi_config_set_argv(wasi_config_t *, size_t argc, const char *argv[]);
bool wasi_config_set_env(wasi_config_t *, size_t envc, const char *names[],
                         const char *values[]);
bool wasi_config_preopen_dir(wasi_config_t *, const char *host_path, const char *guest_path,
                             bool fs_mutable);
void wasi_config_set_stdin_bytes(wasi_config_t *, wasm_byte_vec_t *binary);
void wasi_config_delete(wasi_config_t *);
void wasm_byte_vec_new(wasm_byte_vec_t *out, size_t, const uint8_t *);
bool wasmtime_error_exit_status(const wasmtime_error_t *, int *status);
wasmtime_error_t *wasmtime_context_set_wasi(wasmtime_context_t *, wasi_config_t *);

typedef struct wasm_importtype_t wasm_importtype_t;
typedef struct { size_t size; wasm_importtype_t **data; } wasm_importtype_vec_t;
void wasmtime_module_imports(const wasmtime_module_t *, wasm_importtype_vec_t *out);
const wasm_byte_vec_t *wasm_importtype_module(const wasm_importtype_t *);
void wasm_importtype_vec_delete(wasm_importtype_vec_t *);

typedef struct wasm_exporttype_t wasm_exporttype_t;
typedef struct wasm_externtype_t wasm_externtype_t;
typedef struct { size_t size; wasm_exporttype_t **data; } wasm_exporttype_vec_t;
void wasmtime_module_exports(const wasmtime_module_t *, wasm_exporttype_vec_t *out);
const wasm_byte_vec_t *wasm_exporttype_name(const wasm_exporttype_t *);
const wasm_externtype_t *wasm_exporttype_type(const wasm_exporttype_t *);
uint8_t wasm_externtype_kind(const wasm_externtype_t *);
void wasm_exporttype_vec_delete(wasm_exporttype_vec_t *);
typedef struct wasm_memorytype_t wasm_memorytype_t;
const wasm_functype_t *wasm_externtype_as_functype_const(const wasm_externtype_t *);
const wasm_memorytype_t *wasm_externtype_as_memorytype_const(const wasm_externtype_t *);
bool wasmtime_memorytype_is64(const wasm_memorytype_t *);
bool wasmtime_memorytype_isshared(const wasm_memorytype_t *);
void wasmtime_module_image_range(const wasmtime_module_t *, void **start, void **end);

const wasm_byte_vec_t *wasm_importtype_name(const wasm_importtype_t *);
const wasm_externtype_t *wasm_importtype_type(const wasm_importtype_t *);
typedef struct { uint32_t min; uint32_t max; } wasm_limits_t;
typedef struct wasm_tabletype_t wasm_tabletype_t;
typedef struct wasm_globaltype_t wasm_globaltype_t;
const wasm_tabletype_t *wasm_externtype_as_tabletype_const(const wasm_externtype_t *);
const wasm_globaltype_t *wasm_externtype_as_globaltype_const(const wasm_externtype_t *);
const wasm_valtype_t *wasm_tabletype_element(const wasm_tabletype_t *);
const wasm_limits_t *wasm_tabletype_limits(const wasm_tabletype_t *);
const wasm_valtype_t *wasm_globaltype_content(const wasm_globaltype_t *);
uint8_t wasm_globaltype_mutability(const wasm_globaltype_t *);
uint64_t wasmtime_memorytype_minimum(const wasm_memorytype_t *);
bool wasmtime_memorytype_maximum(const wasm_memorytype_t *, uint64_t *max);

void wasmtime_error_message(const wasmtime_error_t *, wasm_byte_vec_t *message);
void wasmtime_error_delete(wasmtime_error_t *);
wasm_trap_t *wasmtime_trap_new(const char *msg, size_t msg_len);
wasm_trap_t *wasmtime_trap_new_code(uint8_t code);
bool wasmtime_trap_code(const wasm_trap_t *, uint8_t *code);
void wasm_trap_message(const wasm_trap_t *, wasm_byte_vec_t *out);
void wasm_trap_delete(wasm_trap_t *);
void wasm_byte_vec_delete(wasm_byte_vec_t *);
"""

WASM_I32 = 0
WASM_I64 = 1
WASM_F32 = 2
WASM_F64 = 3
WASM_V128 = 4
WASM_EXTERNREF = 128
WASM_FUNCREF = 129
VALTYPE_NAMES = {WASM_I32: "i32", WASM_I64: "i64", WASM_F32: "f32", WASM_F64: "f64",
                 WASM_V128: "v128", WASM_EXTERNREF: "externref", WASM_FUNCREF: "funcref"}

EXTERN_FUNC = 0
EXTERN_GLOBAL = 1
EXTERN_TABLE = 2
EXTERN_MEMORY = 3
EXTERN_SHARED_MEMORY = 4  # wasmtime_extern_t only; a module's type says "memory, shared"
EXTERN_NAMES = {EXTERN_FUNC: "a function", EXTERN_GLOBAL: "a global", EXTERN_TABLE: "a table",
                EXTERN_MEMORY: "a memory", EXTERN_SHARED_MEMORY: "a shared memory"}

TRAP_STACK_OVERFLOW = 0
TRAP_MEMORY_OUT_OF_BOUNDS = 1
TRAP_INTEGER_DIVISION_BY_ZERO = 7
TRAP_UNREACHABLE = 9
TRAP_INTERRUPT = 10
TRAP_OUT_OF_FUEL = 11

TRAP_NAMES = {
    0: "stack_overflow", 1: "memory_out_of_bounds", 2: "heap_misaligned",
    3: "table_out_of_bounds", 4: "indirect_call_to_null", 5: "bad_signature",
    6: "integer_overflow", 7: "integer_division_by_zero", 8: "bad_conversion_to_integer",
    9: "unreachable", 10: "interrupt", 11: "out_of_fuel",
}


def _wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ImportError("spear needs the 'wasmtime' package (pip install 'wasmtime>=50,<51')") \
            from exc


WASMTIME_VERSION = _wasmtime_version()


def _library_path() -> Path:
    """The library the wasmtime package ships, checked before anything loads it.

    Every libwasmtime in the package is checked before the package is imported (importing
    `wasmtime._bindings` loads one); then we load the very file the package loaded.
    """
    import importlib.util

    from spear.native_trust import UntrustedFile, check_native_library

    spec = importlib.util.find_spec("wasmtime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("spear needs the 'wasmtime' package (pip install 'wasmtime>=50,<51')")
    package = Path(next(iter(spec.submodule_search_locations)))
    checked = {
        check_native_library(candidate, package, "libwasmtime")
        for pattern in ("*/_libwasmtime.*", "*/_wasmtime.dll")
        for candidate in package.glob(pattern)
    }
    import wasmtime._ffi as wasmtime_ffi

    loaded = Path(wasmtime_ffi.filename).resolve()
    if loaded not in checked:
        raise UntrustedFile(f"refusing to load libwasmtime: {loaded} was not checked")
    return loaded


def _check_version() -> None:
    major = int(WASMTIME_VERSION.split(".")[0])
    if major not in SUPPORTED_WASMTIME:
        raise ImportError(
            f"spear's WASM fast path supports wasmtime {SUPPORTED_WASMTIME.start}.x, "
            f"but wasmtime {WASMTIME_VERSION} is installed; pip install 'wasmtime>=50,<51'"
        )


ffi = cffi.FFI()
ffi.cdef(CDEF)


def _check_layout() -> None:
    """Compare our struct sizes with the installed package's generated ctypes bindings."""
    from wasmtime import _bindings as generated

    for ours, theirs in (
        ("wasmtime_func_t", generated.wasmtime_func_t),
        ("wasmtime_instance_t", generated.wasmtime_instance_t),
        ("wasmtime_memory_t", generated.wasmtime_memory_t),
        ("wasmtime_extern_t", generated.wasmtime_extern_t),
        ("wasmtime_val_raw_t", generated.wasmtime_val_raw_t),
    ):
        if ffi.sizeof(ours) != ctypes.sizeof(theirs):
            raise ImportError(
                f"wasmtime {WASMTIME_VERSION}: {ours} is {ctypes.sizeof(theirs)} bytes, "
                f"spear expects {ffi.sizeof(ours)}; this wasmtime is not supported"
            )


_check_version()
_LIBRARY = _library_path()  # before _check_layout: importing the bindings loads the library
_check_layout()
lib: Any = ffi.dlopen(str(_LIBRARY))


def resolve_all(library: Any) -> None:
    """Look every declared function up now. cffi's ABI mode resolves a name on first use
    under a lock; a first use from a finalizer run by the garbage collector in the middle of
    another cffi call would deadlock on that lock."""
    for name in dir(library):
        # Declarations shared by both libraries exist in only one of them.
        with contextlib.suppress(AttributeError):
            getattr(library, name)


resolve_all(lib)


def take_byte_vec(vec: Any) -> bytes:
    """Copy a wasm_byte_vec_t out and free it."""
    data = bytes(ffi.buffer(vec.data, vec.size)) if vec.size else b""
    lib.wasm_byte_vec_delete(vec)
    return data


def error_message(error: Any) -> str:
    """Message of a wasmtime_error_t, which is then freed."""
    vec = ffi.new("wasm_byte_vec_t *")
    lib.wasmtime_error_message(error, vec)
    lib.wasmtime_error_delete(error)
    return take_byte_vec(vec).decode("utf-8", "replace")


def exit_status(error: Any) -> int | None:
    """The status of a WASI `proc_exit` that ended the guest, if `error` is one (not freed)."""
    status = ffi.new("int *")
    return int(status[0]) if lib.wasmtime_error_exit_status(error, status) else None


def trap_details(trap: Any) -> tuple[int | None, str]:
    """(trap code or None, message) of a wasm_trap_t, which is then freed."""
    code = ffi.new("uint8_t *")
    has_code = lib.wasmtime_trap_code(trap, code)
    vec = ffi.new("wasm_byte_vec_t *")
    lib.wasm_trap_message(trap, vec)
    lib.wasm_trap_delete(trap)
    message = take_byte_vec(vec).decode("utf-8", "replace").rstrip("\x00")
    return (int(code[0]) if has_code else None), message


def one_line(message: str) -> str:
    """A wasmtime message on one line: its "Caused by" reasons, without the backtrace."""
    head, found, causes = message.partition("Caused by:")
    lines = [head.strip().splitlines()[0]] if head.strip() and not found else []
    if found:
        lines = []
        for line in causes.strip().splitlines():
            line = line.strip()
            number, sep, rest = line.partition(": ")
            lines.append(rest if sep and number.isdigit() else line)
        if head.strip() and not head.strip().startswith("error while executing"):
            lines.insert(0, head.strip().splitlines()[0].rstrip(":"))
    return "; ".join(line for line in lines if line)
