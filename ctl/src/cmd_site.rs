//! `statelessctl site check|build|diff`: thin wrappers over the
//! `stateless-site` crate (docs/site.md, "The site tree").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use stateless_keys::{read_key_file, read_signing_key_file};
use stateless_site::{BuildOptions, Change, Compiled, Keys};

/// `statelessctl site …`
#[derive(Debug, Subcommand)]
pub enum SiteCmd {
    /// Validate a site tree for every node; print each problem as `file:line: message`.
    Check {
        /// The site directory (holding site.toml).
        site: PathBuf,
    },
    /// Render, pack and publish every layer whose content changed.
    Build(BuildArgs),
    /// Per node: which layers a build would change, and which files and model entries.
    Diff {
        /// The site directory.
        site: PathBuf,
        /// The server's data directory.
        #[arg(long)]
        data: PathBuf,
    },
}

/// `statelessctl site build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The site directory.
    pub site: PathBuf,
    /// Directory holding site.key (or the site key file), from which each layer's key is derived.
    #[arg(long, value_name = "DIR", required_unless_present = "no_encrypt", conflicts_with = "no_encrypt")]
    pub keys: Option<PathBuf>,
    /// Publish unencrypted layers (integrity only: anyone who can fetch them can read them).
    #[arg(long)]
    pub no_encrypt: bool,
    /// Sign every bundle with this publisher signing key.
    #[arg(long, value_name = "SIGNING_KEY")]
    pub sign: Option<PathBuf>,
    /// The server's data directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Print what would be published; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How many earlier bundles of each layer to keep in the history.
    #[arg(long, default_value_t = stateless_server::store::DEFAULT_HISTORY)]
    pub keep: usize,
    /// Withdraw the layers an earlier build published that the site no longer has (removed nodes, groups, plugins); they stay in the history.
    #[arg(long)]
    pub prune: bool,
}

pub fn run(cmd: SiteCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SiteCmd::Check { site } => {
            let c = match compile(&site)? {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            println!("{}: {} layers, {} nodes: OK", site.display(), c.layers.len(), c.stacks.len());
            Ok(ExitCode::SUCCESS)
        }
        SiteCmd::Build(a) => build(a),
        SiteCmd::Diff { site, data } => diff(&site, &data),
    }
}

/// Renders the site; on problems prints each on stderr and gives exit 1.
fn compile(site: &Path) -> anyhow::Result<Result<Compiled, ExitCode>> {
    if !site.join("site.toml").is_file() {
        bail!("{}: no site.toml", site.display());
    }
    match stateless_site::check(site) {
        Ok(c) => Ok(Ok(c)),
        Err(problems) => {
            let mut err = std::io::stderr().lock();
            for p in &problems {
                writeln!(err, "{p}")?;
            }
            writeln!(err, "statelessctl: {}: {} problem(s)", site.display(), problems.len())?;
            Ok(Err(ExitCode::FAILURE))
        }
    }
}

fn build(a: BuildArgs) -> anyhow::Result<ExitCode> {
    let c = match compile(&a.site)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let keys = match &a.keys {
        Some(dir) => {
            // A directory holding site.key, as documented; a key file
            // given directly is taken as the site key too.
            let path = if dir.is_dir() { dir.join("site.key") } else { dir.clone() };
            Keys::Site(read_key_file(&path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => Keys::None,
    };
    let signer = a
        .sign
        .as_deref()
        .map(|s| read_signing_key_file(s).with_context(|| format!("reading {}", s.display())))
        .transpose()?;
    // Reproducible packing: every entry gets one mtime.
    let mtime = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let opts = BuildOptions {
        data: &a.data,
        keys: &keys,
        signer: signer.as_ref(),
        dry_run: a.dry_run,
        keep: a.keep,
        mtime,
        created,
        prune: a.prune,
    };
    let planned = stateless_site::build(&c, &opts).with_context(|| format!("building {}", a.site.display()))?;
    let mut out = std::io::stdout().lock();
    let verb = if a.dry_run { "would publish" } else { "published" };
    let mut n = 0;
    let mut removed = 0;
    for p in &planned {
        let short = p.content.get(..16).unwrap_or(&p.content);
        match p.change {
            Change::Unchanged => {
                writeln!(out, "{}: unchanged (generation {}, content {short})", p.id, p.generation)?;
            }
            Change::Removed => {
                removed += 1;
                let what = match (a.prune, a.dry_run) {
                    (true, true) => "would withdraw",
                    (true, false) => "withdrew",
                    (false, _) => "still published (withdraw it with --prune):",
                };
                writeln!(out, "{}: no longer in the site: {what} generation {}", p.id, p.generation)?;
            }
            c => {
                n += 1;
                writeln!(out, "{}: {c}: {verb} generation {} (content {short})", p.id, p.generation)?;
            }
        }
    }
    writeln!(out, "{n} of {} layers {verb}", planned.len() - removed)?;
    if removed > 0 {
        let verb = match (a.prune, a.dry_run) {
            (true, true) => "would be withdrawn",
            (true, false) => "withdrawn",
            (false, _) => "no longer in the site and still published",
        };
        writeln!(out, "{removed} {} {verb}", if removed == 1 { "layer" } else { "layers" })?;
    }
    Ok(ExitCode::SUCCESS)
}

fn diff(site: &Path, data: &Path) -> anyhow::Result<ExitCode> {
    let c = match compile(site)? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut out = std::io::stdout().lock();
    for (node, layers) in stateless_site::diff(&c, data) {
        let changed: Vec<_> = layers.iter().filter(|l| l.change != Change::Unchanged).collect();
        if changed.is_empty() {
            writeln!(out, "node {node}: no change")?;
            continue;
        }
        writeln!(out, "node {node}:")?;
        for l in changed {
            writeln!(out, "  {}: {}", l.id, l.change)?;
            for (c, f) in &l.files {
                writeln!(out, "    {c} {f}")?;
            }
            for (c, m) in &l.model {
                writeln!(out, "    {c} model {m}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
