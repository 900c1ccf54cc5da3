//! The loader's pipeline: find servers, fetch, verify, apply, cache, report.
//!
//! Order of sources: the servers (explicit URLs, else DNS SRV), then the
//! cache's current slot, then its previous slot. A server's response is not
//! downloaded first: it streams into verification and extraction while a
//! copy goes to the run directory for the cache ([`crate::fetch::Body`]).
//! Whatever the source, the bundle goes through the same checks:
//! authenticated with a key from the key ladder, checked against policy
//! (scope, anti-rollback, expiry, downgrade), extracted completely into a
//! hidden staging directory in the root ([`crate::staging`]), and only then
//! applied to the root, by renaming entries out of staging
//! ([`crate::apply`]). Nothing in the root's visible tree changes before
//! that point, and a bundle that fails leaves the root as it was.
//!
//! Each source's processing is a boundary: a refusal ([`Refusal`]) or a
//! panic ([`crate::crash`]) there moves on to the next source, and every
//! run ends with `status.json`, which records per source tried what
//! happened and, for a refusal, its kind ([`Outcome`]). The time budget
//! (`rd.stateless.timeout`) covers discovery, the download and the
//! verification and extraction of a server's bundle ([`crate::guard`]);
//! the cache's slots are processed after it, without a deadline.
//!
//! A site of layers (issue 14) goes through the same steps per layer: the
//! first bundle found decides whether the node has a stack or a single
//! bundle, and a stack is fetched, verified into one staging directory
//! per layer and applied as a unit by [`stack`]; the cache keeps it as one
//! unit ([`Cache::store_stack`]), and an offline boot tries the cached
//! stacks before the single-bundle slots.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Cursor, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use stateless_bundle::header::{HEADER_LEN, RawHeader};
use stateless_bundle::io::read_full;
use stateless_bundle::{BundleReader, Cipher, Header, Key, KeyId, Limits, OpenError, OpenOptions as BundleOpen, Scope};
use stateless_keys::blockdev::open_regular;
use stateless_keys::usb::Devices;

use crate::crash;
use crate::error::{Failure, FloorError, NetworkError, Phase, Refusal};
use crate::guard::{self, Guarded, Watchdog};
use crate::keyladder::{self, KeyPlaces};

use crate::blockdev::{self, CacheSpec, FindError, Mounted};
use crate::cache::{Cache, SlotMeta};
use crate::cmdline::{CacheDevice, Config, KeyChoice, OnFail};
use crate::dns::{ResolvConf, Resolver};
use crate::fetch::{Body, FetchError, MAX_RESUMES, Opened, Request, Transport, TransportConfig};
use crate::identity::{self, Identity};
use crate::srv::{self, SplitMix64};
use crate::staging::Staging;
use stateless_bundle::error_chain as chain;

#[path = "stack.rs"]
pub mod stack;

/// The site CA file used when neither `ca=` nor `pin=` is given, if present
/// (installed by the dracut module).
pub const DEFAULT_CA_BUNDLE: &str = "etc/stateless/ca.pem";
/// A clock earlier than this (2026-01-01) is taken to be unset, as it is on
/// machines without a battery-backed RTC; expiry is then not enforced.
pub const SANE_CLOCK_FLOOR: i64 = 1_767_225_600;
/// First wait between rounds over all servers; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between rounds.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where the pipeline reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The root to apply to (`/sysroot`).
    pub sysroot: PathBuf,
    /// Run-time directory (`/run/stateless`): download, status.
    pub run_dir: PathBuf,
    /// A directory standing in for the mounted cache device.
    pub cache_dir: Option<PathBuf>,
    /// Root for `/sys`, `/proc` and `/etc/resolv.conf` lookups (`/`).
    pub host_root: PathBuf,
    /// Directory of keys embedded in the boot image.
    pub key_dir: PathBuf,
    /// Directory of TPM-sealed keys embedded in the boot image.
    pub sealed_dir: PathBuf,
    /// Devices to look at for a USB key stick instead of scanning
    /// `/sys/class/block` (tests; empty: scan).
    pub usb_devices: Vec<PathBuf>,
    /// Directory of publisher public keys embedded in the boot image
    /// ([`crate::trust`]).
    pub publisher_dir: PathBuf,
}

/// What happened, written to `status.json` and summarised on the console.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// `applied` or `failed`.
    pub result: &'static str,
    /// `server`, `cache-current`, `cache-previous` or `none`.
    pub source: &'static str,
    /// The server URL the bundle came from (or was first fetched from).
    pub server: Option<String>,
    /// The URL the applied bundle was downloaded from, after redirects
    /// (the same as `server` when there was none; unset for the cache).
    pub final_url: Option<String>,
    /// The node id used.
    pub node: Option<String>,
    /// Generation applied.
    pub generation: Option<u64>,
    /// Digest of the applied bundle.
    pub digest: Option<String>,
    /// Key id used (none for unencrypted bundles).
    pub key_id: Option<String>,
    /// Where the key came from.
    pub key_source: Option<String>,
    /// The publisher whose signature was checked (signer id), when
    /// signatures are required.
    pub signer: Option<String>,
    /// When the applied bundle was fetched (Unix seconds).
    pub fetched: Option<i64>,
    /// Milliseconds per stage.
    pub timings_ms: Vec<(String, u64)>,
    /// Every fetch attempt: URL and outcome, for people.
    pub attempts: Vec<String>,
    /// Every source tried, in order (each fetch attempt, then the cache's
    /// slots): what happened, and why a bundle was refused, for programs.
    pub outcomes: Vec<Outcome>,
    /// Warnings, in order.
    pub warnings: Vec<String>,
    /// Every layer applied, in stack order (one for a single bundle):
    /// target, generation, digest, source, signer.
    pub layers: Vec<stack::LayerReport>,
    /// The console line.
    pub message: String,
    /// The `onfail` action requested when nothing was applied.
    pub onfail: Option<&'static str>,
}

/// What happened to one source: a fetch attempt or a cache slot.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `server`, `cache-current` or `cache-previous`.
    pub source: &'static str,
    /// The URL (a server) or file (a cache slot).
    pub from: String,
    /// `applied`, `fetched`, `not-modified`, `not-found`, `restarted`,
    /// `failed` (the transfer) or `refused` (the bundle).
    pub result: &'static str,
    /// Why, for `failed` and `refused`: a word from the list in
    /// docs/cmdline.md ([`Refusal::kind`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The reason, as on the console.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Exit codes the dracut module maps to actions (see docs/cmdline.md).
pub fn exit_code(report: &Report, onfail: OnFail) -> u8 {
    if report.result == "applied" {
        return 0;
    }
    match onfail {
        OnFail::Emergency => 10,
        OnFail::Continue => 11,
        OnFail::Reboot => 12,
        OnFail::Poweroff => 13,
    }
}

struct Ctx<'a> {
    config: &'a Config,
    paths: &'a Paths,
    limits: Limits,
    report: Report,
    started: Instant,
    highest: Option<(u64, String)>,
    /// The cache whose bundles give the rollback floor, until it is
    /// computed (when a server's bundle first needs it; see
    /// [`rollback_floor`]).
    floor_from: Option<Cache>,
    identity: Option<Identity>,
    /// A key is configured: unencrypted bundles are a downgrade.
    key_required: bool,
    /// Publishers and freshness ([`crate::trust`]), loaded first thing.
    trust: crate::trust::Trust,
    /// The layer being verified: its scope rule and rollback floor
    /// ([`check_policy`]). `None` for a cache's single-bundle slot.
    layer: Option<stack::Target>,
    /// The rollback floor per layer target, from the cached stacks.
    floors: std::collections::BTreeMap<String, (u64, String)>,
    /// The cache's current stack: per target, digest and blob.
    cached_stack: std::collections::BTreeMap<String, (String, PathBuf)>,
    /// The digest of the cache's current single-bundle slot.
    legacy_digest: Option<String>,
    /// Downloads are copied to the run directory (there is a cache).
    keep_downloads: bool,
    /// `rd.stateless.rollback=tpm`: the floors in TPM NV counters.
    rollback: Option<crate::rollback::TpmRollback>,
}

/// A bundle that authenticated and is extracted in staging.
struct Ready {
    header: Header,
    digest: String,
    key_source: Option<String>,
    /// The trusted publisher that signed it, when signatures are required.
    signer: Option<stateless_bundle::SignerId>,
    /// The layer target it was verified as (`node:node42`); `None` for a
    /// cache's single-bundle slot.
    target: Option<String>,
    /// An image bundle's image, verified whole and mounted (its staging
    /// holds only the layer's `.stateless/`).
    image: Option<crate::image::ImageLayer>,
}

/// Runs the whole pipeline and writes the status file. Never panics on
/// input; every failure ends in the report.
pub fn run(config: &Config, paths: &Paths) -> Report {
    let mut ctx = Ctx {
        config,
        paths,
        limits: Limits::default(),
        report: Report { result: "failed", source: "none", ..Report::default() },
        started: Instant::now(),
        highest: None,
        floor_from: None,
        identity: None,
        key_required: !matches!(config.key, KeyChoice::None),
        trust: crate::trust::Trust::default(),
        layer: None,
        floors: std::collections::BTreeMap::new(),
        cached_stack: std::collections::BTreeMap::new(),
        legacy_digest: None,
        keep_downloads: false,
        rollback: crate::rollback::TpmRollback::new(config.rollback, &config.tpm),
    };
    crash::set_status_target(paths.run_dir.clone(), config.onfail);
    // Each source is caught on its own; this catches what is left (the
    // discovery, the cache's bookkeeping) so that the report is written.
    let outcome = crash::catch(|| run_inner(&mut ctx)).unwrap_or_else(|p| Err(Failure::Internal(p.0)));
    // Applied or not: nothing after the loader may raise a counter.
    if let Some(rollback) = ctx.rollback.take() {
        let t = Instant::now();
        for w in rollback.finish() {
            ctx.warn(w);
        }
        ctx.stage("tpm lock", t);
    }
    let mut report = ctx.report;
    match outcome {
        Ok(line) => {
            report.result = "applied";
            report.message = line;
        }
        Err(failure) => {
            report.onfail = Some(config.onfail.as_str());
            report.message = format!("{}; onfail={}", chain(&failure), config.onfail);
        }
    }
    report.timings_ms.push(("total".into(), ms(ctx.started.elapsed())));
    if let Err(e) = write_status(&paths.run_dir, &report) {
        log::warn!("writing status.json: {e}");
    }
    report
}

/// The report of a boot that failed before the pipeline could start (the
/// root could not be made writable): written to `status.json` like any
/// other, so the reason survives switch-root.
pub fn failed_before_start(run_dir: &Path, line: &str, onfail: OnFail) -> Report {
    failed_report(run_dir, line.to_owned(), onfail)
}

/// The provisional report the panic hook writes (see [`crate::crash`]):
/// replaced by the pipeline's own when the panic is caught.
pub fn write_crash_status(run_dir: &Path, line: &str, onfail: OnFail) -> io::Result<()> {
    write_status(run_dir, &failed(format!("no bundle applied: the loader crashed: {line}"), onfail))
}

/// The report of a run that a panic ended outside the pipeline.
pub fn crashed(run_dir: &Path, line: &str, onfail: OnFail) -> Report {
    failed_report(run_dir, format!("no bundle applied: internal error ({line})"), onfail)
}

fn failed(line: String, onfail: OnFail) -> Report {
    Report {
        result: "failed",
        source: "none",
        message: format!("{line}; onfail={onfail}"),
        onfail: Some(onfail.as_str()),
        ..Report::default()
    }
}

fn failed_report(run_dir: &Path, line: String, onfail: OnFail) -> Report {
    let report = failed(line, onfail);
    if let Err(e) = write_status(run_dir, &report) {
        log::warn!("writing status.json: {e}");
    }
    report
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Ctx<'_> {
    fn warn(&mut self, msg: String) {
        log::warn!("{msg}");
        self.report.warnings.push(msg);
    }

    fn stage(&mut self, name: &str, since: Instant) {
        self.report.timings_ms.push((name.to_owned(), ms(since.elapsed())));
    }

    fn outcome(&mut self, source: &'static str, from: &str, result: &'static str, why: Option<(&'static str, String)>) {
        let (kind, message) = why.map_or((None, None), |(k, m)| (Some(k), Some(m)));
        self.report.outcomes.push(Outcome { source, from: from.to_owned(), result, kind, message });
    }
}

fn run_inner(ctx: &mut Ctx<'_>) -> Result<String, Failure> {
    fs::create_dir_all(&ctx.paths.run_dir).map_err(|err| Failure::RunDir { path: ctx.paths.run_dir.clone(), err })?;
    // --- trust (issue 13): a publisher key that is named but unreadable
    // fails the boot rather than turn signature checks off.
    ctx.trust = crate::trust::Trust::load(&ctx.config.trust, &ctx.paths.publisher_dir).map_err(Failure::Trust)?;
    log::info!("trust: {}", ctx.trust.describe());
    if let Some(w) = ctx.trust.warning() {
        ctx.warn(w);
    }
    // --- end trust
    match identity::discover(&ctx.paths.host_root, ctx.config.node.as_deref(), ctx.config.bootif) {
        Ok(id) => {
            log::debug!("node {} (from {})", id.node, id.source);
            ctx.report.node = Some(id.node.clone());
            ctx.identity = Some(id);
        }
        Err(e) => ctx.warn(e.to_string()),
    }
    guard::fault_point("pipeline");
    // Without the configured key file no bundle can be opened, from a
    // server or the cache: say so now, not after the download.
    keyladder::check_configured(&ctx.config.key)?;
    // Kept until the end of the run: dropping it unmounts the cache device.
    let (cache, _mounted) = open_cache(ctx);
    ctx.floor_from = cache.clone();
    if crate::tpm_policies::tpm_in(&ctx.config.key) {
        // The signed policies fetched on an earlier boot, for a boot that
        // reaches no server; one that answers replaces them.
        crate::tpm_policies::restore(&ctx.paths.sealed_dir, cache.as_ref().map(|c| c.dir()));
    }
    ctx.legacy_digest =
        cache.as_ref().and_then(|c| c.slots().into_iter().next()).and_then(|s| s.ok()).map(|(_, m)| m.digest);
    ctx.cached_stack = cache.as_ref().map(stack::cached_current).unwrap_or_default();
    ctx.keep_downloads = cache.is_some();

    // 1. The servers: each bundle is verified into staging as it arrives.
    let t = Instant::now();
    // Kept until the end of the run: a stack read from media is copied to
    // the cache after it applied.
    let mut _media = None;
    let fetched = match ctx.config.media.clone() {
        Some(label) => fetch_from_media(ctx, &label, &mut _media),
        None => fetch_from_servers(ctx),
    };
    ctx.stage("fetch+verify", t);
    // Local media count as the node's server in every other respect.
    let origin: &'static str = if ctx.config.media.is_some() { "media" } else { "server" };
    let network = match fetched {
        Ok(FetchResult::Stack { layers, url }) => {
            let stored: Vec<stack::StoredLayer> = layers.iter().map(stack::StoredLayer::of).collect();
            let applied =
                crash::catch(|| stack::apply_stack(ctx, layers)).unwrap_or_else(|p| Err(Refusal::Internal(p.0)));
            if applied.is_err() {
                for l in &stored {
                    l.remove_download(&ctx.paths.run_dir);
                }
            }
            match applied {
                Ok(reports) => {
                    ctx.report.source = origin;
                    ctx.report.server = Some(url.clone());
                    ctx.report.fetched = Some(now());
                    let applied: Vec<(String, u64)> =
                        reports.iter().map(|l| (l.target.clone(), l.generation)).collect();
                    raise_tpm_floors(ctx, &applied);
                    let summary = stack::describe(&reports);
                    let n = reports.len();
                    ctx.report.layers = reports;
                    if let Some(c) = &cache {
                        stack::store(ctx, c, &stored, &url);
                    }
                    for l in &stored {
                        l.remove_download(&ctx.paths.run_dir);
                    }
                    return Ok(format!(
                        "applied a stack of {n} layers ({summary}) from {url} in {:.1} s",
                        ctx.started.elapsed().as_secs_f64()
                    ));
                }
                Err(e) => {
                    // The files may be partly applied (a model refused at
                    // apply time): nothing else is tried on this root.
                    let line = format!("stack from {url} refused: {}", chain(&e));
                    ctx.outcome("server", &url, "refused", Some((e.kind(), chain(&e))));
                    return Err(Failure::Stack(line));
                }
            }
        }
        Ok(FetchResult::Fresh { ready, staging, url, download }) => {
            let applied = crash::catch(|| apply_staged(ctx, &ready, staging, origin, &url))
                .unwrap_or_else(|p| Err(Refusal::Internal(p.0)));
            let network = match applied {
                Ok(()) => {
                    if let Some(target) = &ready.target {
                        raise_tpm_floors(ctx, &[(target.clone(), ready.header.generation)]);
                    }
                    ctx.report.server = Some(url.clone());
                    ctx.report.fetched = Some(now());
                    if let (Some(c), Some(path)) = (&cache, &download) {
                        store_in_cache(ctx, c, path, &ready, &url);
                    }
                    None
                }
                Err(e) => {
                    let line = format!("bundle from {url} refused: {}", chain(&e));
                    ctx.outcome("server", &url, "refused", Some((e.kind(), chain(&e))));
                    ctx.warn(line.clone());
                    Some(NetworkError::Refused(vec![line]))
                }
            };
            // Only the run directory's copy: a file on media stays.
            if let Some(path) = download.as_ref().filter(|p| p.parent() == Some(ctx.paths.run_dir.as_path())) {
                let _ = fs::remove_file(path);
            }
            match network {
                None => {
                    let via = match ctx.report.final_url.as_deref() {
                        Some(f) if f != url => format!(" (redirected to {f})"),
                        _ => String::new(),
                    };
                    return Ok(format!(
                        "applied generation {} from {url}{via}{} in {:.1} s",
                        ready.header.generation,
                        key_note(&ready),
                        ctx.started.elapsed().as_secs_f64()
                    ));
                }
                Some(network) => network,
            }
        }
        Ok(FetchResult::NotModified { url }) => {
            ctx.report.server = Some(url.clone());
            // The normal answer in a boot storm: not a warning.
            let note = NetworkError::NotModified(url);
            log::info!("{note}");
            note
        }
        Err(e) => e,
    };

    // 2. The cache, current slot then previous. What the servers said is
    // already in the log (each refusal once) and goes into the final line.
    let Some(cache) = cache else {
        return Err(Failure::Nothing { network: Box::new(network), cache: "no cache".into() });
    };
    let mut slot_notes = Vec::new();
    // A cached stack first: the legacy slots are older than it (storing a
    // single bundle removes the stack slots).
    if let Some((summary, fetched, server)) = stack::boot_cached(ctx, &cache, &mut slot_notes) {
        ctx.report.fetched = Some(fetched);
        ctx.report.server = Some(server);
        ctx.report.final_url = None;
        let which = if ctx.report.source == "cache-current" { "cached" } else { "previous cached" };
        return Ok(format!("{network}; applied the {which} stack ({summary}, fetched {})", fmt_date(fetched)));
    }
    for (i, slot) in cache.slots().into_iter().enumerate() {
        let name = if i == 0 { "cache-current" } else { "cache-previous" };
        let (path, meta) = match slot {
            Ok(s) => s,
            Err(w) => {
                let refusal = Refusal::Slot(w);
                let msg = chain(&refusal);
                ctx.outcome(name, &cache.dir().display().to_string(), "refused", Some((refusal.kind(), msg.clone())));
                ctx.warn(format!("{name}: {msg}"));
                slot_notes.push(format!("{name} unusable"));
                continue;
            }
        };
        let applied =
            crash::catch(|| verify_and_apply(ctx, &path, name)).unwrap_or_else(|p| Err(Refusal::Internal(p.0)));
        match applied {
            Ok(ready) => {
                ctx.outcome(name, &path.display().to_string(), "applied", None);
                ctx.report.fetched = Some(meta.fetched);
                ctx.report.server = Some(meta.server.clone());
                ctx.report.final_url = None;
                let when = fmt_date(meta.fetched);
                return Ok(format!(
                    "{network}; applied {} generation {} (fetched {when}){}",
                    if i == 0 { "cached" } else { "previous cached" },
                    ready.header.generation,
                    key_note(&ready),
                ));
            }
            Err(e) => {
                ctx.outcome(name, &path.display().to_string(), "refused", Some((e.kind(), chain(&e))));
                ctx.warn(format!("{name}: {}", chain(&e)));
                slot_notes.push(format!("{name} refused"));
            }
        }
    }
    if slot_notes.is_empty() {
        slot_notes.push("cache empty".into());
    }
    Err(Failure::Nothing { network: Box::new(network), cache: slot_notes.join(", ") })
}
fn key_note(r: &Ready) -> String {
    let signed = r.signer.map(|s| format!(", signed by {}", s.short())).unwrap_or_default();
    match &r.key_source {
        Some(src) => format!(" (key {} from {src}{signed})", r.header.key_id.short()),
        None => format!(" (unencrypted{signed})"),
    }
}

fn fmt_date(t: i64) -> String {
    let full = fmt_time(t);
    full.get(..10).filter(|_| full.ends_with('Z')).unwrap_or(&full).to_owned()
}

/// Last second of the year 9999: humantime's Display fails (and
/// `to_string` panics) past it.
const LAST_RFC3339: u64 = 253_402_300_799;

/// A Unix time from a header or a cache file, as RFC 3339; a time outside
/// what RFC 3339 can say (before 1970, after 9999) is shown as the number.
fn fmt_time(t: i64) -> String {
    match u64::try_from(t) {
        Ok(s) if s <= LAST_RFC3339 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        _ => format!("{t} (Unix time)"),
    }
}

/// How long to wait for the cache device to appear (udev may still be
/// creating its node when the loader starts).
const CACHE_DEVICE_WAIT: Duration = Duration::from_secs(2);

/// The cache: `--cache-dir`, else the `rd.stateless.cache=` device mounted
/// below the run directory (unmounted when the returned [`Mounted`] drops).
/// A missing or unmountable device means no cache, with a warning.
fn open_cache(ctx: &mut Ctx<'_>) -> (Option<Cache>, Option<Mounted>) {
    if let Some(dir) = &ctx.paths.cache_dir {
        // A mounted device's root always exists; a stand-in directory may not.
        if let Err(e) = fs::create_dir_all(dir) {
            ctx.warn(format!("cache directory {}: {e}; booting without a cache", dir.display()));
            return (None, None);
        }
        return (Some(Cache::new(dir.clone())), None);
    }
    let spec = match &ctx.config.cache {
        CacheDevice::None => return (None, None),
        CacheDevice::Label(l) => CacheSpec::Label(l.clone()),
        CacheDevice::Uuid(u) => CacheSpec::Uuid(u.clone()),
        CacheDevice::PartLabel(l) => CacheSpec::PartLabel(l.clone()),
        // udev's link is the only place a partition's GUID is named.
        CacheDevice::PartUuid(u) => {
            CacheSpec::Path(PathBuf::from("/dev/disk/by-partuuid").join(u.to_ascii_lowercase()))
        }
        CacheDevice::Path(p) => CacheSpec::Path(p.clone()),
    };
    let (dev, sys) = (ctx.paths.host_root.join("dev"), ctx.paths.host_root.join("sys"));
    let t = Instant::now();
    let device = loop {
        match blockdev::find_device(&spec, &dev, &sys) {
            Ok(d) => break d,
            Err(FindError::NotFound { .. }) if t.elapsed() < CACHE_DEVICE_WAIT => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => {
                ctx.warn(format!("{e}; booting without a cache"));
                return (None, None);
            }
        }
    };
    match Mounted::mount(&device, &ctx.paths.run_dir.join("cache")) {
        Ok(m) => {
            log::debug!("cache {spec}: {} mounted on {}", device.display(), m.path().display());
            ctx.stage("cache-mount", t);
            (Some(Cache::new(m.path().to_owned())), Some(m))
        }
        Err(e) => {
            ctx.warn(format!("cache device {spec} ({}): {}; booting without a cache", device.display(), chain(&e)));
            (None, None)
        }
    }
}

enum FetchResult {
    /// A bundle that verified, in staging; `download` is its copy for the
    /// cache (kept only when there is a cache).
    Fresh {
        ready: Box<Ready>,
        staging: Staging,
        url: String,
        download: Option<PathBuf>,
    },
    NotModified {
        url: String,
    },
    /// A stack: every layer verified, each in its staging directory.
    Stack {
        layers: Vec<stack::Layer>,
        url: String,
    },
}

/// How one URL went.
enum Step {
    Fresh(Box<Ready>, Staging),
    NotModified,
    NotFound,
    /// The transfer failed (the server, the network, the budget before
    /// the bundle began).
    Failed(FetchError),
    /// The bundle was refused: a verdict on this server's bundle.
    Refused(Refusal),
    /// The budget ran out while the bundle was being processed
    /// ([`Refusal::Budget`]): nothing more is tried from the network.
    OutOfTime(Phase),
}

impl Step {
    /// A transfer that failed, or a refusal when the error is a verdict
    /// on the server's answer ([`FetchError::is_refusal`]: such a server
    /// is not asked again).
    fn failed(e: FetchError) -> Step {
        if e.is_refusal() { Step::Refused(Refusal::Server(e)) } else { Step::Failed(e) }
    }
}

/// The base URLs to try, in order.
fn base_urls(ctx: &mut Ctx<'_>, deadline: Instant) -> Result<Vec<String>, NetworkError> {
    let cfg = ctx.config;
    if !cfg.servers.is_empty() {
        let Some(id) = &ctx.identity else {
            return Err(NetworkError::NoIdentity);
        };
        let rendered: Vec<_> = cfg.servers.iter().map(|t| (t.as_str(), t.render(id))).collect();
        let mut out = Vec::new();
        for (template, url) in rendered {
            match url {
                Ok(u) => out.push(u.trim_end_matches('/').to_owned()),
                Err(e) => ctx.warn(format!("server {template}: {e}")),
            }
        }
        return Ok(out);
    }
    let resolv = fs::read_to_string(ctx.paths.host_root.join("etc/resolv.conf"))
        .map(|t| ResolvConf::parse(&t))
        .unwrap_or_default();
    let domain = cfg.domain.clone().or(resolv.search.clone()).ok_or(NetworkError::NoDomain)?;
    let servers = match cfg.dns {
        Some(d) => vec![d],
        None => resolv.servers.clone(),
    };
    let name = format!("{}.{domain}", cfg.srv);
    let answer = match Resolver::new(servers).srv(&name, deadline) {
        Ok(a) => a,
        Err(err) => return Err(NetworkError::Dns { name, err }),
    };
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let mut rng = SplitMix64::new(u64::from_le_bytes(seed));
    let ordered = match srv::order(answer.records, &mut rng) {
        Ok(o) => o,
        Err(err) => return Err(NetworkError::NoTargets { name, err }),
    };
    let scheme = if cfg.insecure { "http" } else { "https" };
    // Built from parts: a target that is not a host name is dropped.
    let mut out = Vec::new();
    for r in &ordered {
        match r.base_url(scheme) {
            Ok(u) => out.push(u.as_str().trim_end_matches('/').to_owned()),
            Err(e) => ctx.warn(format!("DNS SRV {name}: {e}")),
        }
    }
    if out.is_empty() {
        return Err(NetworkError::NoHostTarget { name });
    }
    Ok(out)
}

fn fetch_from_servers(ctx: &mut Ctx<'_>) -> Result<FetchResult, NetworkError> {
    let budget = ctx.config.timeout;
    let deadline = ctx.started + budget;
    let bases = base_urls(ctx, deadline)?;
    if bases.is_empty() {
        return Err(NetworkError::NoServer);
    }
    let Some(node) = ctx.identity.as_ref().map(|i| i.node.clone()) else {
        return Err(NetworkError::NoIdentity);
    };
    let mut dns = ctx.config.dns.into_iter().collect::<Vec<_>>();
    if dns.is_empty() {
        if let Ok(t) = fs::read_to_string(ctx.paths.host_root.join("etc/resolv.conf")) {
            dns = ResolvConf::parse(&t).servers;
        }
    }
    // Without ca= or pin=, the site CA the dracut module put in the
    // initramfs is the trust store.
    let ca = ctx.config.ca.clone().or_else(|| {
        let bundle = ctx.paths.host_root.join(DEFAULT_CA_BUNDLE);
        (ctx.config.pins.is_empty() && bundle.is_file()).then_some(bundle)
    });
    let transport = Transport::new(&TransportConfig {
        ca,
        pins: ctx.config.pins.iter().map(|p| p.0).collect(),
        dns,
        ..TransportConfig::default()
    })
    .map_err(NetworkError::Tls)?;
    if crate::tpm_enrol::wanted(&ctx.config.key) {
        // Before any bundle is opened: a key the admin wrapped for this
        // TPM becomes a sealed key the key ladder finds, or the node
        // enrols and the line says it waits for approval.
        let t = Instant::now();
        let cache = ctx.floor_from.as_ref().map(|c| c.dir().to_owned());
        let places = crate::tpm_enrol::Places { sealed_dir: &ctx.paths.sealed_dir, cache: cache.as_deref() };
        let outcome = crate::tpm_enrol::prepare(&transport, &bases, &node, &places, &ctx.config.tpm, deadline);
        if let crate::tpm_enrol::Outcome::Waiting(line) | crate::tpm_enrol::Outcome::Problem(line) = outcome {
            ctx.report.warnings.push(line);
        }
        ctx.stage("tpm-enrol", t);
    }
    if crate::tpm_policies::wanted(&ctx.config.key, &ctx.paths.sealed_dir, &ctx.config.tpm) {
        let t = Instant::now();
        let cache = ctx.floor_from.as_ref().map(|c| c.dir().to_owned());
        let sealed_dir = ctx.paths.sealed_dir.clone();
        for line in crate::tpm_policies::fetch(&transport, &bases, &node, &sealed_dir, cache.as_deref(), deadline) {
            ctx.report.warnings.push(line);
        }
        ctx.stage("tpm-policies", t);
    }
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::from("no server answered");
    // Why each server's bundle was refused: such a server is not asked
    // again (it would serve the same bundle), the others still are.
    let mut refused: Vec<Option<String>> = vec![None; bases.len()];
    let mut round = 0;
    loop {
        round += 1;
        let mut all_missing = true;
        for (base, verdict) in bases.iter().zip(refused.iter_mut()) {
            if verdict.is_some() {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(NetworkError::GaveUp { last, budget });
            }
            let src = stack::Source::Http { transport: &transport, base };
            match stack::fetch_source(ctx, &src, &node, deadline) {
                Ok(stack::Found::Single(layer)) => {
                    let layer = *layer;
                    let url = format!("{base}/{}", layer.target.path());
                    return Ok(FetchResult::Fresh {
                        ready: Box::new(layer.ready),
                        staging: layer.staging,
                        url,
                        download: layer.file,
                    });
                }
                Ok(stack::Found::SingleNotModified(url)) => return Ok(FetchResult::NotModified { url }),
                Ok(stack::Found::Stack(layers)) => return Ok(FetchResult::Stack { layers, url: base.clone() }),
                Ok(stack::Found::Nothing) => continue,
                Err(stack::Stop::NotModified { url }) => return Ok(FetchResult::NotModified { url }),
                Err(stack::Stop::OutOfTime { url, phase }) => {
                    return Err(NetworkError::Budget { url, budget, phase });
                }
                Err(stack::Stop::Refused { url, refusal }) => {
                    // Logged once here; the final line says it again.
                    let line = format!("bundle from {url} refused: {}", chain(&refusal));
                    ctx.warn(line.clone());
                    *verdict = Some(line);
                }
                Err(stack::Stop::Failed { err }) => {
                    all_missing = false;
                    // Try the next server rather than the next path: a
                    // broken server must not make us fall back to a less
                    // specific bundle.
                    last = format!("{base}: {}", chain(&err));
                }
            }
        }
        let verdicts: Vec<String> = refused.iter().flatten().cloned().collect();
        // Every server refused, or the rest have nothing: the refusals are
        // the news (a tampered or replayed bundle), not the 404s.
        if verdicts.len() == bases.len() || (all_missing && !verdicts.is_empty()) {
            return Err(NetworkError::Refused(verdicts));
        }
        if all_missing {
            return Err(NetworkError::NoBundle(node));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NetworkError::Unreachable { last, budget });
        }
        let wait = jitter(backoff).min(left);
        log::info!("round {round} failed; retrying in {} ms", wait.as_millis());
        std::thread::sleep(wait);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if Instant::now() >= deadline {
            return Err(NetworkError::Unreachable { last, budget });
        }
    }
}

/// How long to wait for the media device to appear (udev may still be
/// creating its node when the loader starts).
const MEDIA_WAIT: Duration = Duration::from_secs(5);

/// Reads the stack (or a single bundle) from local media: the file system
/// labelled `label`, mounted read-only below the run directory, holding
/// the `v1/...` layout. Its bundles are verified exactly as a server's.
fn fetch_from_media(
    ctx: &mut Ctx<'_>,
    label: &str,
    keep: &mut Option<blockdev::MediaMount>,
) -> Result<FetchResult, NetworkError> {
    let media = |why: String| NetworkError::Media { label: label.to_owned(), why };
    let Some(node) = ctx.identity.as_ref().map(|i| i.node.clone()) else {
        return Err(NetworkError::NoIdentity);
    };
    let usb = if ctx.paths.usb_devices.is_empty() {
        Devices::Scan { sys: ctx.paths.host_root.join("sys"), dev: ctx.paths.host_root.join("dev") }
    } else {
        Devices::List(ctx.paths.usb_devices.clone())
    };
    let t = Instant::now();
    let found = loop {
        let found = blockdev::find_media(&usb.list(), label);
        if !found.is_empty() || t.elapsed() >= MEDIA_WAIT {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (device, kind) = match found.as_slice() {
        [] => return Err(media("no file system with this label".into())),
        [one] => one.clone(),
        many => {
            // Two devices with the label: which one holds the site is a
            // guess, and a stick planted beside the real one must not win.
            let names: Vec<String> = many.iter().map(|(d, _)| d.display().to_string()).collect();
            return Err(media(format!(
                "the label is on {} devices ({}); refusing to guess",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let mount = blockdev::MediaMount::mount(&device, kind, &ctx.paths.run_dir.join("media"))
        .map_err(|e| media(format!("{}: {}", device.display(), chain(&e))))?;
    ctx.stage("media-mount", t);
    let dir = mount.path().to_owned();
    *keep = Some(mount);
    let src = stack::Source::Dir(&dir);
    let deadline = ctx.started + ctx.config.timeout;
    match stack::fetch_source(ctx, &src, &node, deadline) {
        Ok(stack::Found::Single(layer)) => {
            let layer = *layer;
            let url = layer.from.clone();
            Ok(FetchResult::Fresh { ready: Box::new(layer.ready), staging: layer.staging, url, download: layer.file })
        }
        Ok(stack::Found::Stack(layers)) => Ok(FetchResult::Stack { layers, url: format!("media:{label}") }),
        Ok(stack::Found::Nothing) => Err(NetworkError::NoBundle(node)),
        Ok(stack::Found::SingleNotModified(url)) | Err(stack::Stop::NotModified { url }) => {
            Ok(FetchResult::NotModified { url })
        }
        Err(stack::Stop::Refused { url, refusal }) => {
            let line = format!("bundle from {url} refused: {}", chain(&refusal));
            ctx.warn(line.clone());
            Err(NetworkError::Refused(vec![line]))
        }
        Err(stack::Stop::OutOfTime { url, phase }) => {
            Err(NetworkError::Budget { url, budget: ctx.config.timeout, phase })
        }
        Err(stack::Stop::Failed { err }) => Err(media(chain(&err))),
    }
}

/// Full jitter: a random wait in [d/2, d].
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let frac = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(0.5 + frac / 2.0)
}

/// One URL to fetch.
struct Get<'a> {
    url: &'a str,
    if_none_match: Option<&'a str>,
    deadline: Instant,
}

/// The server's bundle, copied for the cache, in the run directory.
pub const DOWNLOAD: &str = "download.bundle";

/// Fetches one URL and verifies the bundle into staging as it arrives,
/// copying it to `download` for the cache when given. A server that
/// answers a resume with the whole body makes the transfer start over,
/// staging thrown away, within the resume limit and the budget.
fn fetch_one(ctx: &mut Ctx<'_>, transport: &Transport, get: &Get<'_>, download: Option<&Path>) -> Step {
    let limit = ctx.limits.max_payload + HEADER_LEN as u64;
    let mut restarts = 0;
    loop {
        let tee = match download {
            Some(path) => match create_new(path) {
                Ok(f) => Some(f),
                Err(e) => return Step::Failed(FetchError::Io(e)),
            },
            None => None,
        };
        let t = Instant::now();
        let req = Request { url: get.url, if_none_match: get.if_none_match, limit, deadline: get.deadline };
        let mut body = match transport.open(&req, tee) {
            Ok(Opened::Body(b)) => b,
            Ok(Opened::NotModified) => return Step::NotModified,
            Ok(Opened::NotFound) => return Step::NotFound,
            Err(e) => return Step::failed(e),
        };
        let (verified, tripped) = stream_verify(ctx, &mut body, get);
        let took = t.elapsed().as_millis();
        if verified.is_err() {
            // Half a bundle is no use to the cache.
            if let Some(path) = download {
                let _ = fs::remove_file(path);
            }
        }
        let (got, total) = (body.received(), body.total());
        let phase = || {
            if total.is_some_and(|t| t == got) { Phase::Extracting } else { Phase::Downloading { got, total } }
        };
        // A read error the bundle code saw is the transfer's when the body
        // says so, whatever the bundle code made of it; the budget's when
        // the guard tripped.
        match (verified, body.take_failure()) {
            (Ok((ready, staging)), _) => {
                let resumes = body.resumes();
                ctx.report.attempts.push(format!("{}: 200, {got} bytes, {resumes} resumes, {took} ms", get.url));
                let via = body.url().as_str();
                if via != get.url {
                    ctx.report.attempts.push(format!("{}: redirected to {via}", get.url));
                }
                ctx.report.final_url = Some(via.to_owned());
                log::info!("fetched and verified {} ({got} bytes) in {took} ms", get.url);
                return Step::Fresh(Box::new(ready), staging);
            }
            (Err(Refusal::Budget { .. }), _) => return Step::OutOfTime(phase()),
            (Err(_), _) if tripped => return Step::OutOfTime(phase()),
            (Err(_), Some(FetchError::Budget)) if got > 0 => return Step::OutOfTime(phase()),
            (Err(_), Some(FetchError::Restart)) if restarts < MAX_RESUMES && Instant::now() < get.deadline => {
                restarts += 1;
                ctx.report.attempts.push(format!(
                    "{}: resume answered with the whole bundle after {got} bytes; starting over",
                    get.url,
                ));
                ctx.outcome("server", get.url, "restarted", None);
                log::warn!("{}: the server sent the whole bundle again; starting over", get.url);
            }
            (Err(_), Some(e)) => return Step::failed(e),
            (Err(refusal), None) => return Step::Refused(refusal),
        }
    }
}

/// Verifies a bundle from a response body into staging: the early checks
/// on its header, then as [`verify_reader`], under the deadline. A panic
/// in there is a refusal. Also returns whether the deadline cut it short.
fn stream_verify(ctx: &mut Ctx<'_>, body: &mut Body, get: &Get<'_>) -> (Result<(Ready, Staging), Refusal>, bool) {
    let mut head = vec![0u8; HEADER_LEN];
    let n = match read_full(body, &mut head) {
        Ok(n) => n,
        Err(e) => return (Err(Refusal::Open(OpenError::Io(e))), false),
    };
    head.truncate(n);
    // Decided on the parsed scheme of the URL the body came from, after
    // redirects (which never go from https to http).
    if let Err(e) = early_check(&head, body.total(), body.plain_http(), ctx.config.insecure, ctx.key_required) {
        return (Err(e), false);
    }
    let guarded = Guarded::new(Cursor::new(head).chain(body), Some(get.deadline), guard::fault_for("server"));
    let tripped = guarded.tripped();
    let watchdog = Watchdog::start(get.deadline);
    let input = BufReader::with_capacity(READ_BUFFER, guarded);
    let verified = crash::catch(|| verify_reader(ctx, input, "server", Some(&watchdog.flag())))
        .unwrap_or_else(|p| Err(Refusal::Internal(p.0)));
    drop(watchdog);
    (verified, tripped.load(Ordering::Relaxed))
}

/// Refuses a body from its first bytes: not a bundle, size inconsistent,
/// or unencrypted over plain HTTP.
fn early_check(
    head: &[u8],
    total: Option<u64>,
    plain_http: bool,
    insecure: bool,
    key_required: bool,
) -> Result<(), Refusal> {
    let raw = RawHeader::parse(head).map_err(|e| Refusal::Open(e.into()))?;
    let h = raw.unverified();
    let declared = h.payload_len + HEADER_LEN as u64;
    if let Some(t) = total {
        if t != declared {
            return Err(Refusal::Length { sent: t, declared });
        }
    }
    if h.cipher == Cipher::None && key_required {
        return Err(Refusal::Downgrade);
    }
    if h.cipher == Cipher::None && plain_http && !insecure {
        return Err(Refusal::PlainHttp);
    }
    Ok(())
}

/// Verifies the bundle at `path` (a cache slot) and applies it.
fn verify_and_apply(ctx: &mut Ctx<'_>, path: &Path, source: &'static str) -> Result<Ready, Refusal> {
    let t = Instant::now();
    // No link, no FIFO: `slots` checked the file, but not this descriptor.
    let file = open_regular(path).map_err(|err| Refusal::OpenSlot { path: path.to_owned(), err })?;
    // The cache is the fallback once the budget is spent: no deadline.
    let guarded = Guarded::new(file, None, guard::fault_for(source));
    let (ready, staging) = verify_reader(ctx, BufReader::with_capacity(READ_BUFFER, guarded), source, None)?;
    ctx.stage(&format!("verify ({source})"), t);
    apply_staged(ctx, &ready, staging, source, &path.display().to_string())?;
    Ok(ready)
}

/// Applies a verified bundle from staging to the root and records it in
/// the report. Staging is removed whatever happens.
fn apply_staged(
    ctx: &mut Ctx<'_>,
    ready: &Ready,
    staging: Staging,
    source: &'static str,
    from: &str,
) -> Result<(), Refusal> {
    let t = Instant::now();
    let opts = crate::apply::ApplyOptions { owners: rustix::process::geteuid().is_root() };
    if let Some(image) = &ready.image {
        crate::image::stack_images(&ctx.paths.sysroot, &ctx.paths.run_dir, &[image.mount.as_path()])?;
        image.keep();
        ctx.stage("mount images", t);
    }
    // `.stateless/` is never written into the root, from any bundle.
    let res = stack::strip_meta(&staging).and_then(|()| {
        crate::apply::apply(staging.path(), &ctx.paths.sysroot, &opts)
            .map_err(|err| Refusal::Apply { path: ctx.paths.sysroot.clone(), err })
    });
    staging.finish();
    let summary = res?;
    ctx.stage("apply", t);
    ctx.report.layers = vec![stack::LayerReport {
        target: ready.target.clone().unwrap_or_else(|| ready.header.scope.to_string()),
        generation: ready.header.generation,
        digest: ready.digest.clone(),
        source: stack::layer_source(source),
        from: from.to_owned(),
        signer: ready.signer.map(|s| s.to_string()),
    }];
    log::debug!("applied {summary:?}");
    ctx.report.source = source;
    ctx.report.generation = Some(ready.header.generation);
    ctx.report.digest = Some(ready.digest.clone());
    ctx.report.key_id = (ready.header.cipher != Cipher::None).then(|| ready.header.key_id.to_string());
    ctx.report.key_source = ready.key_source.clone();
    ctx.report.signer = ready.signer.map(|s| s.to_string());
    Ok(())
}

/// Read buffer between the bundle's source (a file or a response body)
/// and decryption.
const READ_BUFFER: usize = 256 * 1024;

/// Authenticates a bundle, checks policy, and extracts it into a staging
/// directory in the root (see [`crate::staging`]), which is gone again when
/// this fails. `deadline_passed`, set by a [`Watchdog`], refuses a bundle
/// whose processing ended after the deadline.
fn verify_reader<R: Read + Send>(
    ctx: &mut Ctx<'_>,
    input: R,
    source: &str,
    deadline_passed: Option<&Arc<AtomicBool>>,
) -> Result<(Ready, Staging), Refusal> {
    let reader = BundleReader::new(input)?;
    // trust (issue 13): the publisher signature, before any key lookup.
    let signer = ctx.trust.check_signature(reader.raw_header())?;
    let needed = reader.key_id();
    let (key, key_source): (Option<Key>, Option<String>) = match reader.raw_header().cipher() {
        Cipher::None => {
            if ctx.key_required {
                return Err(Refusal::Downgrade);
            }
            (None, None)
        }
        _ => {
            let (k, src) = pick_key(ctx, needed)?;
            (Some(k), Some(src))
        }
    };
    let bundle = reader.authenticate(key.as_ref(), &ctx.limits)?;
    // The watchdog's flag also stops extraction between entries and data
    // blocks, so a bundle slow to extract (deep trees, many small files)
    // ends at the deadline rather than when extraction would have ended.
    let bundle = match deadline_passed {
        Some(flag) => bundle.cancel_on(Arc::clone(flag)),
        None => bundle,
    };
    // trust (issue 13): the payload must be the one signed; freshness.
    let bundle = ctx.trust.require(bundle)?;
    ctx.trust.check_age(bundle.header(), source.starts_with("cache"))?;
    let header = bundle.header().clone();
    let digest = bundle.digest_hex();
    if !source.starts_with("cache") {
        if let Some(cache) = ctx.floor_from.take() {
            // Verifying the cache's headers must not take this layer's
            // scope rule.
            let layer = ctx.layer.take();
            ctx.highest = rollback_floor(ctx, &cache, key.as_ref());
            ctx.floors = stack_floors(ctx, &cache, key.as_ref());
            ctx.layer = layer;
        }
    }
    check_policy(ctx, &header, &digest, source.starts_with("cache"))?;
    if !source.starts_with("cache") {
        check_tpm_floor(ctx, header.generation)?;
    }
    let staging =
        Staging::create(&ctx.paths.sysroot).map_err(|err| Refusal::Staging { path: ctx.paths.sysroot.clone(), err })?;
    let target = ctx.layer.as_ref().map(stack::Target::key);
    if header.kind == stateless_bundle::PayloadKind::ErofsImage {
        // Never extracted: stored in the tmpfs, checked whole, then
        // mounted. Only its `.stateless/` is copied into staging, where
        // the stack reads a layer's metadata.
        let name = target.clone().unwrap_or_else(|| "bundle".into());
        let image = crate::image::store_and_mount(bundle, &ctx.paths.sysroot, &ctx.paths.run_dir, &name)
            .and_then(|image| crate::image::copy_meta(&image, staging.path()).map(|()| image));
        let image = match image {
            Ok(image) => image,
            Err(e) => {
                staging.discard();
                return Err(e.into());
            }
        };
        return Ok((Ready { header, digest, key_source, signer, target, image: Some(image) }, staging));
    }
    let owners = rustix::process::geteuid().is_root();
    let extracted = bundle.extract(BundleOpen { dest: Some(staging.path()), owners, threaded: true });
    // Past the deadline, the extraction's end, whichever it was, is the
    // budget's: the deadline stopped it (a failed read, the cancellation
    // flag), or it ended too late to be applied.
    if deadline_passed.is_some_and(|f| f.load(Ordering::Relaxed)) {
        staging.discard();
        return Err(Refusal::Budget { budget: ctx.config.timeout, phase: Phase::Extracting });
    }
    if let Err(e) = extracted {
        staging.discard();
        return Err(e.into());
    }
    Ok((Ready { header, digest, key_source, signer, target, image: None }, staging))
}

/// The key places of a run, for the TPM's steps outside a bundle.
fn tpm_places(config: &Config, paths: &Paths) -> KeyPlaces {
    KeyPlaces {
        key_dir: paths.key_dir.clone(),
        sealed_dir: paths.sealed_dir.clone(),
        usb: Devices::List(Vec::new()),
        usb_mount: paths.run_dir.join("usb"),
        tpm: config.tpm.clone(),
    }
}

/// [`keyladder::close_tpm`] with the run's places.
pub fn close_tpm(config: &Config, paths: &Paths) {
    keyladder::close_tpm(&config.key, &tpm_places(config, paths));
}

/// [`keyladder::unseal_pins_early`] with the run's places.
pub fn unseal_pins_early(config: &Config, paths: &Paths) {
    keyladder::unseal_pins_early(&config.key, &tpm_places(config, paths));
}

fn pick_key(ctx: &Ctx<'_>, needed: KeyId) -> Result<(Key, String), Refusal> {
    let usb = if ctx.paths.usb_devices.is_empty() {
        Devices::Scan { sys: ctx.paths.host_root.join("sys"), dev: ctx.paths.host_root.join("dev") }
    } else {
        Devices::List(ctx.paths.usb_devices.clone())
    };
    let places = KeyPlaces {
        key_dir: ctx.paths.key_dir.clone(),
        sealed_dir: ctx.paths.sealed_dir.clone(),
        usb,
        usb_mount: ctx.paths.run_dir.join("usb"),
        tpm: ctx.config.tpm.clone(),
    };
    Ok(keyladder::pick_key(&ctx.config.key, &places, needed)?)
}

/// The scope, rollback and expiry rules. The rollback rule guards against a
/// server (or someone between it and the node) serving an old bundle; it is
/// not applied to the cache's own slots, which applied before on this node:
/// the previous slot is used only when the current one is unusable.
fn check_policy(ctx: &Ctx<'_>, h: &Header, digest: &str, from_cache: bool) -> Result<(), Refusal> {
    let node = ctx.identity.as_ref().map(|i| i.node.as_str());
    let groups = || if ctx.config.groups.is_empty() { "none".to_owned() } else { ctx.config.groups.join(",") };
    let admitted = match (&ctx.layer, &h.scope) {
        // A layer: the scope its place in the stack admits; a node layer
        // only this node's (a cache disk moved from another node names
        // that node's layer).
        (Some(stack::Target::Node(n)), _) if Some(n.as_str()) != node => false,
        (Some(t), scope) => t.admits(scope),
        // A cache's single-bundle slot: the node's own, its groups', any.
        (None, Scope::Any) => true,
        (None, Scope::Node(n)) => Some(n.as_str()) == node,
        (None, Scope::Group(g)) => ctx.config.groups.contains(g),
        (None, _) => false,
    };
    if !admitted {
        return Err(Refusal::Scope { scope: h.scope.clone(), node: node.unwrap_or("?").to_owned(), group: groups() });
    }
    // Per layer target for a layer; the single-bundle floor otherwise.
    let floor = match &ctx.layer {
        Some(t) => ctx.floors.get(&t.key()),
        None => ctx.highest.as_ref(),
    };
    check_floor(floor.filter(|_| !from_cache), h.generation, digest)?;
    check_expiry(h)
}

/// `rd.stateless.rollback=tpm`: the layer's generation against its floor
/// in the TPM ([`crate::rollback`]), taken together with the cache's (a
/// bundle must pass both: the higher floor wins).
fn check_tpm_floor(ctx: &mut Ctx<'_>, generation: u64) -> Result<(), Refusal> {
    let (Some(rollback), Some(target)) = (ctx.rollback.as_mut(), ctx.layer.as_ref()) else { return Ok(()) };
    let t = Instant::now();
    let checked = rollback.check(&target.key(), generation);
    let warnings = rollback.take_warnings();
    for w in warnings {
        ctx.warn(w);
    }
    ctx.stage("tpm floor", t);
    checked
}

/// Raises the TPM floors of the layers just applied from a server or
/// media.
fn raise_tpm_floors(ctx: &mut Ctx<'_>, applied: &[(String, u64)]) {
    let Some(rollback) = ctx.rollback.as_mut() else { return };
    let t = Instant::now();
    rollback.raise(applied);
    let warnings = rollback.take_warnings();
    for w in warnings {
        ctx.warn(w);
    }
    ctx.stage("tpm raise", t);
}

/// The rollback rule against one floor (generation and digest).
fn check_floor(floor: Option<&(u64, String)>, generation: u64, digest: &str) -> Result<(), Refusal> {
    if let Some((applied, seen_digest)) = floor {
        if generation < *applied {
            return Err(Refusal::Rollback { got: generation, applied: *applied });
        }
        if generation == *applied && digest != seen_digest {
            return Err(Refusal::Replay(generation));
        }
    }
    Ok(())
}

/// A server's single bundle (one without layer.toml) checked against the
/// floor of the cache's single-bundle slots, as before layers. It is
/// checked after extraction, when it is known to be a single bundle: a
/// site's first layers must not be refused for a single bundle's
/// generations.
fn check_single_floor(ctx: &Ctx<'_>, ready: &Ready) -> Result<(), Refusal> {
    check_floor(ctx.highest.as_ref(), ready.header.generation, &ready.digest)
}

fn check_expiry(h: &Header) -> Result<(), Refusal> {
    let t = now();
    if let Some(exp) = h.expires {
        if t >= SANE_CLOCK_FLOOR && t > exp {
            return Err(Refusal::Expired(fmt_time(exp)));
        }
        if t < SANE_CLOCK_FLOOR {
            log::warn!("clock is not set; bundle expiry not checked");
        }
    }
    Ok(())
}

/// The rollback floor from the cached bundles' headers, authenticated with
/// the key each names (see [`Cache::rollback_floor`]). With `key=none`
/// nothing can be authenticated, so there is no floor.
///
/// It is computed only when a server's bundle has authenticated and its
/// policy is to be checked, with that bundle's key `known` at hand: the
/// cached bundles are almost always sealed for the same key, so there is
/// no second key lookup (a TPM unseal, a wait for a USB stick) and nothing
/// before the network eats into the time budget. A boot from the cache
/// needs no floor.
fn rollback_floor(ctx: &mut Ctx<'_>, cache: &Cache, known: Option<&Key>) -> Option<(u64, String)> {
    if !ctx.key_required {
        log::debug!("rd.stateless.key=none: no key to authenticate the cache with; rollback not checked");
        return None;
    }
    // A slot sealed for another key (the old one, during a rotation) needs
    // a lookup: done once per key.
    let mut keys: Vec<Key> = known.into_iter().cloned().collect();
    let (floor, warnings) = cache.rollback_floor(&mut |raw| {
        if raw.cipher() == Cipher::None {
            return Err(FloorError::NotEncrypted);
        }
        // trust (issue 13): a slot no trusted publisher signed must not
        // raise the floor (a forged high generation would refuse every
        // real bundle).
        ctx.trust.check_signature(raw).map_err(Refusal::Trust)?;
        let key = match keys.iter().position(|k| k.id() == raw.key_id()) {
            Some(i) => keys.swap_remove(i),
            None => pick_key(ctx, raw.key_id())?.0,
        };
        let authenticated = raw.authenticate(Some(&key)).map_err(|e| Refusal::Open(OpenError::Header(e)));
        keys.push(key);
        let (header, _) = authenticated?;
        // Another node's bundle says nothing about this node's generations.
        check_policy(ctx, &header, &raw.digest_hex(), true)?;
        Ok(header)
    });
    for w in warnings {
        ctx.warn(format!("cache: {w}"));
    }
    log::debug!("rollback floor: {floor:?}");
    floor
}

/// The rollback floor of each layer target, from the cached stacks' blobs
/// (see [`Cache::stack_floors`]), authenticated like [`rollback_floor`]'s;
/// a blob whose scope does not fit its target raises nothing.
fn stack_floors(
    ctx: &mut Ctx<'_>,
    cache: &Cache,
    known: Option<&Key>,
) -> std::collections::BTreeMap<String, (u64, String)> {
    if !ctx.key_required {
        return std::collections::BTreeMap::new();
    }
    let mut keys: Vec<Key> = known.into_iter().cloned().collect();
    let node = ctx.identity.as_ref().map(|i| i.node.clone());
    let (floors, warnings) = cache.stack_floors(&mut |target, raw| {
        if raw.cipher() == Cipher::None {
            return Err(FloorError::NotEncrypted);
        }
        ctx.trust.check_signature(raw).map_err(Refusal::Trust)?;
        let key = match keys.iter().position(|k| k.id() == raw.key_id()) {
            Some(i) => keys.swap_remove(i),
            None => pick_key(ctx, raw.key_id())?.0,
        };
        let authenticated = raw.authenticate(Some(&key)).map_err(|e| Refusal::Open(OpenError::Header(e)));
        keys.push(key);
        let (header, _) = authenticated?;
        let fits = stack::Target::parse(target).is_some_and(|t| {
            t.admits(&header.scope) && !matches!(&t, stack::Target::Node(n) if Some(n) != node.as_ref())
        });
        if !fits {
            return Err(Refusal::Scope {
                scope: header.scope.clone(),
                node: node.clone().unwrap_or_else(|| "?".into()),
                group: target.to_owned(),
            }
            .into());
        }
        Ok(header)
    });
    for w in warnings {
        ctx.warn(format!("cache: {w}"));
    }
    log::debug!("rollback floors per layer: {floors:?}");
    floors
}

fn store_in_cache(ctx: &mut Ctx<'_>, cache: &Cache, path: &Path, ready: &Ready, url: &str) {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let meta = SlotMeta {
        generation: ready.header.generation,
        digest: ready.digest.clone(),
        fetched: now(),
        server: url.to_owned(),
        key_id: ready.header.key_id.to_string(),
        size,
        highest_generation: ctx
            .highest
            .as_ref()
            .map_or(ready.header.generation, |(g, _)| (*g).max(ready.header.generation)),
    };
    let t = Instant::now();
    match cache.store(path, &meta) {
        Ok(()) => ctx.stage("cache", t),
        Err(e) => ctx.warn(format!("cache not updated (old slots kept): {}", chain(&e))),
    }
}

/// Creates a new file in the run directory for writing, never through
/// what is already there: a stale entry (a file, or a symlink or FIFO
/// planted there) is removed first without being followed, and the file
/// is created exclusively, so a link made in between fails the open
/// instead of redirecting the write.
fn create_new(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("removing the stale {}: {e}", path.display()))),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))
}

/// Writes `status.json` atomically: a new temporary file (see
/// [`create_new`]), then a rename over whatever is at `status.json`
/// (rename replaces a symlink or FIFO there, it does not follow it).
fn write_status(run_dir: &Path, report: &Report) -> io::Result<()> {
    // The panic hook may write from another thread while the pipeline
    // does: each writer has its own temporary file.
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let json = serde_json::to_vec_pretty(report).map_err(io::Error::other)?;
    // A boot that failed before the pipeline started may not have made it.
    fs::create_dir_all(run_dir)?;
    let tmp = run_dir.join(format!(".status.json.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let written = create_new(&tmp).and_then(|mut f| f.write_all(&json));
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, run_dir.join("status.json"))) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{fmt_date, fmt_time};

    #[test]
    fn times_outside_rfc3339_are_shown_as_numbers() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(fmt_date(1_767_225_600), "2026-01-01");
        for t in [253_402_300_800, i64::MAX, -1, i64::MIN] {
            assert_eq!(fmt_time(t), format!("{t} (Unix time)"));
            assert_eq!(fmt_date(t), format!("{t} (Unix time)"));
        }
    }
}
