"""Build recipe of the native fast-call helper: a cffi extension in API mode.

Run by setup.py when a wheel or an editable install is built, with the build machine's C
compiler; the result ships inside the package as `spear.transport.wasm._fastcall`. Nothing
is compiled at import or at run time.
"""

from __future__ import annotations

from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent
MODULE = "spear.transport.wasm._fastcall"
# Python functions the C code calls (attached with `ffi.def_extern`, see host_calls.py).
PYTHON_CALLBACKS = """
extern "Python" size_t spear_py_host(intptr_t index, void *data, void *caller,
                                     spear_val_t *args);
extern "Python" int32_t spear_py_host_call(void *data, const char *name, uint32_t name_len,
                                           const char *input, uint32_t input_len, char *out,
                                           uint32_t out_cap, uint32_t *out_len, void **trap);
"""


def make_builder() -> cffi.FFI:
    builder = cffi.FFI()
    builder.cdef((HERE / "fastcall.h").read_text() + PYTHON_CALLBACKS)
    builder.set_source(
        MODULE,
        '#include "fastcall.c"',
        include_dirs=[str(HERE)],
        extra_compile_args=["-O2", "-pthread"],
        extra_link_args=["-pthread"],  # the ticker thread
    )
    return builder
