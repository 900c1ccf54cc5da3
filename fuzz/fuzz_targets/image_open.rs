//! Fuzz target `image_open`: see `stateless_fuzz::image_open` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::image_open(data));
