//! Boot reports: what a node's loader decided on this boot (its
//! `status.json` and capability probe), posted to
//! `POST /v1/nodes/{node}/report` and kept under `state/reports/{node}/`.
//!
//! A report is authenticated like a push ([`crate::push_auth`]): the same
//! Ed25519 proof, made with the node's push key, over the method `POST`,
//! the report path, the node, the time and the body's SHA-256 and length.
//! A push proof therefore never passes for a report and the other way
//! round. Only nodes enrolled for push (`statelessctl approve
//! --push-key`) can report; the server never holds a node's key.
//!
//! Invariants: nothing is read from a request before its proof parses,
//! names the path's node, the node is enrolled and not rejected, and its
//! time is within the window; the body is bounded ([`ReportLimits::max_body`])
//! and must be one JSON object; each node keeps at most
//! [`ReportLimits::keep`] reports and [`ReportLimits::keep_bytes`] bytes
//! (the newest always stays); an address whose requests keep being
//! refused is answered 429 without any work ([`RefusalQuota`]).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::layout::{DataDir, check_name};
use crate::registry::write_atomic;

/// Largest report body accepted by default (a status.json with a probe is
/// a few KiB; a stack of many layers with long warnings stays well below).
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;
/// Reports kept per node by default.
pub const DEFAULT_KEEP: usize = 20;
/// Bytes of reports kept per node by default.
pub const DEFAULT_KEEP_BYTES: u64 = 1 << 20;
/// Refused report requests one address may make per minute by default
/// before it is answered 429.
pub const DEFAULT_REFUSALS_PER_MINUTE: u32 = 60;
/// The quota's window.
const QUOTA_WINDOW: i64 = 60;
/// Addresses the quota remembers; past it, expired windows are dropped,
/// then the whole table (a flood from that many addresses is beyond what a
/// table can stop; the connection limits still apply).
const QUOTA_ADDRESSES: usize = 65_536;

/// The bounds on reports, set with `statelessctl serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Largest body accepted (413 beyond).
    pub max_body: u64,
    /// Reports kept per node.
    pub keep: usize,
    /// Bytes of stored reports kept per node.
    pub keep_bytes: u64,
    /// Refused requests per address per minute before 429; 0 for no quota.
    pub refusals_per_minute: u32,
}

impl Default for ReportLimits {
    fn default() -> ReportLimits {
        ReportLimits {
            max_body: DEFAULT_MAX_BODY,
            keep: DEFAULT_KEEP,
            keep_bytes: DEFAULT_KEEP_BYTES,
            refusals_per_minute: DEFAULT_REFUSALS_PER_MINUTE,
        }
    }
}

/// Why a report body was refused (answered 422).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not JSON.
    #[error("the report is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("the report must be a JSON object")]
    NotObject,
    /// The body names another node.
    #[error("the report is for node {0:?}, not the node of the path")]
    OtherNode(String),
}

/// The node id of a report path `/v1/nodes/{node}/report`, with a valid
/// name; `None` for anything else.
pub fn report_path(path: &str) -> Option<&str> {
    let node = path.strip_prefix("/v1/nodes/")?.strip_suffix("/report")?;
    check_name(node).ok().map(|()| node)
}

/// A report as received: bytes whose proof verified, not yet checked.
#[derive(Debug)]
pub struct UnverifiedReport<'a> {
    /// The node of the path (and of the proof).
    pub node: &'a str,
    /// The body.
    pub body: &'a [u8],
}

impl UnverifiedReport<'_> {
    /// Checks the body: one JSON object, and if it names a node
    /// (`"node"`), the path's.
    pub fn check(self) -> Result<Report, ReportError> {
        let value: serde_json::Value = serde_json::from_slice(self.body).map_err(ReportError::NotJson)?;
        let Some(obj) = value.as_object() else { return Err(ReportError::NotObject) };
        if let Some(n) = obj.get("node").and_then(|n| n.as_str()).filter(|n| *n != self.node) {
            return Err(ReportError::OtherNode(n.chars().take(64).collect()));
        }
        Ok(Report { node: self.node.to_owned(), body: value })
    }
}

/// A checked report, ready to keep.
#[derive(Debug, Clone)]
pub struct Report {
    node: String,
    body: serde_json::Value,
}

/// A report as kept on disk and listed by `statelessctl nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredReport {
    /// The node id.
    pub node: String,
    /// When the server received it (Unix seconds).
    pub received: i64,
    /// The address it came from.
    pub address: String,
    /// The report as the node sent it (its status.json with the probe).
    pub report: serde_json::Value,
}

impl StoredReport {
    /// A string field of the report.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.report.get(name).and_then(|v| v.as_str())
    }
}

/// Where a node's reports are.
pub fn dir(data: &DataDir, node: &str) -> PathBuf {
    root(data).join(node)
}

fn root(data: &DataDir) -> PathBuf {
    data.state().join("reports")
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Keeps a report received at `now` (Unix milliseconds) from `address`,
/// then drops the oldest beyond `limits`. Returns the stored size.
pub fn store(data: &DataDir, report: Report, address: &str, now_ms: i64, limits: &ReportLimits) -> io::Result<u64> {
    let d = dir(data, &report.node);
    fs::create_dir_all(&d)?;
    let stored = StoredReport {
        node: report.node,
        received: now_ms.div_euclid(1000),
        address: address.to_owned(),
        report: report.body,
    };
    let bytes = serde_json::to_vec(&stored).map_err(io::Error::other)?;
    // The name sorts by time; the sequence keeps two reports of one
    // millisecond apart.
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    let name = format!("{:013}-{seq:06}.json", now_ms.max(0));
    write_atomic(&d.join(name), &bytes)?;
    prune(&d, limits);
    Ok(bytes.len() as u64)
}

/// The report files of a directory, newest first, with their sizes.
fn files(d: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = fs::read_dir(d) else { return Vec::new() };
    let mut v: Vec<(PathBuf, u64)> = rd
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json") && !n.starts_with('.')))
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()).map(|m| (e.path(), m.len())))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0));
    v
}

/// Drops the oldest reports beyond the count and byte bounds; the newest
/// always stays, whatever its size.
fn prune(d: &Path, limits: &ReportLimits) {
    let mut bytes = 0u64;
    for (i, (path, len)) in files(d).into_iter().enumerate() {
        bytes = bytes.saturating_add(len);
        if i > 0 && (i >= limits.keep.max(1) || bytes > limits.keep_bytes) {
            if let Err(e) = fs::remove_file(&path) {
                log::warn!("removing {}: {e}", path.display());
            }
        }
    }
}

/// A node's kept reports, newest first (at most `max`).
pub fn list(data: &DataDir, node: &str, max: usize) -> Vec<StoredReport> {
    if check_name(node).is_err() {
        return Vec::new();
    }
    files(&dir(data, node))
        .into_iter()
        .take(max)
        .filter_map(|(p, _)| fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok()))
        .collect()
}

/// Every node with reports: its newest report.
pub fn latest(data: &DataDir) -> Vec<StoredReport> {
    let Ok(rd) = fs::read_dir(root(data)) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|node| list(data, &node, 1).into_iter().next())
        .collect()
}

/// Counts refused report requests per address (an IPv6 /64 counts as
/// one, see [`crate::serve::addr_key`]) in fixed one-minute windows, like
/// the registration quota: an address that keeps sending forged reports or
/// reports for unknown ids is answered 429 without its proof being looked
/// at, until the window ends.
#[derive(Debug, Default)]
pub struct RefusalQuota(Mutex<HashMap<IpAddr, (i64, u32)>>);

impl RefusalQuota {
    /// Whether `addr` is over `limit` refusals in the current window.
    pub fn exhausted(&self, addr: IpAddr, limit: u32, now: i64) -> bool {
        if limit == 0 {
            return false;
        }
        let Ok(map) = self.0.lock() else { return false };
        map.get(&addr).is_some_and(|(start, n)| now.saturating_sub(*start) < QUOTA_WINDOW && *n >= limit)
    }

    /// Counts one refusal of `addr`.
    pub fn refused(&self, addr: IpAddr, now: i64) {
        let Ok(mut map) = self.0.lock() else { return };
        if map.len() >= QUOTA_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, (start, _)| now.saturating_sub(*start) < QUOTA_WINDOW);
            if map.len() >= QUOTA_ADDRESSES {
                map.clear();
            }
        }
        let e = map.entry(addr).or_insert((now, 0));
        if now.saturating_sub(e.0) >= QUOTA_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(report_path("/v1/nodes/node42/report"), Some("node42"));
        for bad in [
            "/v1/nodes/../report",
            "/v1/nodes/a/b/report",
            "/v1/nodes//report",
            "/v1/nodes/n/bundle",
            "/v1/nodes/n/report/",
        ] {
            assert_eq!(report_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bodies() {
        let ok = |b: &str| UnverifiedReport { node: "n1", body: b.as_bytes() }.check();
        assert!(ok(r#"{"result":"applied","node":"n1"}"#).is_ok());
        assert!(ok(r#"{"result":"failed"}"#).is_ok());
        assert!(matches!(ok("[1]"), Err(ReportError::NotObject)));
        assert!(matches!(ok("{"), Err(ReportError::NotJson(_))));
        assert!(matches!(ok(r#"{"node":"n2"}"#), Err(ReportError::OtherNode(_))));
    }

    #[test]
    fn kept_reports_are_bounded_in_count_and_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let limits = ReportLimits { keep: 3, keep_bytes: 1 << 20, ..ReportLimits::default() };
        for i in 0..10 {
            let r = UnverifiedReport { node: "n1", body: format!(r#"{{"i":{i}}}"#).as_bytes() }.check().unwrap();
            store(&data, r, "127.0.0.1", 1_000_000 + i, &limits).unwrap();
        }
        let kept = list(&data, "n1", 100);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].report["i"], 9);
        assert_eq!(kept[2].report["i"], 7);
        // Bytes: each report is well over 100 bytes, so only the newest stays.
        let limits = ReportLimits { keep: 100, keep_bytes: 100, ..ReportLimits::default() };
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
        let r = UnverifiedReport { node: "n1", body: big.as_bytes() }.check().unwrap();
        store(&data, r, "127.0.0.1", 2_000_000, &limits).unwrap();
        assert_eq!(list(&data, "n1", 100).len(), 1);
        assert_eq!(latest(&data).len(), 1);
    }

    #[test]
    fn quota_refuses_after_the_limit_until_the_window_ends() {
        let q = RefusalQuota::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..5 {
            assert!(!q.exhausted(a, 5, 100));
            q.refused(a, 100);
        }
        assert!(q.exhausted(a, 5, 100));
        assert!(!q.exhausted(b, 5, 100));
        assert!(!q.exhausted(a, 0, 100));
        assert!(!q.exhausted(a, 5, 100 + QUOTA_WINDOW));
    }
}
