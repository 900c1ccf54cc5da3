//! The pure building blocks of `stateless-loader`, the program that runs in
//! the initramfs before switch-root: kernel command line parsing
//! ([`cmdline`]), node identity ([`identity`]), URL templates ([`template`]),
//! RFC 2782 SRV target ordering ([`srv`]) and the `/dev/kmsg` logger
//! ([`logger`]). The binary in `main.rs` only parses its flags and calls
//! into these.

pub mod apply;
pub mod blockdev;
pub mod cache;
pub mod cmdline;
pub mod dns;
pub mod fetch;
pub mod identity;
pub mod keyladder;
pub mod logger;
pub mod overlay;
pub mod pipeline;
pub mod srv;
pub mod staging;
pub mod template;
pub mod trust;
