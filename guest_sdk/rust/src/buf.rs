//! A growable byte buffer in the per-call arena, for building outputs.

use core::fmt;
use core::ptr;
use core::slice;

use crate::arena::{self, OutOfMemory};
use crate::request::RequestLifetime;

/// A growable byte buffer in the per-call arena (from [`crate::Request::buf`]). It grows in
/// place while it is the most recent arena allocation. Implements [`fmt::Write`], so
/// `write!(buf, "{}", x)?` works in a handler (formatting errors mean out of memory).
pub struct Buf<'r> {
    ptr: usize,
    len: usize,
    cap: usize,
    _request: RequestLifetime<'r>,
}

impl<'r> Buf<'r> {
    pub(crate) fn new() -> Self {
        Buf { ptr: 0, len: 0, cap: 0, _request: RequestLifetime::default() }
    }

    /// Make room for `extra` more bytes.
    pub fn reserve(&mut self, extra: usize) -> Result<(), OutOfMemory> {
        if extra <= self.cap - self.len {
            return Ok(());
        }
        let need = self.len.checked_add(extra).ok_or(OutOfMemory)?;
        let doubled = self.cap.saturating_mul(2).max(64);
        let cap = if doubled > need { doubled } else { need };
        // `cap` as the old size: the block is in place-growable while it ends at the top
        let (p, cap) = match arena::realloc(self.ptr, self.cap, cap) {
            Ok(p) => (p, cap),
            Err(_) if cap != need => (arena::realloc(self.ptr, self.cap, need)?, need),
            Err(e) => return Err(e),
        };
        self.ptr = p;
        self.cap = cap;
        Ok(())
    }

    /// Append bytes.
    pub fn push(&mut self, data: &[u8]) -> Result<(), OutOfMemory> {
        self.reserve(data.len())?;
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), (self.ptr + self.len) as *mut u8, data.len()) };
        self.len += data.len();
        Ok(())
    }

    /// Append a string.
    pub fn push_str(&mut self, s: &str) -> Result<(), OutOfMemory> {
        self.push(s.as_bytes())
    }

    /// Append one byte.
    pub fn push_byte(&mut self, b: u8) -> Result<(), OutOfMemory> {
        self.push(&[b])
    }

    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        unsafe { slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// Number of bytes so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, valid until the handler returns.
    pub fn into_bytes(self) -> &'r [u8] {
        if self.len == 0 {
            return &[];
        }
        unsafe { slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s).map_err(|_| fmt::Error)
    }
}
