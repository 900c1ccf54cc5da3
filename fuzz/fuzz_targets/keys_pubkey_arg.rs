//! Fuzz target `keys_pubkey_arg`: see `stateless_fuzz::keys_pubkey_arg` (fuzz/src/trust.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_pubkey_arg(data));
