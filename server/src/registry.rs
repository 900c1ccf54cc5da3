//! Who asked for bundles, and which nodes the admin approved.
//!
//! The running server is the only writer of `state/seen.json` (first and last
//! seen, address, per node id that asked for its node bundle); it keeps the
//! table in memory and writes it atomically at most once per flush interval.
//! The admin commands are the only writers of `state/nodes/{node}.json`
//! (approved nodes) and `state/rejected/{node}.json`. A node is *pending*
//! when it was seen but is neither approved nor rejected; that is decided
//! when listing, so the two writers never race on one file.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::layout::{DataDir, check_name};
use crate::store::{audit, rfc3339};

/// Most node ids remembered by default; beyond this, unapproved ids are
/// evicted (see [`SeenTable`]).
pub const MAX_SEEN: usize = 100_000;
/// Most unapproved node ids one address (an IPv6 /64) may have in the
/// table by default.
pub const MAX_SEEN_PER_ADDRESS: usize = 1_000;

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
///
/// It is bounded so that a client inventing node ids can neither grow it
/// without limit nor crowd out real nodes:
///
/// - an approved node is always recorded, and never evicted;
/// - every other id is charged to the address that first asked for it (an
///   IPv4 address, or an IPv6 /64); an address at its quota
///   (`per_address`) has its own oldest id evicted to make room;
/// - when the table is full (`max`), the oldest id of the address with the
///   most ids is evicted.
///
/// So a flood from one address only ever replaces its own ids, and a flood
/// from many addresses evicts the biggest flooders first: a new node from
/// an address with few ids is always recorded.
#[derive(Debug)]
pub struct SeenTable {
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    data: DataDir,
    max: usize,
    per_address: usize,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Seen>,
    /// Unapproved ids by the address they are charged to, oldest first.
    by_address: HashMap<String, VecDeque<String>>,
    /// (ids charged, address): the biggest holder is the last.
    sizes: BTreeSet<(usize, String)>,
}

impl Inner {
    fn charge(&mut self, addr: &str, node: &str) {
        let q = self.by_address.entry(addr.to_owned()).or_default();
        self.sizes.remove(&(q.len(), addr.to_owned()));
        q.push_back(node.to_owned());
        self.sizes.insert((q.len(), addr.to_owned()));
    }

    /// Evicts the oldest unapproved id charged to `addr`. Ids approved
    /// since they were charged are only uncharged. Returns whether an id
    /// was evicted.
    fn evict_from(&mut self, addr: &str, approved: impl Fn(&str) -> bool) -> bool {
        let Some(q) = self.by_address.get_mut(addr) else { return false };
        self.sizes.remove(&(q.len(), addr.to_owned()));
        let mut evicted = false;
        while let Some(node) = q.pop_front() {
            if !approved(&node) {
                self.map.remove(&node);
                evicted = true;
                break;
            }
        }
        if q.is_empty() {
            self.by_address.remove(addr);
        } else {
            self.sizes.insert((q.len(), addr.to_owned()));
        }
        evicted
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The address an id is charged to: the IP address of `address`, with an
/// IPv6 address cut to its /64; anything else as it is.
fn quota_key(address: &str) -> String {
    address.parse::<std::net::IpAddr>().map_or_else(|_| address.to_owned(), |ip| crate::serve::addr_key(ip).to_string())
}

impl SeenTable {
    /// Loads the table the server wrote last time (empty if none), with at
    /// most `max` ids and `per_address` unapproved ids per address. A file
    /// that does not parse is kept as `seen.json.corrupt`, with a warning.
    pub fn load(data: &DataDir, max: usize, per_address: usize) -> SeenTable {
        let map = read_seen(data, true);
        let approved: HashSet<String> = json_names(&data.state().join("nodes")).into_iter().collect();
        let mut inner = Inner::default();
        let mut order: Vec<(&String, &Seen)> = map.iter().filter(|(n, _)| !approved.contains(*n)).collect();
        order.sort_by_key(|(n, s)| (s.first_seen, n.to_owned()));
        let charges: Vec<(String, String)> = order.iter().map(|(n, s)| (quota_key(&s.address), (*n).clone())).collect();
        inner.map = map;
        for (addr, node) in charges {
            inner.charge(&addr, &node);
        }
        let table = SeenTable {
            inner: Mutex::new(inner),
            dirty: AtomicBool::new(false),
            data: data.clone(),
            max: max.max(1),
            per_address: per_address.max(1),
        };
        table.trim();
        table
    }

    /// Evicts to the limits (after a load with smaller limits).
    fn trim(&self) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let approved = |n: &str| self.data.node_record(n).exists();
        loop {
            let over = inner.sizes.iter().next_back().filter(|(n, _)| *n > self.per_address).cloned();
            let addr = match over {
                Some((_, a)) => a,
                None if inner.map.len() > self.max => match inner.sizes.iter().next_back() {
                    Some((_, a)) => a.clone(),
                    None => return,
                },
                None => return,
            };
            if inner.evict_from(&addr, approved) {
                self.dirty.store(true, Ordering::Release);
            }
        }
    }

    /// Records a request for `node`'s bundle from `address`.
    pub fn saw(&self, node: &str, address: &str) {
        let t = now();
        let Ok(mut inner) = self.inner.lock() else { return };
        if let Some(s) = inner.map.get_mut(node) {
            s.last_seen = t;
            s.requests = s.requests.saturating_add(1);
            if s.address != address {
                address.clone_into(&mut s.address);
            }
            self.dirty.store(true, Ordering::Release);
            return;
        }
        // A new id: a file test, once per id, not per request.
        let approved = |n: &str| self.data.node_record(n).exists();
        if !approved(node) {
            let key = quota_key(address);
            if inner.by_address.get(&key).is_some_and(|q| q.len() >= self.per_address) {
                inner.evict_from(&key, approved);
            }
            while inner.map.len() >= self.max {
                let Some((_, biggest)) = inner.sizes.iter().next_back().cloned() else { break };
                inner.evict_from(&biggest, approved);
            }
            if inner.map.len() >= self.max {
                // Full of approved nodes: the admin approved more nodes
                // than the table holds; new unapproved ones wait.
                return;
            }
            inner.charge(&key, node);
        }
        inner
            .map
            .insert(node.to_owned(), Seen { first_seen: t, last_seen: t, address: address.to_owned(), requests: 1 });
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the table if it changed since the last write.
    pub fn flush(&self, data: &DataDir) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let json = {
            let inner = self.inner.lock().map_err(|_| io::Error::other("seen table lock poisoned"))?;
            serde_json::to_vec_pretty(&inner.map).map_err(io::Error::other)?
        };
        let result = write_atomic(&data.seen(), &json);
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

/// Reads `seen.json`. A file that does not parse is reported; the server
/// (`keep_copy`), which is about to replace it, first renames it to
/// `seen.json.corrupt` so nothing is lost without a trace.
fn read_seen(data: &DataDir, keep_copy: bool) -> HashMap<String, Seen> {
    let path = data.seen();
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            log::warn!("reading {}: {e}", path.display());
            return HashMap::new();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(map) => map,
        Err(e) if keep_copy => {
            let copy = path.with_extension("json.corrupt");
            match fs::rename(&path, &copy) {
                Ok(()) => log::warn!("{} is damaged ({e}); kept as {}, starting empty", path.display(), copy.display()),
                Err(re) => log::warn!("{} is damaged ({e}); keeping a copy failed: {re}", path.display()),
            }
            HashMap::new()
        }
        Err(e) => {
            log::warn!("{} is damaged ({e}); the server keeps it as seen.json.corrupt at start", path.display());
            HashMap::new()
        }
    }
}

/// Writes a small file atomically (temp file, sync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(crate::cleanup::TMP_PREFIX).tempfile_in(dir)?;
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
    // A wrapped TPM key is withdrawn, and the enrolment forgotten.
    let tpm_key = crate::enrol::withdraw(data, node)?;
    let detail = match (was_known, tpm_key) {
        (true, true) => "approval revoked, TPM key withdrawn",
        (true, false) => "approval revoked",
        (false, true) => "TPM key withdrawn",
        (false, false) => "",
    };
    audit(data, "reject", Some(node), detail.into(), by)
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
    /// The TPM: `enrolled` (waiting for `approve --tpm-key`) or `key
    /// published`, with the EK hash; `None` when it never enrolled one.
    #[serde(default)]
    pub tpm: Option<String>,
}

/// Every node the data directory knows of: approved, pending and rejected,
/// sorted by state then id.
pub fn list(data: &DataDir) -> Vec<NodeStatus> {
    let seen = read_seen(data, false);
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
        tpm: None,
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
    for name in json_names(&data.state().join("enrol")) {
        let Some(e) = crate::enrol::read(data, &name) else { continue };
        let entry = out.entry(name.clone()).or_insert_with(|| blank(&name, "pending"));
        let published = crate::enrol::tpm_key_file(data, &name).exists();
        entry.tpm = Some(format!("{} (EK {})", if published { "key published" } else { "enrolled" }, e.ek_hash));
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

    /// A flood of invented ids from one address (or one IPv6 /64) only
    /// replaces its own ids: real nodes from other addresses, and approved
    /// nodes, are recorded and kept; the table never exceeds its size.
    #[test]
    fn floods_never_crowd_out_real_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        approve(&data, "known1", Approval::default(), "t".into()).unwrap();
        let table = SeenTable::load(&data, 50, 10);
        table.saw("known1", "10.0.0.9");
        table.saw("real1", "10.0.0.1");
        for i in 0..1000 {
            table.saw(&format!("junk{i}"), "10.6.6.6");
        }
        for i in 0..1000 {
            table.saw(&format!("v6junk{i}"), &format!("2001:db8::{:x}", i + 1));
        }
        table.saw("real2", "10.0.0.2");
        table.flush(&data).unwrap();
        let l = list(&data);
        let has = |n: &str| l.iter().any(|s| s.node == n && s.first_seen.is_some());
        assert!(has("known1") && has("real1") && has("real2"));
        let junk = l.iter().filter(|s| s.node.starts_with("junk")).count();
        let v6 = l.iter().filter(|s| s.node.starts_with("v6junk")).count();
        assert_eq!((junk, v6), (10, 10), "each flooder keeps only its quota");
        // Its newest ids, not its oldest.
        assert!(has("junk999") && !has("junk0"));
        // Many addresses fill the table: the biggest holders are evicted
        // first, and a new node still gets in.
        for i in 0..200 {
            table.saw(&format!("spread{i}"), &format!("10.1.{}.{}", i / 250, i % 250));
        }
        table.saw("real3", "10.0.0.3");
        table.flush(&data).unwrap();
        let l = list(&data);
        let seen = l.iter().filter(|s| s.first_seen.is_some()).count();
        assert!(seen <= 50, "{seen}");
        assert!(l.iter().any(|s| s.node == "real3" && s.first_seen.is_some()));
        assert!(l.iter().any(|s| s.node == "known1" && s.first_seen.is_some()));
        // Reloaded with a smaller table, the limits hold again.
        let small = SeenTable::load(&data, 5, 2);
        small.saw("real4", "10.0.0.4");
        small.flush(&data).unwrap();
        let l = list(&data);
        assert!(l.iter().filter(|s| s.first_seen.is_some()).count() <= 5);
        assert!(l.iter().any(|s| s.node == "known1" && s.first_seen.is_some()));
    }

    #[test]
    fn a_damaged_seen_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        fs::write(data.seen(), b"{\"n1\": {\"first_seen\": 1, \"la").unwrap();
        let table = SeenTable::load(&data, MAX_SEEN, MAX_SEEN_PER_ADDRESS);
        assert_eq!(fs::read(data.seen().with_extension("json.corrupt")).unwrap(), b"{\"n1\": {\"first_seen\": 1, \"la");
        assert!(!data.seen().exists());
        table.saw("n2", "x");
        table.flush(&data).unwrap();
        assert_eq!(list(&data).len(), 1);
    }

    #[test]
    fn pending_approve_reject() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let table = SeenTable::load(&data, MAX_SEEN, MAX_SEEN_PER_ADDRESS);
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
        let again = SeenTable::load(&data, MAX_SEEN, MAX_SEEN_PER_ADDRESS);
        again.saw("n3", "x");
        again.flush(&data).unwrap();
        assert_eq!(list(&data).len(), 3);
        let audit = fs::read_to_string(data.audit_log()).unwrap();
        assert_eq!(audit.lines().count(), 2);
        assert!(approve(&data, "../x", Approval::default(), "t".into()).is_err());
    }
}
