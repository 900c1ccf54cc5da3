//! Fuzz target `keys_cpio`: see `stateless_fuzz::keys_cpio` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_cpio(data));
