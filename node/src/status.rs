//! `stateless-node status`: what the loader did on this boot, read from the
//! `status.json` it leaves in its run directory (kept across switch-root).
//!
//! The file is the loader's (`loader/src/pipeline.rs`, `Report`); fields this
//! version does not know are ignored and missing ones are shown as `-`, so
//! an older or newer loader's file still reads.

use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use serde::Deserialize;

use crate::cli::StatusArgs;

/// The fields of `status.json` that `status` shows.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// `applied` or `failed`.
    pub result: Option<String>,
    /// `server`, `cache-current`, `cache-previous` or `none`.
    pub source: Option<String>,
    /// The URL the bundle came from.
    pub server: Option<String>,
    /// The node id the loader used.
    pub node: Option<String>,
    /// The generation applied.
    pub generation: Option<u64>,
    /// The digest of the applied bundle.
    pub digest: Option<String>,
    /// The id of the key that opened it.
    pub key_id: Option<String>,
    /// Where that key came from.
    pub key_source: Option<String>,
    /// When the applied bundle was fetched, Unix seconds.
    pub fetched: Option<i64>,
    /// Warnings, in order.
    pub warnings: Vec<String>,
    /// The loader's console line.
    pub message: Option<String>,
    /// The `onfail` action taken when nothing was applied.
    pub onfail: Option<String>,
}

impl Status {
    /// Parses the loader's status file.
    pub fn parse(bytes: &[u8]) -> serde_json::Result<Status> {
        serde_json::from_slice(bytes)
    }
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

impl fmt::Display for Status {
    /// One `name: value` line a field, aligned, for a person at a console.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut source = or_dash(self.source.as_deref()).to_owned();
        if let Some(server) = &self.server {
            let _ = write!(source, " ({server})");
        }
        let mut key = or_dash(self.key_id.as_deref()).to_owned();
        if let Some(from) = &self.key_source {
            let _ = write!(key, " from {from}");
        }
        let fetched = self
            .fetched
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string());
        let mut result = or_dash(self.result.as_deref()).to_owned();
        if let Some(action) = &self.onfail {
            let _ = write!(result, " (onfail={action})");
        }
        let generation = self.generation.map(|g| g.to_string());
        let rows = [
            ("result", result.as_str()),
            ("source", source.as_str()),
            ("node", or_dash(self.node.as_deref())),
            ("generation", or_dash(generation.as_deref())),
            ("digest", or_dash(self.digest.as_deref())),
            ("key", key.as_str()),
            ("fetched", or_dash(fetched.as_deref())),
        ];
        for (name, value) in rows {
            writeln!(f, "{:<11} {value}", format!("{name}:"))?;
        }
        if self.warnings.is_empty() {
            writeln!(f, "{:<11} none", "warnings:")?;
        } else {
            writeln!(f, "{:<11} {}", "warnings:", self.warnings.len())?;
            for w in &self.warnings {
                writeln!(f, "  - {w}")?;
            }
        }
        write!(f, "{:<11} {}", "console:", or_dash(self.message.as_deref()))
    }
}

/// Prints the status file, as a person reads it or (`--json`) as written.
pub fn run(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let bytes = read(&a.status)?;
    // Parsed in both modes: a torn or foreign file is an error, not output.
    let status =
        Status::parse(&bytes).with_context(|| format!("{} is not a loader status file", a.status.display()))?;
    let mut out = io::stdout().lock();
    if a.json {
        out.write_all(&bytes).context("writing to stdout")?;
        if !bytes.ends_with(b"\n") {
            out.write_all(b"\n").context("writing to stdout")?;
        }
    } else {
        writeln!(out, "{status}").context("writing to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => anyhow::bail!(
            "no status file at {}: the loader did not run on this boot (or --status names another file)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_every_field_and_tolerates_unknown_ones() {
        let s = Status::parse(
            br#"{"result":"applied","source":"server","server":"http://h:8080/v1/nodes/n1/bundle","node":"n1",
            "generation":7,"digest":"ab12","key_id":"k1","key_source":"boot image","fetched":1767225600,
            "warnings":["w1"],"message":"stateless: applied generation 7","onfail":null,"some_new_field":[1]}"#,
        )
        .unwrap();
        let text = s.to_string();
        for want in [
            "result:     applied",
            "source:     server (http://h:8080/v1/nodes/n1/bundle)",
            "generation: 7",
            "digest:     ab12",
            "key:        k1 from boot image",
            "fetched:    2026-01-01T00:00:00Z",
            "warnings:   1\n  - w1",
            "console:    stateless: applied generation 7",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn a_failed_boot_shows_dashes_and_the_onfail_action() {
        let s = Status::parse(
            br#"{"result":"failed","source":"none","message":"x; onfail=emergency","onfail":"emergency"}"#,
        )
        .unwrap();
        let text = s.to_string();
        assert!(text.contains("result:     failed (onfail=emergency)"), "{text}");
        assert!(text.contains("generation: -") && text.contains("warnings:   none"), "{text}");
    }
}
