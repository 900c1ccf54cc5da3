//! `statelessctl model show` and `statelessctl plugins`: read what the
//! loader's model left in a root (`/etc/stateless/model.json`, written by
//! `stateless_model::apply`, and `/etc/stateless/plugins.json`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// `statelessctl model …`
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Print what the model set in a root, and which layer set each entry.
    Show {
        /// The root (e.g. / on a node, or an extracted image).
        #[arg(long)]
        root: PathBuf,
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `statelessctl plugins`
#[derive(Debug, Args)]
pub struct PluginsArgs {
    /// The root (e.g. / on a node).
    #[arg(long)]
    pub root: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn read_json(root: &Path, rel: &str, what: &str) -> anyhow::Result<serde_json::Value> {
    let path = root.join(rel);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}: not found ({what})", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

pub fn run(cmd: ModelCmd) -> anyhow::Result<ExitCode> {
    let ModelCmd::Show { root, json } = cmd;
    let v = read_json(&root, "etc/stateless/model.json", "no model was applied to this root")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{v:#}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let entries = v.get("entries").and_then(|e| e.as_array()).cloned().unwrap_or_default();
    writeln!(out, "{:<15} {:<40} {:<30} LAYER", "PART", "KEY", "VALUE")?;
    for e in &entries {
        writeln!(
            out,
            "{:<15} {:<40} {:<30} {}",
            field(e, "part"),
            field(e, "key"),
            field(e, "value"),
            field(e, "layer")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn plugins(a: PluginsArgs) -> anyhow::Result<ExitCode> {
    let v = read_json(&a.root, "etc/stateless/plugins.json", "no plugin is installed in this root")?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{v:#}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let list = v.get("plugins").and_then(|e| e.as_array()).cloned().unwrap_or_default();
    writeln!(out, "{:<24} {:<16} {:<12} {:>10}  STATE", "NAME", "VENDOR", "VERSION", "GENERATION")?;
    for p in &list {
        writeln!(
            out,
            "{:<24} {:<16} {:<12} {:>10}  {}",
            field(p, "name"),
            field(p, "vendor"),
            field(p, "version"),
            field(p, "generation"),
            field(p, "state")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
