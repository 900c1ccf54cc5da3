//! Apply a model to a root directory.
pub use crate::Model;
/// What apply changed.
#[derive(Debug, Default)]
pub struct Applied;
/// Why apply refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {}
/// Applies.
pub fn apply(_m: &Model, _root: &std::path::Path) -> Result<Applied, ApplyError> {
    Ok(Applied)
}
