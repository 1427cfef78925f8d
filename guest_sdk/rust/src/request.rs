//! What a handler sees: the request, read in place from the control block.

use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::slice;

use crate::arena::{self, OutOfMemory};
use crate::buf::Buf;
use crate::host;
use crate::runtime::control;

/// The current request. Handlers get `&'r Request`; everything borrowed from it (input,
/// metadata, arena allocations) lives until the handler returns, long enough for the host to
/// copy the output out.
pub struct Request {
    _private: (),
}

pub(crate) static REQUEST: Request = Request { _private: () };

unsafe fn bytes<'r>(ptr: u32, len: u32) -> &'r [u8] {
    if ptr == 0 {
        return &[];
    }
    // keeps the host's pointer even for empty inputs, so an echo is zero-copy in every case
    slice::from_raw_parts(ptr as usize as *const u8, len as usize)
}

impl Request {
    /// The function name the host called, as bytes (not NUL-terminated).
    pub fn name_bytes(&self) -> &[u8] {
        unsafe {
            let cb = control();
            bytes((*cb).name_ptr, (*cb).name_len)
        }
    }

    /// The function name the host called ("" if it is not UTF-8, which our host never sends).
    pub fn name(&self) -> &str {
        core::str::from_utf8(self.name_bytes()).unwrap_or("")
    }

    /// The request input, in place (no copy).
    pub fn input(&self) -> &[u8] {
        unsafe {
            let cb = control();
            bytes((*cb).input_ptr, (*cb).input_len)
        }
    }

    /// The host-assigned sequence number of this call.
    pub fn request_id(&self) -> u64 {
        unsafe { (*control()).request_id }
    }

    /// The [`host::now`] value after which the host interrupts this call, if it set one.
    pub fn deadline_ns(&self) -> Option<u64> {
        match unsafe { (*control()).deadline_ns } {
            0 => None,
            d => Some(d),
        }
    }

    /// True when the host set a deadline and [`host::now`] is past it.
    pub fn deadline_passed(&self) -> bool {
        self.deadline_ns().map_or(false, |d| host::now() >= d)
    }

    /// The metadata pairs, in order. Keys and values point into the request buffer.
    pub fn metadata(&self) -> Metadata<'_> {
        unsafe {
            let cb = control();
            Metadata {
                rest: bytes((*cb).meta_ptr, (*cb).meta_len),
                left: (*cb).meta_count,
            }
        }
    }

    /// The value of metadata key `key` (the first match).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// `size` zeroed bytes in the per-call arena.
    #[allow(clippy::mut_from_ref)] // each call hands out a fresh, disjoint block
    pub fn alloc(&self, size: usize) -> Result<&mut [u8], OutOfMemory> {
        let p = arena::alloc(size)?;
        unsafe {
            core::ptr::write_bytes(p as *mut u8, 0, size);
            Ok(slice::from_raw_parts_mut(p as *mut u8, size))
        }
    }

    /// `size` uninitialised bytes in the per-call arena (no zeroing, for big outputs).
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_uninit(&self, size: usize) -> Result<&mut [MaybeUninit<u8>], OutOfMemory> {
        let p = arena::alloc(size)?;
        unsafe { Ok(slice::from_raw_parts_mut(p as *mut MaybeUninit<u8>, size)) }
    }

    /// A copy of `data` in the per-call arena.
    pub fn copy(&self, data: &[u8]) -> Result<&[u8], OutOfMemory> {
        let p = arena::alloc(data.len())?;
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), p as *mut u8, data.len());
            Ok(slice::from_raw_parts(p as *const u8, data.len()))
        }
    }

    /// An empty growable buffer in the per-call arena.
    pub fn buf(&self) -> Buf<'_> {
        Buf::new()
    }

    /// A growable buffer with room for `capacity` bytes.
    pub fn buf_with_capacity(&self, capacity: usize) -> Result<Buf<'_>, OutOfMemory> {
        let mut b = Buf::new();
        b.reserve(capacity)?;
        Ok(b)
    }
}

/// Iterator over the request's metadata pairs as `(key, value)`. Stops early at a pair that
/// is malformed or not UTF-8 (our host never sends one).
pub struct Metadata<'r> {
    rest: &'r [u8],
    left: u32,
}

impl<'r> Metadata<'r> {
    fn field(&mut self) -> Option<&'r [u8]> {
        if self.rest.len() < 4 {
            return None;
        }
        let n = u32::from_le_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]);
        let n = n as usize;
        if n > self.rest.len() - 4 {
            return None;
        }
        let (field, rest) = self.rest[4..].split_at(n);
        self.rest = rest;
        Some(field)
    }
}

impl<'r> Iterator for Metadata<'r> {
    type Item = (&'r str, &'r str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let pair = (|| {
            let k = core::str::from_utf8(self.field()?).ok()?;
            let v = core::str::from_utf8(self.field()?).ok()?;
            Some((k, v))
        })();
        self.left = if pair.is_some() { self.left - 1 } else { 0 };
        pair
    }
}

/// Marks types that borrow from the current request.
pub(crate) type RequestLifetime<'r> = PhantomData<&'r Request>;
