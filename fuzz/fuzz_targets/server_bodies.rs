//! Fuzz target `server_bodies`: see `stateless_fuzz::server_bodies` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::server_bodies(data));
