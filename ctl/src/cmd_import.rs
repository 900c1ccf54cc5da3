//! `statelessctl import ignition CONFIG --out DIR`: an Ignition config as a
//! site layer directory (`files/`, `files.toml`, `model.toml`).
//!
//! The conversion is `ignition.rs` (pure); this file reads the config and
//! writes the layer so that a failed import leaves nothing: the layer is
//! built in a temporary directory beside `--out` and renamed into place
//! (with `--force`, atomically exchanged with the old one, which is then
//! removed).

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::ignition::{self, Layer, Node};

/// The largest config read (a config holds its files inline, base64).
const MAX_CONFIG_BYTES: u64 = 512 << 20;

#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Turn an Ignition config (spec 3.0.0 to 3.4.0) into a site layer directory.
    Ignition(IgnitionArgs),
}

#[derive(Debug, Args)]
pub struct IgnitionArgs {
    /// The Ignition config (JSON), e.g. config.ign.
    pub config: PathBuf,
    /// The layer directory to write, e.g. site/nodes/node42/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace a non-empty --out directory (its old contents are removed).
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: ImportCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ImportCmd::Ignition(a) => import_ignition(&a),
    }
}

fn import_ignition(a: &IgnitionArgs) -> anyhow::Result<ExitCode> {
    let name = a.config.display();
    let mut json = Vec::new();
    fs::File::open(&a.config)
        .with_context(|| format!("reading {name}"))?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut json)
        .with_context(|| format!("reading {name}"))?;
    if json.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{name} is larger than {MAX_CONFIG_BYTES} bytes");
    }
    // Checked before converting, so that a mistaken --out is reported
    // before a long list of problems.
    let out = &a.out;
    let exists = match fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => bail!("{} exists and is not a directory", out.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    let non_empty = exists && fs::read_dir(out)?.next().is_some();
    if non_empty && !a.force {
        bail!("{} is not empty; use --force to replace it", out.display());
    }
    let layer = match ignition::convert(&json) {
        Ok(l) => l,
        Err(problems) => {
            let mut err = std::io::stderr().lock();
            for p in &problems {
                writeln!(err, "statelessctl: {name}: {p}")?;
            }
            bail!("{name}: {} part(s) cannot be imported; nothing was written", problems.len());
        }
    };
    let dir_name = out.file_name().with_context(|| format!("--out {} must name a directory", out.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.import", dir_name.to_string_lossy()))
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    write_layer(staging.path(), &layer).context("writing the layer")?;
    // The staging directory is 0700; a layer directory is an ordinary one.
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))?;
    if exists {
        // Swap both trees in one step, so --out is never missing or half
        // written; the old tree ends up in the staging path, which the
        // TempDir removes when dropped.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            staging.path(),
            rustix::fs::CWD,
            out,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .with_context(|| format!("replacing {}", out.display()))?;
    } else {
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, out) {
            let _ = fs::remove_dir_all(&staged);
            return Err(e).with_context(|| format!("moving the layer to {}", out.display()));
        }
    }
    let count = |f: fn(&Node) -> bool| layer.nodes.values().filter(|n| f(n)).count();
    println!(
        "{name} (spec {}): {} files, {} directories, {} links, {} users, {} groups, {} units -> {}",
        layer.version,
        count(|n| matches!(n, Node::File(_))),
        count(|n| matches!(n, Node::Dir)),
        count(|n| matches!(n, Node::Symlink(_) | Node::HardLink(_))),
        layer.users,
        layer.groups,
        layer.units,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `files/`, `files.toml` and `model.toml` into the empty `dir`.
fn write_layer(dir: &Path, layer: &Layer) -> anyhow::Result<()> {
    let files = dir.join("files");
    fs::create_dir(&files)?;
    // Sorted paths: every parent comes before its children. Hard links come
    // after their target files, which a sorted order does not promise.
    let mut hard = Vec::new();
    for (rel, node) in &layer.nodes {
        let path = files.join(rel);
        if let Some(p) = path.parent() {
            fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        let mode = layer.meta.get(rel).and_then(|m| m.mode);
        match node {
            Node::File(bytes) => {
                fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
                // The special bits stay in files.toml only: a setuid file in
                // a git work tree helps nobody.
                let m = mode.unwrap_or(0o644) & 0o777;
                fs::set_permissions(&path, fs::Permissions::from_mode(m))?;
            }
            Node::Dir => fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?,
            Node::Symlink(target) => symlink(target, &path).with_context(|| format!("linking {}", path.display()))?,
            Node::HardLink(to) => hard.push((path, files.join(to))),
        }
    }
    for (path, to) in hard {
        fs::hard_link(&to, &path).with_context(|| format!("linking {}", path.display()))?;
    }
    // Directory modes last, deepest first, so a read-only directory is
    // filled before it is closed.
    for (rel, node) in layer.nodes.iter().rev() {
        if let (Node::Dir, Some(m)) = (node, layer.meta.get(rel).and_then(|m| m.mode)) {
            // Kept writable by its owner here, so the tree can be edited
            // and removed; the real mode is in files.toml.
            fs::set_permissions(files.join(rel), fs::Permissions::from_mode((m & 0o777) | 0o700))?;
        }
    }
    fs::write(dir.join("files.toml"), layer.files_toml())?;
    fs::write(dir.join("model.toml"), &layer.model_toml)?;
    Ok(())
}
