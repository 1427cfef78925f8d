//! echo (Rust): returns its input unchanged, with zero copies (out_ptr == input_ptr).
#![no_std]

use spear::{Request, Result};

spear::panic_handler!();
spear::handler!(echo);

fn echo(req: &Request) -> Result {
    Ok(req.input().into())
}
