//! Layered bundles (issue 14): the loader fetches a node's stack of
//! layers, verifies every one into its own staging directory, and only
//! then applies them, in order, as one unit.
//!
//! The node's own layer is asked for first: its `.stateless/layer.toml`
//! names the node's groups and plugins. Then its groups (from that file,
//! else `rd.stateless.group=`), the default layer, and the plugins the
//! layers bring in. A 404 for any of them is normal. The stack applies in
//! the order default, plugins, groups, node: a later layer's file replaces
//! an earlier one's and a deletion removes it; the layers' models merge
//! (later wins per key) and are rendered into the root after the files.
//!
//! Compatibility: when the first bundle found (node, else a group, else
//! default) carries no `.stateless/layer.toml`, it is a site of single
//! bundles: that bundle is applied alone, exactly as before layers.
//!
//! A child module of [`crate::pipeline`]: it uses the pipeline's
//! verification (`verify_reader`) and fetching
//! (`fetch_one`) unchanged, so a layer passes the same checks as a
//! single bundle (key by key id, signature, scope, generation, expiry).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use stateless_bundle::{Cipher, Scope};
use stateless_keys::blockdev::open_regular;
use stateless_model::Model;
use stateless_model::layer::{self, LayerKind, LayerMeta};

use super::{Ctx, Get, READ_BUFFER, Ready, Step, fetch_one, now, verify_reader};
use crate::cache::{Cache, LayerEntry, StackMeta};
use crate::crash;
use crate::error::{Phase, Refusal};
use crate::fetch::{FetchError, Transport};
use crate::guard::{self, Guarded};
use crate::staging::Staging;
use stateless_bundle::error_chain as chain;

/// A place in the stack, and the path it is served at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `v1/default/bundle`.
    Default,
    /// `v1/plugins/NAME/bundle`.
    Plugin(String),
    /// `v1/groups/NAME/bundle`.
    Group(String),
    /// `v1/nodes/ID/bundle`.
    Node(String),
}

impl Target {
    /// The path below a server's base (or a media's root).
    pub fn path(&self) -> String {
        match self {
            Target::Default => "v1/default/bundle".into(),
            Target::Plugin(n) => format!("v1/plugins/{n}/bundle"),
            Target::Group(n) => format!("v1/groups/{n}/bundle"),
            Target::Node(n) => format!("v1/nodes/{n}/bundle"),
        }
    }

    /// The word in `status.json`, the cache's manifests and the model's
    /// provenance: `default`, `plugin:NAME`, `group:NAME`, `node:ID`.
    pub fn key(&self) -> String {
        match self {
            Target::Default => "default".into(),
            Target::Plugin(n) => format!("plugin:{n}"),
            Target::Group(n) => format!("group:{n}"),
            Target::Node(n) => format!("node:{n}"),
        }
    }

    /// For the console: `default`, `group rack7`.
    pub fn label(&self) -> String {
        match self {
            Target::Default => "default".into(),
            Target::Plugin(n) => format!("plugin {n}"),
            Target::Group(n) => format!("group {n}"),
            Target::Node(n) => format!("node {n}"),
        }
    }

    /// [`Target::key`] read back.
    pub fn parse(key: &str) -> Option<Target> {
        let t = match key.split_once(':') {
            None if key == "default" => Target::Default,
            Some(("plugin", n)) => Target::Plugin(n.to_owned()),
            Some(("group", n)) => Target::Group(n.to_owned()),
            Some(("node", n)) => Target::Node(n.to_owned()),
            _ => return None,
        };
        match &t {
            Target::Plugin(n) | Target::Group(n) | Target::Node(n) if !layer::scope_name(n) => None,
            _ => Some(t),
        }
    }

    fn kind(&self) -> LayerKind {
        match self {
            Target::Default => LayerKind::Default,
            Target::Plugin(_) => LayerKind::Plugin,
            Target::Group(_) => LayerKind::Group,
            Target::Node(_) => LayerKind::Node,
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Target::Default => None,
            Target::Plugin(n) | Target::Group(n) | Target::Node(n) => Some(n),
        }
    }

    /// Whether a bundle with `scope` may be this layer (docs/site.md,
    /// "Layer bundles"): `plugin:NAME` only for that plugin's layer and a
    /// plugin's layer only with it; a group's or node's own scope, or
    /// `any`, for the others.
    pub fn admits(&self, scope: &Scope) -> bool {
        match (self, scope) {
            (Target::Plugin(p), Scope::Plugin(q)) => p == q,
            (Target::Plugin(_), _) | (_, Scope::Plugin(_)) => false,
            (_, Scope::Any) => true,
            (Target::Group(g), Scope::Group(h)) => g == h,
            (Target::Node(n), Scope::Node(m)) => n == m,
            _ => false,
        }
    }
}

/// One layer of `status.json`'s `layers`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// [`Target::key`].
    pub target: String,
    /// The bundle's generation.
    pub generation: u64,
    /// The bundle's digest.
    pub digest: String,
    /// Where it came from: the server's URL (or the file on local media),
    /// or `cache-current` / `cache-previous` (a layer the server answered
    /// 304 for comes from `cache-current`).
    pub source: String,
    /// The URL or file it was read from.
    pub from: String,
    /// The publisher that signed it, when signatures are required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// A layer verified into its staging directory, its `.stateless/` read
/// and taken out.
pub(crate) struct Layer {
    pub(super) target: Target,
    pub(super) ready: Ready,
    pub(super) staging: Staging,
    pub(super) meta: Option<LayerMeta>,
    pub(super) model: Option<Model>,
    pub(super) source: &'static str,
    pub(super) from: String,
    /// The bundle as received and its size, for the cache: the download's
    /// copy or the media's file (`fresh`), or the cache's own blob.
    pub(super) file: Option<PathBuf>,
    pub(super) size: u64,
    pub(super) fresh: bool,
}

/// Where layers are read from.
pub(crate) enum Source<'a> {
    /// A server's base URL.
    Http {
        /// The connection settings.
        transport: &'a Transport,
        /// `https://host:port` (no slash at the end).
        base: &'a str,
    },
    /// A directory holding the `v1/...` layout (local media).
    Dir(&'a Path),
}

impl Source<'_> {
    fn url(&self, target: &Target) -> String {
        match self {
            Source::Http { base, .. } => format!("{base}/{}", target.path()),
            Source::Dir(d) => d.join(target.path()).display().to_string(),
        }
    }
}

/// Why fetching a stack from one source stopped.
pub(crate) enum Stop {
    /// A layer was refused (a [`Refusal::Layer`]): a verdict on this
    /// source's stack.
    Refused { url: String, refusal: Box<Refusal> },
    /// A transfer failed: the next source may do better.
    Failed { err: FetchError },
    /// The time budget ran out on this layer.
    OutOfTime { url: String, phase: Phase },
    /// A 304 for the first bundle while the cache holds a single bundle:
    /// the cache's single-bundle slot applies.
    NotModified { url: String },
}

/// What one source had.
pub(crate) enum Found {
    /// The first bundle found has no layer.toml: a single-bundle site.
    Single(Box<Layer>),
    /// A 304 for a single bundle: the cache's legacy slot applies.
    SingleNotModified(String),
    /// The whole stack, in stack order.
    Stack(Vec<Layer>),
    /// Nothing at all (every path 404).
    Nothing,
}

fn wrap(target: &Target, e: Refusal) -> Refusal {
    match e {
        Refusal::Layer { .. } => e,
        other => Refusal::Layer { layer: target.label(), source: Box::new(other) },
    }
}

/// Reads the layer's `.stateless/` out of `staging` and removes it from
/// there (it is never written into the root), then checks what the
/// layer's place in the stack asks of it.
pub(super) fn inspect(
    target: &Target,
    staging: &Staging,
    image: Option<&Path>,
) -> Result<(Option<LayerMeta>, Option<Model>), Refusal> {
    let dir = staging.path().join(layer::META_DIR);
    let md = match dir.symlink_metadata() {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(Refusal::Layout(format!("{}: {e}", layer::META_DIR))),
    };
    if !md.is_dir() {
        return Err(Refusal::Layout(format!("{} is not a directory", layer::META_DIR)));
    }
    let read = |rel: &str| -> Result<Option<String>, Refusal> {
        let path = staging.path().join(rel);
        let file = match open_regular(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Refusal::Layout(format!("{rel}: {}", stateless_keys::blockdev::describe_open_error(&e))));
            }
        };
        let mut text = Vec::new();
        file.take(layer::MAX_META_LEN + 1)
            .read_to_end(&mut text)
            .map_err(|e| Refusal::Layout(format!("{rel}: {e}")))?;
        if text.len() as u64 > layer::MAX_META_LEN {
            return Err(Refusal::Layout(format!("{rel} is over {} bytes", layer::MAX_META_LEN)));
        }
        String::from_utf8(text).map(Some).map_err(|_| Refusal::Layout(format!("{rel} is not UTF-8")))
    };
    let meta_text = read(layer::LAYER_FILE)?;
    let model_text = read(layer::MODEL_FILE)?;
    fs::remove_dir_all(&dir).map_err(|e| Refusal::Layout(format!("removing {} from staging: {e}", layer::META_DIR)))?;
    let meta = meta_text.map(|t| LayerMeta::parse(layer::LAYER_FILE, &t)).transpose()?;
    if let Some(m) = &meta {
        if m.kind != target.kind() || m.name.as_deref() != target.name() {
            let said = match &m.name {
                Some(n) => format!("{} {n}", m.kind),
                None => m.kind.to_string(),
            };
            return Err(Refusal::Layout(format!(
                "{} says this is the layer of {said}, it was served as {}",
                layer::LAYER_FILE,
                target.label()
            )));
        }
    }
    let model = model_text.map(|t| Model::load(layer::MODEL_FILE, &target.key(), &t)).transpose()?;
    if let Target::Plugin(name) = target {
        let Some(m) = &meta else {
            return Err(Refusal::Layout(format!("a plugin layer needs {}", layer::LAYER_FILE)));
        };
        let vendor = m.vendor.clone().unwrap_or_default();
        check_plugin_tree(staging.path(), &vendor, name)?;
        if let Some(image) = image {
            check_plugin_tree(image, &vendor, name)?;
        }
        if let Some(model) = &model {
            layer::check_plugin_model(name, model)?;
        }
    }
    Ok((meta, model))
}

/// Removes a single bundle's `.stateless/` from staging, unread: it is
/// never written into the root, and a single bundle carries no model.
pub(super) fn strip_meta(staging: &Staging) -> Result<(), Refusal> {
    let dir = staging.path().join(layer::META_DIR);
    match dir.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(md) if !md.is_dir() => fs::remove_file(&dir),
        _ => fs::remove_dir_all(&dir),
    }
    .map_err(|e| Refusal::Layout(format!("removing {} from staging: {e}", layer::META_DIR)))
}

/// Every entry of a plugin's staged tree must be its own
/// (`layer::plugin_owns`): whiteouts and opaque markers included, so a
/// plugin cannot delete what is not its own either.
fn check_plugin_tree(root: &Path, vendor: &str, name: &str) -> Result<(), Refusal> {
    let mut todo = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = todo.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| Refusal::Layout(format!("reading staging: {e}")))?;
        for e in entries {
            let e = e.map_err(|e| Refusal::Layout(format!("reading staging: {e}")))?;
            let fname = e.file_name();
            let path = match fname.to_str() {
                Some(n) if rel.is_empty() => n.to_owned(),
                Some(n) => format!("{rel}/{n}"),
                None => format!("{rel}/{}", fname.to_string_lossy()),
            };
            // An image carries its layer's `.stateless/` (never part of the
            // root; staging's was removed before this check).
            if rel.is_empty() && fname == layer::META_DIR {
                continue;
            }
            if fname.to_str().is_none() || !layer::plugin_owns(vendor, name, &path) {
                return Err(Refusal::PluginFile {
                    plugin: name.to_owned(),
                    vendor: vendor.to_owned(),
                    path: format!("/{path}"),
                });
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push((e.path(), path));
            }
        }
    }
    Ok(())
}

/// The run-directory file a layer's download is copied to, for the cache.
fn download_path(ctx: &Ctx<'_>, target: &Target) -> PathBuf {
    ctx.paths.run_dir.join(format!("layer.{}.bundle", target.key().replace(':', ".")))
}

/// Verifies the bundle in `file` into staging (the cache's blob or a file
/// on local media) as the layer `target`.
pub(super) fn verify_file(
    ctx: &mut Ctx<'_>,
    target: &Target,
    file: &Path,
    source: &'static str,
) -> Result<Layer, Refusal> {
    ctx.layer = Some(target.clone());
    let t = Instant::now();
    let opened = open_regular(file).map_err(|err| Refusal::OpenSlot { path: file.to_owned(), err });
    let res = opened.and_then(|f| {
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let guarded = Guarded::new(f, None, guard::fault_for(source));
        let (ready, staging) =
            crash::catch(|| verify_reader(ctx, BufReader::with_capacity(READ_BUFFER, guarded), source, None))
                .unwrap_or_else(|p| Err(Refusal::Internal(p.0)))?;
        let (meta, model) = inspect(target, &staging, ready.image.as_ref().map(|i| i.mount.as_path()))?;
        Ok(Layer {
            target: target.clone(),
            ready,
            staging,
            meta,
            model,
            source,
            from: file.display().to_string(),
            file: Some(file.to_owned()),
            size,
            fresh: source == "media",
        })
    });
    ctx.layer = None;
    ctx.stage(&format!("verify {} ({source})", target.key()), t);
    res.map_err(|e| wrap(target, e))
}

/// Gets one layer from `src`: `Ok(None)` for a 404 (or a missing file).
fn get_layer(
    ctx: &mut Ctx<'_>,
    src: &Source<'_>,
    target: &Target,
    deadline: Instant,
    download: Option<PathBuf>,
    probing: bool,
) -> Result<Option<Layer>, Stop> {
    let url = src.url(target);
    let transport = match src {
        Source::Dir(dir) => {
            let path = dir.join(target.path());
            if path.symlink_metadata().is_err() {
                ctx.report.attempts.push(format!("{url}: not there"));
                ctx.outcome("media", &url, "not-found", None);
                return Ok(None);
            }
            return match verify_file(ctx, target, &path, "media") {
                Ok(l) => {
                    ctx.outcome("media", &url, "fetched", None);
                    Ok(Some(l))
                }
                Err(e) => {
                    ctx.outcome("media", &url, "refused", Some((e.kind(), chain(&e))));
                    Err(Stop::Refused { url, refusal: Box::new(e) })
                }
            };
        }
        Source::Http { transport, .. } => *transport,
    };
    if Instant::now() >= deadline {
        return Err(Stop::OutOfTime { url, phase: Phase::Downloading { got: 0, total: None } });
    }
    let cached = ctx.cached_stack.get(&target.key()).cloned();
    // A layer's own cached digest; while probing a site whose cache holds
    // a single bundle, that bundle's digest, for every path (as before
    // layers).
    let inm = match &cached {
        Some((digest, _)) => Some(digest.clone()),
        None if probing && ctx.cached_stack.is_empty() => ctx.legacy_digest.clone(),
        None => None,
    };
    let t = Instant::now();
    let get = Get { url: &url, if_none_match: inm.as_deref(), deadline };
    ctx.layer = Some(target.clone());
    let keep = ctx.keep_downloads;
    let dl = download.unwrap_or_else(|| download_path(ctx, target));
    let step = fetch_one(ctx, transport, &get, keep.then_some(dl.as_path()));
    ctx.layer = None;
    let took = t.elapsed().as_millis();
    match step {
        Step::Fresh(ready, staging) => {
            ctx.outcome("server", &url, "fetched", None);
            let size = fs::metadata(&dl).map(|m| m.len()).unwrap_or(0);
            let (meta, model) = match inspect(target, &staging, ready.image.as_ref().map(|i| i.mount.as_path())) {
                Ok(x) => x,
                Err(e) => {
                    let e = wrap(target, e);
                    ctx.outcome("server", &url, "refused", Some((e.kind(), chain(&e))));
                    return Err(Stop::Refused { url, refusal: Box::new(e) });
                }
            };
            Ok(Some(Layer {
                target: target.clone(),
                ready: *ready,
                staging,
                meta,
                model,
                source: "server",
                from: ctx.report.final_url.clone().unwrap_or_else(|| url.clone()),
                file: keep.then_some(dl),
                size,
                fresh: true,
            }))
        }
        Step::NotModified => {
            ctx.report.attempts.push(format!("{url}: 304"));
            ctx.outcome("server", &url, "not-modified", None);
            let Some((_, blob)) = cached else {
                if probing && inm.is_some() {
                    // The single bundle's digest was sent: the cache's
                    // single-bundle slot applies.
                    return Err(Stop::NotModified { url });
                }
                let e =
                    wrap(target, Refusal::Layout("the server answered 304 for a layer the cache does not hold".into()));
                return Err(Stop::Refused { url, refusal: Box::new(e) });
            };
            match verify_file(ctx, target, &blob, "cache-current") {
                Ok(mut l) => {
                    l.fresh = false;
                    Ok(Some(l))
                }
                Err(e) => {
                    ctx.outcome("cache-current", &blob.display().to_string(), "refused", Some((e.kind(), chain(&e))));
                    Err(Stop::Refused { url, refusal: Box::new(e) })
                }
            }
        }
        Step::NotFound => {
            ctx.report.attempts.push(format!("{url}: 404"));
            ctx.outcome("server", &url, "not-found", None);
            Ok(None)
        }
        Step::OutOfTime(phase) => {
            let refusal = Refusal::Budget { budget: ctx.config.timeout, phase: phase.clone() };
            let msg = chain(&refusal);
            ctx.report.attempts.push(format!("{url}: {msg}"));
            ctx.outcome("server", &url, "refused", Some((refusal.kind(), msg)));
            Err(Stop::OutOfTime { url, phase })
        }
        Step::Refused(refusal) => {
            let refusal = wrap(target, refusal);
            let msg = chain(&refusal);
            ctx.report.attempts.push(format!("{url}: refused after {took} ms: {msg}"));
            ctx.outcome("server", &url, "refused", Some((refusal.kind(), msg)));
            Err(Stop::Refused { url, refusal: Box::new(refusal) })
        }
        Step::Failed(err) => {
            let msg = chain(&err);
            ctx.report.attempts.push(format!("{url}: {msg}"));
            ctx.outcome("server", &url, "failed", Some((crate::error::fetch_kind(&err), msg.clone())));
            log::warn!("{url}: {msg}");
            Err(Stop::Failed { err })
        }
    }
}

/// Fetches what `src` has for this node: the first bundle found among
/// node, groups (command line) and default decides whether this is a
/// single-bundle site or a stack; for a stack, every other layer is
/// fetched and verified from the same source.
pub(super) fn fetch_source(ctx: &mut Ctx<'_>, src: &Source<'_>, node: &str, deadline: Instant) -> Result<Found, Stop> {
    let cmdline_groups = ctx.config.groups.clone();
    let mut probe = vec![Target::Node(node.to_owned())];
    probe.extend(cmdline_groups.iter().cloned().map(Target::Group));
    probe.push(Target::Default);
    let legacy_download = ctx.paths.run_dir.join(super::DOWNLOAD);
    let mut anchor: Option<(usize, Layer)> = None;
    for (i, target) in probe.iter().enumerate() {
        match get_layer(ctx, src, target, deadline, Some(legacy_download.clone()), true) {
            Ok(None) => continue,
            Ok(Some(l)) => {
                anchor = Some((i, l));
                break;
            }
            Err(Stop::NotModified { url }) => return Ok(Found::SingleNotModified(url)),
            Err(e) => return Err(e),
        }
    }
    let Some((at, first)) = anchor else { return Ok(Found::Nothing) };
    if first.meta.is_none() {
        if let Err(e) = super::check_single_floor(ctx, &first.ready) {
            let url = src.url(&first.target);
            // Refused, not fetched: the outcome says so once.
            if ctx.report.outcomes.last().is_some_and(|o| o.from == url && o.result == "fetched") {
                ctx.report.outcomes.pop();
            }
            let msg = chain(&e);
            ctx.report.attempts.push(format!("{url}: refused: {msg}"));
            ctx.outcome(
                if matches!(src, Source::Dir(_)) { "media" } else { "server" },
                &url,
                "refused",
                Some((e.kind(), msg)),
            );
            return Err(Stop::Refused { url, refusal: Box::new(wrap(&first.target, e)) });
        }
        return Ok(Found::Single(Box::new(first)));
    }
    // A stack. Its groups: the node layer's when it is the anchor.
    let groups: Vec<String> = match (&first.target, &first.meta) {
        (Target::Node(_), Some(m)) => {
            if !cmdline_groups.is_empty() && cmdline_groups != m.groups {
                ctx.warn(format!(
                    "rd.stateless.group={} differs from the groups in the node's own layer ({}); the node layer wins",
                    cmdline_groups.join(","),
                    if m.groups.is_empty() { "none".to_owned() } else { m.groups.join(",") }
                ));
            }
            m.groups.clone()
        }
        _ => cmdline_groups,
    };
    let rest: Vec<Target> = match &first.target {
        Target::Node(_) => groups.iter().cloned().map(Target::Group).chain([Target::Default]).collect(),
        Target::Group(_) => probe.iter().skip(at + 1).cloned().collect(),
        _ => Vec::new(),
    };
    let mut have: Vec<Layer> = vec![first];
    for target in rest {
        if let Some(l) = get_layer(ctx, src, &target, deadline, None, false)? {
            have.push(l);
        }
    }
    // Plugins, in order of first mention: default's, each group's (in
    // order), the node's.
    let mut plugins: Vec<String> = Vec::new();
    let rank = |t: &Target, groups: &[String]| match t {
        Target::Default => 0,
        Target::Group(g) => 1 + groups.iter().position(|x| x == g).unwrap_or(0),
        _ => usize::MAX,
    };
    let mut mentioning: Vec<&Layer> = have.iter().collect();
    mentioning.sort_by_key(|l| rank(&l.target, &groups));
    for l in mentioning {
        for p in l.meta.iter().flat_map(|m| m.plugins.iter()) {
            if !plugins.contains(p) {
                plugins.push(p.clone());
            }
        }
    }
    for p in &plugins {
        let target = Target::Plugin(p.clone());
        match get_layer(ctx, src, &target, deadline, None, false)? {
            Some(l) => have.push(l),
            None => ctx.warn(format!("plugin {p} is named by the stack but its layer is not there (404)")),
        }
    }
    Ok(Found::Stack(order(have, &groups, &plugins)))
}

/// Puts layers in stack order: default, plugins (in order of mention),
/// groups (in order), node.
fn order(mut layers: Vec<Layer>, groups: &[String], plugins: &[String]) -> Vec<Layer> {
    let rank = |t: &Target| match t {
        Target::Default => (0, 0),
        Target::Plugin(p) => (1, plugins.iter().position(|x| x == p).unwrap_or(usize::MAX)),
        Target::Group(g) => (2, groups.iter().position(|x| x == g).unwrap_or(usize::MAX)),
        Target::Node(_) => (3, 0),
    };
    layers.sort_by_key(|l| rank(&l.target));
    layers
}

/// Applies a verified stack to the root as one unit: the merged model is
/// made first (a model that cannot merge refuses the stack before any file
/// moves), then each layer's files in stack order, then the model is
/// rendered. Returns the report's `layers`.
pub(super) fn apply_stack(ctx: &mut Ctx<'_>, layers: Vec<Layer>) -> Result<Vec<LayerReport>, Refusal> {
    let t = Instant::now();
    let mut models = Vec::new();
    for l in &layers {
        if let Some(m) = &l.model {
            models.push(m.clone());
        }
    }
    let mut merged = Model::merge(models);
    for l in &layers {
        if let (Target::Plugin(_), Some(meta)) = (&l.target, &l.meta) {
            merged.add_plugin_layer(&l.target.key(), meta, l.ready.header.generation);
        }
    }
    let opts = crate::apply::ApplyOptions { owners: rustix::process::geteuid().is_root() };
    // Image layers first, all at once: they become the overlay's lower
    // layers in stack order, under the upper layer that the extracted
    // layers then write to (docs/bundle-format.md, *Image payload*).
    let images: Vec<&Path> = layers.iter().filter_map(|l| l.ready.image.as_ref()).map(|i| i.mount.as_path()).collect();
    if !images.is_empty() {
        let t = Instant::now();
        if let Err(e) = crate::image::stack_images(&ctx.paths.sysroot, &ctx.paths.run_dir, &images) {
            let first = layers.iter().find(|l| l.ready.image.is_some()).map(|l| l.target.clone());
            return Err(match first {
                Some(t) => wrap(&t, e.into()),
                None => e.into(),
            });
        }
        for l in &layers {
            if let Some(i) = &l.ready.image {
                i.keep();
            }
        }
        ctx.stage("mount images", t);
    }
    // For each layer, the image mounts of the layers after it.
    let later: Vec<Vec<PathBuf>> = (0..layers.len())
        .map(|i| layers.iter().skip(i + 1).filter_map(|l| l.ready.image.as_ref()).map(|im| im.mount.clone()).collect())
        .collect();
    let mut reports = Vec::new();
    let mut rest = layers.into_iter();
    for (i, l) in rest.by_ref().enumerate() {
        let shadowed: Vec<&Path> = later.get(i).map(|v| v.iter().map(PathBuf::as_path).collect()).unwrap_or_default();
        let res = crate::image::shadow(l.staging.path(), &shadowed).map_err(Refusal::from).and_then(|()| {
            crate::apply::apply(l.staging.path(), &ctx.paths.sysroot, &opts)
                .map_err(|err| Refusal::Apply { path: ctx.paths.sysroot.clone(), err })
        });
        l.staging.finish();
        if let Err(e) = res {
            // What is in the root now: the layers before this one.
            ctx.report.layers = reports;
            return Err(wrap(&l.target, e));
        }
        reports.push(LayerReport {
            target: l.target.key(),
            generation: l.ready.header.generation,
            digest: l.ready.digest.clone(),
            source: layer_source(l.source),
            from: l.from.clone(),
            signer: l.ready.signer.map(|s| s.to_string()),
        });
        if matches!(l.target, Target::Node(_)) || reports.len() == 1 || ctx.report.generation.is_none() {
            ctx.report.key_id = (l.ready.header.cipher != Cipher::None).then(|| l.ready.header.key_id.to_string());
            ctx.report.key_source = l.ready.key_source.clone();
        }
        ctx.report.generation = Some(l.ready.header.generation);
        ctx.report.digest = Some(l.ready.digest.clone());
        ctx.report.signer = l.ready.signer.map(|s| s.to_string());
    }
    ctx.stage("apply", t);
    if !merged.is_empty() {
        let t = Instant::now();
        match stateless_model::apply(&merged, &ctx.paths.sysroot) {
            Ok(done) => log::debug!("model applied: {done:?}"),
            Err(err) => {
                // Every layer's files are in the root; the model is not.
                ctx.report.layers = reports;
                let layer = offending_layer(&merged, &err);
                return Err(Refusal::Model { layer, err });
            }
        }
        ctx.stage("model", t);
    }
    Ok(reports)
}

/// The layer that set the entry a model refusal is about, found by the
/// path or name the refusal mentions.
fn offending_layer(m: &Model, err: &stateless_model::ApplyError) -> Option<String> {
    let text = err.to_string();
    let mention = |word: &str| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '/')))
            .any(|w| w == word || w.ends_with(&format!("/{word}")))
    };
    let mut found: Option<String> = None;
    let mut consider = |name: &str, layer: &str| {
        if found.is_none() && mention(name) {
            found = Some(layer.to_owned());
        }
    };
    for (n, e) in m.users() {
        consider(n, e.layer());
    }
    for (n, e) in m.groups() {
        consider(n, e.layer());
    }
    for (n, e) in m.services() {
        consider(n, e.layer());
    }
    for (k, e) in m.edits() {
        consider(k.file.trim_start_matches('/'), e.layer());
    }
    for (n, e) in m.sysctl() {
        consider(n, e.layer());
    }
    for (n, e) in m.modules() {
        consider(n, e.layer());
    }
    found
}

/// Stores an applied stack in the cache as its current stack slot.
pub(super) fn store(ctx: &mut Ctx<'_>, cache: &Cache, layers: &[StoredLayer], server: &str) {
    let meta = StackMeta {
        layers: layers
            .iter()
            .map(|l| LayerEntry {
                target: l.target.clone(),
                digest: l.digest.clone(),
                generation: l.generation,
                size: l.size,
                key_id: l.key_id.clone(),
            })
            .collect(),
        fetched: now(),
        server: server.to_owned(),
    };
    let new_blobs: Vec<(PathBuf, String)> =
        layers.iter().filter(|l| l.fresh).filter_map(|l| l.file.clone().map(|f| (f, l.digest.clone()))).collect();
    let t = Instant::now();
    match cache.store_stack(&new_blobs, &meta) {
        Ok(()) => ctx.stage("cache", t),
        Err(e) => ctx.warn(format!("cache not updated (old slots kept): {}", chain(&e))),
    }
}

/// What the cache needs of a layer once its staging is gone.
pub(crate) struct StoredLayer {
    target: String,
    digest: String,
    generation: u64,
    size: u64,
    key_id: String,
    file: Option<PathBuf>,
    fresh: bool,
}

impl StoredLayer {
    /// Removes the layer's download copy (never a cache blob or a file on
    /// media: only files in the run directory).
    pub(super) fn remove_download(&self, run_dir: &Path) {
        if let Some(f) = &self.file {
            if f.parent() == Some(run_dir) && self.fresh {
                let _ = fs::remove_file(f);
            }
        }
    }

    pub(super) fn of(l: &Layer) -> StoredLayer {
        StoredLayer {
            target: l.target.key(),
            digest: l.ready.digest.clone(),
            generation: l.ready.header.generation,
            size: l.size,
            key_id: l.ready.header.key_id.to_string(),
            file: l.file.clone(),
            fresh: l.fresh,
        }
    }
}

/// The current stack slot's layers by target: digest and blob, for
/// `If-None-Match` and for a layer the server answers 304 for.
pub(super) fn cached_current(cache: &Cache) -> BTreeMap<String, (String, PathBuf)> {
    let mut out = BTreeMap::new();
    if let Some((_, Ok((meta, paths)))) = cache.stack_slots().into_iter().find(|(n, _)| *n == "current.stack.json") {
        for (l, p) in meta.layers.into_iter().zip(paths) {
            out.insert(l.target, (l.digest, p));
        }
    }
    out
}

/// Boots from the cache's stack slots, current then previous: every layer
/// of a slot verified again, then applied as one unit. `Ok(None)` when
/// the cache has no stack slot.
pub(super) fn boot_cached(ctx: &mut Ctx<'_>, cache: &Cache, notes: &mut Vec<String>) -> Option<(String, i64, String)> {
    for (name, slot) in cache.stack_slots() {
        let source: &'static str = if name == "current.stack.json" { "cache-current" } else { "cache-previous" };
        let from = cache.dir().join(name).display().to_string();
        let (meta, paths) = match slot {
            Ok(s) => s,
            Err(w) => {
                let refusal = Refusal::Slot(w);
                let msg = chain(&refusal);
                ctx.outcome(source, &from, "refused", Some((refusal.kind(), msg.clone())));
                ctx.warn(format!("{source}: {msg}"));
                notes.push(format!("{source} stack unusable"));
                continue;
            }
        };
        let mut layers = Vec::new();
        let mut refused = None;
        for (entry, path) in meta.layers.iter().zip(&paths) {
            let Some(target) = Target::parse(&entry.target) else {
                refused = Some(Refusal::Layout(format!("{name} names the layer {:?}", entry.target)));
                break;
            };
            match verify_file(ctx, &target, path, source) {
                Ok(l) => layers.push(l),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let applied = match refused {
            Some(e) => Err(e),
            None => crash::catch(|| apply_stack(ctx, layers)).unwrap_or_else(|p| Err(Refusal::Internal(p.0))),
        };
        match applied {
            Ok(reports) => {
                ctx.outcome(source, &from, "applied", None);
                ctx.report.source = source;
                let summary = describe(&reports);
                ctx.report.layers = reports;
                return Some((summary, meta.fetched, meta.server));
            }
            Err(e) => {
                ctx.outcome(source, &from, "refused", Some((e.kind(), chain(&e))));
                ctx.warn(format!("{source}: stack refused: {}", chain(&e)));
                notes.push(format!("{source} stack refused"));
            }
        }
    }
    None
}

/// A layer's `source` in `status.json`: the URL or media file it was read
/// from, or the cache slot.
/// A layer's `source` in status.json: where it was read (`server`,
/// `media`, `cache-current`, `cache-previous`); its URL or file is `from`.
pub(super) fn layer_source(source: &str) -> String {
    source.to_owned()
}

/// `default 3, group rack7 5, node node42 7`.
pub(super) fn describe(layers: &[LayerReport]) -> String {
    layers
        .iter()
        .map(|l| format!("{} {}", Target::parse(&l.target).map_or(l.target.clone(), |t| t.label()), l.generation))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_and_admit_their_scopes() {
        for t in
            [Target::Default, Target::Plugin("acme".into()), Target::Group("rack7".into()), Target::Node("n1".into())]
        {
            assert_eq!(Target::parse(&t.key()), Some(t.clone()));
        }
        for bad in ["", "group:", "group:../x", "nodes:n", "default:x", "plugin:.x"] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
        let g = |s: &str| Scope::Group(s.into());
        let cases = [
            (Target::Default, Scope::Any, true),
            (Target::Default, g("x"), false),
            (Target::Group("a".into()), g("a"), true),
            (Target::Group("a".into()), g("b"), false),
            (Target::Group("a".into()), Scope::Any, true),
            (Target::Node("n".into()), Scope::Node("n".into()), true),
            (Target::Node("n".into()), g("n"), false),
            (Target::Plugin("p".into()), Scope::Plugin("p".into()), true),
            (Target::Plugin("p".into()), Scope::Plugin("q".into()), false),
            (Target::Plugin("p".into()), Scope::Any, false),
            (Target::Node("p".into()), Scope::Plugin("p".into()), false),
            (Target::Default, Scope::Plugin("p".into()), false),
        ];
        for (t, s, ok) in cases {
            assert_eq!(t.admits(&s), ok, "{t:?} {s}");
        }
    }
}
