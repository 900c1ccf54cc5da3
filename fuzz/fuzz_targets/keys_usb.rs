//! Fuzz target `keys_usb`: see `stateless_fuzz::keys_usb` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stateless_fuzz::keys_usb(data));
