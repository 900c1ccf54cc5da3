//! The Stateless Loader reference configuration server.
//!
//! It serves the protocol of `docs/protocol.md` from a data directory laid
//! out exactly as the URL paths ([`layout`]), so nginx or any static server
//! can serve the same tree; on top it records nodes that ask for bundles
//! ([`registry`]), lets an admin publish bundles atomically and only
//! forwards ([`store`]), and accepts bundles pushed by nodes that prove
//! possession of their key ([`push_auth`], [`push_review`]). `statelessctl serve`,
//! `publish`, `nodes`, `approve`, `reject`, `pushes` and `accept-push` are
//! thin wrappers. The design and the data layout are in `docs/server.md`.
#![deny(unsafe_code)]
// The one exception is `sys`, a socket option without a safe call.

pub mod cleanup;
pub mod enrol;
mod front;
pub mod http;
pub mod layout;
pub mod metrics;
pub mod push_auth;
pub mod push_review;
pub mod registry;
pub mod reports;
pub mod serve;
pub mod store;
mod sys;
pub mod tls;

pub use layout::{DataDir, Target, check_name};
pub use serve::{Server, ServerConfig, load_tls};
