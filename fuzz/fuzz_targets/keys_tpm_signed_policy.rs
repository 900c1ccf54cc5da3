//! Fuzz target `keys_tpm_signed_policy`: see `stateless_fuzz::keys_tpm_signed_policy` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_tpm_signed_policy(data));
