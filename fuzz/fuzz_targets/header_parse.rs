//! Fuzz target `header_parse`: see `stateless_fuzz::header_parse` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::header_parse(data));
