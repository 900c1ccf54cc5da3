//! `statelessctl nodes`: the fleet at a glance, from one or more data
//! directories (each mirror keeps its own registrations and reports; they
//! are merged by time, the newest report of a node wins).
//!
//! The table joins what the server knows of a node (approved, pending,
//! rejected, last request) with its newest boot report: the groups, the
//! generation applied, where it came from, when it booted, the result and
//! how long ago. `NODE --reports` lists a node's kept reports with the
//! console line of each.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use stateless_server::registry::{self, NodeStatus};
use stateless_server::reports::{self, StoredReport};
use stateless_server::{DataDir, check_name};

/// `statelessctl nodes`
#[derive(Debug, Clone, Args)]
pub struct NodesArgs {
    /// The data directory (repeat for several servers or mirrors; merged by time).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Only nodes whose last report says the boot failed.
    #[arg(long)]
    pub failed: bool,
    /// Only nodes that reported within this long, e.g. 1h, 30m, 2d.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Show only this node.
    pub node: Option<String>,
    /// List the node's kept reports, newest first, with the console line of each.
    #[arg(long, requires = "node")]
    pub reports: bool,
    /// Most reports listed with --reports.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub last: usize,
}

/// One line of the table (and one object of `--json`).
#[derive(Debug, Clone, Serialize)]
struct Row {
    #[serde(flatten)]
    status: NodeStatus,
    /// The groups of its last report (its layer stack), else its record's.
    groups: Vec<String>,
    /// Generation applied on its last boot.
    generation: Option<u64>,
    /// `server`, `cache-current`, `cache-previous` or `none`.
    source: Option<String>,
    /// `applied` or `failed`.
    result: Option<String>,
    /// When its last report arrived (RFC 3339).
    last_boot: Option<String>,
    /// Seconds since then.
    age_seconds: Option<i64>,
    /// The console line of its last boot.
    message: Option<String>,
    /// The data directory the last report was kept in.
    reported_to: Option<String>,
}

fn open(dir: &std::path::Path) -> anyhow::Result<DataDir> {
    DataDir::open(dir).with_context(|| format!("opening data directory {}", dir.display()))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn time(t: i64) -> String {
    stateless_server::store::rfc3339(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
}

/// `90` → `1m`, `7200` → `2h`: the largest whole unit.
fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The groups a report's stack applied: the `group:NAME` targets of its
/// `layers` (status.json, docs/cmdline.md), in stack order.
fn report_groups(r: &Value) -> Vec<String> {
    r.get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("target").and_then(Value::as_str)?.strip_prefix("group:").map(str::to_owned))
        .collect()
}

/// The generation a report applied: its own, else its node layer's.
fn report_generation(r: &Value) -> Option<u64> {
    r.get("generation")
        .and_then(Value::as_u64)
        .or_else(|| r.get("layers")?.as_array()?.iter().rev().find_map(|l| l.get("generation").and_then(Value::as_u64)))
}

pub fn run(a: NodesArgs) -> anyhow::Result<ExitCode> {
    let dirs: Vec<(PathBuf, DataDir)> =
        a.data.iter().map(|d| open(d).map(|data| (d.clone(), data))).collect::<anyhow::Result<_>>()?;
    if let Some(n) = &a.node {
        check_name(n)?;
    }
    let mut out = std::io::stdout().lock();
    if a.reports {
        let node = a.node.as_deref().unwrap_or_default();
        let mut all: Vec<StoredReport> = dirs.iter().flat_map(|(_, d)| reports::list(d, node, a.last)).collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.received));
        all.truncate(a.last);
        if a.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            return Ok(ExitCode::SUCCESS);
        }
        if all.is_empty() {
            writeln!(out, "no reports from {node}")?;
        }
        for r in &all {
            let g = report_generation(&r.report).map_or("-".to_owned(), |g| g.to_string());
            writeln!(
                out,
                "{}  {:<8} generation {g:<6} {:<15} from {}\n    {}",
                time(r.received),
                r.field("result").unwrap_or("-"),
                r.field("source").unwrap_or("-"),
                r.address,
                r.field("message").unwrap_or("(no console line)"),
            )?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = rows(&dirs, &a);
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<24} {:<9} {:<16} {:>10} {:<15} {:<21} {:<8} {:>5}",
        "NODE", "STATE", "GROUPS", "GENERATION", "SOURCE", "LAST BOOT", "RESULT", "AGE"
    )?;
    let now = now();
    for r in rows {
        let groups = if r.groups.is_empty() { "-".to_owned() } else { r.groups.join(",") };
        writeln!(
            out,
            "{:<24} {:<9} {:<16} {:>10} {:<15} {:<21} {:<8} {:>5}",
            r.status.node,
            r.status.state,
            groups,
            r.generation.map_or("-".to_owned(), |g| g.to_string()),
            r.source.as_deref().unwrap_or("-"),
            r.last_boot.as_deref().unwrap_or("never"),
            r.result.as_deref().unwrap_or("-"),
            r.age_seconds.map_or("-".to_owned(), |s| age(s.min(now))),
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The merged table: registrations from every directory (the latest
/// request wins), each node's newest report across them, then the filters.
fn rows(dirs: &[(PathBuf, DataDir)], a: &NodesArgs) -> Vec<Row> {
    let mut status: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let mut latest: BTreeMap<String, (StoredReport, String)> = BTreeMap::new();
    for (path, data) in dirs {
        for s in registry::list(data) {
            match status.get_mut(&s.node) {
                None => {
                    status.insert(s.node.clone(), s);
                }
                Some(have) => merge_status(have, s),
            }
        }
        for r in reports::latest(data) {
            if latest.get(&r.node).is_none_or(|(h, _)| h.received < r.received) {
                latest.insert(r.node.clone(), (r, path.display().to_string()));
            }
        }
    }
    for node in latest.keys() {
        status.entry(node.clone()).or_insert_with(|| blank(node));
    }
    let now = now();
    let mut rows: Vec<Row> = status
        .into_values()
        .map(|s| {
            let rep = latest.get(&s.node);
            let r = rep.map(|(r, _)| &r.report);
            let mut groups = r.map(report_groups).unwrap_or_default();
            if groups.is_empty() {
                groups.extend(s.group.clone());
            }
            Row {
                groups,
                generation: r.and_then(report_generation),
                source: rep.and_then(|(r, _)| r.field("source")).map(str::to_owned),
                result: rep.and_then(|(r, _)| r.field("result")).map(str::to_owned),
                last_boot: rep.map(|(r, _)| time(r.received)),
                age_seconds: rep.map(|(r, _)| now.saturating_sub(r.received)),
                message: rep.and_then(|(r, _)| r.field("message")).map(str::to_owned),
                reported_to: rep.map(|(_, d)| d.clone()),
                status: s,
            }
        })
        .collect();
    rows.retain(|r| a.node.as_ref().is_none_or(|n| *n == r.status.node));
    if a.failed {
        rows.retain(|r| r.result.as_deref().is_some_and(|x| x != "applied"));
    }
    if let Some(since) = a.since {
        let limit = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
        rows.retain(|r| r.age_seconds.is_some_and(|age| age <= limit));
    }
    rows
}

fn blank(node: &str) -> NodeStatus {
    NodeStatus {
        node: node.to_owned(),
        state: "pending",
        group: None,
        first_seen: None,
        last_seen: None,
        address: None,
        requests: 0,
        push: false,
        auto_accept: false,
        tpm: None,
    }
}

/// Two servers' views of one node: an approval anywhere beats pending, a
/// rejection beats both; requests add up; the latest request's address
/// wins. RFC 3339 times of one format compare as strings.
fn merge_status(have: &mut NodeStatus, s: NodeStatus) {
    let rank = |st: &str| match st {
        "pending" => 0,
        "known" => 1,
        _ => 2,
    };
    if rank(s.state) > rank(have.state) {
        have.state = s.state;
        have.group = s.group.clone();
        have.push = s.push;
        have.auto_accept = s.auto_accept;
    }
    if have.tpm.is_none() {
        have.tpm = s.tpm.clone();
    }
    have.requests = have.requests.saturating_add(s.requests);
    if s.first_seen.is_some() && (have.first_seen.is_none() || s.first_seen < have.first_seen) {
        have.first_seen = s.first_seen;
    }
    if s.last_seen > have.last_seen {
        have.last_seen = s.last_seen;
        have.address = s.address;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(90), "1m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(3 * 86_400), "3d");
    }

    #[test]
    fn groups_and_generation_from_a_report() {
        let r = serde_json::json!({"generation": 9, "layers": [{"target": "node:n1", "generation": 9}]});
        assert!(report_groups(&r).is_empty());
        assert_eq!(report_generation(&r), Some(9));
        let r = serde_json::json!({"layers": [
            {"target": "default", "generation": 3},
            {"target": "plugin:acme", "generation": 1},
            {"target": "group:rack7", "generation": 4},
            {"target": "group:gpu", "generation": 2},
            {"target": "node:n1", "generation": 5}]});
        assert_eq!(report_groups(&r), ["rack7", "gpu"]);
        assert_eq!(report_generation(&r), Some(5));
    }
}
