//! What a layer bundle says about itself: `.stateless/layer.toml`.
//!
//! A layer is an ordinary bundle. Its payload may hold a top-level
//! directory `.stateless/` that is never written into the root: it carries
//! the layer's rendered `model.toml` and this file, which names the layer
//! and, for a node's own layer, the groups the node belongs to (in stack
//! order) and, for any layer, the plugins it brings in. `statelessctl site
//! build` writes it; the loader reads it (docs/site.md, "Layer bundles").
//!
//! ```toml
//! kind = "node"              # default | group | node | plugin
//! name = "node42"            # absent for default
//! groups = ["rack7", "gpu"]  # node layers only
//! plugins = ["acme-agent"]   # any layer but a plugin
//! vendor = "acme"            # plugin layers only (with version)
//! version = "1.2.3"
//! ```
//!
//! A plugin's files live under `/opt/<vendor>/<name>/` only, and its model
//! may not set the hostname or edit files: it changes the system only
//! through entries an admin can read (users, groups, services, modules,
//! sysctl, ports). [`plugin_owns`] and [`check_plugin_model`] are those two
//! rules, shared by `site check` and the loader.

use serde::Deserialize;

use crate::Model;
use crate::names;
use crate::raw::LoadError;

/// The reserved payload directory of a layer bundle (no leading `/`).
pub const META_DIR: &str = ".stateless";
/// The layer's metadata, inside [`META_DIR`].
pub const LAYER_FILE: &str = ".stateless/layer.toml";
/// The layer's model, inside [`META_DIR`].
pub const MODEL_FILE: &str = ".stateless/model.toml";
/// Largest `layer.toml` or `model.toml` a reader accepts.
pub const MAX_META_LEN: u64 = 1 << 20;

/// Which place in the stack a layer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerKind {
    /// Applies to every node.
    Default,
    /// A vendor's plugin, brought in by another layer.
    Plugin,
    /// One group's layer.
    Group,
    /// One node's own layer.
    Node,
}

impl LayerKind {
    /// The word in `layer.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Default => "default",
            LayerKind::Plugin => "plugin",
            LayerKind::Group => "group",
            LayerKind::Node => "node",
        }
    }
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A layer's `layer.toml`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerMeta {
    /// The layer's kind.
    pub kind: LayerKind,
    /// Group, node or plugin name; `None` for the default layer.
    pub name: Option<String>,
    /// Node layers: the node's groups, in stack order (earliest first).
    pub groups: Vec<String>,
    /// Plugins this layer brings into the stack, in order.
    pub plugins: Vec<String>,
    /// Plugin layers: the vendor (the `/opt/<vendor>` directory).
    pub vendor: Option<String>,
    /// Plugin layers: the plugin's version.
    pub version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    kind: String,
    name: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    plugins: Vec<String>,
    vendor: Option<String>,
    version: Option<String>,
}

/// Scope names: 1 to 64 bytes of `[A-Za-z0-9._:-]`, not starting with a
/// dot (the rule of bundle scopes and server paths).
pub fn scope_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

impl LayerMeta {
    /// Parses and checks a `layer.toml`. `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<LayerMeta, LoadError> {
        let raw: RawLayer = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            LoadError::Syntax { file: file.to_owned(), line, column, message: e.message().replace('\n', " ") }
        })?;
        let bad = |why: String| LoadError::Syntax { file: file.to_owned(), line: 1, column: 1, message: why };
        let kind = match raw.kind.as_str() {
            "default" => LayerKind::Default,
            "plugin" => LayerKind::Plugin,
            "group" => LayerKind::Group,
            "node" => LayerKind::Node,
            other => return Err(bad(format!("kind {other:?} is not default, plugin, group or node"))),
        };
        match (&raw.name, kind) {
            (Some(_), LayerKind::Default) => return Err(bad("the default layer has no name".into())),
            (None, k) if k != LayerKind::Default => return Err(bad(format!("a {k} layer needs a name"))),
            (Some(n), _) if !scope_name(n) => {
                return Err(bad(format!("name {n:?} is not 1-64 of [A-Za-z0-9._:-] (not starting with .)")));
            }
            _ => {}
        }
        if kind != LayerKind::Node && !raw.groups.is_empty() {
            return Err(bad("only a node layer lists groups".into()));
        }
        if kind == LayerKind::Plugin && !raw.plugins.is_empty() {
            return Err(bad("a plugin layer cannot bring in plugins".into()));
        }
        for (what, list) in [("group", &raw.groups), ("plugin", &raw.plugins)] {
            for (i, n) in list.iter().enumerate() {
                if !scope_name(n) {
                    return Err(bad(format!("{what} {n:?} is not 1-64 of [A-Za-z0-9._:-] (not starting with .)")));
                }
                if list.iter().take(i).any(|m| m == n) {
                    return Err(bad(format!("{what} {n:?} is listed twice")));
                }
            }
        }
        match (kind, &raw.vendor, &raw.version) {
            (LayerKind::Plugin, Some(v), Some(ver)) => {
                if !names::plugin_token(v) || !names::plugin_token(ver) {
                    return Err(bad(format!("plugin vendor {v:?} or version {ver:?} is not 1-64 of [A-Za-z0-9._+~-]")));
                }
                if raw.name.as_deref().is_some_and(|n| !names::plugin_token(n)) {
                    return Err(bad("a plugin's name is 1-64 of [A-Za-z0-9._+~-]".into()));
                }
            }
            (LayerKind::Plugin, _, _) => return Err(bad("a plugin layer needs vendor and version".into())),
            (_, None, None) => {}
            (k, _, _) => return Err(bad(format!("a {k} layer has no vendor or version"))),
        }
        Ok(LayerMeta {
            kind,
            name: raw.name,
            groups: raw.groups,
            plugins: raw.plugins,
            vendor: raw.vendor,
            version: raw.version,
        })
    }

    /// The file's text, in the shape [`LayerMeta::parse`] reads. Every
    /// value passed the name rules, so no escaping is needed beyond quotes.
    pub fn to_toml(&self) -> String {
        let list = |l: &[String]| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let mut t = format!("kind = \"{}\"\n", self.kind);
        if let Some(n) = &self.name {
            t.push_str(&format!("name = {n:?}\n"));
        }
        if !self.groups.is_empty() {
            t.push_str(&format!("groups = [{}]\n", list(&self.groups)));
        }
        if !self.plugins.is_empty() {
            t.push_str(&format!("plugins = [{}]\n", list(&self.plugins)));
        }
        if let Some(v) = &self.vendor {
            t.push_str(&format!("vendor = {v:?}\n"));
        }
        if let Some(v) = &self.version {
            t.push_str(&format!("version = {v:?}\n"));
        }
        t
    }

    /// A plugin layer's root, `opt/<vendor>/<name>` (relative, no slash at
    /// either end); `None` for other kinds.
    pub fn plugin_root(&self) -> Option<String> {
        match (self.kind, &self.vendor, &self.name) {
            (LayerKind::Plugin, Some(v), Some(n)) => Some(format!("opt/{v}/{n}")),
            _ => None,
        }
    }
}

/// Whether a plugin may ship the entry at `path` (relative to the root, as
/// a tar entry names it; a leading `./` or `/` is ignored): the directories
/// leading to its root, its root, and what is below it. `..` and empty
/// components never pass.
pub fn plugin_owns(vendor: &str, name: &str, path: &str) -> bool {
    let path = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return false;
    }
    let root = ["opt", vendor, name];
    // "opt" and "opt/<vendor>" are the directories leading to the root;
    // every other entry must be at or below it.
    parts.iter().zip(root.iter()).all(|(a, b)| a == b)
}

/// Why a plugin's model is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "plugin {plugin}: its model may not set {what}; a plugin changes the system only through users, groups, services, modules, sysctl and ports"
)]
pub struct PluginModelError {
    /// The plugin.
    pub plugin: String,
    /// `hostname` or `edits`.
    pub what: &'static str,
}

/// The plugin rule for models: no hostname and no edits.
pub fn check_plugin_model(plugin: &str, m: &Model) -> Result<(), PluginModelError> {
    let what = if m.hostname().is_some() {
        "hostname"
    } else if !m.edits().is_empty() || !m.edit_formats().is_empty() {
        "edits"
    } else {
        return Ok(());
    };
    Err(PluginModelError { plugin: plugin.to_owned(), what })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let metas = [
            LayerMeta {
                kind: LayerKind::Default,
                name: None,
                groups: vec![],
                plugins: vec!["acme-agent".into()],
                vendor: None,
                version: None,
            },
            LayerMeta {
                kind: LayerKind::Group,
                name: Some("rack7".into()),
                groups: vec![],
                plugins: vec![],
                vendor: None,
                version: None,
            },
            LayerMeta {
                kind: LayerKind::Node,
                name: Some("node42".into()),
                groups: vec!["rack7".into(), "gpu".into()],
                plugins: vec![],
                vendor: None,
                version: None,
            },
            LayerMeta {
                kind: LayerKind::Plugin,
                name: Some("acme-agent".into()),
                groups: vec![],
                plugins: vec![],
                vendor: Some("acme".into()),
                version: Some("1.2.3".into()),
            },
        ];
        for m in metas {
            let text = m.to_toml();
            assert_eq!(LayerMeta::parse("layer.toml", &text).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn refuses_what_does_not_fit_the_kind() {
        for (text, want) in [
            ("kind = \"rack\"\n", "kind"),
            ("kind = \"default\"\nname = \"x\"\n", "no name"),
            ("kind = \"group\"\n", "needs a name"),
            ("kind = \"group\"\nname = \"g\"\ngroups = [\"a\"]\n", "only a node"),
            ("kind = \"node\"\nname = \"n\"\ngroups = [\"a\", \"a\"]\n", "twice"),
            ("kind = \"node\"\nname = \"n\"\ngroups = [\"../x\"]\n", "not 1-64"),
            ("kind = \"plugin\"\nname = \"p\"\n", "vendor and version"),
            ("kind = \"node\"\nname = \"n\"\nvendor = \"v\"\n", "no vendor"),
            ("kind = \"node\"\nname = \"n\"\nextra = 1\n", "unknown field"),
            ("kind = \"plugin\"\nname = \"p\"\nvendor = \"a/b\"\nversion = \"1\"\n", "vendor"),
        ] {
            let err = LayerMeta::parse("layer.toml", text).unwrap_err().to_string();
            assert!(err.starts_with("layer.toml:"), "{err}");
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn a_plugin_owns_only_its_root() {
        for ok in ["opt", "opt/", "./opt/acme", "opt/acme/agent", "opt/acme/agent/bin/x", "/opt/acme/agent/"] {
            assert!(plugin_owns("acme", "agent", ok), "{ok}");
        }
        for bad in [
            "etc/passwd",
            "opt/other",
            "opt/acme/other/x",
            "opt/acme/agent/../../../etc/shadow",
            "opt//acme/agent",
            "opt/acme/agentx",
            "",
            ".stateless/model.toml",
        ] {
            assert!(!plugin_owns("acme", "agent", bad), "{bad}");
        }
    }

    #[test]
    fn a_plugin_model_may_not_set_the_hostname_or_edit() {
        let ok = Model::load("m", "p", "[services]\nenable = [\"a.service\"]\n").unwrap();
        assert!(check_plugin_model("p", &ok).is_ok());
        let h = Model::load("m", "p", "hostname = \"x\"\n").unwrap();
        assert_eq!(check_plugin_model("p", &h).unwrap_err().what, "hostname");
        let e = Model::load("m", "p", "[[edits]]\nfile = \"/etc/x\"\nset = { A = \"b\" }\n").unwrap();
        assert_eq!(check_plugin_model("p", &e).unwrap_err().what, "edits");
    }
}
