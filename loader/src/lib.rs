//! `stateless-loader`, the program that runs in the initramfs before
//! switch-root, as a library: the binary in `main.rs` only parses its flags,
//! installs the logger and panic hook, and calls [`pipeline::run`].
//!
//! Pure parts, no I/O beyond their arguments: kernel command line parsing
//! ([`cmdline`]), URL templates ([`template`]), RFC 2782 SRV ordering
//! ([`srv`]) and the typed errors the pipeline reports ([`error`]).
//!
//! Parts that touch the machine: the pipeline itself ([`pipeline`]), node
//! identity from `/sys` ([`identity`]), DNS and HTTP(S) on the network
//! ([`dns`], [`fetch`]), the key ladder (USB sticks, TPM: [`keyladder`]),
//! the cache device and its directory ([`blockdev`] mounts, [`cache`]),
//! fleet trust (publisher keys from the boot image, freshness: [`trust`]),
//! the root ([`overlay`] mounts, [`staging`], [`apply`]), the deadline on a
//! bundle's processing ([`guard`]), panics ([`crash`]) and the `/dev/kmsg`
//! logger ([`logger`]), and after the decision the capability probe
//! ([`probe`]) and the boot report to the server ([`report`]).

pub mod apply;
pub mod blockdev;
pub mod cache;
pub mod cmdline;
pub mod crash;
pub mod dns;
pub mod entropy;
pub mod error;
pub mod fetch;
pub mod guard;
pub mod identity;
pub mod image;
pub mod keyladder;
pub mod logger;
pub mod overlay;
pub mod pipeline;
pub mod probe;
pub mod report;
pub mod rollback;
pub mod srv;
pub mod staging;
pub mod sys;
pub mod template;
pub mod tpm_enrol;
pub mod tpm_policies;
pub mod trust;
