//! Fuzz target `keys_tpm_hmac`: see `stateless_fuzz::keys_tpm_hmac` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_tpm_hmac(data));
