//! Who asked for bundles, and which nodes the admin approved.
//!
//! The running server is the only writer of `state/seen.json` (first and last
//! seen, address, per node id that asked for its node bundle); it keeps the
//! table in memory and writes it atomically at most once per flush interval.
//! The admin commands are the only writers of `state/nodes/{node}.json`
//! (approved nodes) and `state/rejected/{node}.json`. A node is *pending*
//! when it was seen but is neither approved nor rejected; that is decided
//! when listing, so the two writers never race on one file.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::layout::{DataDir, check_name};
use crate::store::{audit, rfc3339};

/// Most node ids remembered; beyond this, new ids are not recorded (so a
/// client inventing ids cannot grow the table without bound).
pub const MAX_SEEN: usize = 100_000;

/// When a node id was seen asking for its bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// Unix seconds of the first request.
    pub first_seen: i64,
    /// Unix seconds of the latest request.
    pub last_seen: i64,
    /// The address of the latest request.
    pub address: String,
    /// Requests so far.
    pub requests: u64,
}

/// The in-memory table of the running server.
#[derive(Debug)]
pub struct SeenTable {
    map: Mutex<HashMap<String, Seen>>,
    dirty: AtomicBool,
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl SeenTable {
    /// Loads the table the server wrote last time (empty if none).
    pub fn load(data: &DataDir) -> SeenTable {
        let map = read_seen(data);
        SeenTable { map: Mutex::new(map), dirty: AtomicBool::new(false) }
    }

    /// Records a request for `node`'s bundle from `address`.
    pub fn saw(&self, node: &str, address: &str) {
        let t = now();
        let Ok(mut map) = self.map.lock() else { return };
        if let Some(s) = map.get_mut(node) {
            s.last_seen = t;
            s.requests = s.requests.saturating_add(1);
            if s.address != address {
                address.clone_into(&mut s.address);
            }
        } else if map.len() < MAX_SEEN {
            map.insert(node.to_owned(), Seen { first_seen: t, last_seen: t, address: address.to_owned(), requests: 1 });
        } else {
            return;
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the table if it changed since the last write.
    pub fn flush(&self, data: &DataDir) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let json = {
            let map = self.map.lock().map_err(|_| io::Error::other("seen table lock poisoned"))?;
            serde_json::to_vec_pretty(&*map).map_err(io::Error::other)?
        };
        let result = write_atomic(&data.seen(), &json);
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

fn read_seen(data: &DataDir) -> HashMap<String, Seen> {
    fs::read(data.seen()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Writes a small file atomically (temp file, sync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp").tempfile_in(dir)?;
    io::Write::write_all(tmp.as_file_mut(), bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// An approved node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node id.
    pub node: String,
    /// Its group, for the inventory.
    #[serde(default)]
    pub group: Option<String>,
    /// Unix seconds of the approval.
    pub approved: i64,
    /// The Ed25519 public key it signs pushes with (hex), if enrolled for push.
    #[serde(default)]
    pub push_public_key: Option<String>,
    /// The id of the key its pushed bundles must be sealed with, when known.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Publish pushed bundles without review.
    #[serde(default)]
    pub auto_accept: bool,
}

/// Reads an approved node's record.
pub fn node_record(data: &DataDir, node: &str) -> Option<NodeRecord> {
    check_name(node).ok()?;
    fs::read(data.node_record(node)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether a node was rejected.
pub fn is_rejected(data: &DataDir, node: &str) -> bool {
    data.rejected(node).exists()
}

/// What `approve` is to record.
#[derive(Debug, Clone, Default)]
pub struct Approval {
    /// The group to put the node in.
    pub group: Option<String>,
    /// Push public key (hex).
    pub push_public_key: Option<String>,
    /// Key id bundles must be sealed with.
    pub key_id: Option<String>,
    /// Auto-accept pushes.
    pub auto_accept: bool,
}

/// Approves `node` (or updates an approved node's record), clears a
/// rejection, and writes the audit log.
pub fn approve(data: &DataDir, node: &str, a: Approval, by: String) -> io::Result<NodeRecord> {
    check_name(node).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if let Some(g) = &a.group {
        check_name(g).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    let old = node_record(data, node);
    let rec = NodeRecord {
        node: node.to_owned(),
        group: a.group.or_else(|| old.as_ref().and_then(|o| o.group.clone())),
        approved: old.as_ref().map_or_else(now, |o| o.approved),
        push_public_key: a.push_public_key.or_else(|| old.as_ref().and_then(|o| o.push_public_key.clone())),
        key_id: a.key_id.or_else(|| old.as_ref().and_then(|o| o.key_id.clone())),
        auto_accept: a.auto_accept,
    };
    let json = serde_json::to_vec_pretty(&rec).map_err(io::Error::other)?;
    write_atomic(&data.node_record(node), &json)?;
    match fs::remove_file(data.rejected(node)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let detail = format!(
        "group={} push={} auto_accept={}{}",
        rec.group.as_deref().unwrap_or("-"),
        rec.push_public_key.as_deref().map_or("no", |_| "yes"),
        rec.auto_accept,
        if old.is_some() { " (updated)" } else { "" }
    );
    audit(data, "approve", Some(node), detail, by)?;
    Ok(rec)
}

/// Rejects `node`: forgets its approval (and push enrolment), hides it from
/// the pending list, and writes the audit log.
pub fn reject(data: &DataDir, node: &str, by: String) -> io::Result<()> {
    check_name(node).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let was_known = match fs::remove_file(data.node_record(node)) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let marker = serde_json::json!({ "node": node, "rejected": now() });
    write_atomic(&data.rejected(node), marker.to_string().as_bytes())?;
    audit(data, "reject", Some(node), if was_known { "approval revoked".into() } else { String::new() }, by)
}

/// One line of `statelessctl nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub node: String,
    /// `known`, `pending` or `rejected`.
    pub state: &'static str,
    /// Group of a known node.
    pub group: Option<String>,
    /// First request (RFC 3339), if ever seen.
    pub first_seen: Option<String>,
    /// Latest request (RFC 3339), if ever seen.
    pub last_seen: Option<String>,
    /// Address of the latest request.
    pub address: Option<String>,
    /// Requests counted.
    pub requests: u64,
    /// Enrolled for push.
    pub push: bool,
    /// Pushes published without review.
    pub auto_accept: bool,
}

/// Every node the data directory knows of: approved, pending and rejected,
/// sorted by state then id.
pub fn list(data: &DataDir) -> Vec<NodeStatus> {
    let seen = read_seen(data);
    let mut out: HashMap<String, NodeStatus> = HashMap::new();
    let time = |t: i64| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64));
    let blank = |node: &str, state| NodeStatus {
        node: node.to_owned(),
        state,
        group: None,
        first_seen: None,
        last_seen: None,
        address: None,
        requests: 0,
        push: false,
        auto_accept: false,
    };
    for name in json_names(&data.state().join("nodes")) {
        if let Some(rec) = node_record(data, &name) {
            let mut s = blank(&name, "known");
            s.group = rec.group;
            s.push = rec.push_public_key.is_some();
            s.auto_accept = rec.auto_accept;
            out.insert(name, s);
        }
    }
    for name in json_names(&data.state().join("rejected")) {
        out.entry(name.clone()).or_insert_with(|| blank(&name, "rejected"));
    }
    for (name, s) in seen {
        let entry = out.entry(name.clone()).or_insert_with(|| blank(&name, "pending"));
        entry.first_seen = Some(time(s.first_seen));
        entry.last_seen = Some(time(s.last_seen));
        entry.address = Some(s.address);
        entry.requests = s.requests;
    }
    let mut v: Vec<NodeStatus> = out.into_values().collect();
    let rank = |s: &str| match s {
        "pending" => 0,
        "known" => 1,
        _ => 2,
    };
    v.sort_by(|a, b| rank(a.state).cmp(&rank(b.state)).then_with(|| a.node.cmp(&b.node)));
    v
}

fn json_names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
        .filter(|n| check_name(n).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_approve_reject() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let table = SeenTable::load(&data);
        table.saw("n1", "127.0.0.1");
        table.saw("n2", "127.0.0.2");
        table.saw("n1", "127.0.0.3");
        table.flush(&data).unwrap();
        let l = list(&data);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].node.as_str(), l[0].state, l[0].requests), ("n1", "pending", 2));
        assert_eq!(l[0].address.as_deref(), Some("127.0.0.3"));
        approve(&data, "n1", Approval { group: Some("rack7".into()), ..Default::default() }, "t".into()).unwrap();
        reject(&data, "n2", "t".into()).unwrap();
        let l = list(&data);
        assert_eq!((l[0].node.as_str(), l[0].state, l[0].group.as_deref()), ("n1", "known", Some("rack7")));
        assert_eq!((l[1].node.as_str(), l[1].state), ("n2", "rejected"));
        // A reload keeps what was seen.
        let again = SeenTable::load(&data);
        again.saw("n3", "x");
        again.flush(&data).unwrap();
        assert_eq!(list(&data).len(), 3);
        let audit = fs::read_to_string(data.audit_log()).unwrap();
        assert_eq!(audit.lines().count(), 2);
        assert!(approve(&data, "../x", Approval::default(), "t".into()).is_err());
    }
}
