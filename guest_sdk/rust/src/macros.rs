//! Declaring handlers.

/// Export a function as a handler: `spear::handler!(echo);` exports `fn echo(req: &Request)
/// -> spear::Result` as `spear.handler.echo` (the host calls it by the name `echo`).
/// For names that are not Rust identifiers: `spear::handler!("get-user" => get_user);`.
#[macro_export]
macro_rules! handler {
    ($name:ident) => {
        const _: () = {
            #[export_name = ::core::concat!("spear.handler.", ::core::stringify!($name))]
            extern "C" fn __spear_handler() -> i32 {
                $crate::__private::run($name)
            }
        };
    };
    ($export:literal => $name:ident) => {
        const _: () = {
            #[export_name = ::core::concat!("spear.handler.", $export)]
            extern "C" fn __spear_handler() -> i32 {
                $crate::__private::run($name)
            }
        };
    };
}

/// Export the optional catch-all `spear_dispatch`, called for names with no handler; it
/// reads [`crate::Request::name`]: `spear::dispatch!(route);`.
#[macro_export]
macro_rules! dispatch {
    ($name:ident) => {
        const _: () = {
            #[export_name = "spear_dispatch"]
            extern "C" fn __spear_dispatch() -> i32 {
                $crate::__private::run($name)
            }
        };
    };
}

/// For `#![no_std]` guests: a panic handler that traps (the host reports the trap and
/// replaces the instance). Guests that use `std` already have one.
#[macro_export]
macro_rules! panic_handler {
    () => {
        #[panic_handler]
        fn __spear_panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            ::core::arch::wasm32::unreachable()
        }
    };
}
