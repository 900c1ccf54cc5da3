//! The data directory: public bundles laid out exactly as the protocol's URL
//! paths, and the server's private state beside them.
//!
//! ```text
//! DIR/v1/nodes/{node}/bundle      served (GET/HEAD, and PUT for node push)
//! DIR/v1/groups/{group}/bundle    served
//! DIR/v1/default/bundle           served
//! DIR/state/                      private (mode 0700), never served
//! ```
//!
//! A plain web server pointed at `DIR` with only `/v1/` exposed serves the
//! same bundles; `state/` holds node records, the audit log, the publish
//! history and pushed bundles awaiting review.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use stateless_bundle::Scope;

/// Checks a node id or group name with the bundle format's scope-name rules
/// (1 to 64 bytes of `[A-Za-z0-9._:-]`, not starting with a dot), which make
/// every valid name a safe single path component.
pub fn check_name(name: &str) -> Result<(), NameError> {
    stateless_bundle::header::validate_name(name.as_bytes()).map_err(|e| NameError(name.escape_debug().to_string(), e))
}

/// A node id or group name that is not allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid name {0:?}")]
pub struct NameError(String, #[source] stateless_bundle::HeaderError);

/// Which bundle a path names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `/v1/nodes/{node}/bundle`
    Node(String),
    /// `/v1/groups/{group}/bundle`
    Group(String),
    /// `/v1/default/bundle`
    Default,
    /// `/v1/plugins/{plugin}/bundle`
    Plugin(String),
}

impl Target {
    /// A node target with a checked name.
    pub fn node(name: &str) -> Result<Target, NameError> {
        check_name(name)?;
        Ok(Target::Node(name.to_owned()))
    }

    /// A group target with a checked name.
    pub fn group(name: &str) -> Result<Target, NameError> {
        check_name(name)?;
        Ok(Target::Group(name.to_owned()))
    }

    /// A plugin target with a checked name.
    pub fn plugin(name: &str) -> Result<Target, NameError> {
        check_name(name)?;
        Ok(Target::Plugin(name.to_owned()))
    }

    /// Parses a request path (without query). Anything but the four
    /// protocol paths with valid names is `None`.
    pub fn from_url_path(path: &str) -> Option<Target> {
        let rest = path.strip_prefix("/v1/")?;
        if rest == "default/bundle" {
            return Some(Target::Default);
        }
        let (kind, rest) = rest.split_once('/')?;
        let name = rest.strip_suffix("/bundle")?;
        match kind {
            "nodes" => Target::node(name).ok(),
            "groups" => Target::group(name).ok(),
            "plugins" => Target::plugin(name).ok(),
            _ => None,
        }
    }

    /// The path below the data directory (and below a server's base URL).
    pub fn rel_path(&self) -> String {
        match self {
            Target::Node(n) => format!("v1/nodes/{n}/bundle"),
            Target::Group(g) => format!("v1/groups/{g}/bundle"),
            Target::Default => "v1/default/bundle".to_owned(),
            Target::Plugin(p) => format!("v1/plugins/{p}/bundle"),
        }
    }

    /// Whether a bundle of this scope may be published here: `any`
    /// everywhere but a plugin's path, `node:X`, `group:X` and `plugin:X`
    /// only at their own path (a loader would refuse them anywhere else).
    /// A plugin's path takes only its own scope, so that no site-wide
    /// bundle can be applied as a plugin's layer.
    pub fn accepts(&self, scope: &Scope) -> bool {
        match (self, scope) {
            (Target::Plugin(a), Scope::Plugin(b)) => a == b,
            (Target::Plugin(_), _) => false,
            (_, Scope::Any) => true,
            (Target::Node(a), Scope::Node(b)) | (Target::Group(a), Scope::Group(b)) => a == b,
            _ => false,
        }
    }

    fn history_rel(&self) -> PathBuf {
        match self {
            Target::Node(n) => Path::new("nodes").join(n),
            Target::Group(g) => Path::new("groups").join(g),
            Target::Default => PathBuf::from("default"),
            Target::Plugin(p) => Path::new("plugins").join(p),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(n) => write!(f, "node {n}"),
            Target::Group(g) => write!(f, "group {g}"),
            Target::Default => f.write_str("default"),
            Target::Plugin(p) => write!(f, "plugin {p}"),
        }
    }
}

/// The data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating what is missing) the data directory at `root`.
    pub fn open(root: &Path) -> io::Result<DataDir> {
        let data = DataDir { root: root.to_owned() };
        fs::create_dir_all(root.join("v1/nodes"))?;
        fs::create_dir_all(root.join("v1/groups"))?;
        fs::create_dir_all(root.join("v1/default"))?;
        let state = data.state();
        if !state.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&state)?;
        }
        // The state holds node records and pushed bundles: keep a web
        // server running as another user out even if it is misconfigured.
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700))?;
        for d in ["nodes", "rejected", "pushes", "history", "spool"] {
            fs::create_dir_all(state.join(d))?;
        }
        Ok(data)
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a target's bundle is.
    pub fn bundle(&self, target: &Target) -> PathBuf {
        self.root.join(target.rel_path())
    }

    /// Opens a target's bundle for serving without following a symbolic
    /// link anywhere below the data directory (each component is opened
    /// `O_NOFOLLOW` relative to the one before, so a link in `v1/`, in a
    /// node's directory or in place of the bundle is refused with `ELOOP`),
    /// and without blocking (`O_NONBLOCK`, so a FIFO does not wait for a
    /// writer). Anything but a regular file is [`io::ErrorKind::NotFound`].
    /// The data directory itself may be reached through a link.
    pub fn open_bundle(&self, target: &Target) -> io::Result<fs::File> {
        self.open_public(&target.rel_path())
    }

    /// Opens a served file at `rel` (a path below the data directory made
    /// of checked names) as [`DataDir::open_bundle`] does.
    pub fn open_public(&self, rel: &str) -> io::Result<fs::File> {
        self.open_public_stat(rel).map(|(f, _)| f)
    }

    /// [`DataDir::open_public`], with the file's status.
    pub fn open_public_stat(&self, rel: &str) -> io::Result<(fs::File, rustix::fs::Stat)> {
        use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat, openat2};
        let mut dir = openat(CWD, &self.root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        // One openat2 that refuses any link on the way (RESOLVE_NO_SYMLINKS,
        // ELOOP as below) does the walk in one system call: this is the hot
        // path of the 304 storm. Kernels before 5.6 (ENOSYS) or a seccomp
        // filter that refuses it (EPERM) get the walk one component at a time.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match openat2(&dir, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => return regular(fs::File::from(fd)),
            Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {}
            Err(e) => return Err(e.into()),
        }
        let mut parts = rel.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_some() {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                dir = openat(&dir, part, flags, Mode::empty())?;
            } else {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                return regular(fs::File::from(openat(&dir, part, flags, Mode::empty())?));
            }
        }
        Err(io::ErrorKind::NotFound.into())
    }

    /// The private state directory.
    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Earlier bundles of a target, `{generation:020}.bundle`.
    pub fn history(&self, target: &Target) -> PathBuf {
        self.state().join("history").join(target.history_rel())
    }

    /// A known (approved) node's record.
    pub fn node_record(&self, node: &str) -> PathBuf {
        self.state().join("nodes").join(format!("{node}.json"))
    }

    /// The marker of a rejected node.
    pub fn rejected(&self, node: &str) -> PathBuf {
        self.state().join("rejected").join(format!("{node}.json"))
    }

    /// Bundles a node pushed, awaiting review.
    pub fn pushes(&self, node: &str) -> PathBuf {
        self.state().join("pushes").join(node)
    }

    /// Every node that asked for its bundle: first and last seen, address.
    pub fn seen(&self) -> PathBuf {
        self.state().join("seen.json")
    }

    /// The append-only audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.state().join("audit.log")
    }

    /// Where uploads are received before they are checked.
    pub fn spool(&self) -> PathBuf {
        self.state().join("spool")
    }

    /// The lock file that serialises publications.
    pub fn lock_file(&self) -> PathBuf {
        self.state().join("lock")
    }
}

/// A file opened for serving, with its status; anything but a regular
/// file is not found.
fn regular(file: fs::File) -> io::Result<(fs::File, rustix::fs::Stat)> {
    let st = rustix::fs::fstat(&file)?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "not a regular file"));
    }
    Ok((file, st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_public_refuses_links_anywhere_below_the_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("n")).unwrap();
        fs::write(outside.join("bundle"), b"x").unwrap();
        fs::write(outside.join("n/bundle"), b"x").unwrap();
        // The data directory itself may be reached through a link.
        let real = tmp.path().join("real");
        fs::create_dir_all(real.join("v1/nodes/ok")).unwrap();
        fs::write(real.join("v1/nodes/ok/bundle"), b"bundle").unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("data")).unwrap();
        let data = DataDir::open(&tmp.path().join("data")).unwrap();
        let mut f = data.open_public("v1/nodes/ok/bundle").unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut f, &mut got).unwrap();
        assert_eq!(got, "bundle");
        // A link in place of the file, of a node's directory, of v1/nodes.
        fs::create_dir_all(real.join("v1/nodes/l1")).unwrap();
        std::os::unix::fs::symlink(outside.join("bundle"), real.join("v1/nodes/l1/bundle")).unwrap();
        std::os::unix::fs::symlink(outside.join("n"), real.join("v1/nodes/l2")).unwrap();
        for rel in ["v1/nodes/l1/bundle", "v1/nodes/l2/bundle"] {
            let e = data.open_public(rel).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(rustix::io::Errno::LOOP.raw_os_error()), "{rel}: {e}");
        }
        // Missing, a directory, a file used as a directory.
        assert_eq!(data.open_public("v1/nodes/none/bundle").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(data.open_public("v1/nodes/ok").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(data.open_public("v1/nodes/ok/bundle/x").unwrap_err().kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn url_paths() {
        assert_eq!(Target::from_url_path("/v1/nodes/node42/bundle"), Some(Target::Node("node42".into())));
        assert_eq!(
            Target::from_url_path("/v1/nodes/aa:bb:cc:dd:ee:ff/bundle"),
            Some(Target::Node("aa:bb:cc:dd:ee:ff".into()))
        );
        assert_eq!(Target::from_url_path("/v1/groups/rack7/bundle"), Some(Target::Group("rack7".into())));
        assert_eq!(Target::from_url_path("/v1/default/bundle"), Some(Target::Default));
        assert_eq!(Target::from_url_path("/v1/plugins/acme-agent/bundle"), Some(Target::Plugin("acme-agent".into())));
        assert_eq!(Target::Plugin("acme-agent".into()).rel_path(), "v1/plugins/acme-agent/bundle");
        for bad in [
            "/v1/nodes/../bundle",
            "/v1/nodes/./bundle",
            "/v1/nodes/.hidden/bundle",
            "/v1/nodes/a/b/bundle",
            "/v1/nodes//bundle",
            "/v1/nodes/a%2Fb/bundle",
            "/v1/nodes/node42/bundle/",
            "/v1/nodes/node42",
            "/v1/default/bundle/x",
            "/v1/other/x/bundle",
            "/state/seen.json",
            "/v1/nodes/ünïcode/bundle",
        ] {
            assert_eq!(Target::from_url_path(bad), None, "{bad}");
        }
        let long = format!("/v1/nodes/{}/bundle", "a".repeat(65));
        assert_eq!(Target::from_url_path(&long), None);
    }

    #[test]
    fn plugin_paths_take_only_their_own_plugin_scope() {
        let p = Target::Plugin("acme".into());
        assert!(p.accepts(&Scope::Plugin("acme".into())));
        assert!(!p.accepts(&Scope::Plugin("other".into())));
        assert!(!p.accepts(&Scope::Any));
        assert!(!p.accepts(&Scope::Group("acme".into())));
        assert!(!Target::Default.accepts(&Scope::Plugin("acme".into())));
        assert!(!Target::Node("acme".into()).accepts(&Scope::Plugin("acme".into())));
    }

    #[test]
    fn scopes() {
        let n = Target::Node("n1".into());
        assert!(n.accepts(&Scope::Any));
        assert!(n.accepts(&Scope::Node("n1".into())));
        assert!(!n.accepts(&Scope::Node("n2".into())));
        assert!(!n.accepts(&Scope::Group("n1".into())));
        assert!(!Target::Default.accepts(&Scope::Node("n1".into())));
        assert!(Target::Group("g".into()).accepts(&Scope::Group("g".into())));
    }
}
