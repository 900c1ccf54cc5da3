//! Fuzz target `cmdline_split`: see `stateless_fuzz::loader::cmdline_split` (fuzz/src/loader.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::loader::cmdline_split(data));
