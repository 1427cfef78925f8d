//! greet (Rust): metadata, application errors and host calls; the same function as greet.c
//! and greet.zig (see greet.c for what each handler answers). Uses std (Vec, format!) to
//! show that the SDK shares memory with std's allocator.

use std::fmt::Write;

use spear::host::{self, Level};
use spear::{Error, Request, Result};

spear::handler!(greet);
spear::handler!(meta);
spear::handler!(fail);
spear::handler!(pull);
spear::handler!(clock);

fn greet(req: &Request) -> Result {
    let user = req.meta("user").ok_or(Error::new(400, "missing 'user' metadata"))?;
    host::log(Level::Info, &format!("greeting {user}"));
    if let Err(e) = host::send(b"greeted", user.as_bytes()) {
        let mut msg = req.buf();
        write!(msg, "send failed: code {}", e.code())?;
        return Err(Error::buf(-e.code(), msg));
    }
    let mut out = req.buf();
    write!(out, "hello, {user} ({} bytes)", req.input().len())?;
    Ok(out.into())
}

fn meta(req: &Request) -> Result {
    let mut out = req.buf();
    for (k, v) in req.metadata() {
        write!(out, "{k}={v}\n")?;
    }
    Ok(out.into())
}

fn fail(req: &Request) -> Result {
    let mut msg = req.buf();
    msg.push_str("failed on purpose: ")?;
    msg.push(req.input())?;
    Err(Error::buf(42, msg))
}

fn pull(req: &Request) -> Result {
    let mut out = req.buf();
    loop {
        match host::recv(req) {
            Ok(Some(m)) => {
                out.push(m.topic)?;
                out.push_byte(b'=')?;
                out.push(m.data)?;
                out.push_byte(b';')?;
            }
            Ok(None) => return Ok(out.into()),
            Err(e) => return Err(Error::new(-e.code(), "recv failed")),
        }
    }
}

fn clock(req: &Request) -> Result {
    let mut out = req.buf();
    write!(out, "{}", host::now())?;
    Ok(out.into())
}
