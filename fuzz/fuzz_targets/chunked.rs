//! The chunked decoder on arbitrary bytes: never panics, and feeding the input in pieces
//! gives the same body as feeding it at once.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    worker::http::fuzz::chunked(data);
});
