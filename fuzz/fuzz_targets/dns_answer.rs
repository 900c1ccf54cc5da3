//! Fuzz target `dns_answer`: see `stateless_fuzz::loader::dns_answer` (fuzz/src/loader.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::loader::dns_answer(data));
