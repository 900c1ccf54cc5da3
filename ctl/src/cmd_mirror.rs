//! `statelessctl mirror --data DIR --to DIR2`: copy the public bundle tree
//! (`v1/`) of a data directory to another directory that a mirror serves
//! (nginx, a second `statelessctl serve`, a mounted bucket).
//!
//! The order never exposes a half-published stack: every shared layer
//! (default, plugins, groups) first, then the nodes' own bundles, which
//! are what name the groups and plugins a node stacks (`layer.toml`).
//! A node that fetches between two steps sees either its old view or its
//! new one over layers that are already there. Each file is copied to a
//! temporary file beside its place, synced, and renamed over it, then the
//! directory is synced, as `publish` does. The nodes' wrapped TPM keys
//! (`v1/nodes/NODE/tpm-key`) are copied after the bundles. With `--delete`,
//! TPM keys and bundles gone from the source are removed, bundles in the
//! reverse order: nodes first, layers last. `state/` is never copied: each server keeps its own registrations
//! and reports.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use stateless_server::store::{self, BundleInfo};

/// `statelessctl mirror`
#[derive(Debug, Clone, Args)]
pub struct MirrorArgs {
    /// The data directory to copy from.
    #[arg(long)]
    pub data: PathBuf,
    /// The directory a mirror serves (created if missing); only its v1/ is written.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Also remove bundles the source no longer has (nodes first, then layers).
    #[arg(long)]
    pub delete: bool,
    /// Print what would be done, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The kinds of bundle path, in the order they are copied.
const ORDER: [&str; 4] = ["v1/default", "v1/plugins", "v1/groups", "v1/nodes"];

/// Every bundle below `root`'s `v1/`, as paths relative to `root`, in
/// [`ORDER`]; a name that is not a valid scope name is skipped.
fn bundles(root: &Path) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (rank, kind) in ORDER.iter().enumerate() {
        if *kind == "v1/default" {
            if root.join("v1/default/bundle").is_file() {
                out.push((rank, "v1/default/bundle".to_owned()));
            }
            continue;
        }
        let Ok(rd) = fs::read_dir(root.join(kind)) else { continue };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| stateless_server::check_name(n).is_ok())
            .collect();
        names.sort();
        for n in names {
            let rel = format!("{kind}/{n}/bundle");
            // Never through a link: the tree must be what it looks like.
            if fs::symlink_metadata(root.join(&rel)).is_ok_and(|m| m.is_file()) {
                out.push((rank, rel));
            }
        }
    }
    out
}

/// Every node's wrapped TPM key (`v1/nodes/NODE/tpm-key`, see
/// `approve --tpm-key`) below `root`, relative to `root`.
fn tpm_keys(root: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(root.join("v1/nodes")) else { return Vec::new() };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| stateless_server::check_name(n).is_ok())
        .map(|n| format!("v1/nodes/{n}/{}", stateless_server::enrol::TPM_KEY_FILE))
        .filter(|rel| fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.is_file()))
        .collect();
    out.sort();
    out
}

fn info(path: &Path) -> Option<BundleInfo> {
    store::bundle_info(path).ok()
}

/// Copies `src` over `dst` atomically.
fn copy_atomic(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let dir = dst.parent().context("a bundle path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".mirror")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    std::io::copy(&mut from, tmp.as_file_mut()).with_context(|| format!("copying {}", src.display()))?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all().with_context(|| format!("syncing the copy of {}", src.display()))?;
    // Readable by a web server running as another user, as publish leaves it.
    fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(dst).map_err(|e| e.error).with_context(|| format!("renaming into {}", dst.display()))?;
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

pub fn run(a: MirrorArgs) -> anyhow::Result<ExitCode> {
    if !a.data.join("v1").is_dir() {
        bail!("{} has no v1/: not a data directory", a.data.display());
    }
    if !a.dry_run {
        fs::create_dir_all(a.to.join("v1")).with_context(|| format!("creating {}", a.to.join("v1").display()))?;
    }
    let mut out = std::io::stdout().lock();
    let (mut copied, mut same, mut removed) = (0, 0, 0);
    let src = bundles(&a.data);
    for (_, rel) in &src {
        let (from, to) = (a.data.join(rel), a.to.join(rel));
        let Some(new) = info(&from) else {
            writeln!(out, "skip {rel}: not a complete bundle")?;
            continue;
        };
        let old = info(&to);
        if old.as_ref().is_some_and(|o| o.digest == new.digest && o.len == new.len) {
            same += 1;
            continue;
        }
        if let Some(o) = old.as_ref().filter(|o| o.generation > new.generation) {
            // Nodes that saw the mirror's newer generation would refuse ours.
            writeln!(out, "skip {rel}: the mirror has generation {}, newer than {}", o.generation, new.generation)?;
            continue;
        }
        let was = old.map_or("new".to_owned(), |o| format!("was {}", o.generation));
        writeln!(out, "copy {rel} generation {} ({was})", new.generation)?;
        if !a.dry_run {
            copy_atomic(&from, &to)?;
        }
        copied += 1;
    }
    // The nodes' wrapped TPM keys, after the bundles: a node that fetches
    // its key from the mirror then finds the bundles it opens. Not
    // bundles: compared byte for byte.
    let keys = tpm_keys(&a.data);
    for rel in &keys {
        let (from, to) = (a.data.join(rel), a.to.join(rel));
        let new = fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        if fs::read(&to).is_ok_and(|old| old == new) {
            same += 1;
            continue;
        }
        writeln!(out, "copy {rel}")?;
        if !a.dry_run {
            copy_atomic(&from, &to)?;
        }
        copied += 1;
    }
    if a.delete {
        // A withdrawn TPM key (reject) goes first.
        for rel in tpm_keys(&a.to).into_iter().filter(|r| !keys.contains(r)) {
            writeln!(out, "remove {rel}")?;
            if !a.dry_run {
                fs::remove_file(a.to.join(&rel)).with_context(|| format!("removing {}", a.to.join(&rel).display()))?;
            }
            removed += 1;
        }
        let keep: std::collections::HashSet<&String> = src.iter().map(|(_, r)| r).collect();
        let mut gone: Vec<(usize, String)> = bundles(&a.to).into_iter().filter(|(_, r)| !keep.contains(r)).collect();
        // Nodes first: a node's view goes before the layers it stacks.
        gone.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        for (_, rel) in gone {
            writeln!(out, "remove {rel}")?;
            if !a.dry_run {
                fs::remove_file(a.to.join(&rel)).with_context(|| format!("removing {}", a.to.join(&rel).display()))?;
            }
            removed += 1;
        }
    }
    writeln!(out, "{copied} copied, {same} unchanged, {removed} removed{}", if a.dry_run { " (dry run)" } else { "" })?;
    Ok(ExitCode::SUCCESS)
}
