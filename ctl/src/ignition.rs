//! Ignition v3.0.0–3.4.0 configs turned into a site layer: a tree of files,
//! the modes and owners git cannot keep (`files.toml`), and a `model.toml`.
//!
//! Pure: bytes of the config in, the layer as data out; no file system, no
//! network, no clock. `cmd_import.rs` writes the result; the fuzz crate
//! includes this file as it is (`#[path]`), so it uses only crates, never
//! `crate::`.
//!
//! The rule is Ignition's own: refuse rather than guess. Every part of the
//! config that a layer cannot express (disks, filesystems, remote sources,
//! kernel arguments, `append`, ...) is a [`Problem`] naming its JSON path,
//! all of them are collected, and a config with any problem yields no
//! layer. Unknown keys are refused by the typed structs
//! (`deny_unknown_fields`), as Ignition's strict parser refuses them; each
//! is set aside and the parse retried, so they are all listed too.
//!
//! The mapping, field by field, is in docs/ignition.md.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;

/// The largest file one `data:` URL may decode (or decompress) to.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most bytes all files of one config may decode to.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// How many shape errors (unknown keys, wrong types) are listed before the
/// import gives up.
const MAX_SHAPE_ERRORS: usize = 50;
/// The longest path accepted (Linux's PATH_MAX).
const MAX_PATH: usize = 4096;
/// The longest path component (Linux's NAME_MAX).
const NAME_MAX: usize = 255;

/// The spec versions this converter reads, and their minor numbers.
const VERSIONS: [(&str, u8); 5] = [("3.0.0", 0), ("3.1.0", 1), ("3.2.0", 2), ("3.3.0", 3), ("3.4.0", 4)];

/// One part of the config that cannot become part of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The JSON path, e.g. `storage.files[2].contents.source`.
    pub path: String,
    /// Why, on one line.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What an output path in `files/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to this target (as written in the config).
    Symlink(String),
    /// A hard link to the file at this output path (relative to `files/`).
    HardLink(String),
}

/// Mode and owner of an output path, for `files.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (at most 0o7777).
    pub mode: Option<u32>,
    /// Owner uid.
    pub uid: Option<u32>,
    /// Group gid.
    pub gid: Option<u32>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none()
    }
}

/// A converted config: everything a layer directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The spec version the config declared.
    pub version: String,
    /// Output paths relative to `files/` (no leading slash), sorted, so a
    /// parent comes before its children.
    pub nodes: BTreeMap<String, Node>,
    /// Modes and owners, keyed like `nodes`.
    pub meta: BTreeMap<String, Meta>,
    /// The text of `model.toml` (accepted by `stateless_model::Model::load`).
    pub model_toml: String,
    /// How many users, groups and units went into the model.
    pub users: usize,
    /// See `users`.
    pub groups: usize,
    /// See `users`.
    pub units: usize,
}

impl Layer {
    /// The text of `files.toml`: a table per output path with `mode`
    /// (an octal string), `uid`, `gid`, each only when known.
    pub fn files_toml(&self) -> String {
        let mut out = String::from(
            "# Modes and owners of files/ that git cannot keep (written by statelessctl import ignition).\n",
        );
        for (path, m) in &self.meta {
            if m.is_empty() {
                continue;
            }
            let mut fields = Vec::new();
            if let Some(mode) = m.mode {
                fields.push(format!("mode = \"{mode:04o}\""));
            }
            if let Some(uid) = m.uid {
                fields.push(format!("uid = {uid}"));
            }
            if let Some(gid) = m.gid {
                fields.push(format!("gid = {gid}"));
            }
            // `"etc/secret" = { mode = "0600" }`: a quoted key and an inline
            // table, the one-line form of `["etc/secret"]` + its keys (a
            // line starting with `[` would be a table header in TOML).
            out.push_str(&format!("{} = {{ {} }}\n", toml_str(path), fields.join(", ")));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The config's shape: spec 3.4.0, the superset of 3.0.0–3.3.0. Keys that a
// version does not have yet are refused after parsing (`since`). Sections
// that are refused whatever they hold are kept as raw JSON values.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    ignition: Ignition,
    storage: Option<Storage>,
    systemd: Option<Systemd>,
    passwd: Option<Passwd>,
    #[serde(rename = "kernelArguments")]
    kernel_arguments: Option<KernelArguments>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ignition {
    #[allow(dead_code)] // Checked on the raw JSON before the typed parse.
    version: String,
    config: Option<IgnitionConfig>,
    timeouts: Option<Timeouts>,
    security: Option<Security>,
    proxy: Option<Proxy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IgnitionConfig {
    merge: Option<Vec<Resource>>,
    replace: Option<Resource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resource {
    source: Option<String>,
    compression: Option<String>,
    #[serde(rename = "httpHeaders")]
    http_headers: Option<Vec<HttpHeader>>,
    verification: Option<Verification>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpHeader {
    #[allow(dead_code)] // Any header is refused; its fields only need to parse.
    name: String,
    #[allow(dead_code)]
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Verification {
    hash: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Timeouts {
    #[serde(rename = "httpResponseHeaders")]
    http_response_headers: Option<i64>,
    #[serde(rename = "httpTotal")]
    http_total: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Security {
    tls: Option<Tls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    #[serde(rename = "certificateAuthorities")]
    certificate_authorities: Option<Vec<Resource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Proxy {
    #[serde(rename = "httpProxy")]
    http_proxy: Option<String>,
    #[serde(rename = "httpsProxy")]
    https_proxy: Option<String>,
    #[serde(rename = "noProxy")]
    no_proxy: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Storage {
    disks: Option<Vec<Value>>,
    raid: Option<Vec<Value>>,
    filesystems: Option<Vec<Value>>,
    luks: Option<Vec<Value>>,
    files: Option<Vec<File>>,
    directories: Option<Vec<Directory>>,
    links: Option<Vec<Link>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Owner {
    id: Option<i64>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    path: String,
    overwrite: Option<bool>,
    contents: Option<Resource>,
    append: Option<Vec<Resource>>,
    mode: Option<i64>,
    user: Option<Owner>,
    group: Option<Owner>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Directory {
    path: String,
    #[allow(dead_code)] // A layer always makes the directory; see docs/ignition.md.
    overwrite: Option<bool>,
    mode: Option<i64>,
    user: Option<Owner>,
    group: Option<Owner>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Link {
    path: String,
    #[allow(dead_code)] // A layer always makes the link; see docs/ignition.md.
    overwrite: Option<bool>,
    user: Option<Owner>,
    group: Option<Owner>,
    target: Option<String>,
    hard: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Systemd {
    units: Option<Vec<Unit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unit {
    name: String,
    enabled: Option<bool>,
    mask: Option<bool>,
    contents: Option<String>,
    dropins: Option<Vec<Dropin>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dropin {
    name: String,
    contents: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Passwd {
    users: Option<Vec<PasswdUser>>,
    groups: Option<Vec<PasswdGroup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswdUser {
    name: String,
    #[serde(rename = "passwordHash")]
    password_hash: Option<String>,
    #[serde(rename = "sshAuthorizedKeys")]
    ssh_authorized_keys: Option<Vec<String>>,
    uid: Option<i64>,
    gecos: Option<String>,
    #[serde(rename = "homeDir")]
    home_dir: Option<String>,
    #[serde(rename = "noCreateHome")]
    no_create_home: Option<bool>,
    #[serde(rename = "primaryGroup")]
    primary_group: Option<String>,
    groups: Option<Vec<String>>,
    #[serde(rename = "noUserGroup")]
    no_user_group: Option<bool>,
    #[serde(rename = "noLogInit")]
    #[allow(dead_code)] // The model never writes lastlog/faillog; see docs/ignition.md.
    no_log_init: Option<bool>,
    shell: Option<String>,
    #[serde(rename = "shouldExist")]
    should_exist: Option<bool>,
    #[allow(dead_code)] // Only picks the uid range, and the uid is required.
    system: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswdGroup {
    name: String,
    gid: Option<i64>,
    #[serde(rename = "passwordHash")]
    password_hash: Option<String>,
    #[serde(rename = "shouldExist")]
    should_exist: Option<bool>,
    #[allow(dead_code)] // Only picks the gid range, and the gid is required.
    system: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelArguments {
    #[serde(rename = "shouldExist")]
    should_exist: Option<Vec<String>>,
    #[serde(rename = "shouldNotExist")]
    should_not_exist: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------

/// Converts an Ignition config into a layer, or lists every part of it that
/// a layer cannot express.
pub fn convert(json: &[u8]) -> Result<Layer, Vec<Problem>> {
    let one = |path: &str, message: String| vec![Problem { path: path.to_owned(), message }];
    let raw: Value = serde_json::from_slice(json).map_err(|e| one("$", format!("not a JSON document: {e}")))?;
    let Some(top) = raw.as_object() else {
        return Err(one("$", "the config must be a JSON object".into()));
    };
    let version = match top.get("ignition").and_then(|i| i.get("version")) {
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err(one("ignition.version", "must be a string such as \"3.4.0\"".into())),
        None => return Err(one("ignition.version", "missing: every Ignition config names its spec version".into())),
    };
    let Some(minor) = VERSIONS.iter().find(|(v, _)| *v == version).map(|(_, m)| *m) else {
        return Err(one(
            "ignition.version",
            format!("spec version {version:?} is not supported (3.0.0, 3.1.0, 3.2.0, 3.3.0 or 3.4.0)"),
        ));
    };
    // Every shape error is listed, not only the first: an unknown key is
    // taken out of the document, a value of the wrong type is set to null
    // (a required one then stops the parse), and the parse is retried, a
    // bounded number of times.
    let mut raw = raw;
    let mut shape: Vec<Problem> = Vec::new();
    let config = loop {
        match serde_path_to_error::deserialize::<_, Config>(&raw) {
            Ok(c) => break c,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { "$".to_owned() } else { path };
                if shape.iter().any(|p| p.path == path) {
                    return Err(shape);
                }
                let message = one_line(&e.inner().to_string());
                let unknown = message.starts_with("unknown field");
                shape.push(Problem { path, message });
                if shape.len() >= MAX_SHAPE_ERRORS || !set_aside(&mut raw, e.path(), unknown) {
                    return Err(shape);
                }
            }
        }
    };
    let mut c = Converter { minor, problems: shape, total: 0, ..Converter::default() };
    let shape_len = c.problems.len();
    c.config(&config);
    // A value set aside as null is reported once, as the wrong type it
    // was, not again as missing.
    let (shape, semantic) = c.problems.split_at(shape_len);
    let semantic: Vec<Problem> = semantic.iter().filter(|p| !shape.iter().any(|s| s.path == p.path)).cloned().collect();
    c.problems = [shape.to_vec(), semantic].concat();
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let model_toml = c.model.text();
    // Belt and braces: every part was checked on its own against the model
    // with its JSON path; the whole must pass too.
    if let Err(e) = stateless_model::Model::load("model.toml", "import", &model_toml) {
        return Err(one("passwd", format!("the generated model.toml is refused: {e}")));
    }
    Ok(Layer {
        version,
        nodes: c.nodes.into_iter().map(|(k, (n, _))| (k, n)).collect(),
        meta: c.meta,
        model_toml,
        users: c.model.users.len(),
        groups: c.model.groups.len(),
        units: c.model.enable.len() + c.model.disable.len() + c.model.mask.len(),
    })
}

#[derive(Debug, Default)]
struct Converter {
    minor: u8,
    problems: Vec<Problem>,
    /// Output path → the node and the JSON path that made it.
    nodes: BTreeMap<String, (Node, String)>,
    meta: BTreeMap<String, Meta>,
    model: ModelText,
    /// Users' uids and groups' gids by name, for owners and primary groups.
    uids: BTreeMap<String, u32>,
    gids: BTreeMap<String, u32>,
    /// Bytes decoded so far (MAX_TOTAL_BYTES).
    total: u64,
}

impl Converter {
    fn refuse(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    /// A key that the declared spec version does not have: Ignition's parser
    /// for that version refuses it as unknown.
    fn since(&mut self, present: bool, path: &str, minor: u8) {
        if present && self.minor < minor {
            let v = self.minor;
            self.refuse(path, format!("unknown key in spec 3.{v}.0 (it came with 3.{minor}.0)"));
        }
    }

    fn config(&mut self, c: &Config) {
        self.ignition(&c.ignition);
        if let Some(k) = &c.kernel_arguments {
            self.since(true, "kernelArguments", 3);
            for (list, name) in [(&k.should_exist, "shouldExist"), (&k.should_not_exist, "shouldNotExist")] {
                for (i, _) in list.iter().flatten().enumerate() {
                    self.refuse(
                        format!("kernelArguments.{name}[{i}]"),
                        "kernel arguments are the boot loader's, which a layer does not change: set them in the PXE or boot entry",
                    );
                }
            }
        }
        // Accounts first: owners and primary groups resolve names through them.
        if let Some(p) = &c.passwd {
            self.passwd(p);
        }
        if let Some(s) = &c.storage {
            self.storage(s);
        }
        if let Some(s) = &c.systemd {
            for (i, u) in s.units.iter().flatten().enumerate() {
                self.unit(&format!("systemd.units[{i}]"), u);
            }
        }
        self.check_tree();
    }

    fn ignition(&mut self, ign: &Ignition) {
        if let Some(cfg) = &ign.config {
            for (i, r) in cfg.merge.iter().flatten().enumerate() {
                let p = format!("ignition.config.merge[{i}]");
                self.resource_versions(&p, r);
                self.refuse(p, "merging further configs is not imported: import each config and merge them as layers");
            }
            if let Some(r) = &cfg.replace {
                let p = "ignition.config.replace";
                self.resource_versions(p, r);
                if r.source.is_some() || r.verification.as_ref().is_some_and(|v| v.hash.is_some()) {
                    self.refuse(p, "replacing the config is not imported: import the replacement config instead");
                }
            }
        }
        if let Some(t) = &ign.timeouts {
            for (v, name) in [(t.http_response_headers, "httpResponseHeaders"), (t.http_total, "httpTotal")] {
                if v.is_some() {
                    self.refuse(
                        format!("ignition.timeouts.{name}"),
                        "fetch timeouts have no meaning in a layer (nothing is fetched)",
                    );
                }
            }
        }
        if let Some(s) = &ign.security {
            for (i, r) in s.tls.iter().filter_map(|t| t.certificate_authorities.as_ref()).flatten().enumerate() {
                let p = format!("ignition.security.tls.certificateAuthorities[{i}]");
                self.resource_versions(&p, r);
                self.refuse(
                    p,
                    "TLS settings for Ignition's fetches are not imported: a layer fetches nothing (put a CA for the system into files/)",
                );
            }
        }
        if let Some(p) = &ign.proxy {
            self.since(true, "ignition.proxy", 1);
            let set = [
                ("httpProxy", p.http_proxy.is_some()),
                ("httpsProxy", p.https_proxy.is_some()),
                ("noProxy", p.no_proxy.as_ref().is_some_and(|l| !l.is_empty())),
            ];
            for (name, is_set) in set {
                if is_set {
                    self.refuse(
                        format!("ignition.proxy.{name}"),
                        "proxy settings for Ignition's fetches have no meaning in a layer (nothing is fetched)",
                    );
                }
            }
        }
    }

    /// Version checks inside a resource that is refused anyway, so that a
    /// key the version lacks is named too.
    fn resource_versions(&mut self, path: &str, r: &Resource) {
        self.since(r.http_headers.is_some(), &format!("{path}.httpHeaders"), 1);
    }

    fn storage(&mut self, s: &Storage) {
        self.since(s.luks.is_some(), "storage.luks", 2);
        let whole = [
            (&s.disks, "disks", "partitioning disks"),
            (&s.raid, "raid", "RAID arrays"),
            (&s.filesystems, "filesystems", "making or mounting filesystems"),
            (&s.luks, "luks", "LUKS volumes"),
        ];
        for (list, name, what) in whole {
            for (i, _) in list.iter().flatten().enumerate() {
                self.refuse(
                    format!("storage.{name}[{i}]"),
                    format!("{what} cannot be expressed by a layer (it lays files over the root; prepare storage in the base image)"),
                );
            }
        }
        for (i, f) in s.files.iter().flatten().enumerate() {
            self.file(&format!("storage.files[{i}]"), f);
        }
        for (i, d) in s.directories.iter().flatten().enumerate() {
            self.directory(&format!("storage.directories[{i}]"), d);
        }
        // Links last: a hard link's target must be one of the files above.
        for (i, l) in s.links.iter().flatten().enumerate() {
            self.link(&format!("storage.links[{i}]"), l);
        }
    }

    fn file(&mut self, jp: &str, f: &File) {
        let Some(path) = self.path(&format!("{jp}.path"), &f.path) else { return };
        for (i, a) in f.append.iter().flatten().enumerate() {
            let p = format!("{jp}.append[{i}]");
            self.resource_versions(&p, a);
            self.refuse(
                p,
                "append cannot be expressed: a layer replaces whole files (write the whole file as contents instead)",
            );
        }
        let contents = f.contents.as_ref();
        if f.overwrite == Some(true) && contents.is_none_or(|c| c.source.is_none()) {
            // Ignition's own validation refuses this (ErrOverwriteAndNilSource).
            self.refuse(format!("{jp}.overwrite"), "overwrite requires contents.source");
        }
        let bytes = match contents.map(|r| self.resource(&format!("{jp}.contents"), r)) {
            // No contents: an empty file, as Ignition makes on a fresh root.
            None => Vec::new(),
            Some(Some(bytes)) => bytes,
            // Refused: the problem is recorded and no layer will be written;
            // the path is still entered, so that a hard link to it is not
            // refused a second time.
            Some(None) => Vec::new(),
        };
        let mode = self.mode(&format!("{jp}.mode"), f.mode);
        let uid = self.owner(&format!("{jp}.user"), f.user.as_ref(), true);
        let gid = self.owner(&format!("{jp}.group"), f.group.as_ref(), false);
        self.add(jp, path, Node::File(bytes), Meta { mode, uid, gid });
    }

    fn directory(&mut self, jp: &str, d: &Directory) {
        let Some(path) = self.path(&format!("{jp}.path"), &d.path) else { return };
        // Always recorded: git keeps no empty directory and no directory mode,
        // so files.toml is where the directory's existence and mode live.
        let mode = self.mode(&format!("{jp}.mode"), d.mode).or(Some(0o755));
        let uid = self.owner(&format!("{jp}.user"), d.user.as_ref(), true);
        let gid = self.owner(&format!("{jp}.group"), d.group.as_ref(), false);
        self.add(jp, path, Node::Dir, Meta { mode, uid, gid });
    }

    fn link(&mut self, jp: &str, l: &Link) {
        let Some(path) = self.path(&format!("{jp}.path"), &l.path) else { return };
        let target = match l.target.as_deref() {
            Some(t) if !t.is_empty() && !t.contains('\0') && t.len() <= MAX_PATH => t,
            _ => {
                self.refuse(format!("{jp}.target"), "a link needs a target (a path without NUL)");
                return;
            }
        };
        if l.hard == Some(true) {
            if !target.starts_with('/') {
                self.refuse(format!("{jp}.target"), "a hard link's target must be an absolute path");
                return;
            }
            let Some(to) = self.path(&format!("{jp}.target"), target) else { return };
            match self.nodes.get(&to) {
                Some((Node::File(_), _)) => {
                    // A hard link shares its target's inode: same mode, same
                    // owner (Ignition ignores user/group on hard links too).
                    // A target without an entry has the defaults; so has the link.
                    let meta = self.meta.get(&to).copied().unwrap_or_default();
                    self.add(jp, path, Node::HardLink(to), meta);
                }
                _ => self.refuse(
                    format!("{jp}.target"),
                    format!("a hard link must point at a file of this config's storage.files; /{to} is not one"),
                ),
            }
            return;
        }
        // An absolute target resolves inside the node's root whatever it
        // holds (`/..` is `/`); a relative one must not climb out of it, or
        // the bundle would be refused (stateless_bundle's rule, the same).
        if target.split('/').any(|c| c.len() > NAME_MAX) {
            self.refuse(format!("{jp}.target"), format!("a component is longer than {NAME_MAX} bytes"));
        } else if !target.starts_with('/') && escapes(&path, target) {
            self.refuse(format!("{jp}.target"), format!("{target:?} leads out of the root"));
        }
        let uid = self.owner(&format!("{jp}.user"), l.user.as_ref(), true);
        let gid = self.owner(&format!("{jp}.group"), l.group.as_ref(), false);
        self.add(jp, path, Node::Symlink(target.to_owned()), Meta { mode: None, uid, gid });
    }

    fn unit(&mut self, jp: &str, u: &Unit) {
        if !unit_file_name(&u.name) {
            self.refuse(
                format!("{jp}.name"),
                format!("{:?} is not a unit file name (NAME.SUFFIX with a systemd suffix, [A-Za-z0-9:_.\\@-])", u.name),
            );
            return;
        }
        let dir = format!("etc/systemd/system/{}", u.name);
        if let Some(text) = u.contents.as_deref().filter(|t| !t.is_empty()) {
            // Empty contents write nothing, as in Ignition.
            self.add(&format!("{jp}.contents"), dir.clone(), Node::File(text.as_bytes().to_vec()), Meta::default());
        }
        for (i, d) in u.dropins.iter().flatten().enumerate() {
            let dp = format!("{jp}.dropins[{i}]");
            let ok = d.name.ends_with(".conf")
                && d.name.len() > 5
                && d.name.len() <= 255
                && !d.name.contains(['/', '\0'])
                && !d.name.chars().any(char::is_control);
            if !ok {
                self.refuse(
                    format!("{dp}.name"),
                    format!("{:?} is not a drop-in file name (NAME.conf, no '/')", d.name),
                );
                continue;
            }
            // A drop-in without contents is skipped, as in Ignition.
            if let Some(text) = &d.contents {
                let p = format!("{dir}.d/{}", d.name);
                self.add(&format!("{dp}.contents"), p, Node::File(text.as_bytes().to_vec()), Meta::default());
            }
        }
        let state = match (u.enabled, u.mask) {
            (_, Some(false)) => {
                self.refuse(
                    format!("{jp}.mask"),
                    "mask: false (unmask) cannot be expressed: the model has no unmask; drop the key if the base image does not mask the unit",
                );
                return;
            }
            (Some(_), Some(true)) => {
                self.refuse(jp, "a unit cannot be both masked and enabled or disabled");
                return;
            }
            (None, Some(true)) => {
                if u.contents.as_deref().is_some_and(|t| !t.is_empty()) {
                    self.refuse(
                        jp,
                        "a masked unit cannot have contents: masking links /etc/systemd/system/NAME to /dev/null",
                    );
                    return;
                }
                Some("mask")
            }
            (Some(true), None) => Some("enable"),
            (Some(false), None) => Some("disable"),
            (None, None) => None,
        };
        let Some(state) = state else { return };
        let field = if state == "mask" { "mask" } else { "enabled" };
        if self.model.has_unit(&u.name) {
            self.refuse(format!("{jp}.name"), format!("unit {:?} appears twice", u.name));
            return;
        }
        let one = format!("[services]\n{state} = [{}]\n", toml_str(&u.name));
        if let Err(e) = check_model(&one) {
            self.refuse(format!("{jp}.{field}"), e);
            return;
        }
        match state {
            "enable" => self.model.enable.push(u.name.clone()),
            "disable" => self.model.disable.push(u.name.clone()),
            _ => self.model.mask.push(u.name.clone()),
        }
    }

    fn passwd(&mut self, p: &Passwd) {
        for (i, g) in p.groups.iter().flatten().enumerate() {
            let jp = format!("passwd.groups[{i}]");
            self.since(g.should_exist.is_some(), &format!("{jp}.shouldExist"), 2);
            if g.should_exist == Some(false) {
                self.refuse(
                    format!("{jp}.shouldExist"),
                    "deleting a group cannot be expressed: remove it from the base image",
                );
                continue;
            }
            if g.password_hash.is_some() {
                // Refused, not ignored: dropping it would quietly change who
                // can `newgrp` into the group.
                self.refuse(format!("{jp}.passwordHash"), "group passwords cannot be expressed by the model");
            }
            let Some(gid) = g.gid else {
                self.refuse(
                    format!("{jp}.gid"),
                    "a gid is required: a stateless node recreates the group at every boot and it must keep its id",
                );
                continue;
            };
            if self.gids.contains_key(&g.name) {
                self.refuse(format!("{jp}.name"), format!("group {:?} appears twice", g.name));
                continue;
            }
            let text = format!("[[groups]]\nname = {}\ngid = {gid}\n", toml_str(&g.name));
            if let Err(e) = check_model(&text) {
                self.refuse(jp, e);
                continue;
            }
            if let Ok(id) = u32::try_from(gid) {
                self.gids.insert(g.name.clone(), id);
            }
            self.model.groups.push(text);
        }
        for (i, u) in p.users.iter().flatten().enumerate() {
            self.user(&format!("passwd.users[{i}]"), u);
        }
    }

    fn user(&mut self, jp: &str, u: &PasswdUser) {
        self.since(u.should_exist.is_some(), &format!("{jp}.shouldExist"), 2);
        if u.should_exist == Some(false) {
            self.refuse(
                format!("{jp}.shouldExist"),
                "deleting a user cannot be expressed: remove it from the base image",
            );
            return;
        }
        if u.name == "root" {
            // The most common Ignition user entry (root's SSH keys); the
            // model refuses uid 0 on purpose, so say what to do instead.
            self.refuse(
                format!("{jp}.name"),
                "root belongs to the base image and the model refuses uid 0: put its keys into files/root/.ssh/authorized_keys (mode 0600) by hand",
            );
            return;
        }
        let before = self.problems.len();
        if u.no_create_home == Some(true) {
            self.refuse(format!("{jp}.noCreateHome"), "the model always creates a missing home directory");
        }
        let gid = match &u.primary_group {
            Some(g) => {
                let id = self.gid_of(g);
                if id.is_none() {
                    self.refuse(
                        format!("{jp}.primaryGroup"),
                        format!("group {g:?} must be defined with a gid in passwd.groups (the model names a primary group by gid)"),
                    );
                }
                id
            }
            None => {
                if u.no_user_group == Some(true) {
                    self.refuse(
                        format!("{jp}.noUserGroup"),
                        "without primaryGroup the model always gives the user a group of its own name; set primaryGroup",
                    );
                }
                None
            }
        };
        let Some(uid) = u.uid else {
            self.refuse(
                format!("{jp}.uid"),
                "a uid is required: a stateless node recreates the account at every boot and it must keep its id",
            );
            return;
        };
        if self.problems.len() > before {
            return;
        }
        if self.uids.contains_key(&u.name) {
            self.refuse(format!("{jp}.name"), format!("user {:?} appears twice", u.name));
            return;
        }
        let mut t = format!("[[users]]\nname = {}\nuid = {uid}\n", toml_str(&u.name));
        if let Some(g) = gid {
            t.push_str(&format!("gid = {g}\n"));
        }
        if let Some(groups) = &u.groups {
            t.push_str(&format!("groups = {}\n", toml_list(groups)));
        }
        if let Some(c) = &u.gecos {
            t.push_str(&format!("comment = {}\n", toml_str(c)));
        }
        if let Some(s) = &u.shell {
            t.push_str(&format!("shell = {}\n", toml_str(s)));
        }
        if let Some(h) = &u.home_dir {
            t.push_str(&format!("home = {}\n", toml_str(h)));
        }
        match &u.password_hash {
            Some(h) => t.push_str(&format!("password_hash = {}\n", toml_str(h))),
            // Ignition leaves an account without a hash with no usable
            // password; key logins still work. That is the model's `locked`.
            None => t.push_str("locked = true\n"),
        }
        if let Some(keys) = &u.ssh_authorized_keys {
            t.push_str(&format!("ssh_authorized_keys = {}\n", toml_list(keys)));
        }
        if let Err(e) = check_model(&t) {
            self.refuse(jp, e);
            return;
        }
        if let Ok(id) = u32::try_from(uid) {
            self.uids.insert(u.name.clone(), id);
        }
        self.model.users.push(t);
    }

    /// Names resolve only through this config's passwd, not even `root`:
    /// the import cannot see the base image's /etc/group, and a guessed id
    /// would be silently wrong there (`id: 0` says it plainly).
    fn gid_of(&self, name: &str) -> Option<u32> {
        self.gids.get(name).copied()
    }

    /// A resource's bytes (none without a source), or `None` when it is
    /// refused (the problems are recorded).
    fn resource(&mut self, jp: &str, r: &Resource) -> Option<Vec<u8>> {
        let before = self.problems.len();
        self.resource_versions(jp, r);
        if r.http_headers.as_ref().is_some_and(|h| !h.is_empty()) {
            self.refuse(format!("{jp}.httpHeaders"), "HTTP headers are for remote sources, which are not fetched");
        }
        let compression = match r.compression.as_deref() {
            None | Some("") => false,
            Some("gzip") => true,
            Some(other) => {
                self.refuse(format!("{jp}.compression"), format!("{other:?} is not a compression (null or \"gzip\")"));
                false
            }
        };
        let hash = r.verification.as_ref().and_then(|v| v.hash.as_deref());
        let Some(source) = r.source.as_deref() else {
            if hash.is_some() {
                self.refuse(format!("{jp}.verification"), "a hash without a source");
            }
            return (self.problems.len() == before).then(Vec::new);
        };
        if self.total > MAX_TOTAL_BYTES {
            // Already over budget: do not decode (or decompress) any more.
            self.refuse(
                format!("{jp}.source"),
                format!("the config's files add up to more than {MAX_TOTAL_BYTES} bytes"),
            );
            return None;
        }
        let scheme = source.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        let data = match scheme.as_deref() {
            Some("data") => match data_url(source) {
                Ok(d) => d,
                Err(e) => {
                    self.refuse(format!("{jp}.source"), e);
                    return None;
                }
            },
            Some(s @ ("http" | "https" | "tftp" | "s3" | "gs" | "arn")) => {
                if s == "arn" {
                    self.since(true, &format!("{jp}.source"), 4);
                }
                self.refuse(
                    format!("{jp}.source"),
                    format!("a remote {s} source is not fetched by the import: download it and inline it as a data: URL, or put the file into the layer's files/"),
                );
                if hash.is_some() {
                    self.refuse(format!("{jp}.verification"), "cannot be checked: the source is not fetched");
                }
                return None;
            }
            _ => {
                self.refuse(
                    format!("{jp}.source"),
                    "not a URL with a supported scheme (data, http, https, tftp, s3, gs, arn)",
                );
                return None;
            }
        };
        let data = if compression {
            match gunzip(&data) {
                Ok(d) => d,
                Err(e) => {
                    self.refuse(format!("{jp}.compression"), e);
                    return None;
                }
            }
        } else {
            data
        };
        if data.len() as u64 > MAX_FILE_BYTES {
            self.refuse(format!("{jp}.source"), format!("decodes to more than {MAX_FILE_BYTES} bytes"));
            return None;
        }
        self.total = self.total.saturating_add(data.len() as u64);
        if self.total > MAX_TOTAL_BYTES {
            self.refuse(
                format!("{jp}.source"),
                format!("the config's files add up to more than {MAX_TOTAL_BYTES} bytes"),
            );
            return None;
        }
        if let Some(h) = hash {
            if let Err(e) = verify(h, &data, self.minor) {
                self.refuse(format!("{jp}.verification.hash"), e);
            }
        }
        (self.problems.len() == before).then_some(data)
    }

    /// An absolute config path as a path relative to `files/`.
    fn path(&mut self, jp: &str, p: &str) -> Option<String> {
        match rel_path(p) {
            Ok(r) => Some(r),
            Err(e) => {
                self.refuse(jp, e);
                None
            }
        }
    }

    fn mode(&mut self, jp: &str, mode: Option<i64>) -> Option<u32> {
        let m = mode?;
        match u32::try_from(m) {
            Ok(m) if m <= 0o7777 => Some(m),
            _ => {
                self.refuse(jp, format!("{m} is not a mode (decimal 0 to 4095, i.e. octal 0 to 07777)"));
                None
            }
        }
    }

    fn owner(&mut self, jp: &str, o: Option<&Owner>, user: bool) -> Option<u32> {
        let o = o?;
        let what = if user { "user" } else { "group" };
        match (o.id, o.name.as_deref()) {
            (Some(_), Some(_)) => {
                self.refuse(jp, "give id or name, not both");
                None
            }
            (Some(id), None) => match u32::try_from(id) {
                Ok(id) if id <= i32::MAX as u32 => Some(id),
                _ => {
                    self.refuse(format!("{jp}.id"), format!("{id} is not a {what} id (0 to 2147483647)"));
                    None
                }
            },
            (None, Some(name)) => {
                let id = if user { self.uids.get(name).copied() } else { self.gid_of(name) };
                if id.is_none() {
                    let section = if user { "passwd.users" } else { "passwd.groups" };
                    self.refuse(
                        format!("{jp}.name"),
                        format!("{what} {name:?} is not defined with an id in this config's {section} (files.toml needs the number; give id instead)"),
                    );
                }
                id
            }
            (None, None) => None,
        }
    }

    fn add(&mut self, jp: &str, path: String, node: Node, meta: Meta) {
        if let Some((_, other)) = self.nodes.get(&path) {
            let other = other.clone();
            self.refuse(jp, format!("/{path} is also written by {other}"));
            return;
        }
        if !meta.is_empty() {
            self.meta.insert(path.clone(), meta);
        }
        self.nodes.insert(path, (node, jp.to_owned()));
    }

    /// Nothing may lie below a file or a link of the config (Ignition:
    /// ErrFileUsedSymlink and friends).
    fn check_tree(&mut self) {
        let mut bad = Vec::new();
        for (path, (_, jp)) in &self.nodes {
            let mut at = path.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                if let Some((node, other)) = self.nodes.get(parent) {
                    if !matches!(node, Node::Dir) {
                        bad.push((
                            jp.clone(),
                            format!("/{path} lies below /{parent}, which {other} makes a file or link"),
                        ));
                    }
                }
                at = parent;
            }
        }
        for (jp, msg) in bad {
            self.refuse(jp, msg);
        }
    }
}

/// Takes an unknown key out of the document, or sets a value of the wrong
/// type to null; false when there is nothing left to set aside.
fn set_aside(doc: &mut Value, path: &serde_path_to_error::Path, unknown: bool) -> bool {
    use serde_path_to_error::Segment;
    let mut at = doc;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else { return false };
    for seg in parents {
        let next = match seg {
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Seq { index } => at.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        at = next;
    }
    match last {
        Segment::Map { key } if unknown => at.as_object_mut().is_some_and(|o| o.remove(key.as_str()).is_some()),
        Segment::Map { key } => match at.get_mut(key.as_str()) {
            Some(v) if !v.is_null() => {
                *v = Value::Null;
                true
            }
            _ => false,
        },
        Segment::Seq { index } => match at.get_mut(*index) {
            Some(v) if !v.is_null() => {
                *v = Value::Null;
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Whether a relative symlink target climbs above the root from `link`.
fn escapes(link: &str, target: &str) -> bool {
    // The link's own directory's depth below the root.
    let mut depth = link.matches('/').count() as i64;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// `/etc/x//y` → `etc/x/y`; refuses relative paths, `.`, `..`, NUL, the
/// root itself and `.stateless/` (a layer's own metadata, never written).
fn rel_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.len() > MAX_PATH || p.contains('\0') {
        return Err("the path is too long or contains NUL".into());
    }
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" => {}
            "." | ".." => return Err(format!("{p:?} contains '.' or '..'")),
            c if c.len() > NAME_MAX => return Err(format!("a component is longer than {NAME_MAX} bytes")),
            _ => parts.push(part),
        }
    }
    match parts.first() {
        None => Err("the root itself cannot be a file, directory or link".into()),
        Some(&".stateless") => Err("/.stateless is where a layer keeps its own metadata".into()),
        Some(_) => Ok(parts.join("/")),
    }
}

/// Unit file names (Ignition: a valid unit type suffix).
fn unit_file_name(name: &str) -> bool {
    const SUFFIXES: [&str; 11] =
        ["service", "socket", "target", "timer", "path", "mount", "automount", "swap", "slice", "scope", "device"];
    let chars = name.chars().all(|c| c.is_ascii_alphanumeric() || ":_.\\@-".contains(c));
    let suffix = name.rsplit_once('.').is_some_and(|(stem, s)| !stem.is_empty() && SUFFIXES.contains(&s));
    chars && suffix && name.len() <= 255
}

/// RFC 2397: `data:[<mediatype>][;base64],<data>`, the data percent-encoded.
fn data_url(url: &str) -> Result<Vec<u8>, String> {
    let rest = url.get(5..).ok_or("not a data: URL")?;
    let (header, data) = rest.split_once(',').ok_or("not a data: URL (no ',')")?;
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(data).collect();
    let is_base64 = header.rsplit(';').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("base64"));
    if !is_base64 {
        return Ok(bytes);
    }
    // Tolerate missing padding and line breaks, as Go's decoder in Ignition
    // does not but many hand-made configs need; the alphabet stays strict.
    let clean: Vec<u8> = bytes.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(&clean).map_err(|e| format!("the data: URL is not valid base64 ({e})"))
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(data).take(MAX_FILE_BYTES + 1);
    reader.read_to_end(&mut out).map_err(|e| format!("not valid gzip data ({e})"))?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("decompresses to more than {MAX_FILE_BYTES} bytes"));
    }
    Ok(out)
}

/// `sha512-HEX` (and `sha256-HEX` from 3.1.0) over the decompressed bytes.
fn verify(hash: &str, data: &[u8], minor: u8) -> Result<(), String> {
    let (kind, want) = hash.split_once('-').ok_or("not TYPE-HEX (e.g. sha512-…)")?;
    let got = match kind {
        "sha512" => sha2::Sha512::digest(data).to_vec(),
        "sha256" if minor >= 1 => sha2::Sha256::digest(data).to_vec(),
        _ => return Err(format!("{kind:?} is not a hash this spec version knows")),
    };
    let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
    if hex.eq_ignore_ascii_case(want) { Ok(()) } else { Err(format!("the contents do not match ({kind} is {hex})")) }
}

/// Checks a fragment of model.toml against the model's rules; the error is
/// the rule broken, without the fragment's line number (the caller names
/// the JSON path instead).
fn check_model(text: &str) -> Result<(), String> {
    match stateless_model::Model::load("model.toml", "import", text) {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.problem() {
            Some(p) => p.to_string(),
            None => one_line(&e.to_string()),
        }),
    }
}

#[derive(Debug, Default)]
struct ModelText {
    users: Vec<String>,
    groups: Vec<String>,
    enable: Vec<String>,
    disable: Vec<String>,
    mask: Vec<String>,
}

impl ModelText {
    fn has_unit(&self, name: &str) -> bool {
        [&self.enable, &self.disable, &self.mask].iter().any(|l| l.iter().any(|u| u == name))
    }

    fn text(&self) -> String {
        let mut out = String::from("# Imported from an Ignition config by statelessctl import ignition.\n");
        for g in &self.groups {
            out.push('\n');
            out.push_str(g);
        }
        for u in &self.users {
            out.push('\n');
            out.push_str(u);
        }
        if !(self.enable.is_empty() && self.disable.is_empty() && self.mask.is_empty()) {
            out.push_str("\n[services]\n");
            for (key, list) in [("enable", &self.enable), ("disable", &self.disable), ("mask", &self.mask)] {
                if !list.is_empty() {
                    out.push_str(&format!("{key} = {}\n", toml_list(list)));
                }
            }
        }
        out
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        let cases: &[(&str, &[u8])] = &[
            ("data:,", b""),
            ("data:,hello%20world%0A", b"hello world\n"),
            ("data:text/plain;charset=utf-8,a%2Cb,c", b"a,b,c"),
            ("data:;base64,aGVsbG8K", b"hello\n"),
            ("data:text/plain;base64,aGVsbG8", b"hello"),
            ("data:;base64,aGVs%0AbG8K", b"hello\n"),
            ("DATA:,x", b"x"),
        ];
        for (url, want) in cases {
            assert_eq!(data_url(url).unwrap(), *want, "{url}");
        }
        assert!(data_url("data:;base64,!!!").is_err());
        assert!(data_url("data:nocomma").is_err());
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(rel_path("/etc//x/").unwrap(), "etc/x");
        let long = format!("/etc/{}", "x".repeat(256));
        for bad in ["etc/x", "/", "//", "/etc/../x", "/./x", "/.stateless/model.toml", "/a\0b", &long] {
            assert!(rel_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_escapes() {
        assert!(!escapes("etc/a", "b"));
        assert!(!escapes("etc/a", "../usr/b"));
        assert!(escapes("etc/a", "../../b"));
        assert!(escapes("a", "../b"));
        assert!(!escapes("a/b/c", "../../x"));
    }

    #[test]
    fn toml_strings_round_trip_through_the_model() {
        for s in ["plain", "q\"uote", "back\\slash", "\u{fc}n\u{ef}"] {
            let text = format!(
                "[[users]]\nname = \"a\"\nuid = 1000\nlocked = true\nshell = {}\n",
                toml_str(&format!("/bin/{s}"))
            );
            let m = stateless_model::Model::load("t", "t", &text).unwrap();
            assert_eq!(m.users()["a"].value().shell, format!("/bin/{s}"));
        }
        assert_eq!(toml_str("a\nb\u{1}"), "\"a\\nb\\u0001\"");
    }

    #[test]
    fn hashes_by_version() {
        let sha512 = "sha512-ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db27ac185f8a0e1d5f84f88bc887fd67b143732c304cc5fa9ad8e6f57f50028a8ff";
        let sha256 = "sha256-9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(verify(sha512, b"test", 0), Ok(()));
        assert_eq!(verify(&sha512.to_uppercase().replace("SHA512", "sha512"), b"test", 0), Ok(()));
        assert!(verify(sha256, b"test", 0).is_err(), "sha256 came with 3.1.0");
        assert_eq!(verify(sha256, b"test", 1), Ok(()));
        assert!(verify(sha256, b"tesT", 4).unwrap_err().contains("do not match"));
        assert!(verify("md5-00", b"test", 4).is_err());
        assert!(verify("nodash", b"test", 4).is_err());
    }

    #[test]
    fn shape_errors_are_all_listed_with_paths() {
        let doc =
            br#"{"ignition":{"version":"3.4.0"},"b":1,"a":2,"storage":{"files":[{"path":"/x","mode":"x","q":1}]}}"#;
        let paths: Vec<String> = convert(doc).unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["a", "b", "storage.files[0].mode", "storage.files[0].q"]);
        // A required field of the wrong type ends the listing there.
        let doc = br#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":1},{"path":"/y","z":1}]}}"#;
        let paths: Vec<String> = convert(doc).unwrap_err().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["storage.files[0].path"]);
        // Far more typos than the cap: the listing stops at the cap.
        let many: Vec<String> = (0..200).map(|i| format!("\"k{i}\":1")).collect();
        let doc = format!(r#"{{"ignition":{{"version":"3.4.0"}},{}}}"#, many.join(","));
        assert_eq!(convert(doc.as_bytes()).unwrap_err().len(), MAX_SHAPE_ERRORS);
    }

    #[test]
    fn gunzip_stops_at_the_limit() {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..=(MAX_FILE_BYTES >> 20) {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let err = gunzip(&bomb).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        let ok = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        assert_eq!(gunzip(&ok.finish().unwrap()).unwrap(), b"");
    }

    #[test]
    fn the_config_total_is_capped() {
        use base64::Engine as _;
        use std::io::Write as _;
        // Five files of 60 MiB of zeros each (gzip'd to a few KiB): the
        // fifth goes over the 256 MiB budget.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..60 {
            enc.write_all(&zeros).unwrap();
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap());
        let files: Vec<String> = (0..6)
            .map(|i| format!(r#"{{"path":"/f{i}","contents":{{"source":"data:;base64,{b64}","compression":"gzip"}}}}"#))
            .collect();
        let doc = format!(r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{}]}}}}"#, files.join(","));
        let problems = convert(doc.as_bytes()).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["storage.files[4].contents.source", "storage.files[5].contents.source"]);
        assert!(problems[0].message.contains("add up to more than"), "{}", problems[0]);
    }

    #[test]
    fn never_panics_on_odd_json() {
        for doc in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"ignition":{}}"#,
            r#"{"ignition":{"version":3}}"#,
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","mode":-1}]}}"#,
            r#"{"ignition":{"version":"3.4.0"},"storage":{"files":[{"path":"/a","mode":1e30}]}}"#,
            r#"{"ignition":{"version":"3.4.0"},"storage":{"links":[{"path":"/a","target":"/a","hard":true}]}}"#,
        ] {
            let _ = convert(doc.as_bytes());
        }
    }
}
