//! ABI v1 constants and the control block layout (docs/wasm-abi.md).

/// The ABI version this crate speaks.
pub const ABI_VERSION: i32 = 1;
/// `"SPER"` as little-endian bytes, the first field of the control block.
pub const MAGIC: u32 = 0x5245_5053;

/// Handler status: success, the output is the response.
pub const STATUS_OK: i32 = 0;
/// Handler status: application error, the output is the message and `err_code` the code.
pub const STATUS_ERROR: i32 = 1;

/// `err_code` of the errors this crate makes when the arena is out of memory.
pub const CODE_NOMEM: i32 = 12;

/// `err_code` that passes a host function's failure on: the host reports the call as failed
/// by the host function (code "host_function"), with its message.
pub const CODE_HOST_FUNCTION: i32 = -7;

/// Initial request-buffer capacity; `spear_reserve` grows it geometrically.
pub const INITIAL_REQ_CAP: u32 = 16 * 1024;

/// The 80-byte control block shared with the host. Pointer fields are `u32` offsets into
/// linear memory (wasm32).
#[repr(C, align(8))]
pub struct Control {
    /// guest: [`MAGIC`]
    pub magic: u32,
    /// guest: [`ABI_VERSION`]
    pub abi_version: u32,
    /// guest: start of the request buffer
    pub req_ptr: u32,
    /// guest: its capacity
    pub req_cap: u32,
    /// host: function name (UTF-8, not NUL-terminated)
    pub name_ptr: u32,
    /// host
    pub name_len: u32,
    /// host: encoded metadata
    pub meta_ptr: u32,
    /// host
    pub meta_len: u32,
    /// host: request input
    pub input_ptr: u32,
    /// host
    pub input_len: u32,
    /// host: number of metadata pairs
    pub meta_count: u32,
    /// host: reserved, 0
    pub flags: u32,
    /// host: sequence number of this call
    pub request_id: u64,
    /// host: `now()` value after which the call is interrupted, 0 = none
    pub deadline_ns: u64,
    /// guest: response bytes
    pub out_ptr: u32,
    /// guest
    pub out_len: u32,
    /// guest: application error code when the status is [`STATUS_ERROR`]
    pub err_code: i32,
    /// reserved
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Control>() == 80);
const _: () = assert!(core::mem::align_of::<Control>() == 8);
