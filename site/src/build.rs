//! Packing layers reproducibly, deciding which changed, publishing them.
//!
//! A layer's *content digest* is SHA-256 over its manifest: every payload
//! entry (path, kind, mode, owner, SHA-256 of its bytes or its link
//! target), sorted, `.stateless/` included, and the key id it is sealed
//! for. The same tree always packs to the same tar (sorted entries, fixed
//! mtime, owners and modes from the manifest), so the same content gives
//! the same digest and the same payload bytes before encryption.
//!
//! Whether a layer changed is decided from a build record per layer in the
//! data directory's private state (`state/site/<layer>.json`: content
//! digest, key id, generation, bundle digest and the manifest), not by
//! decrypting the published bundle: the record is also what `site diff`
//! compares file by file without any key. A layer is unchanged only when
//! its content digest and key id match the record and the published
//! bundle is still the one the record names; anything else (no record, a
//! bundle published by hand) gives it a new generation, one above both the
//! published and the recorded one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stateless_bundle::{Key, Limits, PackOptions, Scope, SigningKey};
use stateless_keys::derive::{Target as KeyTarget, derive};
use stateless_server::DataDir;
use stateless_server::store::{self, PublishLock};

use crate::compile::{Compiled, Layer, OutKind};
use crate::error::BuildError;
use crate::tree::LayerId;

/// How layers are sealed.
#[derive(Debug)]
pub enum Keys {
    /// Unencrypted bundles (`--no-encrypt`): integrity only, readable by
    /// anyone who can fetch them.
    None,
    /// The site key: each layer is sealed with the key derived for it
    /// (node, group, or default for the default and plugin layers).
    Site(Key),
}

impl Keys {
    fn for_layer(&self, id: &LayerId) -> Result<Option<Key>, BuildError> {
        let Keys::Site(site) = self else { return Ok(None) };
        let target = match id {
            LayerId::Node(n) => KeyTarget::Node(n.clone()),
            LayerId::Group(g) => KeyTarget::Group(g.clone()),
            LayerId::Default | LayerId::Plugin(_) => KeyTarget::Default,
        };
        derive(site, &target).map(Some).map_err(|e| BuildError::Key { layer: id.to_string(), source: Box::new(e) })
    }
}

/// What `build` needs besides the rendered site.
#[derive(Debug)]
pub struct BuildOptions<'a> {
    /// The server's data directory.
    pub data: &'a Path,
    /// How to seal layers.
    pub keys: &'a Keys,
    /// The publisher key that signs every bundle, if any.
    pub signer: Option<&'a SigningKey>,
    /// Print the plan only; write nothing.
    pub dry_run: bool,
    /// History kept per target.
    pub keep: usize,
    /// The mtime of every entry (SOURCE_DATE_EPOCH, else 0).
    pub mtime: i64,
    /// The bundle header's creation time (Unix seconds).
    pub created: i64,
    /// Withdraw the layers this site built before that it no longer has
    /// (nodes, groups or plugins removed from it).
    pub prune: bool,
}

/// How a layer compares with what is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing is published for it yet.
    New,
    /// Its content differs from the published layer's.
    Changed,
    /// Same content: not repacked, not republished.
    Unchanged,
    /// Built by this site before and still published, but no longer in
    /// it: withdrawn with `prune`, else left as it is.
    Removed,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
            Change::Removed => "no longer in the site",
        })
    }
}

/// One layer in a build plan.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The layer.
    pub id: LayerId,
    /// Compared with the published one.
    pub change: Change,
    /// Content digest (hex).
    pub content: String,
    /// The generation it gets (new or changed) or has (unchanged).
    pub generation: u64,
    /// The published bundle's digest after the build, when known.
    pub digest: Option<String>,
}

/// The build record of a layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    content: String,
    key_id: String,
    generation: u64,
    digest: String,
    entries: BTreeMap<String, String>,
    model: Option<String>,
}

fn record_path(data: &Path, id: &LayerId) -> PathBuf {
    data.join("state/site").join(format!("{}.json", id.dir()))
}

fn read_record(data: &Path, id: &LayerId) -> Option<Record> {
    let text = fs::read(record_path(data, id)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn hex(b: &[u8]) -> String {
    stateless_bundle::key::hex_encode(b)
}

/// The manifest line of each entry.
fn manifest(layer: &Layer) -> BTreeMap<String, String> {
    layer
        .tree()
        .into_iter()
        .map(|(p, e)| {
            let what = match &e.kind {
                OutKind::Dir => "dir".to_owned(),
                OutKind::File(b) => format!("file {}", hex(&Sha256::digest(b))),
                OutKind::Link(t) => format!("link {t}"),
            };
            (p, format!("{what} {:o} {}:{}", e.mode, e.uid, e.gid))
        })
        .collect()
}

fn content_digest(entries: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (p, m) in entries {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(m.as_bytes());
        h.update([b'\n']);
    }
    hex(&h.finalize())
}

fn published(data: &Path, id: &LayerId) -> Option<store::BundleInfo> {
    store::bundle_info(&data.join(id.target().rel_path())).ok()
}

/// Compares every layer with what is published, changing nothing.
pub fn plan(c: &Compiled, data: &Path, keys: &Keys) -> Result<Vec<Planned>, BuildError> {
    let mut out = Vec::new();
    for (id, layer) in &c.layers {
        let key_id = keys.for_layer(id)?.map(|k| k.id().to_string()).unwrap_or_default();
        let content = content_digest(&manifest(layer));
        let rec = read_record(data, id);
        let pubd = published(data, id);
        let same = rec.as_ref().is_some_and(|r| {
            r.content == content && r.key_id == key_id && pubd.as_ref().is_some_and(|p| p.digest == r.digest)
        });
        let (change, generation, digest) = if same {
            (Change::Unchanged, pubd.as_ref().map_or(0, |p| p.generation), pubd.map(|p| p.digest))
        } else {
            let g = pubd.as_ref().map_or(0, |p| p.generation).max(rec.as_ref().map_or(0, |r| r.generation)) + 1;
            let change = if pubd.is_none() && rec.is_none() { Change::New } else { Change::Changed };
            (change, g, None)
        };
        out.push(Planned { id: id.clone(), change, content, generation, digest });
    }
    // What an earlier build of this site published and the site no longer
    // has. Only layers with a build record count: a bundle published by
    // hand is never this build's to withdraw. The record stays when a
    // layer is withdrawn, so a layer added back continues its generations.
    for id in recorded(data) {
        if c.layers.contains_key(&id) {
            continue;
        }
        let (Some(rec), Some(pubd)) = (read_record(data, &id), published(data, &id)) else { continue };
        out.push(Planned {
            id,
            change: Change::Removed,
            content: rec.content,
            generation: pubd.generation,
            digest: Some(pubd.digest),
        });
    }
    Ok(out)
}

/// The layers with a build record in `data`.
fn recorded(data: &Path) -> Vec<LayerId> {
    let dir = data.join("state/site");
    let names = |sub: &str| -> Vec<String> {
        fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_owned))
            .filter(|n| stateless_server::check_name(n).is_ok())
            .collect()
    };
    let mut out = Vec::new();
    if dir.join("default.json").is_file() {
        out.push(LayerId::Default);
    }
    out.extend(names("plugins").into_iter().map(LayerId::Plugin));
    out.extend(names("groups").into_iter().map(LayerId::Group));
    out.extend(names("nodes").into_iter().map(LayerId::Node));
    out.sort_by_key(|id| (id.dir(), id.to_string()));
    out
}

/// Packs and publishes every layer that is new or changed, in the order
/// plugins, default, groups, nodes, so that a node never sees a stack
/// whose lower layers are older than the node layer that names them.
/// With `dry_run`, only the plan.
pub fn build(c: &Compiled, opts: &BuildOptions<'_>) -> Result<Vec<Planned>, BuildError> {
    if opts.dry_run {
        return plan(c, opts.data, opts.keys);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    if !rustix::process::geteuid().is_root() {
        let source = std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "site build packs owners from files.toml (default 0:0) and must run as root",
        );
        return Err(BuildError::Io { path: opts.data.to_owned(), source });
    }
    let data = DataDir::open(opts.data).map_err(io(opts.data))?;
    // Plan under the lock: no other publication can move a generation
    // between the plan and the publications.
    let lock = PublishLock::take(&data).map_err(io(&data.lock_file()))?;
    let mut planned = plan(c, opts.data, opts.keys)?;
    let publishes = |p: &Planned| matches!(p.change, Change::New | Change::Changed);
    let withdraws = |p: &Planned| opts.prune && p.change == Change::Removed;
    if !planned.iter().any(|p| publishes(p) || withdraws(p)) {
        return Ok(planned);
    }
    let tmp = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
    // One phase per kind, in publishing order; within a phase the layers
    // are independent, so several workers pack and publish at once: most
    // of a publication is waiting for fsync, which overlaps well.
    let rank = |id: &LayerId| match id {
        LayerId::Plugin(_) => 0,
        LayerId::Default => 1,
        LayerId::Group(_) => 2,
        LayerId::Node(_) => 3,
    };
    for phase in 0..4 {
        let todo: Vec<usize> = (0..planned.len())
            .filter(|&i| planned.get(i).is_some_and(|p| rank(&p.id) == phase && publishes(p)))
            .collect();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(usize, Result<String, BuildError>)>> = Mutex::new(Vec::new());
        let failed = AtomicBool::new(false);
        let workers = todo.len().min(WORKERS);
        let plan_ref = &planned;
        std::thread::scope(|s| {
            for w in 0..workers {
                let (todo, next, results, failed, data, lock, tmp) =
                    (&todo, &next, &results, &failed, &data, &lock, &tmp);
                s.spawn(move || {
                    while !failed.load(Ordering::Relaxed) {
                        let Some(&i) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                        let Some(p) = plan_ref.get(i) else { break };
                        let stage = tmp.path().join(format!("w{w}"));
                        let r = publish_one(c, opts, data, lock, &stage, p);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        if let Ok(mut v) = results.lock() {
                            v.push((i, r));
                        }
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        results.sort_by_key(|(i, _)| *i);
        for (i, r) in results {
            let digest = r?;
            if let Some(p) = planned.get_mut(i) {
                p.digest = Some(digest);
            }
        }
    }
    // Withdrawn in the reverse order of publishing: a node layer that
    // names a group goes before the group.
    let mut gone: Vec<&Planned> = planned.iter().filter(|p| withdraws(p)).collect();
    gone.sort_by_key(|p| std::cmp::Reverse(rank(&p.id)));
    for p in gone {
        let target = p.id.target();
        let done = store::withdraw(&data, &target, opts.keep, &lock)
            .map_err(|source| BuildError::Publish { layer: p.id.to_string(), source })?;
        if let Some(info) = done {
            let node = match &p.id {
                LayerId::Node(n) => Some(n.as_str()),
                _ => None,
            };
            let detail = format!(
                "{}: withdrawn (no longer in the site), generation {} digest {}",
                target.rel_path(),
                info.generation,
                info.digest
            );
            store::audit(&data, "withdraw", node, detail, store::by_uid()).map_err(io(&data.audit_log()))?;
        }
    }
    Ok(planned)
}

/// Layers packed and published at once.
const WORKERS: usize = 8;

/// Stages, packs and publishes one layer and writes its record; returns
/// the bundle's digest. `stage` is this worker's scratch directory.
fn publish_one(
    c: &Compiled,
    opts: &BuildOptions<'_>,
    data: &DataDir,
    lock: &PublishLock,
    stage: &Path,
    p: &Planned,
) -> Result<String, BuildError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    let Some(layer) = c.layers.get(&p.id) else {
        return Err(BuildError::Io { path: opts.data.to_owned(), source: std::io::ErrorKind::NotFound.into() });
    };
    let key = opts.keys.for_layer(&p.id)?;
    let tree = stage.join("tree");
    if stage.exists() {
        fs::remove_dir_all(stage).map_err(io(stage))?;
    }
    fs::create_dir(stage).map_err(io(stage))?;
    stage_tree(&tree, layer, opts.mtime)?;
    let scope = match &p.id {
        LayerId::Node(n) => Scope::Node(n.clone()),
        LayerId::Group(g) => Scope::Group(g.clone()),
        LayerId::Default => Scope::Any,
        LayerId::Plugin(n) => Scope::Plugin(n.clone()),
    };
    let pack_opts = PackOptions {
        key: key.as_ref(),
        generation: p.generation,
        created: opts.created,
        expires: None,
        scope,
        level: stateless_bundle::DEFAULT_LEVEL,
        threads: 0,
        deletions: Vec::new(),
        limits: Limits::default(),
    };
    let bundle = stage.join("bundle");
    let mut f = fs::File::create(&bundle).map_err(io(&bundle))?;
    let packed = match opts.signer {
        Some(s) => stateless_bundle::pack_signed(&tree, &mut f, &pack_opts, s),
        None => stateless_bundle::pack(&tree, &mut f, &pack_opts),
    }
    .map_err(|source| BuildError::Pack { layer: p.id.to_string(), source })?;
    drop(f);
    let target = p.id.target();
    let done = store::publish(data, &target, &bundle, opts.keep, lock)
        .map_err(|source| BuildError::Publish { layer: p.id.to_string(), source })?;
    let node = match &p.id {
        LayerId::Node(n) => Some(n.as_str()),
        _ => None,
    };
    let detail = format!("site build: {target} generation {} digest {}", done.info.generation, done.info.digest);
    store::audit(data, "publish", node, detail, store::by_uid()).map_err(io(&data.audit_log()))?;
    let rec = Record {
        content: p.content.clone(),
        key_id: key.map(|k| k.id().to_string()).unwrap_or_default(),
        generation: p.generation,
        digest: packed.digest.clone(),
        entries: manifest(layer),
        model: layer.model.clone(),
    };
    write_record(opts.data, &p.id, &rec)?;
    fs::remove_dir_all(stage).map_err(io(stage))?;
    Ok(packed.digest)
}

fn write_record(data: &Path, id: &LayerId, rec: &Record) -> Result<(), BuildError> {
    let path = record_path(data, id);
    let io = |source| BuildError::Io { path: path.clone(), source };
    let dir = path.parent().unwrap_or(data);
    fs::create_dir_all(dir).map_err(io)?;
    let mut t = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let text = serde_json::to_vec_pretty(rec).map_err(|e| io(std::io::Error::other(e)))?;
    t.write_all(&text).map_err(io)?;
    // Renamed but not synced: the record is a cache. Lost after a crash,
    // it only makes the next build republish the layer.
    t.persist(&path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Writes the layer's tree into `stage` with the manifest's modes, owners
/// and one fixed mtime, so that packing it is reproducible.
fn stage_tree(stage: &Path, layer: &Layer, mtime: i64) -> Result<(), BuildError> {
    use rustix::fs::{AtFlags, CWD, Gid, Timespec, Timestamps, Uid, chownat, utimensat};
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    fs::create_dir(stage).map_err(io(stage))?;
    let tree = layer.tree();
    // Parents sort before their children ("a" < "a/b").
    for (rel, e) in &tree {
        let path = stage.join(rel);
        match &e.kind {
            OutKind::Dir => fs::create_dir(&path).map_err(io(&path))?,
            OutKind::File(b) => fs::write(&path, b).map_err(io(&path))?,
            OutKind::Link(t) => std::os::unix::fs::symlink(t, &path).map_err(io(&path))?,
        }
        if !matches!(e.kind, OutKind::Link(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode)).map_err(io(&path))?;
        }
        chownat(CWD, &path, Some(Uid::from_raw(e.uid)), Some(Gid::from_raw(e.gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| BuildError::Io { path: path.clone(), source: err.into() })?;
        // chown clears set-id bits: set the mode again.
        if !matches!(e.kind, OutKind::Link(_)) && e.mode & 0o6000 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode)).map_err(io(&path))?;
        }
    }
    let t = Timespec { tv_sec: mtime, tv_nsec: 0 };
    let times = Timestamps { last_access: t, last_modification: t };
    // Children first: writing into a directory changes its mtime.
    for rel in tree.keys().rev() {
        let path = stage.join(rel);
        utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|err| BuildError::Io { path: path.clone(), source: err.into() })?;
    }
    Ok(())
}

/// What would change in one layer of a node's stack.
#[derive(Debug, Clone)]
pub struct LayerDiff {
    /// The layer.
    pub id: LayerId,
    /// New, changed or unchanged.
    pub change: Change,
    /// Files (and `.stateless/` entries) added, removed, changed.
    pub files: Vec<(char, String)>,
    /// Model entries added, removed, changed (`users.alice`, `sysctl.x`).
    pub model: Vec<(char, String)>,
}

/// For each node, how each layer of its stack compares with the last
/// build's record. Reads the data directory; writes nothing.
pub fn diff(c: &Compiled, data: &Path) -> Vec<(String, Vec<LayerDiff>)> {
    let mut per_layer: BTreeMap<LayerId, LayerDiff> = BTreeMap::new();
    for (id, layer) in &c.layers {
        let now = manifest(layer);
        let rec = read_record(data, id);
        let pubd = published(data, id);
        let same_bundle = rec.as_ref().zip(pubd.as_ref()).is_some_and(|(r, p)| r.digest == p.digest);
        let old = rec.as_ref().map(|r| r.entries.clone()).unwrap_or_default();
        let files = compare(&old, &now);
        let model = compare(
            &rec.as_ref().and_then(|r| r.model.as_deref()).map(flatten).unwrap_or_default(),
            &layer.model.as_deref().map(flatten).unwrap_or_default(),
        );
        let change = match (&rec, &pubd) {
            (None, None) => Change::New,
            _ if same_bundle && files.is_empty() => Change::Unchanged,
            _ => Change::Changed,
        };
        per_layer.insert(id.clone(), LayerDiff { id: id.clone(), change, files, model });
    }
    c.stacks
        .iter()
        .map(|(node, stack)| (node.clone(), stack.iter().filter_map(|l| per_layer.get(l).cloned()).collect()))
        .collect()
}

fn compare(old: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<(char, String)> {
    let mut out = Vec::new();
    for (k, v) in now {
        match old.get(k) {
            None => out.push(('+', k.clone())),
            Some(o) if o != v => out.push(('~', k.clone())),
            _ => {}
        }
    }
    out.extend(old.keys().filter(|k| !now.contains_key(*k)).map(|k| ('-', k.clone())));
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// A model as `key -> value` lines: `hostname`, `users.alice`,
/// `services.enable[sshd.service]`, `sysctl.net.ipv4.ip_forward`,
/// `edits[/etc/ssh/sshd_config]`.
fn flatten(text: &str) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, v, out);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let id = v
                        .as_table()
                        .and_then(|t| t.get("name").or_else(|| t.get("file")))
                        .and_then(|n| n.as_str())
                        .map(str::to_owned);
                    match (id, v) {
                        (Some(id), _) if prefix == "edits" => {
                            let key = format!("{prefix}[{id}]");
                            let prev = out.remove(&key).unwrap_or_default();
                            out.insert(key, format!("{prev}{v}"));
                        }
                        (Some(id), _) => {
                            out.insert(format!("{prefix}.{id}"), v.to_string());
                        }
                        (None, toml::Value::Table(_)) => {
                            out.insert(format!("{prefix}[{i}]"), v.to_string());
                        }
                        (None, v) => {
                            let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                            out.insert(format!("{prefix}[{s}]"), String::new());
                        }
                    }
                }
            }
            v => {
                out.insert(prefix.to_owned(), v.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(t) = toml::from_str::<toml::Table>(text) {
        walk("", &toml::Value::Table(t), &mut out);
    }
    out
}
