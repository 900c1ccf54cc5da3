//! `statelessctl publish --from-history GEN`: a deliberate rollback. The
//! content of an earlier generation, kept in `state/history/`, is opened
//! with the key, extracted (whiteouts stay `.wh.NAME` files, `.stateless/`
//! layer metadata stays as it was) and packed again as a new, higher
//! generation with the same scope, sealed with the same key and, with
//! `--sign`, signed anew. Nodes then move "back" by moving forward: no
//! anti-rollback exception exists or is needed.

use std::fs::File;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use stateless_bundle::{BundleReader, DEFAULT_LEVEL, Limits, OpenOptions, PackOptions};
use stateless_keys::{read_key_file, read_signing_key_file};
use stateless_server::store;
use stateless_server::{DataDir, Target};
use tempfile::NamedTempFile;

/// The bundle file of generation `g` of `target`: the published one, or
/// one kept in the history.
fn find(data: &DataDir, target: &Target, g: u64) -> anyhow::Result<std::path::PathBuf> {
    if store::published(data, target).is_some_and(|i| i.generation == g) {
        return Ok(data.bundle(target));
    }
    let history = store::history(data, target);
    if let Some((_, p)) = history.iter().find(|(h, _)| *h == g) {
        return Ok(p.clone());
    }
    let kept: Vec<String> = history.iter().map(|(h, _)| h.to_string()).collect();
    let kept = if kept.is_empty() { "none".to_owned() } else { kept.join(", ") };
    bail!("generation {g} of the {target} bundle is not in the history (kept: {kept}; publish --keep sets how many)")
}

/// Repacks generation `g` of `target` as a new generation; returns the new
/// bundle, a temporary file in the state directory.
pub fn repack(
    data: &DataDir,
    target: &Target,
    g: u64,
    key_file: &Path,
    sign: Option<&Path>,
    generation: Option<u64>,
) -> anyhow::Result<NamedTempFile> {
    let old = find(data, target, g)?;
    let key = read_key_file(key_file).context("reading key file")?;
    let signer = sign.map(|s| read_signing_key_file(s).context("reading signing key file")).transpose()?;
    let highest = store::history(data, target)
        .iter()
        .map(|(h, _)| *h)
        .chain(store::published(data, target).map(|i| i.generation))
        .max()
        .unwrap_or(0);
    let new_gen = match generation {
        Some(n) if n <= highest => bail!("generation {n} is not higher than generation {highest}"),
        Some(n) => n,
        None => highest.checked_add(1).context("no generation above the highest")?,
    };
    let f = File::open(&old).with_context(|| format!("opening {}", old.display()))?;
    let reader = BundleReader::new(f).with_context(|| format!("{}", old.display()))?;
    let bundle = reader
        .authenticate(Some(&key), &Limits::default())
        .with_context(|| format!("opening generation {g} ({}) with {}", old.display(), key_file.display()))?;
    let header = bundle.header().clone();
    if header.signature.is_some() && signer.is_none() {
        // Nodes that require publisher signatures would refuse it.
        bail!("generation {g} is signed by a publisher; give --sign to sign the new generation too");
    }
    let tree = tempfile::tempdir_in(data.state()).context("creating a directory in the state directory")?;
    let owners = rustix::process::geteuid().is_root();
    bundle
        .extract(OpenOptions { dest: Some(tree.path()), owners, threaded: true })
        .with_context(|| format!("extracting generation {g}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    // An expiry keeps its lifetime, counted from now.
    let expires = header.expires.map(|e| now.saturating_add(e.saturating_sub(header.created)));
    let opts = PackOptions {
        key: Some(&key),
        generation: new_gen,
        created: now,
        expires,
        scope: header.scope.clone(),
        level: DEFAULT_LEVEL,
        threads: 0,
        deletions: Vec::new(),
        limits: Limits::default(),
    };
    let mut out = NamedTempFile::new_in(data.state()).context("creating a file in the state directory")?;
    match &signer {
        Some(s) => stateless_bundle::pack_signed(tree.path(), out.as_file_mut(), &opts, s),
        None => stateless_bundle::pack(tree.path(), out.as_file_mut(), &opts),
    }
    .with_context(|| format!("packing generation {g} as generation {new_gen}"))?;
    out.as_file().sync_all().context("syncing the new bundle")?;
    Ok(out)
}
