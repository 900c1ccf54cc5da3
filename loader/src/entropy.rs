//! Waiting for the kernel's random pool, the one way that cannot hang.
//!
//! The loader needs random bytes (staging names, SRV order, TLS). The
//! `getrandom` crate finds the `getrandom(2)` wrapper with `dlsym`, which a
//! static binary does not have, so in the static loader it falls back to
//! waiting in `poll(2)` on `/dev/random` until the pool is initialised and
//! then reads `/dev/urandom`. Early in boot, on a machine with no hardware
//! RNG the kernel trusts (QEMU's default CPU, older servers) and no network
//! (an air-gapped node booting from local media), nothing initialises the
//! pool while it only polls: the loader would wait for ever. The
//! `getrandom(2)` syscall itself, called without `GRND_NONBLOCK`, makes the
//! kernel (5.4 and later) seed the pool from CPU timing jitter within about
//! a second. So the loader asks for one byte that way before anything else
//! needs randomness; afterwards every reader finds the pool ready.

use std::time::{Duration, Instant};

use rustix::rand::{GetRandomFlags, getrandom};

/// Blocks until the kernel's random pool is initialised. Returns how long
/// that took; `None` when the kernel has no `getrandom(2)` (before 3.17),
/// where the loader's other readers fall back to `/dev/urandom` anyway.
pub fn wait_for_pool() -> Option<Duration> {
    let t = Instant::now();
    let mut byte = [0u8; 1];
    loop {
        match getrandom(&mut byte, GetRandomFlags::empty()) {
            Ok(_) => return Some(t.elapsed()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                log::debug!("getrandom(2): {e}; not waiting for the random pool");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_pool_is_ready() {
        // A test machine's pool is long initialised: this must not block.
        assert!(wait_for_pool().is_some_and(|d| d < Duration::from_secs(5)));
    }
}
