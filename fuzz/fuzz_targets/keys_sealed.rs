//! Fuzz target `keys_sealed`: see `stateless_fuzz::keys_sealed` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_sealed(data));
