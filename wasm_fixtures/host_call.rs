//! host_call (Rust): handlers relay and config, the same as in host_call.c (see there).

use spear::host::{self, CallError};
use spear::{Error, Request, Result};

spear::handler!(relay);
spear::handler!(config);

fn relay(req: &Request) -> Result {
    match host::call(req, "transform", req.input()) {
        Ok(out) => Ok(out.into()),
        Err(CallError::NotFound) => Err(Error::new(404, "no host function named transform")),
        Err(e) => Err(e.into()), // a failure passes on with its message
    }
}

fn config(req: &Request) -> Result {
    let key = core::str::from_utf8(req.input()).map_err(|_| Error::new(400, "key is not UTF-8"))?;
    match host::config(req, key)? {
        Some(value) => Ok(value.into()),
        None => Err(Error::new(404, "no such configuration key")),
    }
}
