//! Fuzz target `import_ignition`: see `stateless_fuzz::import_ignition` (fuzz/src/ignition.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::import_ignition(data));
