//! Rendering a site into layers: what each bundle will hold.
//!
//! A template (`*.tmpl` under `files/`, and every `model.toml`) whose
//! undeclared variables include a per-node name (`node`, `groups`, or a
//! variable any group or node defines) is rendered once per node and goes
//! into that node's layer; any other template is rendered once, with the
//! site's variables, into its own layer. Undefined variables are errors
//! (minijinja's strict mode).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use minijinja::{Environment, UndefinedBehavior};
use stateless_model::Model;
use stateless_model::layer::{LayerKind, LayerMeta, check_plugin_model, plugin_owns};

use crate::error::Problem;
use crate::tree::{Attr, LayerId, LayerSrc, Site, SrcEntry, SrcKind};

/// What an entry of a layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutKind {
    /// A directory.
    Dir,
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A symbolic link and its target.
    Link(String),
}

/// One entry of a layer's tree, with the owner and mode it is packed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutEntry {
    /// What it is.
    pub kind: OutKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// One layer, rendered: exactly what its bundle holds.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Which layer.
    pub id: LayerId,
    /// Its `.stateless/layer.toml`.
    pub meta: LayerMeta,
    /// Its files, by path in the root (no `.stateless/`).
    pub files: BTreeMap<String, OutEntry>,
    /// Its rendered model, if it has one.
    pub model: Option<String>,
}

impl Layer {
    /// The whole payload tree: the files, the directories leading to them,
    /// and `.stateless/layer.toml` and `model.toml`.
    pub fn tree(&self) -> BTreeMap<String, OutEntry> {
        let mut t = self.files.clone();
        let meta = |text: &str| OutEntry { kind: OutKind::File(text.as_bytes().to_vec()), mode: 0o644, uid: 0, gid: 0 };
        t.insert(stateless_model::layer::LAYER_FILE.to_owned(), meta(&self.meta.to_toml()));
        if let Some(m) = &self.model {
            t.insert(stateless_model::layer::MODEL_FILE.to_owned(), meta(m));
        }
        let paths: Vec<String> = t.keys().cloned().collect();
        for p in paths {
            let mut dir = p.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                t.entry(parent.to_owned()).or_insert(OutEntry { kind: OutKind::Dir, mode: 0o755, uid: 0, gid: 0 });
                dir = parent;
            }
        }
        t
    }
}

/// A site, rendered: every layer and every node's stack.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Every layer, in publishing order.
    pub layers: BTreeMap<LayerId, Layer>,
    /// Each node's stack, earliest first.
    pub stacks: BTreeMap<String, Vec<LayerId>>,
}

/// A template, prepared: its source and whether it is per node.
struct Tmpl<'a> {
    entry: Option<&'a SrcEntry>,
    file: String,
    text: String,
    per_node: bool,
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

fn template_problem(
    file: &str,
    e: &minijinja::Error,
    ctx: &toml::Table,
    undeclared: &BTreeSet<String>,
    node: Option<&str>,
) -> Problem {
    let mut message = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        let missing: Vec<&str> = undeclared.iter().filter(|v| !ctx.contains_key(*v)).map(String::as_str).collect();
        if !missing.is_empty() {
            message = format!("undefined variable {}", missing.join(", "));
        }
    }
    if let Some(n) = node {
        message.push_str(&format!(" (rendering for node {n})"));
    }
    Problem::Template { file: file.to_owned(), line: e.line().unwrap_or(1), message }
}

impl Compiled {
    /// Renders and checks the whole site: every template for every node
    /// that uses it, every layer's model, every node's merged stack, the
    /// plugin rules. Returns every problem found.
    pub fn new(site: &Site) -> Result<Compiled, Vec<Problem>> {
        let mut problems = Vec::new();
        let env = env();
        let site_ctx = site.vars.clone();

        // Prepare every template: compile, find its variables.
        let mut prepared: BTreeMap<LayerId, (Vec<Tmpl<'_>>, Option<Tmpl<'_>>)> = BTreeMap::new();
        for (id, src) in &site.layers {
            let mut tmpls = Vec::new();
            for e in src.entries.iter().filter(|e| e.template) {
                match fs::read_to_string(&e.src) {
                    Ok(text) => {
                        if let Some(t) = prepare(&env, site, id, Some(e), e.shown.clone(), text, &mut problems) {
                            tmpls.push(t);
                        }
                    }
                    Err(source) => problems.push(Problem::Io { file: e.src.clone(), source }),
                }
            }
            let model = src
                .model
                .as_ref()
                .and_then(|(file, text)| prepare(&env, site, id, None, file.clone(), text.clone(), &mut problems));
            prepared.insert(id.clone(), (tmpls, model));
        }

        // Shared layers: plugins, default, groups.
        let mut layers: BTreeMap<LayerId, Layer> = BTreeMap::new();
        let mut per_node_files: BTreeMap<LayerId, Vec<&Tmpl<'_>>> = BTreeMap::new();
        let mut per_node_models: BTreeMap<LayerId, &Tmpl<'_>> = BTreeMap::new();
        let shared = site.layers.keys().filter(|id| !matches!(id, LayerId::Node(_))).cloned();
        let mut wanted: BTreeSet<LayerId> = shared.collect();
        if !site.default_plugins.names.is_empty() {
            wanted.insert(LayerId::Default);
        }
        for (g, def) in &site.groups {
            if !def.plugins.names.is_empty() {
                wanted.insert(LayerId::Group(g.clone()));
            }
        }
        let empty = LayerSrc::default();
        for id in wanted {
            let src = site.layers.get(&id).unwrap_or(&empty);
            let (tmpls, model) = match prepared.get(&id) {
                Some((t, m)) => (t.as_slice(), m.as_ref()),
                None => (&[][..], None),
            };
            let mut files = BTreeMap::new();
            for e in src.entries.iter().filter(|e| !e.template) {
                match raw_entry(e, src.attrs.get(&e.out)) {
                    Ok(o) => {
                        files.insert(e.out.clone(), o);
                    }
                    Err(p) => problems.push(p),
                }
            }
            for t in tmpls {
                if t.per_node {
                    per_node_files.entry(id.clone()).or_default().push(t);
                } else if let Some(e) = t.entry {
                    match env.render_named_str(&t.file, &t.text, &site_ctx) {
                        Ok(text) => {
                            files.insert(e.out.clone(), rendered(e, text, src.attrs.get(&e.out)));
                        }
                        Err(err) => {
                            problems.push(template_problem(&t.file, &err, &site_ctx, &undeclared(&env, t), None))
                        }
                    }
                }
            }
            let mut model_text = None;
            if let Some(t) = model {
                if t.per_node {
                    per_node_models.insert(id.clone(), t);
                } else {
                    match env.render_named_str(&t.file, &t.text, &site_ctx) {
                        Ok(text) => model_text = Some(text),
                        Err(err) => {
                            problems.push(template_problem(&t.file, &err, &site_ctx, &undeclared(&env, t), None))
                        }
                    }
                }
            }
            let meta = match &id {
                LayerId::Default => meta(LayerKind::Default, None, vec![], site.default_plugins.names.clone()),
                LayerId::Group(g) => meta(
                    LayerKind::Group,
                    Some(g.clone()),
                    vec![],
                    site.groups.get(g).map(|d| d.plugins.names.clone()).unwrap_or_default(),
                ),
                LayerId::Plugin(p) => {
                    let def = site.plugins.get(p);
                    LayerMeta {
                        kind: LayerKind::Plugin,
                        name: Some(p.clone()),
                        groups: vec![],
                        plugins: vec![],
                        vendor: def.map(|d| d.vendor.clone()),
                        version: def.map(|d| d.version.clone()),
                    }
                }
                LayerId::Node(_) => continue,
            };
            layers.insert(id.clone(), Layer { id, meta, files, model: model_text });
        }

        // Plugin rules, and each shared layer's model on its own.
        let mut shared_models: BTreeMap<LayerId, Model> = BTreeMap::new();
        for (id, layer) in &layers {
            let file = site.layers.get(id).and_then(|s| s.model.as_ref()).map(|(f, _)| f.clone()).unwrap_or_default();
            if let LayerId::Plugin(p) = id {
                if let (Some(v), Some(n)) = (&layer.meta.vendor, &layer.meta.name) {
                    for path in layer.files.keys() {
                        if !plugin_owns(v, n, path) {
                            problems.push(Problem::Plugin {
                                file: format!("{}/files/{path}", id.dir()),
                                line: 1,
                                message: format!("plugin {p}: /{path} is outside its root /opt/{v}/{n}"),
                            });
                        }
                    }
                }
            }
            if let Some(text) = &layer.model {
                match Model::load(&file, &id.label(), text) {
                    Ok(m) => {
                        if let LayerId::Plugin(p) = id {
                            if let Err(e) = check_plugin_model(p, &m) {
                                problems.push(Problem::Plugin { file: file.clone(), line: 1, message: e.to_string() });
                            }
                        }
                        shared_models.insert(id.clone(), m);
                    }
                    Err(e) => problems.push(e.into()),
                }
            }
        }

        // Nodes.
        let mut stacks = BTreeMap::new();
        for (node, def) in &site.nodes {
            let groups = site.node_groups(node);
            let plugins = site.node_plugins(node, &groups);
            let mut ctx = site.vars.clone();
            for g in &groups {
                if let Some(gd) = site.groups.get(g) {
                    ctx.extend(gd.vars.clone());
                }
            }
            ctx.extend(def.vars.clone());
            ctx.insert("node".into(), toml::Value::String(node.clone()));
            ctx.insert("groups".into(), toml::Value::Array(groups.iter().cloned().map(toml::Value::String).collect()));

            let id = LayerId::Node(node.clone());
            let mut stack: Vec<LayerId> = Vec::new();
            stack.extend(layers.contains_key(&LayerId::Default).then_some(LayerId::Default));
            stack.extend(plugins.iter().map(|p| LayerId::Plugin(p.clone())).filter(|p| layers.contains_key(p)));
            stack.extend(groups.iter().map(|g| LayerId::Group(g.clone())).filter(|g| layers.contains_key(g)));

            // Per-node output of the shared layers, in stack order, then
            // the node's own layer: later wins.
            let mut files = BTreeMap::new();
            let mut model_parts: Vec<(String, String)> = Vec::new();
            let own = site.layers.get(&id);
            let sources = stack.iter().chain(std::iter::once(&id));
            for lid in sources {
                let attrs = site.layers.get(lid).map(|s| &s.attrs);
                if lid == &id {
                    if let Some(src) = own {
                        for e in src.entries.iter().filter(|e| !e.template) {
                            match raw_entry(e, src.attrs.get(&e.out)) {
                                Ok(o) => {
                                    files.insert(e.out.clone(), o);
                                }
                                Err(p) => problems.push(p),
                            }
                        }
                    }
                }
                let tmpls: Vec<&Tmpl<'_>> = if lid == &id {
                    prepared.get(lid).map(|(t, _)| t.iter().collect()).unwrap_or_default()
                } else {
                    per_node_files.get(lid).cloned().unwrap_or_default()
                };
                for t in tmpls {
                    let Some(e) = t.entry else { continue };
                    match env.render_named_str(&t.file, &t.text, &ctx) {
                        Ok(text) => {
                            files.insert(e.out.clone(), rendered(e, text, attrs.and_then(|a| a.get(&e.out))));
                        }
                        Err(err) => {
                            problems.push(template_problem(&t.file, &err, &ctx, &undeclared(&env, t), Some(node)))
                        }
                    }
                }
                let model = if lid == &id {
                    prepared.get(lid).and_then(|(_, m)| m.as_ref())
                } else {
                    per_node_models.get(lid).copied()
                };
                if let Some(t) = model {
                    match env.render_named_str(&t.file, &t.text, &ctx) {
                        Ok(text) => model_parts.push((t.file.clone(), text)),
                        Err(err) => {
                            problems.push(template_problem(&t.file, &err, &ctx, &undeclared(&env, t), Some(node)))
                        }
                    }
                }
            }
            let mut node_model = None;
            let mut parts_ok = true;
            for (file, text) in &model_parts {
                if let Err(e) = Model::load(file, &id.label(), text) {
                    problems.push(e.into());
                    parts_ok = false;
                }
            }
            if parts_ok && !model_parts.is_empty() {
                match merge_models(&model_parts) {
                    Ok(text) => node_model = Some(text),
                    Err(p) => problems.push(p),
                }
            }
            let layer = Layer {
                id: id.clone(),
                meta: meta(LayerKind::Node, Some(node.clone()), groups.clone(), plugins.clone()),
                files,
                model: node_model,
            };
            // The whole stack's model, as the loader merges it.
            let own_file = model_parts.last().map_or("site.toml".to_owned(), |(f, _)| f.clone());
            let node_m = match &layer.model {
                Some(text) => match Model::load(&own_file, &id.label(), text) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        problems.push(e.into());
                        None
                    }
                },
                None => None,
            };
            let models = stack.iter().filter_map(|l| shared_models.get(l).cloned()).chain(node_m);
            let mut order: Vec<String> = stack.iter().map(LayerId::label).collect();
            order.push(id.label());
            clash_check(site, node, &Model::merge(models), &order, &model_parts, &mut problems);
            stack.push(id.clone());
            layers.insert(id, layer);
            stacks.insert(node.clone(), stack);
        }
        if problems.is_empty() { Ok(Compiled { layers, stacks }) } else { Err(problems) }
    }
}

fn meta(kind: LayerKind, name: Option<String>, groups: Vec<String>, plugins: Vec<String>) -> LayerMeta {
    LayerMeta { kind, name, groups, plugins, vendor: None, version: None }
}

fn prepare<'a>(
    env: &Environment<'static>,
    site: &Site,
    id: &LayerId,
    entry: Option<&'a SrcEntry>,
    file: String,
    text: String,
    problems: &mut Vec<Problem>,
) -> Option<Tmpl<'a>> {
    let vars = match env.template_from_named_str(&file, &text) {
        Ok(t) => t.undeclared_variables(false),
        Err(e) => {
            problems.push(template_problem(&file, &e, &toml::Table::new(), &BTreeSet::new(), None));
            return None;
        }
    };
    let per_node = vars.iter().any(|v| site.per_node.contains(v));
    if per_node && matches!(id, LayerId::Plugin(_)) {
        let line = vars
            .iter()
            .filter(|v| site.per_node.contains(*v))
            .filter_map(|v| text.find(v.as_str()))
            .min()
            .map_or(1, |o| crate::error::line_of(&text, o));
        problems.push(Problem::Plugin {
            file,
            line,
            message: "a plugin's templates may use only the site's [vars], not per-node or group variables".into(),
        });
        return None;
    }
    Some(Tmpl { entry, file, text, per_node })
}

fn undeclared(env: &Environment<'static>, t: &Tmpl<'_>) -> BTreeSet<String> {
    env.template_from_named_str(&t.file, &t.text)
        .map(|t| t.undeclared_variables(false).into_iter().collect())
        .unwrap_or_default()
}

fn attr_or(a: Option<&Attr>, mode: u32) -> (u32, u32, u32) {
    let a = a.copied().unwrap_or_default();
    (a.mode.unwrap_or(mode), a.uid.unwrap_or(0), a.gid.unwrap_or(0))
}

fn default_mode(kind: &SrcKind) -> u32 {
    match kind {
        SrcKind::Dir => 0o755,
        SrcKind::File { exec: true } => 0o755,
        SrcKind::File { exec: false } => 0o644,
        SrcKind::Link(_) => 0o777,
    }
}

/// The bundle's path rules, checked here so that `site check` reports
/// what packing would refuse (a symlink that escapes the root, a path
/// component over 255 bytes).
fn check_path(e: &SrcEntry) -> Result<(), Problem> {
    use stateless_bundle::path::{RelPath, check_symlink_target};
    let max = stateless_bundle::Limits::default().max_path;
    let bad = |why: String| Problem::Rule { file: e.shown.clone(), line: 1, message: why };
    let rel = RelPath::parse(e.out.as_bytes(), max).map_err(|err| bad(format!("{}: {err}", e.out)))?;
    if let SrcKind::Link(t) = &e.kind {
        check_symlink_target(&rel, t.as_bytes(), max).map_err(|err| bad(format!("symlink to {t}: {err}")))?;
    }
    Ok(())
}

fn raw_entry(e: &SrcEntry, a: Option<&Attr>) -> Result<OutEntry, Problem> {
    check_path(e)?;
    let (mode, uid, gid) = attr_or(a, default_mode(&e.kind));
    let kind = match &e.kind {
        SrcKind::Dir => OutKind::Dir,
        SrcKind::Link(t) => OutKind::Link(t.clone()),
        SrcKind::File { .. } => {
            OutKind::File(fs::read(&e.src).map_err(|source| Problem::Io { file: e.src.clone(), source })?)
        }
    };
    Ok(OutEntry { kind, mode, uid, gid })
}

fn rendered(e: &SrcEntry, text: String, a: Option<&Attr>) -> OutEntry {
    let (mode, uid, gid) = attr_or(a, default_mode(&e.kind));
    OutEntry { kind: OutKind::File(text.into_bytes()), mode, uid, gid }
}

/// Joins the per-node model parts of a node (earliest first) into one
/// model.toml: tables merge key by key, a later scalar wins, arrays of
/// named tables (users, groups, plugins) replace by name, other arrays of
/// tables (edits) append, and plain lists (units, modules, ports) are a
/// union.
fn merge_models(parts: &[(String, String)]) -> Result<String, Problem> {
    let mut out = toml::Table::new();
    for (file, text) in parts {
        let t: toml::Table = toml::from_str(text).map_err(|e| crate::error::syntax(file, text, &e))?;
        merge_table(&mut out, t);
    }
    toml::to_string(&out).map_err(|e| Problem::Rule {
        file: parts.last().map(|(f, _)| f.clone()).unwrap_or_default(),
        line: 1,
        message: format!("writing the merged model: {e}"),
    })
}

fn merge_table(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_table(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b)) => merge_array(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn merge_array(into: &mut Vec<toml::Value>, from: Vec<toml::Value>) {
    let name = |v: &toml::Value| v.as_table().and_then(|t| t.get("name")).and_then(|n| n.as_str()).map(str::to_owned);
    for v in from {
        if let Some(n) = name(&v) {
            if let Some(slot) = into.iter_mut().find(|x| name(x).as_deref() == Some(n.as_str())) {
                *slot = v;
                continue;
            }
            into.push(v);
        } else if v.is_table() || !into.contains(&v) {
            into.push(v);
        }
    }
}

/// Within one node's merged stack no uid (gid) may belong to two names:
/// the loader would refuse the stack on the node.
/// Entries are visited in stack order, so the message is reported at the
/// later layer's entry and names the earlier one.
fn clash_check(
    site: &Site,
    node: &str,
    m: &Model,
    order: &[String],
    node_parts: &[(String, String)],
    problems: &mut Vec<Problem>,
) {
    let rank = |layer: &str| order.iter().position(|l| l == layer).unwrap_or(usize::MAX);
    let locate = |layer: &str, name: &str| -> (String, usize) {
        let quoted = format!("\"{name}\"");
        let texts: Vec<(String, String)> = if layer.starts_with("node:") {
            node_parts.to_vec()
        } else {
            site.layers.iter().filter(|(id, _)| id.label() == layer).filter_map(|(_, s)| s.model.clone()).collect()
        };
        for (f, t) in texts.iter().rev() {
            if let Some(o) = t.find(&quoted) {
                return (f.clone(), crate::error::line_of(t, o));
            }
        }
        ("site.toml".to_owned(), site.nodes.get(node).map_or(1, |n| n.line))
    };
    let mut by_uid: BTreeMap<u32, (&str, &str)> = BTreeMap::new();
    let mut users: Vec<_> = m.users().iter().collect();
    users.sort_by_key(|(n, u)| (rank(u.layer()), n.as_str()));
    for (name, u) in users {
        if let Some((other, other_layer)) = by_uid.insert(u.value().uid, (name, u.layer())) {
            let (file, line) = locate(u.layer(), name);
            problems.push(Problem::Clash {
                file,
                line,
                node: node.to_owned(),
                message: format!(
                    "user {name} (uid {}, {}) clashes with user {other} (uid {}, {other_layer})",
                    u.value().uid,
                    u.layer(),
                    u.value().uid
                ),
            });
        }
    }
    let mut by_gid: BTreeMap<u32, (&str, &str)> = BTreeMap::new();
    let mut groups: Vec<_> = m.groups().iter().collect();
    groups.sort_by_key(|(n, g)| (rank(g.layer()), n.as_str()));
    for (name, g) in groups {
        if let Some((other, other_layer)) = by_gid.insert(g.value().gid, (name, g.layer())) {
            let (file, line) = locate(g.layer(), name);
            problems.push(Problem::Clash {
                file,
                line,
                node: node.to_owned(),
                message: format!(
                    "group {name} (gid {}, {}) clashes with group {other} (gid {}, {other_layer})",
                    g.value().gid,
                    g.layer(),
                    g.value().gid
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_models_merge_later_wins() {
        let parts = vec![
            (
                "default/model.toml".to_owned(),
                "hostname = \"a\"\n[[users]]\nname = \"alice\"\nuid = 2001\nlocked = true\n[services]\nenable = [\"a.service\"]\n[sysctl]\n\"x.y\" = \"1\"\n".to_owned(),
            ),
            (
                "nodes/n/model.toml".to_owned(),
                "hostname = \"b\"\n[[users]]\nname = \"alice\"\nuid = 2002\nlocked = true\n[services]\nenable = [\"a.service\", \"b.service\"]\n[sysctl]\n\"x.z\" = \"2\"\n".to_owned(),
            ),
        ];
        let text = merge_models(&parts).unwrap();
        let m = Model::load("m", "node:n", &text).unwrap();
        assert_eq!(m.hostname().unwrap().value(), "b");
        assert_eq!(m.users().len(), 1);
        assert_eq!(m.users()["alice"].value().uid, 2002);
        assert_eq!(m.services().len(), 2);
        assert_eq!(m.sysctl().len(), 2);
    }

    #[test]
    fn a_layer_tree_has_its_parents_and_meta() {
        let file = |b: &str| OutEntry { kind: OutKind::File(b.as_bytes().to_vec()), mode: 0o600, uid: 5, gid: 6 };
        let layer = Layer {
            id: LayerId::Default,
            meta: meta(LayerKind::Default, None, vec![], vec![]),
            files: [("etc/a/b/c".to_owned(), file("x"))].into_iter().collect(),
            model: Some("hostname = \"x\"\n".into()),
        };
        let t = layer.tree();
        let keys: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [".stateless", ".stateless/layer.toml", ".stateless/model.toml", "etc", "etc/a", "etc/a/b", "etc/a/b/c"]
        );
        assert_eq!(t["etc/a"].mode, 0o755);
        assert_eq!((t["etc/a/b/c"].uid, t["etc/a/b/c"].gid), (5, 6));
    }

    #[test]
    fn templates_are_per_node_only_when_they_use_per_node_names() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        let w = |rel: &str, text: &str| {
            let p = s.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        w(
            "site.toml",
            "[vars]\nd = \"x\"\n[groups.g]\nvars = { v = 1 }\n[nodes.n1]\ngroups = [\"g\"]\n[nodes.n2]\ngroups = [\"g\"]\nvars = { v = 2 }\n",
        );
        w("default/files/shared.tmpl", "{{ d }}\n");
        w("default/files/loop.tmpl", "{% for x in [1] %}{{ x }}{% endfor %}\n");
        w("groups/g/files/v.tmpl", "{{ v }}\n");
        w("default/files/plain", "{{ not rendered }}\n");
        let site = Site::load(s).unwrap();
        let c = Compiled::new(&site).unwrap();
        let def = &c.layers[&LayerId::Default];
        assert!(def.files.contains_key("shared") && def.files.contains_key("loop"));
        assert_eq!(def.files["plain"].kind, OutKind::File(b"{{ not rendered }}\n".to_vec()));
        assert!(!c.layers[&LayerId::Group("g".into())].files.contains_key("v"));
        assert_eq!(c.layers[&LayerId::Node("n1".into())].files["v"].kind, OutKind::File(b"1\n".to_vec()));
        assert_eq!(c.layers[&LayerId::Node("n2".into())].files["v"].kind, OutKind::File(b"2\n".to_vec()));
        assert_eq!(c.stacks["n1"], [LayerId::Default, LayerId::Group("g".into()), LayerId::Node("n1".into())]);
    }
}

#[cfg(test)]
mod clash_tests {
    use super::*;

    #[test]
    fn a_clash_is_reported_at_the_later_layer() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        let w = |rel: &str, text: &str| {
            let p = s.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        w("site.toml", "[groups.g]\n[nodes.n1]\ngroups = [\"g\"]\n");
        w("default/model.toml", "[[users]]\nname = \"zed\"\nuid = 3000\nlocked = true\n");
        w(
            "groups/g/model.toml",
            "\n[[groups]]\nname = \"x\"\ngid = 7\n[[users]]\nname = \"amy\"\nuid = 3000\nlocked = true\n",
        );
        w("nodes/n1/model.toml", "[[groups]]\nname = \"y\"\ngid = 7\n");
        let site = Site::load(s).unwrap();
        let lines: Vec<String> = Compiled::new(&site).unwrap_err().iter().map(ToString::to_string).collect();
        assert!(
            lines.contains(&"groups/g/model.toml:6: node n1: user amy (uid 3000, group:g) clashes with user zed (uid 3000, default)".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(
                &"nodes/n1/model.toml:2: node n1: group y (gid 7, node:n1) clashes with group x (gid 7, group:g)"
                    .to_owned()
            ),
            "{lines:?}"
        );
    }
}
