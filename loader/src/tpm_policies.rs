//! Signed PCR policies from the servers and the cache disk (docs/keys.md
//! "Signed PCR policies"). A signed policy is public and authenticated by
//! its signature (the TPM checks it against the policy key in the sealed
//! object), so it is fetched in the clear and kept on the untrusted cache
//! disk: a forged or foreign one just does not authorise.
//!
//! Two lists, each several signed policies in one file:
//! `v1/default/tpm-policies` and `v1/nodes/NODE/tpm-policies`. Each is
//! written as `fetched-policies/{default,node}.policies` in the sealed-key
//! directory, where the key ladder's TPM source reads it after the boot
//! image's own `policies/*.signed`, and copied to `tpm/policies/` on the
//! cache disk. At the start of a run the cache disk's copies are put in
//! place ([`restore`]); a server that answers replaces them ([`fetch`]):
//! its list, or none when it has none (404). Nothing here fails the boot:
//! each problem is one console line.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stateless_bundle::error_chain as chain;
use stateless_keys::TpmSource;
use stateless_keys::tpm::TpmSelector;
use stateless_keys::tpm::policy::{MAX_POLICY_LIST_LEN, parse_signed_policy_list};
use stateless_keys::tpm::source::{FETCHED_POLICY_SUBDIR, POLICY_LIST_EXT};

use crate::cmdline::KeyChoice;
use crate::fetch::{Opened, Request, Transport};

/// The longest one request may take (of the boot's budget).
const REQUEST_TIME: Duration = Duration::from_secs(10);

/// The server path of list `name` (`default` or `node`) for `node`.
pub fn server_path(name: &str, node: &str) -> String {
    match name {
        "node" => format!("v1/nodes/{node}/tpm-policies"),
        _ => "v1/default/tpm-policies".into(),
    }
}

/// The lists, in the order the TPM source tries them.
pub const LISTS: [&str; 2] = ["default", "node"];

/// Where list `name` is kept in the sealed-key directory.
pub fn fetched_file(sealed_dir: &Path, name: &str) -> PathBuf {
    sealed_dir.join(FETCHED_POLICY_SUBDIR).join(format!("{name}.{POLICY_LIST_EXT}"))
}

/// Where list `name` is kept on the cache disk.
pub fn cached_file(cache: &Path, name: &str) -> PathBuf {
    cache.join("tpm").join("policies").join(format!("{name}.{POLICY_LIST_EXT}"))
}

/// Whether the TPM may be asked for a key: `choice` names it, or `auto`.
pub fn tpm_in(choice: &KeyChoice) -> bool {
    match choice {
        KeyChoice::Auto | KeyChoice::Tpm => true,
        KeyChoice::List(items) => items.iter().any(|i| matches!(i, KeyChoice::Tpm)),
        _ => false,
    }
}

/// Whether the TPM may be asked for a key and a sealed key in `sealed_dir`
/// is sealed under a policy key, so that signed policies are worth a
/// request.
pub fn wanted(choice: &KeyChoice, sealed_dir: &Path, tpm: &TpmSelector) -> bool {
    tpm_in(choice)
        && TpmSource { dir: sealed_dir.to_owned(), selector: tpm.clone() }
            .sealed()
            .is_ok_and(|s| s.iter().any(|k| k.policy_key.is_some()))
}

/// Puts the cache disk's copies in place of the lists in `sealed_dir`
/// (removing those the cache disk has none of): what an offline boot uses.
pub fn restore(sealed_dir: &Path, cache: Option<&Path>) {
    for name in LISTS {
        restore_one(sealed_dir, cache, name);
    }
}

fn restore_one(sealed_dir: &Path, cache: Option<&Path>, name: &str) {
    let copy = cache.map(|c| cached_file(c, name));
    match copy.as_deref().map(read_list) {
        Some(Ok(text)) => {
            if let Err(e) = write_atomic(&fetched_file(sealed_dir, name), &text) {
                log::warn!("TPM policies: putting the cache disk's {name} list in place: {e}");
            }
        }
        Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
            log::warn!("TPM policies: the cache disk's {name} list: {e}");
            let _ = fs::remove_file(fetched_file(sealed_dir, name));
        }
        _ => {
            let _ = fs::remove_file(fetched_file(sealed_dir, name));
        }
    }
}

fn read_list(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    fs::File::open(path)?.take(MAX_POLICY_LIST_LEN as u64 + 1).read_to_end(&mut text)?;
    Ok(text)
}

/// Asks the servers (in order) for each list; the first that answers
/// decides: its list replaces the one in `sealed_dir` and on the cache
/// disk, its 404 removes both. A list that does not parse as a whole is
/// refused (one line in the returned warnings) and the copy kept earlier
/// stays; bad entries of a list are named by the TPM source when it
/// needs them.
pub fn fetch(
    transport: &Transport,
    bases: &[String],
    node: &str,
    sealed_dir: &Path,
    cache: Option<&Path>,
    deadline: Instant,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for name in LISTS {
        let rel = server_path(name, node);
        let mut decided = false;
        for base in bases {
            let u = format!("{}/{rel}", base.trim_end_matches('/'));
            let req = Request {
                url: &u,
                if_none_match: None,
                limit: MAX_POLICY_LIST_LEN as u64,
                deadline: deadline.min(Instant::now() + REQUEST_TIME),
            };
            match transport.open(&req, None) {
                Ok(Opened::Body(mut body)) => {
                    let mut text = Vec::new();
                    let read = body.as_mut().take(MAX_POLICY_LIST_LEN as u64 + 1).read_to_end(&mut text);
                    if let Err(e) = read {
                        log::debug!("TPM policies from {u}: {e}");
                        continue;
                    }
                    match parse_signed_policy_list(&text) {
                        Ok(entries) => {
                            keep(sealed_dir, cache, name, &text);
                            log::info!("TPM policies: {} signed from {u}", entries.len());
                        }
                        Err(e) => {
                            let line = format!("TPM policies from {u} refused: {e}");
                            log::warn!("{line}");
                            warnings.push(line);
                        }
                    }
                    decided = true;
                    break;
                }
                Ok(Opened::NotFound) => {
                    decided = true;
                    let _ = fs::remove_file(fetched_file(sealed_dir, name));
                    if cache.is_some_and(|c| fs::remove_file(cached_file(c, name)).is_ok()) {
                        log::info!("TPM policies: {u} has none; the copy on the cache disk is removed");
                    }
                    break;
                }
                Ok(Opened::NotModified) => continue,
                // The server answered, with a list no node takes: said once,
                // and the copy kept earlier stays.
                Err(e @ crate::fetch::FetchError::TooLarge(_)) => {
                    let line = format!("TPM policies from {u} refused: {e}");
                    log::warn!("{line}");
                    warnings.push(line);
                    decided = true;
                    break;
                }
                Err(e) => log::debug!("TPM policies from {u}: {}", chain(&e)),
            }
        }
        if !decided {
            // No server answered: the copy of the last answer, again (a
            // key imported from the cache disk since the start of the run
            // may need it).
            restore_one(sealed_dir, cache, name);
        }
    }
    warnings
}

fn keep(sealed_dir: &Path, cache: Option<&Path>, name: &str, text: &[u8]) {
    if let Err(e) = write_atomic(&fetched_file(sealed_dir, name), text) {
        log::warn!("TPM policies: writing {}: {e}", fetched_file(sealed_dir, name).display());
    }
    if let Some(copy) = cache.map(|c| cached_file(c, name)) {
        if let Err(e) = write_atomic(&copy, text) {
            log::warn!("TPM policies: keeping them on the cache disk ({}): {e}", copy.display());
        }
    }
}

fn write_atomic(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
