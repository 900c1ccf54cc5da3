//! `GET /metrics`: the server's counters in the Prometheus text exposition
//! format (version 0.0.4), written by hand: the format is a few lines of
//! text and a crate would add nothing but weight.
//!
//! Counting is lock-free (one atomic add per request, off the file-send
//! path), so a boot storm pays nothing measurable for it. The fleet gauges
//! (nodes by last result, report ages) are computed when scraped, from
//! the kept reports. No node id ever appears in the output.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::layout::{DataDir, Target};
use crate::reports;

/// The kinds of path counted apart.
pub const KINDS: [&str; 11] =
    ["node", "group", "default", "plugin", "report", "push", "enrol", "tpm-key", "tpm-policies", "metrics", "other"];
/// The statuses counted apart; anything else counts as `other`.
const STATUSES: [u16; 22] =
    [200, 201, 202, 206, 304, 400, 401, 403, 404, 405, 408, 409, 411, 413, 416, 422, 429, 431, 500, 503, 505, 507];
/// Upper bounds (seconds) of the report age histogram's buckets.
const AGE_BUCKETS: [i64; 8] = [60, 300, 900, 3600, 6 * 3600, 86_400, 7 * 86_400, 30 * 86_400];

/// The kind of a request, for counting.
pub fn kind(method: &str, path: &str) -> usize {
    let k = if path == "/metrics" {
        "metrics"
    } else if reports::report_path(path).is_some() {
        "report"
    } else if crate::enrol::enrol_path(path).is_some() {
        "enrol"
    } else if crate::enrol::tpm_key_path(path).is_some() {
        "tpm-key"
    } else if crate::enrol::tpm_policies_path(path).is_some() {
        "tpm-policies"
    } else {
        match Target::from_url_path(path) {
            Some(Target::Node(_)) if method == "PUT" => "push",
            Some(Target::Node(_)) => "node",
            Some(Target::Group(_)) => "group",
            Some(Target::Default) => "default",
            Some(Target::Plugin(_)) => "plugin",
            None => "other",
        }
    };
    KINDS.iter().position(|x| *x == k).unwrap_or(KINDS.len() - 1)
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    /// Requests by kind and status (the last column is `other`).
    requests: Vec<[AtomicU64; STATUSES.len() + 1]>,
    /// Bytes written to clients (heads and bodies, after TLS).
    bytes_sent: AtomicU64,
    /// Connections being served.
    open: AtomicI64,
    /// Connections accepted.
    accepted: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: KINDS.iter().map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            bytes_sent: AtomicU64::new(0),
            open: AtomicI64::new(0),
            accepted: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, kind: usize, status: u16) {
        let col = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len());
        if let Some(c) = self.requests.get(kind).and_then(|row| row.get(col)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts bytes written.
    pub fn sent(&self, bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A connection starts being served.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ends.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The exposition text, with the fleet read from `data` at `now`.
    pub fn render(&self, data: &DataDir, now: i64) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(out, "# HELP stateless_requests_total Requests answered, by path kind and status.");
        let _ = writeln!(out, "# TYPE stateless_requests_total counter");
        let mut not_modified = 0;
        for (k, row) in KINDS.iter().zip(&self.requests) {
            for (i, c) in row.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES.get(i).map_or("other".to_owned(), |s| s.to_string());
                if status == "304" {
                    not_modified += n;
                }
                let _ = writeln!(out, "stateless_requests_total{{kind=\"{k}\",status=\"{status}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP stateless_not_modified_total Bundle requests answered 304 Not Modified.");
        let _ = writeln!(out, "# TYPE stateless_not_modified_total counter");
        let _ = writeln!(out, "stateless_not_modified_total {not_modified}");
        let _ = writeln!(out, "# HELP stateless_sent_bytes_total Bytes written to clients.");
        let _ = writeln!(out, "# TYPE stateless_sent_bytes_total counter");
        let _ = writeln!(out, "stateless_sent_bytes_total {}", self.bytes_sent.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP stateless_connections_accepted_total Connections accepted.");
        let _ = writeln!(out, "# TYPE stateless_connections_accepted_total counter");
        let _ = writeln!(out, "stateless_connections_accepted_total {}", self.accepted.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP stateless_open_connections Connections being served.");
        let _ = writeln!(out, "# TYPE stateless_open_connections gauge");
        let _ = writeln!(out, "stateless_open_connections {}", self.open.load(Ordering::Relaxed).max(0));

        let latest = reports::latest(data);
        let mut by_result: std::collections::BTreeMap<String, u64> =
            ["applied", "failed"].iter().map(|r| ((*r).to_owned(), 0)).collect();
        let mut buckets = [0u64; AGE_BUCKETS.len()];
        let mut sum = 0i64;
        for r in &latest {
            let result = r.field("result").filter(|x| x.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            *by_result.entry(result.unwrap_or("unknown").to_owned()).or_insert(0) += 1;
            let age = now.saturating_sub(r.received).max(0);
            sum = sum.saturating_add(age);
            for (b, le) in buckets.iter_mut().zip(AGE_BUCKETS) {
                if age <= le {
                    *b += 1;
                }
            }
        }
        let _ = writeln!(out, "# HELP stateless_nodes Nodes by the result of their last boot report.");
        let _ = writeln!(out, "# TYPE stateless_nodes gauge");
        for (result, n) in &by_result {
            let _ = writeln!(out, "stateless_nodes{{result=\"{result}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP stateless_report_age_seconds Age of each node's last boot report.");
        let _ = writeln!(out, "# TYPE stateless_report_age_seconds histogram");
        for (b, le) in buckets.iter().zip(AGE_BUCKETS) {
            let _ = writeln!(out, "stateless_report_age_seconds_bucket{{le=\"{le}\"}} {b}");
        }
        let _ = writeln!(out, "stateless_report_age_seconds_bucket{{le=\"+Inf\"}} {}", latest.len());
        let _ = writeln!(out, "stateless_report_age_seconds_sum {sum}");
        let _ = writeln!(out, "stateless_report_age_seconds_count {}", latest.len());
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(KINDS[kind("GET", "/v1/nodes/n1/bundle")], "node");
        assert_eq!(KINDS[kind("PUT", "/v1/nodes/n1/bundle")], "push");
        assert_eq!(KINDS[kind("POST", "/v1/nodes/n1/report")], "report");
        assert_eq!(KINDS[kind("POST", "/v1/nodes/n1/enrol")], "enrol");
        assert_eq!(KINDS[kind("GET", "/v1/nodes/n1/tpm-key")], "tpm-key");
        assert_eq!(KINDS[kind("GET", "/v1/nodes/n1/tpm-policies")], "tpm-policies");
        assert_eq!(KINDS[kind("GET", "/v1/default/tpm-policies")], "tpm-policies");
        assert_eq!(KINDS[kind("GET", "/v1/default/bundle")], "default");
        assert_eq!(KINDS[kind("GET", "/metrics")], "metrics");
        assert_eq!(KINDS[kind("GET", "/etc/passwd")], "other");
    }

    #[test]
    fn render_counts() {
        let t = tempfile::tempdir().unwrap();
        let data = DataDir::open(t.path()).unwrap();
        let m = Metrics::default();
        m.request(0, 304);
        m.request(0, 304);
        m.request(0, 599);
        m.sent(10);
        let text = m.render(&data, 0);
        assert!(text.contains("stateless_requests_total{kind=\"node\",status=\"304\"} 2"), "{text}");
        assert!(text.contains("stateless_requests_total{kind=\"node\",status=\"other\"} 1"), "{text}");
        assert!(text.contains("stateless_not_modified_total 2"), "{text}");
        assert!(text.contains("stateless_sent_bytes_total 10"), "{text}");
    }
}
