//! Fuzz target `model_toml`: see `stateless_fuzz::model_toml` (fuzz/src/model.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::model_toml(data));
