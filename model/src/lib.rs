//! The node model as data, and its one operation: apply to a root directory.
//!
//! A layer's `model.toml` is parsed into a [`RawModel`] (unverified: only
//! the TOML shape is known), checked by [`RawModel::validate`] into a
//! [`Model`] (trusted: every name, id, path and port obeys the rules in
//! docs/site.md), layers are combined with [`Model::merge`] (a later layer
//! wins per key, and every entry remembers the layer that set it), and
//! [`apply`] renders the result into a root directory.
//!
//! `apply` never runs anything from the root: it reads and writes files
//! through directory descriptors, never following a symlink planted in the
//! root, and it checks every precondition before it changes anything.
//! No templates, no network, no clock.

#![forbid(unsafe_code)]

mod apply;
pub mod layer;
mod model;
mod names;
mod raw;

pub use apply::{Applied, ApplyError, apply};
pub use model::{
    EditFormat, EditKey, EditOp, Entry, Firewall, Group, Model, ModuleState, Plugin, PortRule, Proto, UnitState, User,
};
pub use names::Invalid;
pub use raw::{LoadError, RawModel};
