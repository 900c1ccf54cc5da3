//! Reading a site tree: `site.toml`, the layer directories and their
//! `files/`, `model.toml`, `files.toml` and `plugin.toml`. Nothing is
//! rendered here; every problem found is collected, not only the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use stateless_model::layer::scope_name;
use toml::Spanned;

use crate::error::{Problem, line_of, syntax};

/// Which layer: the order is the publishing order (plugins, default,
/// groups, nodes), so that no node's stack is ever half published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LayerId {
    /// A plugin.
    Plugin(String),
    /// The default layer.
    Default,
    /// A group.
    Group(String),
    /// A node.
    Node(String),
}

impl LayerId {
    /// The name a model entry carries (`default`, `plugin:P`, `group:G`,
    /// `node:N`), as the loader names layers.
    pub fn label(&self) -> String {
        match self {
            LayerId::Plugin(p) => format!("plugin:{p}"),
            LayerId::Default => "default".to_owned(),
            LayerId::Group(g) => format!("group:{g}"),
            LayerId::Node(n) => format!("node:{n}"),
        }
    }

    /// The layer's directory below the site.
    pub fn dir(&self) -> String {
        match self {
            LayerId::Plugin(p) => format!("plugins/{p}"),
            LayerId::Default => "default".to_owned(),
            LayerId::Group(g) => format!("groups/{g}"),
            LayerId::Node(n) => format!("nodes/{n}"),
        }
    }

    /// The server's target for this layer.
    pub fn target(&self) -> stateless_server::Target {
        use stateless_server::Target;
        match self {
            LayerId::Plugin(p) => Target::Plugin(p.clone()),
            LayerId::Default => Target::Default,
            LayerId::Group(g) => Target::Group(g.clone()),
            LayerId::Node(n) => Target::Node(n.clone()),
        }
    }
}

impl std::fmt::Display for LayerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerId::Plugin(p) => write!(f, "plugin {p}"),
            LayerId::Default => f.write_str("default"),
            LayerId::Group(g) => write!(f, "group {g}"),
            LayerId::Node(n) => write!(f, "node {n}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    #[serde(default)]
    vars: toml::Table,
    #[serde(default)]
    defaults: Option<RawDefaults>,
    #[serde(default)]
    groups: BTreeMap<String, Spanned<RawGroup>>,
    #[serde(default)]
    nodes: BTreeMap<String, Spanned<RawNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    plugins: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    vars: toml::Table,
    groups: Option<Spanned<Vec<String>>>,
    plugins: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    groups: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    vars: toml::Table,
    plugins: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    vendor: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttr {
    mode: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// A list in site.toml and the line it is on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listed {
    pub names: Vec<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupDef {
    pub vars: toml::Table,
    pub parents: Listed,
    pub plugins: Listed,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeDef {
    pub line: usize,
    pub vars: toml::Table,
    pub groups: Listed,
    pub plugins: Listed,
}

#[derive(Debug, Clone)]
pub(crate) struct PluginDef {
    pub vendor: String,
    pub version: String,
}

/// What a source entry under `files/` is.
#[derive(Debug, Clone)]
pub(crate) enum SrcKind {
    Dir,
    File { exec: bool },
    Link(String),
}

/// One entry under a layer's `files/`.
#[derive(Debug, Clone)]
pub(crate) struct SrcEntry {
    /// The path in the root (a template's without `.tmpl`).
    pub out: String,
    /// The file, relative to the site (for messages).
    pub shown: String,
    pub src: PathBuf,
    pub kind: SrcKind,
    pub template: bool,
}

/// Owner and mode from `files.toml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Attr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A layer directory as found.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerSrc {
    pub entries: Vec<SrcEntry>,
    /// `model.toml`: (file relative to the site, text).
    pub model: Option<(String, String)>,
    pub attrs: BTreeMap<String, Attr>,
}

/// A site tree, read but not rendered.
#[derive(Debug, Clone)]
pub struct Site {
    pub(crate) root: PathBuf,
    pub(crate) vars: toml::Table,
    pub(crate) default_plugins: Listed,
    pub(crate) groups: BTreeMap<String, GroupDef>,
    pub(crate) nodes: BTreeMap<String, NodeDef>,
    pub(crate) plugins: BTreeMap<String, PluginDef>,
    pub(crate) layers: BTreeMap<LayerId, LayerSrc>,
    /// `node`, `groups`, and every variable a group or node defines.
    pub(crate) per_node: BTreeSet<String>,
}

const SITE: &str = "site.toml";

fn rule(file: &str, line: usize, message: String) -> Problem {
    Problem::Rule { file: file.to_owned(), line, message }
}

fn listed(l: Option<Spanned<Vec<String>>>, text: &str, default_line: usize) -> Listed {
    match l {
        Some(s) => Listed { line: line_of(text, s.span().start), names: s.into_inner() },
        None => Listed { names: Vec::new(), line: default_line },
    }
}

impl Site {
    /// Reads the site tree at `root`. Returns every problem found.
    pub fn load(root: &Path) -> Result<Site, Vec<Problem>> {
        let mut problems = Vec::new();
        let path = root.join(SITE);
        let text = fs::read_to_string(&path).map_err(|source| vec![Problem::Io { file: path.clone(), source }])?;
        let raw: RawSite = toml::from_str(&text).map_err(|e| vec![syntax(SITE, &text, &e)])?;

        let mut site = Site {
            root: root.to_owned(),
            vars: raw.vars,
            default_plugins: listed(raw.defaults.and_then(|d| d.plugins), &text, 1),
            groups: BTreeMap::new(),
            nodes: BTreeMap::new(),
            plugins: BTreeMap::new(),
            layers: BTreeMap::new(),
            per_node: ["node", "groups"].into_iter().map(String::from).collect(),
        };
        check_vars(&site.vars, SITE, 1, &mut problems);
        for (name, g) in raw.groups {
            let line = line_of(&text, g.span().start);
            if !scope_name(&name) {
                problems.push(rule(
                    SITE,
                    line,
                    format!("group {name:?}: a name is 1-64 of [A-Za-z0-9._:-], not starting with '.'"),
                ));
            }
            let g = g.into_inner();
            check_vars(&g.vars, SITE, line, &mut problems);
            site.per_node.extend(g.vars.keys().cloned());
            let def = GroupDef {
                vars: g.vars,
                parents: listed(g.groups, &text, line),
                plugins: listed(g.plugins, &text, line),
            };
            site.groups.insert(name, def);
        }
        for (name, n) in raw.nodes {
            let line = line_of(&text, n.span().start);
            if !scope_name(&name) {
                problems.push(rule(
                    SITE,
                    line,
                    format!("node {name:?}: an id is 1-64 of [A-Za-z0-9._:-], not starting with '.'"),
                ));
            }
            let n = n.into_inner();
            check_vars(&n.vars, SITE, line, &mut problems);
            site.per_node.extend(n.vars.keys().cloned());
            let def = NodeDef {
                line,
                vars: n.vars,
                groups: listed(n.groups, &text, line),
                plugins: listed(n.plugins, &text, line),
            };
            site.nodes.insert(name, def);
        }

        site.read_layers(&mut problems);
        site.check_references(&mut problems);
        if problems.is_empty() { Ok(site) } else { Err(problems) }
    }

    /// Finds every layer directory and reads it; a directory site.toml
    /// does not declare is a problem.
    fn read_layers(&mut self, problems: &mut Vec<Problem>) {
        let root = self.root.clone();
        // A typo such as `group/` would otherwise be ignored quietly.
        if let Ok(rd) = fs::read_dir(&root) {
            let mut odd: Vec<String> = rd
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && !["default", "groups", "nodes", "plugins"].contains(&n.as_str()))
                .collect();
            odd.sort();
            for n in odd {
                problems.push(rule(
                    &n,
                    1,
                    "unknown directory: a site holds default/, groups/, nodes/ and plugins/".into(),
                ));
            }
        }
        if root.join("default").is_dir() {
            self.read_layer(LayerId::Default, problems);
        }
        for (kind, dir) in [("group", "groups"), ("node", "nodes"), ("plugin", "plugins")] {
            let Ok(rd) = fs::read_dir(root.join(dir)) else { continue };
            let mut names: Vec<String> =
                rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for name in names {
                let id = match kind {
                    "group" => LayerId::Group(name.clone()),
                    "node" => LayerId::Node(name.clone()),
                    _ => LayerId::Plugin(name.clone()),
                };
                let declared = match kind {
                    "group" => self.groups.contains_key(&name),
                    "node" => self.nodes.contains_key(&name),
                    _ => true,
                };
                if !declared {
                    problems.push(rule(
                        &format!("{dir}/{name}"),
                        1,
                        format!("no [{dir}.{name}] in site.toml for this {kind} directory"),
                    ));
                    continue;
                }
                if kind == "plugin" {
                    self.read_plugin(&name, problems);
                }
                self.read_layer(id, problems);
            }
        }
    }

    fn read_plugin(&mut self, name: &str, problems: &mut Vec<Problem>) {
        let file = format!("plugins/{name}/plugin.toml");
        let path = self.root.join(&file);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(source) => return problems.push(Problem::Io { file: path, source }),
        };
        let raw: RawPlugin = match toml::from_str(&text) {
            Ok(r) => r,
            Err(e) => return problems.push(syntax(&file, &text, &e)),
        };
        if raw.name != name {
            problems.push(rule(&file, 1, format!("name {:?} is not the directory's name {name:?}", raw.name)));
        }
        // The loader's rules for a plugin layer's layer.toml.
        let meta = stateless_model::layer::LayerMeta {
            kind: stateless_model::layer::LayerKind::Plugin,
            name: Some(raw.name.clone()),
            groups: vec![],
            plugins: vec![],
            vendor: Some(raw.vendor.clone()),
            version: Some(raw.version.clone()),
        };
        if let Err(e) = stateless_model::layer::LayerMeta::parse(&file, &meta.to_toml()) {
            let msg = e.to_string();
            let msg = msg.splitn(4, ':').nth(3).unwrap_or(&msg).trim().to_owned();
            problems.push(rule(&file, 1, msg));
        }
        self.plugins.insert(name.to_owned(), PluginDef { vendor: raw.vendor, version: raw.version });
    }

    fn read_layer(&mut self, id: LayerId, problems: &mut Vec<Problem>) {
        let rel = id.dir();
        let dir = self.root.join(&rel);
        let mut layer = LayerSrc::default();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(source) => return problems.push(Problem::Io { file: dir, source }),
        };
        let mut names: Vec<String> =
            rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names {
            match n.as_str() {
                "files" => walk(&dir.join("files"), &format!("{rel}/files"), "", &mut layer.entries, problems),
                "model.toml" => match fs::read_to_string(dir.join(&n)) {
                    Ok(t) => layer.model = Some((format!("{rel}/model.toml"), t)),
                    Err(source) => problems.push(Problem::Io { file: dir.join(&n), source }),
                },
                "files.toml" => layer.attrs = read_attrs(&dir.join(&n), &format!("{rel}/files.toml"), &layer, problems),
                "plugin.toml" if matches!(id, LayerId::Plugin(_)) => {}
                other => problems.push(rule(
                    &format!("{rel}/{other}"),
                    1,
                    "unexpected entry: a layer holds files/, model.toml, files.toml (and a plugin plugin.toml)".into(),
                )),
            }
        }
        for e in layer.entries.iter().filter(|e| e.out == ".stateless" || e.out.starts_with(".stateless/")) {
            problems.push(rule(&e.shown, 1, "files/.stateless is reserved for the layer's own metadata".into()));
        }
        // files.toml may come before files/ in name order: check its keys now.
        let outs: BTreeSet<&str> = layer.entries.iter().map(|e| e.out.as_str()).collect();
        let mut seen = BTreeSet::new();
        for e in &layer.entries {
            if !seen.insert(e.out.as_str()) {
                problems.push(rule(&e.shown, 1, format!("{} is given twice (a file and its .tmpl)", e.out)));
            }
        }
        if let Ok(text) = fs::read_to_string(dir.join("files.toml")) {
            for key in layer.attrs.keys() {
                if !outs.contains(key.as_str()) {
                    let line = text.find(key.as_str()).map_or(1, |o| line_of(&text, o));
                    problems.push(rule(&format!("{rel}/files.toml"), line, format!("{key}: no such entry in files/")));
                }
            }
        }
        self.layers.insert(id, layer);
    }

    /// Unknown groups and plugins, group cycles.
    fn check_references(&self, problems: &mut Vec<Problem>) {
        for (name, g) in &self.groups {
            for p in &g.parents.names {
                if !self.groups.contains_key(p) {
                    problems.push(rule(SITE, g.parents.line, format!("group {name}: unknown group {p:?}")));
                }
            }
            self.check_plugins(&g.plugins, &format!("group {name}"), problems);
            let mut out = Vec::new();
            if let Err(p) = self.expand_group(name, &mut Vec::new(), &mut out) {
                problems.push(p);
            }
        }
        self.check_plugins(&self.default_plugins, "defaults", problems);
        for (name, n) in &self.nodes {
            for g in &n.groups.names {
                if !self.groups.contains_key(g) {
                    problems.push(rule(SITE, n.groups.line, format!("node {name}: unknown group {g:?}")));
                }
            }
            self.check_plugins(&n.plugins, &format!("node {name}"), problems);
        }
    }

    fn check_plugins(&self, l: &Listed, who: &str, problems: &mut Vec<Problem>) {
        for p in &l.names {
            if !self.plugins.contains_key(p) {
                problems.push(rule(SITE, l.line, format!("{who}: unknown plugin {p:?} (no plugins/{p}/plugin.toml)")));
            }
        }
    }

    /// Appends `name`'s parents (expanded, earliest first) and then `name`
    /// to `out`, skipping any already there. `path` is the chain being
    /// expanded: meeting a group on it again is a cycle.
    fn expand_group(&self, name: &str, path: &mut Vec<String>, out: &mut Vec<String>) -> Result<(), Problem> {
        if path.iter().any(|p| p == name) {
            let line = self.groups.get(name).map_or(1, |g| g.parents.line);
            let mut chain = path.clone();
            chain.push(name.to_owned());
            let from = chain.iter().position(|p| p == name).unwrap_or(0);
            let cycle = chain.get(from..).unwrap_or_default().join(" -> ");
            return Err(rule(SITE, line, format!("group cycle: {cycle}")));
        }
        let Some(g) = self.groups.get(name) else { return Ok(()) };
        path.push(name.to_owned());
        for p in &g.parents.names {
            self.expand_group(p, path, out)?;
        }
        path.pop();
        if !out.iter().any(|o| o == name) {
            out.push(name.to_owned());
        }
        Ok(())
    }

    /// A node's groups in stack order: each listed group after its parents,
    /// each group once.
    pub(crate) fn node_groups(&self, node: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.nodes.get(node) {
            for g in &n.groups.names {
                // A cycle was reported by `load`; expansion stops at it.
                let _ = self.expand_group(g, &mut Vec::new(), &mut out);
            }
        }
        out
    }

    /// A node's plugins in order of first mention: the defaults', each of
    /// its groups' (in stack order), its own.
    pub(crate) fn node_plugins(&self, node: &str, groups: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let lists = std::iter::once(&self.default_plugins)
            .chain(groups.iter().filter_map(|g| self.groups.get(g)).map(|g| &g.plugins))
            .chain(self.nodes.get(node).map(|n| &n.plugins));
        for l in lists {
            for p in &l.names {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }
}

/// Variable names: identifiers, and not the two the build provides.
fn check_vars(vars: &toml::Table, file: &str, line: usize, problems: &mut Vec<Problem>) {
    for k in vars.keys() {
        let ident = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            problems.push(rule(file, line, format!("variable {k:?} is not a name ([A-Za-z_][A-Za-z0-9_]*)")));
        } else if k == "node" || k == "groups" {
            problems.push(rule(file, line, format!("variable {k:?} is reserved: the build sets it per node")));
        }
    }
}

/// Reads `files/` into `out`, sorted, each path relative to `files/`.
fn walk(dir: &Path, shown: &str, prefix: &str, out: &mut Vec<SrcEntry>, problems: &mut Vec<Problem>) {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(source) => return problems.push(Problem::Io { file: dir.to_owned(), source }),
    };
    let mut names: Vec<std::ffi::OsString> = rd.filter_map(Result::ok).map(|e| e.file_name()).collect();
    names.sort();
    for os in names {
        let Some(name) = os.to_str().map(str::to_owned) else {
            problems.push(rule(shown, 1, format!("{}: file names must be UTF-8", os.to_string_lossy())));
            continue;
        };
        let src = dir.join(&name);
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let shown_path = format!("{shown}/{name}");
        let meta = match fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(source) => {
                problems.push(Problem::Io { file: src, source });
                continue;
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(SrcEntry {
                out: rel.clone(),
                shown: shown_path.clone(),
                src: src.clone(),
                kind: SrcKind::Dir,
                template: false,
            });
            walk(&src, &shown_path, &rel, out, problems);
        } else if ft.is_symlink() {
            match fs::read_link(&src) {
                Ok(t) => out.push(SrcEntry {
                    out: rel,
                    shown: shown_path,
                    src,
                    kind: SrcKind::Link(t.to_string_lossy().into_owned()),
                    template: false,
                }),
                Err(source) => problems.push(Problem::Io { file: src, source }),
            }
        } else if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            let (out_name, template) = match rel.strip_suffix(".tmpl") {
                Some(o) if !o.is_empty() && !o.ends_with('/') => (o.to_owned(), true),
                _ => (rel, false),
            };
            out.push(SrcEntry { out: out_name, shown: shown_path, src, kind: SrcKind::File { exec }, template });
        } else {
            problems.push(rule(&shown_path, 1, "only files, directories and symlinks can be in files/".into()));
        }
    }
}

fn read_attrs(path: &Path, file: &str, _layer: &LayerSrc, problems: &mut Vec<Problem>) -> BTreeMap<String, Attr> {
    let mut out = BTreeMap::new();
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(source) => {
            problems.push(Problem::Io { file: path.to_owned(), source });
            return out;
        }
    };
    let raw: BTreeMap<String, Spanned<RawAttr>> = match toml::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            problems.push(syntax(file, &text, &e));
            return out;
        }
    };
    for (key, a) in raw {
        let line = line_of(&text, a.span().start);
        let a = a.into_inner();
        let mode = match a.mode.as_deref().map(|m| u32::from_str_radix(m, 8)) {
            None => None,
            Some(Ok(m)) if m <= 0o7777 => Some(m),
            Some(_) => {
                problems.push(rule(
                    file,
                    line,
                    format!("{key}: mode is an octal string up to \"7777\", e.g. \"0600\""),
                ));
                None
            }
        };
        let key = key.trim_start_matches('/').to_owned();
        out.insert(key, Attr { mode, uid: a.uid, gid: a.gid });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(toml: &str) -> Result<Site, Vec<Problem>> {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("site.toml"), toml).unwrap();
        Site::load(d.path())
    }

    #[test]
    fn groups_expand_parents_first_once_each() {
        let s = site(
            r#"
[groups.base]
[groups.net]
groups = ["base"]
[groups.rack7]
groups = ["net", "base"]
[groups.gpu]
groups = ["base"]
[nodes.n1]
groups = ["rack7", "gpu"]
[nodes.n2]
"#,
        )
        .unwrap();
        assert_eq!(s.node_groups("n1"), ["base", "net", "rack7", "gpu"]);
        assert!(s.node_groups("n2").is_empty());
    }

    #[test]
    fn plugins_in_order_of_first_mention() {
        let d = tempfile::tempdir().unwrap();
        for p in ["a", "b", "c"] {
            let dir = d.path().join("plugins").join(p);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("plugin.toml"), format!("name = \"{p}\"\nvendor = \"v\"\nversion = \"1\"\n")).unwrap();
        }
        let toml = "[defaults]\nplugins = [\"b\"]\n[groups.g]\nplugins = [\"c\", \"b\"]\n[nodes.n]\ngroups = [\"g\"]\nplugins = [\"a\", \"c\"]\n";
        fs::write(d.path().join("site.toml"), toml).unwrap();
        let s = Site::load(d.path()).unwrap();
        let groups = s.node_groups("n");
        assert_eq!(s.node_plugins("n", &groups), ["b", "c", "a"]);
    }

    #[test]
    fn refusals_name_the_line() {
        for (toml, want) in [
            ("[groups.a]\ngroups = [\"b\"]\n[groups.b]\ngroups = [\"a\"]\n", "site.toml:2: group cycle: a -> b -> a"),
            ("[groups.a]\ngroups = [\"a\"]\n", "site.toml:2: group cycle: a -> a"),
            ("[nodes.n]\n\ngroups = [\"x\"]\n", "site.toml:3: node n: unknown group \"x\""),
            ("[groups.a]\ngroups = [\"x\"]\n", "site.toml:2: group a: unknown group \"x\""),
            ("[nodes.n]\nplugins = [\"p\"]\n", "site.toml:2: node n: unknown plugin \"p\""),
            ("[vars]\nx = 1\n[vars]\n", "site.toml:3:"),
            ("[vars]\n\"a-b\" = 1\n", "site.toml:1: variable \"a-b\" is not a name"),
            ("[nodes.\"../x\"]\n", "site.toml:1: node \"../x\""),
            ("[nodes.n]\ngroup = [\"x\"]\n", "site.toml:2: unknown field `group`"),
        ] {
            let problems = site(toml).unwrap_err();
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert!(lines.iter().any(|l| l.starts_with(want)), "{toml}: want {want:?} in {lines:?}");
        }
    }
}
