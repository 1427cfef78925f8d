//! Guest memory: the request buffer, persistent blocks and the per-call arena.
//!
//! The SDK owns only pages it grew itself with `memory.grow` ("spans"), so it shares linear
//! memory safely with `std`'s allocator or any other. Persistent blocks come first; the arena
//! follows the reset point and is reset at the start of every handler call. A span grows in
//! place while nobody else has grown memory since; otherwise a new span is linked in after the
//! current one, so every span after the current one is free arena space. Same design as
//! `spear.h` and `spear.zig`.

use core::arch::wasm32;
use core::fmt;
use core::ptr;

const PAGE: usize = 65536;
/// Never hand out the last 64 KiB of the address space, so no pointer arithmetic wraps.
const ADDR_LIMIT: usize = 0xFFFF_0000;
/// Grow memory at least this many pages at a time when possible.
const GROW_MIN_PAGES: usize = 16;

/// The arena (or memory) is exhausted; `?` turns it into an application error with code
/// [`crate::abi::CODE_NOMEM`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory")
    }
}

#[repr(C)]
struct Span {
    next: *mut Span,
    end: usize,
}

struct State {
    reset_span: *mut Span,
    reset_top: usize,
    cur: *mut Span,
    top: usize,
    end: usize,
}

static mut STATE: State = State {
    reset_span: ptr::null_mut(),
    reset_top: 0,
    cur: ptr::null_mut(),
    top: 0,
    end: 0,
};

// Wasm guests are single-threaded and the host never re-enters a call, so the state is only
// ever touched by one function at a time.
#[inline(always)]
fn state() -> *mut State {
    unsafe { ptr::addr_of_mut!(STATE) }
}

#[inline(always)]
fn align8(x: usize) -> usize {
    (x + 7) & !7
}

fn memory_end() -> usize {
    let have = wasm32::memory_size(0) as u64 * PAGE as u64;
    if have > ADDR_LIMIT as u64 {
        ADDR_LIMIT
    } else {
        have as usize
    }
}

/// Grow memory by `pages` (or by at least `GROW_MIN_PAGES` when that succeeds); returns the
/// start of the new pages, which belong to us alone, and their count.
fn grow(pages: usize) -> Option<(usize, usize)> {
    let mut got = pages;
    let mut old = usize::MAX;
    if pages < GROW_MIN_PAGES {
        old = wasm32::memory_grow(0, GROW_MIN_PAGES);
        got = GROW_MIN_PAGES;
    }
    if old == usize::MAX {
        old = wasm32::memory_grow(0, pages);
        got = pages;
    }
    if old == usize::MAX || old as u64 * PAGE as u64 >= ADDR_LIMIT as u64 {
        return None;
    }
    Some((old * PAGE, got))
}

fn clamp_end(start: usize, pages: usize) -> usize {
    let end = start as u64 + pages as u64 * PAGE as u64;
    if end > ADDR_LIMIT as u64 {
        ADDR_LIMIT
    } else {
        end as usize
    }
}

/// Make span `s` reach `need` by growing memory in place (only while it ends where memory
/// ends).
unsafe fn extend(s: *mut Span, need: u64) -> bool {
    let end = (*s).end;
    if need <= end as u64 {
        return true;
    }
    if need > ADDR_LIMIT as u64 || end != memory_end() {
        return false;
    }
    let pages = ((need - end as u64 + PAGE as u64 - 1) / PAGE as u64) as usize;
    match grow(pages) {
        Some((start, got)) if start == end => {
            (*s).end = clamp_end(start, got);
            let st = state();
            if (*st).cur == s {
                (*st).end = (*s).end;
            }
            true
        }
        _ => false,
    }
}

#[inline(never)]
unsafe fn alloc_slow(size: usize) -> Option<usize> {
    let st = state();
    let s = (*st).cur;
    if !s.is_null() {
        let p = align8((*st).top);
        if extend(s, p as u64 + size as u64) {
            (*st).top = p + size;
            return Some(p);
        }
        let mut n = (*s).next;
        while !n.is_null() {
            let q = n as usize + core::mem::size_of::<Span>();
            if size <= (*n).end - q {
                (*st).cur = n;
                (*st).end = (*n).end;
                (*st).top = q + size;
                return Some(q);
            }
            n = (*n).next;
        }
    }
    let need = core::mem::size_of::<Span>() as u64 + size as u64;
    let (start, got) = grow(((need + PAGE as u64 - 1) / PAGE as u64) as usize)?;
    let end = clamp_end(start, got);
    if start as u64 + need > end as u64 {
        return None;
    }
    let n = start as *mut Span;
    let data = start + core::mem::size_of::<Span>();
    (*n).end = end;
    if s.is_null() {
        (*n).next = ptr::null_mut();
        (*st).reset_span = n;
        (*st).reset_top = data;
    } else {
        (*n).next = (*s).next;
        (*s).next = n;
    }
    (*st).cur = n;
    (*st).end = end;
    (*st).top = data + size;
    Some(data)
}

/// Allocate `size` bytes, 8-byte aligned, in the per-call arena. Returns the address.
#[inline]
pub(crate) fn alloc(size: usize) -> Result<usize, OutOfMemory> {
    unsafe {
        let st = state();
        let p = align8((*st).top);
        if p != 0 && size <= (*st).end - p {
            (*st).top = p + size;
            return Ok(p);
        }
        alloc_slow(size).ok_or(OutOfMemory)
    }
}

/// Grow the block at `p` from `old` to `new` bytes: in place when it is the most recent
/// arena allocation, else by copying. Returns the (possibly moved) address.
pub(crate) fn realloc(p: usize, old: usize, new: usize) -> Result<usize, OutOfMemory> {
    if new <= old {
        return Ok(p);
    }
    unsafe {
        let st = state();
        let persistent = (*st).cur == (*st).reset_span && p < (*st).reset_top;
        if p != 0 && p + old == (*st).top && !persistent && extend((*st).cur, p as u64 + new as u64)
        {
            (*st).top = p + new;
            return Ok(p);
        }
        let q = alloc(new)?;
        if old != 0 {
            ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old);
        }
        Ok(q)
    }
}

/// Start a new call: everything the arena handed out since the reset point is free again.
#[inline(always)]
pub(crate) fn reset() {
    unsafe {
        let st = state();
        let s = (*st).reset_span;
        (*st).cur = s;
        (*st).top = (*st).reset_top;
        (*st).end = if s.is_null() { 0 } else { (*s).end };
    }
}

/// Make everything allocated so far persistent: the reset point moves to the arena's top.
pub(crate) fn persist() {
    unsafe {
        let st = state();
        (*st).reset_span = (*st).cur;
        (*st).reset_top = (*st).top;
    }
}

/// The reset point, and whether `[p, p + len)` ends exactly there (the last persistent block).
pub(crate) fn is_last_persistent(p: usize, len: usize) -> bool {
    unsafe {
        let st = state();
        !(*st).reset_span.is_null() && p + len == (*st).reset_top
    }
}

/// Grow the last persistent block `[p, p + old)` to `new` bytes in place. Only between calls.
pub(crate) fn extend_last_persistent(p: usize, new: usize) -> bool {
    unsafe {
        let st = state();
        if extend((*st).reset_span, p as u64 + new as u64) {
            (*st).reset_top = p + new;
            reset();
            return true;
        }
        false
    }
}

/// Allocate `size` bytes that survive across calls (never freed). Anything allocated in the
/// arena earlier in the same call becomes persistent too.
pub fn alloc_persistent(size: usize) -> Option<&'static mut [u8]> {
    let p = alloc(size).ok()?;
    persist();
    unsafe {
        ptr::write_bytes(p as *mut u8, 0, size);
        Some(core::slice::from_raw_parts_mut(p as *mut u8, size))
    }
}
