//! A WASI command in plain Rust (`fn main`, std only, no spear SDK). The tests build it with
//! `rustc --target wasm32-wasi` and run it as a function: it writes its environment
//! ("NAME=value" lines), then its stdin, to stdout; with EXIT=N in the environment it says so
//! on stderr and exits with status N.

use std::io::{Read, Write};

fn main() {
    let mut out = std::io::stdout();
    for (name, value) in std::env::vars() {
        writeln!(out, "{name}={value}").unwrap();
    }
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    out.write_all(&input).unwrap();
    out.flush().unwrap();
    if let Ok(code) = std::env::var("EXIT") {
        eprintln!("exiting with {code}");
        std::process::exit(code.parse().unwrap_or(1));
    }
}
