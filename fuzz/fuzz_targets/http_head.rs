//! Fuzz target `http_head`: see `stateless_fuzz::http_head` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::http_head(data));
