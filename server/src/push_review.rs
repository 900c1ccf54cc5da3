//! Bundles nodes pushed, waiting in `state/pushes/{node}/` for review.
//!
//! Each push is `{generation:020}.bundle` with a `{generation:020}.json`
//! beside it (digest, size, address, time). `accept-push` publishes one
//! through [`crate::store::publish`] and removes it and every older push of
//! the node (they could never be published after it).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{DataDir, Target, check_name};
use crate::store::{self, BundleInfo, PublishError, PublishLock, Published};

/// What is recorded about a push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushMeta {
    /// The node that pushed.
    pub node: String,
    /// The bundle's generation.
    pub generation: u64,
    /// The bundle's digest.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Key id it is sealed for.
    pub key_id: String,
    /// When it arrived (RFC 3339).
    pub received: String,
    /// From where.
    pub address: String,
}

fn bundle_name(generation: u64) -> String {
    format!("{generation:020}.bundle")
}

/// Moves a received, checked bundle into the review area.
pub fn store(
    data: &DataDir,
    node: &str,
    file: tempfile::NamedTempFile,
    info: &BundleInfo,
    address: &str,
    received: String,
) -> io::Result<PathBuf> {
    let dir = data.pushes(node);
    fs::create_dir_all(&dir)?;
    let meta = PushMeta {
        node: node.to_owned(),
        generation: info.generation,
        digest: info.digest.clone(),
        size: info.len,
        key_id: info.key_id.clone(),
        received,
        address: address.to_owned(),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
    // Metadata first: a bundle without metadata would be invisible to
    // `pushes`; metadata without a bundle is skipped by `list`.
    let meta_path = dir.join(format!("{:020}.json", info.generation));
    crate::registry::write_atomic(&meta_path, &json)?;
    let path = dir.join(bundle_name(info.generation));
    let kept = file.as_file().sync_all().and_then(|()| file.persist(&path).map(drop).map_err(|e| e.error));
    if let Err(e) = kept {
        // Nothing partial: the metadata goes with the bundle it describes.
        let _ = fs::remove_file(&meta_path);
        return Err(e);
    }
    Ok(path)
}

/// Pushes awaiting review, of one node or all, by node then generation.
pub fn list(data: &DataDir, node: Option<&str>) -> Vec<PushMeta> {
    let root = data.state().join("pushes");
    let nodes: Vec<String> = match node {
        Some(n) => vec![n.to_owned()],
        None => fs::read_dir(&root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
            .collect(),
    };
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| check_name(n).is_ok()) {
        let dir = data.pushes(n);
        for e in fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") && p.with_extension("bundle").exists() {
                if let Some(m) = fs::read(&p).ok().and_then(|b| serde_json::from_slice::<PushMeta>(&b).ok()) {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node).then(a.generation.cmp(&b.generation)));
    out
}

/// The highest generation a node has waiting, if any.
pub fn highest(data: &DataDir, node: &str) -> Option<u64> {
    list(data, Some(node)).iter().map(|m| m.generation).max()
}

/// Why a push could not be accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// There is no such push.
    #[error("node {node} has no pushed bundle of generation {generation} awaiting review")]
    NoSuchPush {
        /// The node.
        node: String,
        /// The generation asked for.
        generation: u64,
    },
    /// Publishing failed.
    #[error("publishing the pushed bundle")]
    Publish(#[source] PublishError),
    /// Cleaning up failed.
    #[error("removing accepted pushes")]
    Io(#[source] io::Error),
}

/// Publishes a node's pushed bundle of `generation` as its node bundle and
/// drops it and every older push. The caller holds the [`PublishLock`] and
/// writes the audit log.
pub fn accept(
    data: &DataDir,
    node: &str,
    generation: u64,
    keep: usize,
    lock: &PublishLock,
) -> Result<Published, AcceptError> {
    let dir = data.pushes(node);
    let src = dir.join(bundle_name(generation));
    if check_name(node).is_err() || !src.is_file() {
        return Err(AcceptError::NoSuchPush { node: node.to_owned(), generation });
    }
    let target = Target::Node(node.to_owned());
    let published = store::publish(data, &target, &src, keep, lock).map_err(AcceptError::Publish)?;
    for m in list(data, Some(node)).into_iter().filter(|m| m.generation <= generation) {
        remove_push(&dir, m.generation).map_err(AcceptError::Io)?;
    }
    Ok(published)
}

fn remove_push(dir: &Path, generation: u64) -> io::Result<()> {
    for ext in ["bundle", "json"] {
        match fs::remove_file(dir.join(format!("{generation:020}.{ext}"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
