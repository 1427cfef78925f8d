"""Constants of spear WASM ABI v1 (docs/wasm-abi.md): exports, control block, codes."""

from __future__ import annotations

import struct

ABI_VERSION = 1
SUPPORTED_ABI_VERSIONS = frozenset({ABI_VERSION})

EXPORT_MEMORY = "memory"
EXPORT_ABI_VERSION = "spear_abi_version"
EXPORT_INIT = "spear_init"
EXPORT_RESERVE = "spear_reserve"
EXPORT_DISPATCH = "spear_dispatch"
EXPORT_INITIALIZE = "_initialize"
HANDLER_PREFIX = "spear.handler."

IMPORT_MODULE = "spear"

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

U32_MAX = 0xFFFFFFFF

