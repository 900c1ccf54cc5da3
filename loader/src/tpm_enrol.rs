//! Zero-touch TPM enrolment, the node's side (docs/keys.md "Zero-touch
//! enrolment"). With `rd.stateless.key=tpm` (alone or in a list), before
//! any bundle is opened:
//!
//! 1. the node asks each server for `v1/nodes/NODE/tpm-key`, a key the
//!    admin wrapped for this TPM (`statelessctl approve NODE --tpm-key`);
//!    when there is one it is imported (`TPM2_Import`) and written as an
//!    ordinary sealed-key file into the sealed-key directory (in the
//!    initramfs, a tmpfs: gone after the boot), where the key ladder's TPM
//!    source unseals it as any other;
//! 2. when no server has one and the boot image holds no sealed key, the
//!    node posts its TPM's EK, SRK, EK certificate and PCR values to
//!    `v1/nodes/NODE/enrol` and says on the console that it waits for
//!    approval; the boot then goes on without the key, so it falls back as
//!    configured (the cache, then `rd.stateless.onfail`).
//!
//! Nothing here fails the boot by itself: each problem is one console line
//! and the key ladder's own error says the rest.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use stateless_bundle::error_chain as chain;
use stateless_keys::tpm::enrol::ek_hash;
use stateless_keys::tpm::import::{MAX_WRAPPED_LEN, WrappedKey};
use stateless_keys::tpm::source::TPM_DEVICE_WAIT;
use stateless_keys::tpm::{Tpm, TpmSelector};

use crate::cmdline::KeyChoice;
use crate::fetch::{Opened, Request, Transport};

/// The longest one request of the enrolment may take (of the boot's budget).
const REQUEST_TIME: Duration = Duration::from_secs(10);

/// Whether the key choice names the TPM explicitly.
pub fn wanted(choice: &KeyChoice) -> bool {
    match choice {
        KeyChoice::Tpm => true,
        KeyChoice::List(items) => items.iter().any(|i| matches!(i, KeyChoice::Tpm)),
        _ => false,
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A wrapped key was imported and written as this sealed-key file.
    Imported(String),
    /// The node enrolled (or had enrolled) and waits for approval.
    Waiting(String),
    /// Nothing to do (a sealed key is in the boot image, no server answered).
    Nothing,
    /// A problem, in one line (also logged).
    Problem(String),
}

/// Where the imported key goes.
#[derive(Debug, Clone, Copy)]
pub struct Places<'a> {
    /// The sealed-key directory the key ladder's TPM source reads.
    pub sealed_dir: &'a Path,
    /// The cache disk's root, when the node has one: a copy of the imported
    /// key is kept there, so that a later boot that reaches no server can
    /// still open the cached bundles.
    pub cache: Option<&'a Path>,
}

/// The copy of the imported key on the cache disk.
pub fn cached_file(cache: &Path) -> std::path::PathBuf {
    cache.join("tpm").join("enrolled.sealed")
}

/// Where the imported key is written, in the sealed-key directory.
pub fn imported_file(sealed_dir: &Path) -> std::path::PathBuf {
    sealed_dir.join("enrolled.sealed")
}

fn url(base: &str, node: &str, what: &str) -> String {
    format!("{}/v1/nodes/{node}/{what}", base.trim_end_matches('/'))
}

fn open_tpm(selector: &TpmSelector) -> Result<Tpm, String> {
    if let TpmSelector::Device(p) = selector {
        let until = Instant::now() + TPM_DEVICE_WAIT;
        while !p.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Tpm::open(selector).map_err(|e| chain(&e))
}

/// Step 1 then 2 of the module documentation, with `bases` the servers in
/// order.
pub fn prepare(
    transport: &Transport,
    bases: &[String],
    node: &str,
    places: &Places<'_>,
    tpm: &TpmSelector,
    deadline: Instant,
) -> Outcome {
    let sealed_dir = places.sealed_dir;
    let until = || deadline.min(Instant::now() + REQUEST_TIME);
    let mut answered: Vec<&String> = Vec::new();
    for base in bases {
        let u = url(base, node, "tpm-key");
        let req = Request { url: &u, if_none_match: None, limit: MAX_WRAPPED_LEN as u64, deadline: until() };
        match transport.open(&req, None) {
            Ok(Opened::Body(mut body)) => {
                let mut text = Vec::new();
                if let Err(e) = body.as_mut().take(MAX_WRAPPED_LEN as u64 + 1).read_to_end(&mut text) {
                    log::warn!("TPM key from {u}: {e}");
                    continue;
                }
                return import(&u, &text, places, tpm);
            }
            Ok(Opened::NotFound | Opened::NotModified) => answered.push(base),
            Err(e) => log::debug!("TPM key from {u}: {}", chain(&e)),
        }
    }
    let Some(first) = answered.first() else {
        // No server answered: the key imported on an earlier boot, from
        // the cache disk, opens the cached bundles.
        if let Some(copy) = places.cache.map(cached_file).filter(|p| p.is_file()) {
            return match write_sealed(sealed_dir, &fs::read(&copy).unwrap_or_default()) {
                Ok(()) => {
                    let line = "no server answered; using the TPM key imported on an earlier boot (cache disk)";
                    log::info!("{line}");
                    Outcome::Imported(line.into())
                }
                Err(e) => problem(format!("TPM key from the cache disk: {e}")),
            };
        }
        return Outcome::Nothing;
    };
    // Withdrawn (`reject`): a key imported on an earlier boot goes too,
    // from the cache disk and from this root (a host-mode loader; an
    // initramfs starts without one).
    let cached = places.cache.map(cached_file).is_some_and(|p| fs::remove_file(p).is_ok());
    if fs::remove_file(imported_file(sealed_dir)).is_ok() || cached {
        log::warn!("{first} no longer publishes a TPM key for {node}; the one imported earlier is removed");
    }
    if has_sealed_key(sealed_dir) {
        return Outcome::Nothing;
    }
    // Mirrors (a plain web server) do not take enrolments: the first server
    // that does gets it.
    let mut tpm_open = None;
    let mut last = Outcome::Nothing;
    for base in answered {
        match enrol(transport, base, node, tpm, &mut tpm_open, until()) {
            Some(done) => return done,
            None => last = problem(format!("TPM enrolment: {base} does not take enrolments")),
        }
    }
    last
}

/// Whether the sealed-key directory holds a sealed key (not counting one
/// imported on an earlier run of a host-mode test, which step 1 replaces).
fn has_sealed_key(dir: &Path) -> bool {
    let imported = imported_file(dir);
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .any(|p| p.extension().is_some_and(|x| x == "sealed") && p != imported)
}

fn problem(line: String) -> Outcome {
    log::warn!("{line}");
    Outcome::Problem(line)
}

/// Writes a sealed-key file as the imported key (0600, atomically).
fn write_sealed(dir: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(".enrolled.sealed.tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text)?;
    f.sync_all()?;
    fs::rename(&tmp, imported_file(dir))
}

fn import(url: &str, text: &[u8], places: &Places<'_>, selector: &TpmSelector) -> Outcome {
    let sealed_dir = places.sealed_dir;
    let wrapped = match WrappedKey::parse(text) {
        Ok(w) => w,
        Err(e) => return problem(format!("TPM key from {url} refused: {e}")),
    };
    let mut tpm = match open_tpm(selector) {
        Ok(t) => t,
        Err(e) => return problem(format!("TPM key from {url} not imported: TPM {selector}: {e}")),
    };
    let sealed = match tpm.import(&wrapped) {
        Ok(s) => s,
        Err(e) => return problem(format!("TPM key from {url} refused: {}", chain(&e))),
    };
    let path = imported_file(sealed_dir);
    let text = sealed.to_text();
    match write_sealed(sealed_dir, text.as_bytes()) {
        Ok(()) => {
            // The imported object is this TPM's own: useless elsewhere, so
            // it may rest on the cache disk like a sealed key in the image.
            if let Some(cache) = places.cache {
                let copy = cached_file(cache);
                if let Err(e) = copy.parent().map_or(Ok(()), |d| write_sealed(d, text.as_bytes())) {
                    log::warn!("keeping the imported TPM key on the cache disk ({}): {e}", copy.display());
                }
            }
            let line = format!("imported key {} that {url} wrapped for this TPM", wrapped.sealed.key_id.short());
            log::info!("{line}");
            Outcome::Imported(line)
        }
        Err(e) => problem(format!("TPM key from {url}: writing {}: {e}", path.display())),
    }
}

/// Posts the enrolment to `base`; `None` when that server does not take
/// enrolments (404, 405, or no answer), so the next may be tried. The
/// TPM's answer is read once (`cached`).
fn enrol(
    transport: &Transport,
    base: &str,
    node: &str,
    selector: &TpmSelector,
    cached: &mut Option<stateless_keys::tpm::enrol::Enrolment>,
    deadline: Instant,
) -> Option<Outcome> {
    let enrolment = match cached {
        Some(e) => e.clone(),
        None => {
            let mut tpm = match open_tpm(selector) {
                Ok(t) => t,
                Err(e) => return Some(problem(format!("TPM enrolment not sent: TPM {selector}: {e}"))),
            };
            match tpm.enrolment() {
                Ok(e) => cached.insert(e).clone(),
                Err(e) => return Some(problem(format!("TPM enrolment not sent: {}", chain(&e)))),
            }
        }
    };
    let u = url(base, node, "enrol");
    let Ok(parsed) = crate::fetch::parse_url(&u) else {
        return Some(problem(format!("TPM enrolment not sent: bad URL {u}")));
    };
    let hash = ek_hash(&enrolment.ek_public);
    let body = enrolment.to_json();
    match transport.post(&parsed, &[("Content-Type", "application/json")], body.as_bytes(), deadline) {
        Ok(200 | 201) => {
            let line = format!(
                "TPM enrolled with {base} (EK SHA-256 {hash}); waiting for approval (statelessctl approve {node} --tpm-key KEYFILE); this boot goes on without the TPM key"
            );
            log::warn!("{line}");
            Some(Outcome::Waiting(line))
        }
        Ok(404 | 405) => None,
        Ok(status) => {
            let why = match status {
                409 => {
                    ": the server has another TPM enrolled for this node (statelessctl reject, then it enrols again)"
                }
                403 => ": this node is rejected",
                429 => ": too many enrolments from this address",
                _ => "",
            };
            Some(problem(format!("TPM enrolment refused by {base}: HTTP {status}{why}")))
        }
        Err(e) => {
            log::warn!("TPM enrolment not sent to {base}: {}", chain(&e));
            None
        }
    }
}
