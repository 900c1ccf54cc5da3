//! Fuzz target `stream_decrypt`: see `stateless_fuzz::stream_decrypt` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::stream_decrypt(data));
