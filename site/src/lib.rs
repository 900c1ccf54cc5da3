//! The site tree: `site.toml`, layer directories and templates, turned
//! into one bundle per layer and published into a server's data directory.
//!
//! [`Site::load`] reads the tree, [`Compiled::new`] renders and checks it
//! (every problem as one `file:line: message` line), [`build`] packs the
//! layers whose content changed and publishes them, [`diff`] tells what a
//! build would change. The tree's format is in docs/site.md.

#![forbid(unsafe_code)]

mod build;
mod compile;
mod error;
mod tree;

pub use build::{BuildOptions, Change, Keys, LayerDiff, Planned, build, diff, plan};
pub use compile::{Compiled, Layer, OutEntry, OutKind};
pub use error::{BuildError, Problem};
pub use tree::{LayerId, Site};

/// Loads and checks a site tree: every problem, or the rendered layers.
pub fn check(root: &std::path::Path) -> Result<Compiled, Vec<Problem>> {
    let site = Site::load(root)?;
    Compiled::new(&site)
}
