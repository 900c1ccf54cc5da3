//! The one socket option rustix has no safe call for: the only `unsafe`
//! in the server. `TCP_DEFER_ACCEPT` (tcp(7)) makes the kernel hold a new
//! connection until its first bytes arrive, so that `accept` returns
//! connections with a request to read: in a boot storm that saves each
//! connection a read that would block, an epoll registration and a
//! wake-up (nginx's `listen … deferred`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Sets `TCP_DEFER_ACCEPT` on a listening socket to `seconds` (rounded by
/// the kernel to SYN-ACK retransmissions; a client that connects and sends
/// nothing is accepted after about that long).
pub fn set_defer_accept(listener: impl AsFd, seconds: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the descriptor is borrowed for the call and stays open; the
    // option value is a C int that lives across the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
