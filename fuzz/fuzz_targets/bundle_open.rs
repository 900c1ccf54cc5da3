//! Fuzz target `bundle_open`: see `stateless_fuzz::bundle_open` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::bundle_open(data));
