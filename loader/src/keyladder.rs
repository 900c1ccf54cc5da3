//! The key ladder: where the loader looks for the key a bundle names.
//!
//! `rd.stateless.key=auto` tries the keys embedded in the boot image
//! (`/etc/stateless/keys/*.key`), then the TPM
//! (`/etc/stateless/tpm/*.sealed`), and stops at the first key whose id is
//! the bundle's. A USB stick labelled `STATELESS` comes last, and only on a
//! node whose boot image holds neither (a node provisioned by stick): on a
//! node with keys of its own, a stick must not outvote them
//! ([`crate::trust::auto_excludes_usb`]). A list (`rd.stateless.key=tpm,usb:KEYS`)
//! tries exactly the sources it names, in its order. Only when none has it does the loader wait for
//! a stick that is slow to appear: it polls `/sys/class/block` for up to
//! [`USB_WAIT`] and looks again whenever the set of block devices changes.
//! An explicit `usb` choice waits the same way. The wait happens at most once
//! per run: when the server's bundle and then the cached ones need a key that
//! is nowhere, the loader does not wait again for each of them. Nothing else waits (the TPM
//! device node only briefly, see [`stateless_keys::tpm::source`]), so a node
//! without a stick or TPM is never held up for long.
//!
//! When no source has the key, the error names the id needed and what each
//! source offered:
//! `bundle needs key 3f2a8c01…; key directory /etc/stateless/keys had 91bc4d22…; USB stick STATELESS: not found (waited 5 s); TPM: no sealed key (/etc/stateless/tpm does not exist)`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use stateless_bundle::{Key, KeyId};
use stateless_keys::tpm::TpmSelector;
use stateless_keys::tpm::source::BootKeys;
use stateless_keys::usb::{DEFAULT_LABEL, Devices, UsbSource};
use stateless_keys::{DirSource, FileSource, KeySource, KeySourceError, Lookup, Offered, TpmSource, find_key};

use crate::cmdline::KeyChoice;

/// Longest wait for a USB stick to appear, once nothing else had the key.
pub const USB_WAIT: Duration = Duration::from_secs(5);
/// How often `/sys/class/block` is looked at while waiting.
const USB_POLL: Duration = Duration::from_millis(200);
/// Set once this process has waited for a stick (the loader runs once per
/// boot, so process-wide is per boot).
static USB_WAITED: AtomicBool = AtomicBool::new(false);
/// What the TPM unsealed on this boot, per TPM and sealed-key directory:
/// the source closes the sealed keys after the first unseal (the lock PCR,
/// see `stateless_keys::tpm::lock`), so every later bundle, the cache's
/// rollback check and the boot report take their keys from here.
static TPM_BOOT: Mutex<Vec<(String, PathBuf, BootKeys)>> = Mutex::new(Vec::new());

/// Where the loader asks for the PIN of a key sealed with one
/// (`statelessctl key tpm-seal --pin`): the console, `--console`.
static CONSOLE: OnceLock<PathBuf> = OnceLock::new();
/// How long the loader waits for a PIN to be typed, per try.
pub const PIN_WAIT: Duration = Duration::from_secs(60);
/// Longest line read as a PIN (longer is no PIN: a PIN is at most 32 bytes).
const PIN_LINE_MAX: usize = 64;

/// Lets the TPM source ask for PINs on `console` (the loader's
/// `--console`, `/dev/console` by default).
pub fn ask_pins_on(console: &Path) {
    let _ = CONSOLE.set(console.to_owned());
    stateless_keys::tpm::source::set_pin_prompt(ask_pin);
}

/// Asks for the PIN of key `id` on the console, without echo where it is a
/// terminal; `None` when the console cannot be opened or nothing is typed
/// within [`PIN_WAIT`].
fn ask_pin(id: KeyId, attempt: usize) -> Option<zeroize::Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    use std::io::Write;
    let path = CONSOLE.get()?;
    // Two handles: the prompt is appended (a file standing in for the
    // console in tests keeps its text), the answer read from the start.
    let console = std::fs::File::open(path).ok()?;
    // A regular file is read only as far as it went before the prompt.
    let limit = console.metadata().ok().filter(std::fs::Metadata::is_file).map(|m| m.len());
    let mut out = std::fs::OpenOptions::new().append(true).open(path).ok()?;
    let again = if attempt > 1 { ", again" } else { "" };
    let _ = write!(out, "stateless: PIN for TPM key {}{again}: ", id.short());
    let _ = out.flush();
    let saved = tcgetattr(&console).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        let _ = tcsetattr(&console, OptionalActions::Now, &quiet);
    }
    let line = read_line(&console, PIN_WAIT, limit);
    if let Some(t) = &saved {
        let _ = tcsetattr(&console, OptionalActions::Now, t);
        let _ = writeln!(out);
    }
    if line.is_none() {
        log::warn!("TPM: no PIN for key {} typed on {} within {} s", id.short(), path.display(), PIN_WAIT.as_secs());
    }
    line
}

/// One line from `f` (at most `limit` bytes of it), waiting at most `wait`
/// in all; `None` on timeout, an empty line or an over-long one.
fn read_line(f: &std::fs::File, wait: Duration, limit: Option<u64>) -> Option<zeroize::Zeroizing<String>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let until = Instant::now() + wait;
    let mut line = zeroize::Zeroizing::new(Vec::new());
    let mut consumed = 0u64;
    loop {
        if limit.is_some_and(|l| consumed >= l) {
            break;
        }
        consumed += 1;
        let left = until.checked_duration_since(Instant::now())?;
        let ts = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(f, PollFlags::IN)];
        if poll(&mut fds, Some(&ts)).ok()? == 0 {
            return None;
        }
        let mut byte = [0u8; 1];
        let read = rustix::io::read(f, &mut byte);
        let [b] = byte;
        match read {
            Ok(0) => break,
            Ok(_) if b == b'\n' => break,
            Ok(_) => {
                line.push(b);
                if line.len() > PIN_LINE_MAX {
                    return None;
                }
            }
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => return None,
        }
    }
    let text = std::str::from_utf8(&line).ok()?.trim_end_matches('\r');
    (!text.is_empty()).then(|| zeroize::Zeroizing::new(text.to_owned()))
}

/// The TPM source as the loader uses it: once per boot ([`TPM_BOOT`]).
struct BootTpm(TpmSource);

impl KeySource for BootTpm {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn keys(&self) -> Result<Vec<Key>, KeySourceError> {
        self.0.keys()
    }

    fn lookup(&self, needed: KeyId) -> Result<Lookup, KeySourceError> {
        let mut all = TPM_BOOT.lock().unwrap_or_else(|e| e.into_inner());
        let selector = self.0.selector.to_string();
        let at = match all.iter().position(|(s, d, _)| *s == selector && *d == self.0.dir) {
            Some(i) => i,
            None => {
                all.push((selector, self.0.dir.clone(), BootKeys::default()));
                all.len() - 1
            }
        };
        match all.get_mut(at) {
            Some((_, _, boot)) => self.0.lookup_for_boot(needed, boot),
            None => self.0.lookup(needed),
        }
    }
}

/// Where each source looks.
#[derive(Debug, Clone)]
pub struct KeyPlaces {
    /// Key files embedded in the boot image.
    pub key_dir: PathBuf,
    /// TPM-sealed keys embedded in the boot image.
    pub sealed_dir: PathBuf,
    /// Block devices that may be a USB stick.
    pub usb: Devices,
    /// Where ext4 and iso9660 sticks are mounted (read-only).
    pub usb_mount: PathBuf,
    /// The TPM.
    pub tpm: TpmSelector,
}

/// Whether `choice` lets the loader use the TPM.
fn uses_tpm(choice: &KeyChoice) -> bool {
    match choice {
        KeyChoice::Auto | KeyChoice::Tpm => true,
        KeyChoice::List(items) => items.iter().any(|i| matches!(i, KeyChoice::Tpm)),
        KeyChoice::File(_) | KeyChoice::Usb { .. } | KeyChoice::None => false,
    }
}

/// At the start of the loader's run: when a sealed key needs a PIN,
/// unseals this TPM's keys now (asking for the PIN), before any network
/// wait, so that the person typing it does not eat into
/// `rd.stateless.timeout` (a bundle's verification runs under that
/// deadline). The keys are kept for the run as for any lookup; a failure is
/// kept too and named when a bundle needs that key.
pub fn unseal_pins_early(choice: &KeyChoice, places: &KeyPlaces) {
    if !uses_tpm(choice) {
        return;
    }
    let src = TpmSource { dir: places.sealed_dir.clone(), selector: places.tpm.clone() };
    let Ok(sealed) = src.sealed() else { return };
    let mut tried: Vec<&[u8]> = Vec::new();
    for s in sealed.iter().filter(|s| s.needs_pin()) {
        // One lookup unseals every key of its SRK; another node's keys (a
        // shared boot image) have another SRK.
        if tried.contains(&s.parent_name.as_slice()) {
            continue;
        }
        tried.push(&s.parent_name);
        if let Ok(Lookup::Found(_)) = BootTpm(src.clone()).lookup(s.key_id) {
            return;
        }
    }
}

/// At the end of the loader's run: closes the TPM-sealed keys for the rest
/// of the boot when this run did not (it unsealed none: the bundle failed
/// before, or another source had the key), so that the emergency shell or
/// the booted system cannot unseal them either. Only where `choice` lets the
/// TPM be used; warns on failure, never fails the boot.
pub fn close_tpm(choice: &KeyChoice, places: &KeyPlaces) {
    if !uses_tpm(choice) {
        return;
    }
    let src = TpmSource { dir: places.sealed_dir.clone(), selector: places.tpm.clone() };
    let selector = src.selector.to_string();
    let closed = TPM_BOOT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(s, d, boot)| *s == selector && *d == src.dir && boot.locked);
    if closed {
        return;
    }
    match src.close() {
        Ok(true) => {
            log::debug!("closed the TPM-sealed keys for this boot (PCR {})", stateless_keys::tpm::lock::LOCK_PCR)
        }
        Ok(false) => {}
        Err(e) => log::warn!("TPM: closing the sealed keys for this boot failed: {e}"),
    }
}

/// Finds the key `needed` as `choice` says; returns it with a description
/// of where it came from, or the console line saying what each source had.
pub fn pick_key(choice: &KeyChoice, places: &KeyPlaces, needed: KeyId) -> Result<(Key, String), KeyError> {
    let usb = |label: &str| UsbSource {
        label: label.to_owned(),
        devices: places.usb.clone(),
        mount_dir: places.usb_mount.clone(),
    };
    let tpm = || BootTpm(TpmSource { dir: places.sealed_dir.clone(), selector: places.tpm.clone() });
    // A stick `auto` leaves out, and why: named in the error.
    let mut excluded = None;
    let (sources, usb_at): (Vec<Box<dyn KeySource>>, Option<usize>) = match choice {
        KeyChoice::Auto => {
            // The node's own keys first; a stick only on a node that has
            // none, so that it cannot outvote them (crate::trust).
            let own: Vec<Box<dyn KeySource>> = vec![Box::new(DirSource(places.key_dir.clone())), Box::new(tpm())];
            match crate::trust::auto_excludes_usb(&places.key_dir, &places.sealed_dir) {
                Some(why) => {
                    excluded = Some((usb(DEFAULT_LABEL).describe(), why));
                    (own, None)
                }
                None => {
                    (own.into_iter().chain([Box::new(usb(DEFAULT_LABEL)) as Box<dyn KeySource>]).collect(), Some(2))
                }
            }
        }
        KeyChoice::File(p) => (vec![Box::new(FileSource(p.clone()))], None),
        KeyChoice::Usb { label } => (vec![Box::new(usb(label.as_deref().unwrap_or(DEFAULT_LABEL)))], Some(0)),
        KeyChoice::Tpm => (vec![Box::new(tpm())], None),
        KeyChoice::None => return Err(KeyError::NoKeyConfigured { needed }),
        KeyChoice::List(items) => {
            let mut list: Vec<Box<dyn KeySource>> = Vec::new();
            let mut usb_at = None;
            for item in items {
                match item {
                    KeyChoice::File(p) => list.push(Box::new(FileSource(p.clone()))),
                    KeyChoice::Usb { label } => {
                        usb_at.get_or_insert(list.len());
                        list.push(Box::new(usb(label.as_deref().unwrap_or(DEFAULT_LABEL))));
                    }
                    KeyChoice::Tpm => list.push(Box::new(tpm())),
                    // The parser keeps these out of lists.
                    KeyChoice::Auto | KeyChoice::None | KeyChoice::List(_) => {}
                }
            }
            (list, usb_at)
        }
    };
    let refs: Vec<&dyn KeySource> = sources.iter().map(AsRef::as_ref).collect();
    let mut offered = match find_key(needed, &refs) {
        Ok(found) => return Ok(found),
        Err(offered) => offered,
    };
    offered.0.extend(excluded.map(|(name, why)| (name, Err(why))));
    // Only a scan can see a stick arrive; an explicit device list cannot change.
    if let (Some(i), Devices::Scan { .. }) = (usb_at, &places.usb) {
        if let Some(src) = sources.get(i).filter(|_| !USB_WAITED.swap(true, Ordering::Relaxed)) {
            log::info!("no source had key {}; waiting up to {} s for a USB stick", needed.short(), USB_WAIT.as_secs());
            let start = Instant::now();
            let mut seen = places.usb.list();
            while start.elapsed() < USB_WAIT {
                std::thread::sleep(USB_POLL);
                let now = places.usb.list();
                if now == seen {
                    continue;
                }
                seen = now;
                let entry = match src.lookup(needed) {
                    Ok(Lookup::Found(k)) => return Ok((k, src.describe())),
                    Ok(Lookup::Offered(ids)) => Ok(ids),
                    Err(e) => Err(e.to_string()),
                };
                if let Some(slot) = offered.0.get_mut(i) {
                    slot.1 = entry;
                }
            }
            if let Some((_, Err(msg))) = offered.0.get_mut(i) {
                msg.push_str(&format!(" (waited {} s)", USB_WAIT.as_secs()));
            }
        }
    }
    Err(KeyError::NotFound { needed, offered })
}

/// Why no key was found for a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bundle is encrypted and `rd.stateless.key=none`.
    #[error("bundle needs key {} but rd.stateless.key=none", needed.short())]
    NoKeyConfigured {
        /// The key the bundle names.
        needed: KeyId,
    },
    /// No source had the key; what each offered.
    #[error("bundle needs key {}; {offered}", needed.short())]
    NotFound {
        /// The key the bundle names.
        needed: KeyId,
        /// What each source had.
        offered: Offered,
    },
}

/// Checks, before any network, that a configured key file can be read:
/// without it no bundle, from a server or the cache, can be opened, so the
/// loader says so at once instead of after the download. Other choices
/// are not checked here: a USB stick may still be plugged in, and the
/// key directory and TPM are looked at per bundle.
pub fn check_configured(choice: &KeyChoice) -> Result<(), KeyFileUnusable> {
    let KeyChoice::File(path) = choice else { return Ok(()) };
    // Opened, not parsed: the key is read (and a loose mode warned about)
    // once, when a bundle needs it; this only catches a file that is not
    // there or cannot be read at all.
    let path = path.clone();
    // Looked at before it is opened: opening a FIFO would block.
    match std::fs::metadata(&path) {
        Ok(md) if !md.is_file() => return Err(KeyFileUnusable::NotAFile { path }),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(KeyFileUnusable::Missing { path }),
        Err(err) => return Err(KeyFileUnusable::Unreadable { path, err }),
    }
    match std::fs::File::open(&path) {
        Ok(_) => Ok(()),
        Err(err) => Err(KeyFileUnusable::Unreadable { path, err }),
    }
}

/// Why the configured key file cannot be used. Each names the path once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileUnusable {
    /// There is no such file.
    #[error("key file {} does not exist", path.display())]
    Missing {
        /// The key file.
        path: PathBuf,
    },
    /// It could not be read.
    #[error("key file {}: {err}", path.display())]
    Unreadable {
        /// The key file.
        path: PathBuf,
        /// The cause.
        err: std::io::Error,
    },
    /// It is a directory or a device, not a file.
    #[error("key file {} is not a regular file", path.display())]
    NotAFile {
        /// The key file.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pin_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console");
        for (typed, want) in [("2468\n", Some("2468")), ("2468\r\nrest", Some("2468")), ("", None), ("\n", None)] {
            std::fs::write(&p, typed).unwrap();
            let got = read_line(&std::fs::File::open(&p).unwrap(), Duration::from_secs(1), None);
            assert_eq!(got.as_deref().map(String::as_str), want, "{typed:?}");
        }
        std::fs::write(&p, "9".repeat(PIN_LINE_MAX + 1)).unwrap();
        assert!(read_line(&std::fs::File::open(&p).unwrap(), Duration::from_secs(1), None).is_none());
        // Only as far as the limit: what was there before the prompt.
        std::fs::write(&p, "prompt: ").unwrap();
        assert!(read_line(&std::fs::File::open(&p).unwrap(), Duration::from_secs(1), Some(0)).is_none());
        std::fs::write(&p, "12prompt: ").unwrap();
        let got = read_line(&std::fs::File::open(&p).unwrap(), Duration::from_secs(1), Some(2));
        assert_eq!(got.as_deref().map(String::as_str), Some("12"));
    }
}
