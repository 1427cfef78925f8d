//! The ABI v1 exports every guest needs, and the entry every handler goes through.

use core::ptr;

use crate::abi::{Control, ABI_VERSION, INITIAL_REQ_CAP, MAGIC, STATUS_ERROR, STATUS_OK};
use crate::arena;
use crate::request::{Request, REQUEST};
use crate::response::Result;

#[repr(C, align(8))]
struct InitialBuffer([u8; INITIAL_REQ_CAP as usize]);

// The first request buffer is static: zero pages in the module, inside the initial memory.
static mut INITIAL_REQ: InitialBuffer = InitialBuffer([0; INITIAL_REQ_CAP as usize]);

static mut CB: Control = Control {
    magic: MAGIC,
    abi_version: ABI_VERSION as u32,
    req_ptr: 0,
    req_cap: 0,
    name_ptr: 0,
    name_len: 0,
    meta_ptr: 0,
    meta_len: 0,
    input_ptr: 0,
    input_len: 0,
    meta_count: 0,
    flags: 0,
    request_id: 0,
    deadline_ns: 0,
    out_ptr: 0,
    out_len: 0,
    err_code: 0,
    reserved: 0,
};

/// The control block. Only read through raw pointers: the host writes it between calls.
#[inline(always)]
pub(crate) fn control() -> *mut Control {
    unsafe { ptr::addr_of_mut!(CB) }
}

#[no_mangle]
extern "C" fn spear_abi_version() -> i32 {
    ABI_VERSION
}

#[no_mangle]
extern "C" fn spear_init(host_abi: i32) -> i32 {
    if host_abi != ABI_VERSION {
        return 0;
    }
    let cb = control();
    unsafe {
        (*cb).magic = MAGIC;
        (*cb).abi_version = ABI_VERSION as u32;
        if (*cb).req_ptr == 0 {
            (*cb).req_ptr = ptr::addr_of_mut!(INITIAL_REQ) as usize as u32;
            (*cb).req_cap = INITIAL_REQ_CAP;
        }
    }
    cb as usize as i32
}

#[no_mangle]
extern "C" fn spear_reserve(size: i32) -> i32 {
    let size = size as u32 as usize;
    let cb = control();
    let (old_ptr, old_cap) = unsafe { ((*cb).req_ptr as usize, (*cb).req_cap as usize) };
    if size <= old_cap {
        return 0;
    }
    if size > 0xFFFF_0000 {
        return 1;
    }
    let exact = (size + 7) & !7;
    let doubled = if old_cap <= 0x7FFF_8000 && old_cap * 2 > size { (old_cap * 2 + 7) & !7 } else { exact };
    // Between calls the arena is dead, so the buffer may grow over it.
    arena::reset();
    let last = arena::is_last_persistent(old_ptr, old_cap);
    for cap in [doubled, exact] {
        let ptr = if last && arena::extend_last_persistent(old_ptr, cap) {
            old_ptr
        } else {
            match arena::alloc(cap) {
                Ok(p) => {
                    arena::persist();
                    p
                }
                Err(_) => continue,
            }
        };
        unsafe {
            (*cb).req_ptr = ptr as u32;
            (*cb).req_cap = cap as u32;
        }
        arena::reset();
        return 0;
    }
    1 // out of memory; the old buffer is unchanged
}

/// Run one handler: reset the arena, call it, publish its output or error.
#[doc(hidden)]
#[inline(always)]
pub fn run(handler: for<'r> fn(&'r Request) -> Result<'r>) -> i32 {
    arena::reset();
    let cb = control();
    match handler(&REQUEST) {
        Ok(out) => unsafe {
            (*cb).out_ptr = out.ptr;
            (*cb).out_len = out.len;
            STATUS_OK
        },
        Err(e) => unsafe {
            (*cb).out_ptr = e.message.ptr;
            (*cb).out_len = e.message.len;
            (*cb).err_code = e.code;
            STATUS_ERROR
        },
    }
}
