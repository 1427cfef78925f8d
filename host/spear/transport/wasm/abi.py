"""Constants of spear WASM ABI v1 (docs/wasm-abi.md): exports, control block, codes."""

from __future__ import annotations

import struct

ABI_VERSION = 1
SUPPORTED_ABI_VERSIONS = frozenset({ABI_VERSION})
# Additions to v1 that old guests never see: a guest opts in by importing them, and a host
# without them refuses such a guest at load, naming the import (docs/wasm-abi.md, "Version
# negotiation"). Revision 1: send, recv, log, now. Revision 2: host_call, host_result,
# config_get.
ABI_REVISION = 2

EXPORT_MEMORY = "memory"
EXPORT_ABI_VERSION = "spear_abi_version"
EXPORT_INIT = "spear_init"
EXPORT_RESERVE = "spear_reserve"
EXPORT_DISPATCH = "spear_dispatch"
EXPORT_INITIALIZE = "_initialize"
HANDLER_PREFIX = "spear.handler."

IMPORT_MODULE = "spear"
EXPORT_START = "_start"  # a WASI command's entry point (docs/wasm-abi.md, "WASI commands")

# The type of every export the host calls, as (params, results) of wasm value types; the host
# checks them all when it loads a module (docs/wasm-abi.md, "Exports the guest provides").
I32 = "i32"
FUNCTION_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    EXPORT_ABI_VERSION: ((), (I32,)),
    EXPORT_INIT: ((I32,), (I32,)),
    EXPORT_RESERVE: ((I32,), (I32,)),
    EXPORT_DISPATCH: ((), (I32,)),
    EXPORT_INITIALIZE: ((), ()),
}
HANDLER_TYPE: tuple[tuple[str, ...], tuple[str, ...]] = ((), (I32,))
REQUIRED_EXPORTS = (EXPORT_MEMORY, EXPORT_ABI_VERSION, EXPORT_INIT, EXPORT_RESERVE)

CTRL_MAGIC = 0x52455053  # b"SPER" read as a little-endian u32
CTRL_SIZE = 80

# Offsets of the control block fields.
CTRL_REQ = 8  # req_ptr, req_cap
CTRL_REQUEST = 16  # name_ptr .. deadline_ns, written by the host in one pack
CTRL_RESPONSE = 64  # out_ptr, out_len, err_code

HEADER = struct.Struct("<IIII")  # magic, abi_version, req_ptr, req_cap
REQ_BUFFER = struct.Struct("<II")
# name_ptr, name_len, meta_ptr, meta_len, input_ptr, input_len, meta_count, flags,
# request_id, deadline_ns, out_ptr, out_len, err_code
REQUEST = struct.Struct("<IIIIIIIIQQIII")
RESPONSE = struct.Struct("<III")

STATUS_OK = 0
STATUS_ERROR = 1

# Host-call results.
OK = 0
ERR_FULL = -2
ERR_TOO_LARGE = -3
ERR_BUFFER_TOO_SMALL = -4
ERR_NOT_FOUND = -6  # no host function / configuration key of that name
ERR_HOST_FUNCTION = -7  # the host function failed; its message is the result
ERR_NOTHING_HELD = -8  # host_result: no result is waiting

# A handler that passes a host function's failure on returns status 1 with this err_code;
# the host then reports it as code "host_function", caused by the Python exception.
CODE_HOST_FUNCTION = ERR_HOST_FUNCTION

U32_MAX = 0xFFFFFFFF

