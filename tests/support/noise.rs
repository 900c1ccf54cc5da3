//! Incompressible test data, shared by the test crates (`#[path]`-included).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// `len` bytes of xorshift64 output from `seed` (any value, 0 included: it
/// is mixed first, as xorshift would stay at zero): zstd cannot shrink
/// them, so a bundle of them is as large as the data.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
