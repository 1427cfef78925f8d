//! What a handler returns: output bytes (no copy) or an application error.

use core::fmt;
use core::marker::PhantomData;

use crate::abi::CODE_NOMEM;
use crate::arena::OutOfMemory;
use crate::buf::Buf;
use crate::host::HostError;

/// What a handler returns: `Ok(output)` (status 0) or `Err(error)` (status 1).
pub type Result<'r> = core::result::Result<Output<'r>, Error<'r>>;

/// Response bytes, handed to the host without a copy. They must live until the handler
/// returns, which the lifetime enforces: the input, arena memory, a [`Buf`] or static data.
#[derive(Clone, Copy)]
pub struct Output<'r> {
    pub(crate) ptr: u32,
    pub(crate) len: u32,
    _data: PhantomData<&'r [u8]>,
}

impl<'r> Output<'r> {
    /// Respond with `data` (no copy).
    pub fn new(data: &'r [u8]) -> Self {
        Output { ptr: data.as_ptr() as usize as u32, len: data.len() as u32, _data: PhantomData }
    }

    /// An empty response.
    pub fn empty() -> Self {
        Output { ptr: 0, len: 0, _data: PhantomData }
    }
}

impl<'r> From<&'r [u8]> for Output<'r> {
    fn from(data: &'r [u8]) -> Self {
        Output::new(data)
    }
}

impl<'r> From<&'r mut [u8]> for Output<'r> {
    fn from(data: &'r mut [u8]) -> Self {
        Output::new(data)
    }
}

impl<'r, const N: usize> From<&'r [u8; N]> for Output<'r> {
    fn from(data: &'r [u8; N]) -> Self {
        Output::new(data)
    }
}

impl<'r> From<&'r str> for Output<'r> {
    fn from(s: &'r str) -> Self {
        Output::new(s.as_bytes())
    }
}

impl<'r> From<Buf<'r>> for Output<'r> {
    fn from(b: Buf<'r>) -> Self {
        Output::new(b.into_bytes())
    }
}

/// An application error: the host raises `ExecutionFailed` with this code and message.
#[derive(Clone, Copy)]
pub struct Error<'r> {
    pub(crate) code: i32,
    pub(crate) message: Output<'r>,
}

impl<'r> Error<'r> {
    /// An error with code `code` and a UTF-8 message (not copied).
    pub fn new(code: i32, message: &'r str) -> Self {
        Error { code, message: message.into() }
    }

    /// An error whose message is raw bytes (the host replaces invalid UTF-8).
    pub fn bytes(code: i32, message: &'r [u8]) -> Self {
        Error { code, message: message.into() }
    }

    /// An error whose message was built in a [`Buf`].
    pub fn buf(code: i32, message: Buf<'r>) -> Self {
        Error { code, message: message.into() }
    }

    /// The error code.
    pub fn code(&self) -> i32 {
        self.code
    }
}

impl From<OutOfMemory> for Error<'_> {
    fn from(_: OutOfMemory) -> Self {
        Error::new(CODE_NOMEM, "spear: out of memory")
    }
}

/// `write!` into a [`Buf`] fails only when the arena is out of memory.
impl From<fmt::Error> for Error<'_> {
    fn from(_: fmt::Error) -> Self {
        Error::new(CODE_NOMEM, "spear: out of memory")
    }
}

/// A failed host call as an application error: the code is the negated host code (2 outbox
/// full, 3 too large, 4 buffer too small), like the C SDK's fixtures do.
impl From<HostError> for Error<'_> {
    fn from(e: HostError) -> Self {
        Error::new(-e.code(), e.message())
    }
}
