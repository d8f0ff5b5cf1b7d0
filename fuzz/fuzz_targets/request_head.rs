//! The request-head parser on arbitrary bytes: never panics, and what it accepts is framed
//! unambiguously.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    worker::http::fuzz::request_head(data);
});
