//! Fuzz target `keys_tpm_srk_public`: see `stateless_fuzz::keys_tpm_srk_public` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_tpm_srk_public(data));
