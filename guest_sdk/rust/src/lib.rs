//! The spear guest SDK for Rust: write functions that the spear host runs in-process.
//!
//! This crate implements the guest side of the spear WASM ABI v1 (`docs/wasm-abi.md`): the
//! `spear_abi_version`/`spear_init`/`spear_reserve` exports, the control block, a per-call
//! arena, zero-copy output, application errors, metadata and the `spear` host calls. It uses
//! `core` only, so it works in `#![no_std]` guests and in guests that use `std`.
//!
//! ```ignore
//! use spear::{Request, Result};
//!
//! spear::handler!(echo);                    // exported as "spear.handler.echo"
//!
//! fn echo(req: &Request) -> Result {
//!     Ok(req.input().into())                // zero copy: the output is the input
//! }
//! ```
//!
//! Build a single file with `spear-guest build echo.rs -o echo.wasm`, or a Cargo project with
//! `cargo build --target wasm32-unknown-unknown --release` (see guest_sdk/README.md).
#![no_std]
#![warn(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
compile_error!("the spear crate targets wasm32: build with --target wasm32-unknown-unknown");

pub mod abi;
mod arena;
mod buf;
pub mod host;
mod macros;
mod request;
mod response;
mod runtime;

pub use arena::{alloc_persistent, OutOfMemory};
pub use buf::Buf;
pub use request::{Metadata, Request};
pub use response::{Error, Output, Result};

#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::run;
}
