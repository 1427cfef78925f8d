//! The `spear` host calls (docs/wasm-abi.md, "Host imports"). A module imports only the ones
//! it calls. To add a host call: declare it in `imports` and wrap it below.
//!
//! [`call`] and [`config`] use ABI v1 revision 2: a module that calls them loads only on a
//! host that has them (an older host refuses it at load, naming the import).

use core::fmt;

use crate::arena::{self, OutOfMemory};
use crate::request::Request;

mod imports {
    #[link(wasm_import_module = "spear")]
    extern "C" {
        #[link_name = "send"]
        pub fn send(topic: *const u8, topic_len: u32, data: *const u8, data_len: u32) -> i32;
        #[link_name = "recv"]
        pub fn recv(
            topic_buf: *mut u8,
            topic_cap: u32,
            data_buf: *mut u8,
            data_cap: u32,
            sizes: *mut u32,
        ) -> i32;
        #[link_name = "log"]
        pub fn log(level: i32, msg: *const u8, len: u32);
        #[link_name = "now"]
        pub fn now() -> u64;
        #[link_name = "host_call"]
        pub fn host_call(
            name: *const u8,
            name_len: u32,
            input: *const u8,
            input_len: u32,
            out: *mut u8,
            out_cap: u32,
            out_len: *mut u32,
        ) -> i32;
        #[link_name = "host_result"]
        pub fn host_result(out: *mut u8, out_cap: u32) -> i32;
        #[link_name = "config_get"]
        pub fn config_get(
            key: *const u8,
            key_len: u32,
            out: *mut u8,
            out_cap: u32,
            out_len: *mut u32,
        ) -> i32;
    }
}

/// A host call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// `-2`: the host's outbox is full.
    Full,
    /// `-3`: topic plus data exceed the instance's maximum message size.
    TooLarge,
    /// `-4`: `recv` buffers too small; the message stays queued. Holds the sizes needed.
    BufferTooSmall {
        /// bytes the topic needs
        topic_len: u32,
        /// bytes the data needs
        data_len: u32,
    },
    /// `-5`: the guest's arena is out of memory (SDK helpers only).
    OutOfMemory,
    /// Any other code the host returned.
    Other(i32),
}

impl HostError {
    fn from_code(code: i32) -> Self {
        match code {
            -2 => HostError::Full,
            -3 => HostError::TooLarge,
            -5 => HostError::OutOfMemory,
            c => HostError::Other(c),
        }
    }

    /// The ABI code (negative).
    pub fn code(&self) -> i32 {
        match self {
            HostError::Full => -2,
            HostError::TooLarge => -3,
            HostError::BufferTooSmall { .. } => -4,
            HostError::OutOfMemory => -5,
            HostError::Other(c) => *c,
        }
    }

    /// A short description.
    pub fn message(&self) -> &'static str {
        match self {
            HostError::Full => "spear: outbox full",
            HostError::TooLarge => "spear: message too large",
            HostError::BufferTooSmall { .. } => "spear: receive buffer too small",
            HostError::OutOfMemory => "spear: out of memory",
            HostError::Other(_) => "spear: host call failed",
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message(), self.code())
    }
}

/// Log levels for [`log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// 0
    Trace = 0,
    /// 1
    Debug = 1,
    /// 2
    Info = 2,
    /// 3
    Warn = 3,
    /// 4
    Error = 4,
}

/// Queue a message for the host (its channel `receive()` returns it).
pub fn send(topic: &[u8], data: &[u8]) -> Result<(), HostError> {
    let rc = unsafe {
        imports::send(topic.as_ptr(), topic.len() as u32, data.as_ptr(), data.len() as u32)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(HostError::from_code(rc))
    }
}

/// Pull the next message the host queued into the given buffers. `Ok(Some((topic_len,
/// data_len)))` when one was delivered, `Ok(None)` when none is queued.
pub fn recv_into(topic: &mut [u8], data: &mut [u8]) -> Result<Option<(usize, usize)>, HostError> {
    let mut sizes = [0u32; 2];
    let rc = unsafe {
        imports::recv(
            topic.as_mut_ptr(),
            topic.len() as u32,
            data.as_mut_ptr(),
            data.len() as u32,
            sizes.as_mut_ptr(),
        )
    };
    match rc {
        1 => Ok(Some((sizes[0] as usize, sizes[1] as usize))),
        0 => Ok(None),
        -4 => Err(HostError::BufferTooSmall { topic_len: sizes[0], data_len: sizes[1] }),
        c => Err(HostError::from_code(c)),
    }
}

/// A received message, in arena buffers.
pub struct Message<'r> {
    /// the topic
    pub topic: &'r [u8],
    /// the data
    pub data: &'r [u8],
}

/// Pull the next message into arena buffers sized as needed (retrying when the host says
/// they are too small). `Ok(None)` when none is queued.
pub fn recv<'r>(req: &'r Request) -> Result<Option<Message<'r>>, HostError> {
    let _ = req; // the arena lifetime
    let (mut tcap, mut dcap) = (64usize, 256usize);
    loop {
        let t = arena::alloc(tcap).map_err(|_| HostError::OutOfMemory)?;
        let d = arena::alloc(dcap).map_err(|_| HostError::OutOfMemory)?;
        let (topic, data) = unsafe {
            (
                core::slice::from_raw_parts_mut(t as *mut u8, tcap),
                core::slice::from_raw_parts_mut(d as *mut u8, dcap),
            )
        };
        match recv_into(topic, data) {
            Ok(Some((tl, dl))) => {
                return Ok(Some(Message { topic: &topic[..tl], data: &data[..dl] }))
            }
            Ok(None) => return Ok(None),
            Err(HostError::BufferTooSmall { topic_len, data_len }) => {
                let (t2, d2) = (tcap.max(topic_len as usize), dcap.max(data_len as usize));
                if (t2, d2) == (tcap, dcap) {
                    return Err(HostError::BufferTooSmall { topic_len, data_len });
                }
                tcap = t2;
                dcap = d2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Log a UTF-8 line (logged by the host under `spear.guest`).
pub fn log(level: Level, message: &str) {
    unsafe { imports::log(level as i32, message.as_ptr(), message.len() as u32) }
}

/// Monotonic clock in nanoseconds (the clock of [`Request::deadline_ns`]).
pub fn now() -> u64 {
    unsafe { imports::now() }
}

/// Why [`call`] returned no output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError<'r> {
    /// `-6`: the host has no function of that name.
    NotFound,
    /// `-7`: the host function failed; this is its message (UTF-8).
    Failed(&'r [u8]),
    /// The arena had no room for the result.
    OutOfMemory,
}

/// A failed [`call`] as an application error: a host function's failure passes on with its
/// message (the host then reports the call as failed by the host function); a missing one is
/// code 6, as for other host errors.
impl<'r> From<CallError<'r>> for crate::Error<'r> {
    fn from(e: CallError<'r>) -> Self {
        use crate::abi::{CODE_HOST_FUNCTION, CODE_NOMEM};
        match e {
            CallError::Failed(message) => crate::Error::bytes(CODE_HOST_FUNCTION, message),
            CallError::NotFound => crate::Error::new(6, "spear: no such host function"),
            CallError::OutOfMemory => crate::Error::new(CODE_NOMEM, "spear: out of memory"),
        }
    }
}

unsafe fn arena_bytes<'r>(size: usize) -> Option<&'r mut [u8]> {
    let p = arena::alloc(size.max(1)).ok()?;
    Some(core::slice::from_raw_parts_mut(p as *mut u8, size))
}

/// Call the Python host function `name` on `input` (`spear.host_call`). The output lives in
/// the per-call arena. A result too big for the first buffer is fetched once more from the
/// host (`spear.host_result`), never computed twice.
pub fn call<'r>(req: &'r Request, name: &str, input: &[u8]) -> Result<&'r [u8], CallError<'r>> {
    let _ = req; // the arena lifetime
    let cap = input.len().max(256);
    let buf = unsafe { arena_bytes(cap) }.ok_or(CallError::OutOfMemory)?;
    let mut len = 0u32;
    let rc = unsafe {
        imports::host_call(
            name.as_ptr(),
            name.len() as u32,
            input.as_ptr(),
            input.len() as u32,
            buf.as_mut_ptr(),
            cap as u32,
            &mut len,
        )
    };
    if rc == -6 {
        return Err(CallError::NotFound);
    }
    let len = len as usize;
    let result: &'r [u8] = if len <= cap {
        &buf[..len]
    } else {
        let big = unsafe { arena_bytes(len) }.ok_or(CallError::OutOfMemory)?;
        let got = unsafe { imports::host_result(big.as_mut_ptr(), len as u32) };
        if got < 0 {
            return Err(CallError::Failed(b"spear: the host lost the held result"));
        }
        &big[..len]
    };
    if rc == -7 {
        Err(CallError::Failed(result))
    } else {
        Ok(result)
    }
}

/// The configuration value of `key` (`spear.config_get`), in the per-call arena: `Ok(None)`
/// when the key is absent (an empty value is `Some("")`).
pub fn config<'r>(req: &'r Request, key: &str) -> Result<Option<&'r str>, OutOfMemory> {
    let _ = req;
    let mut cap = 64usize;
    loop {
        let buf = unsafe { arena_bytes(cap) }.ok_or(OutOfMemory)?;
        let mut len = 0u32;
        let (key_ptr, key_len) = (key.as_ptr(), key.len() as u32);
        let rc = unsafe { imports::config_get(key_ptr, key_len, buf.as_mut_ptr(), cap as u32, &mut len) };
        match rc {
            0 => return Ok(Some(core::str::from_utf8(&buf[..len as usize]).unwrap_or(""))),
            -4 if (len as usize) > cap => cap = len as usize,
            _ => return Ok(None),
        }
    }
}
