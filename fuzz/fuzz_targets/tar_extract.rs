//! Fuzz target `tar_extract`: see `stateless_fuzz::tar_extract` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::tar_extract(data));
