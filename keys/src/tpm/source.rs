//! The TPM as a key source: sealed-key files in a directory (in the boot
//! image, `/etc/stateless/tpm/*.sealed`), unsealed by the TPM on demand.
//! A key sealed under a policy key (`stateless-sealed-v2`) is unsealed with
//! the signed PCR policies in the `policies/` directory beside the sealed
//! keys (`/etc/stateless/tpm/policies/*.signed`), tried in name order,
//! then with those in the policy lists in `fetched-policies/*.policies`
//! (the loader writes there what the server publishes, or the copy it kept
//! on the cache disk; docs/keys.md "Signed PCR policies").
//!
//! **Once per boot.** After unsealing, the source extends the lock PCR
//! ([`super::lock`]) so that the blobs cannot be unsealed again until the
//! next boot. A node may need several of its sealed keys (default, group
//! and node layers use different keys), so the first lookup that reaches the
//! TPM unseals every sealed key made under the same SRK as the one needed,
//! keeps them in a [`BootKeys`], and only then extends the PCR. The loader
//! keeps one [`BootKeys`] for its whole run; [`KeySource::lookup`] uses a
//! fresh one each call, so outside the loader a second lookup after the
//! lock is refused as the running system would be.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use stateless_bundle::error_chain as chain;
use stateless_bundle::{Key, KeyId};
use zeroize::Zeroizing;

use super::lock::{LOCK_PCR, covers_lock};
use super::policy::{MAX_POLICY_LIST_LEN, SignedPolicy, parse_signed_policy_list, read_signed_policy_file};
use super::{Tpm, TpmError, TpmSelector};
use crate::sealed::{SealedKey, read_sealed_file};
use crate::source::{KeySource, KeySourceError, Lookup};

/// Most sealed-key files read from the directory.
pub const MAX_SEALED_FILES: usize = 64;
/// Most signed policies read: the `policies/` files and the entries of the
/// fetched lists together.
pub const MAX_POLICY_FILES: usize = 64;
/// The directory of signed policies, inside the sealed-key directory.
pub const POLICY_SUBDIR: &str = "policies";
/// The directory of fetched policy lists (`*.policies`), inside the
/// sealed-key directory.
pub const FETCHED_POLICY_SUBDIR: &str = "fetched-policies";
/// The extension of a policy list file.
pub const POLICY_LIST_EXT: &str = "policies";
/// How long to wait for the TPM device node when a sealed key needs it: a
/// TPM driver built as a module may still be loading this early in boot.
pub const TPM_DEVICE_WAIT: Duration = Duration::from_secs(2);

/// How many times a person is asked for a key's PIN before the key is
/// given up: each wrong PIN counts towards the TPM's dictionary-attack
/// lockout, which on many TPMs starts after a few failures.
pub const PIN_TRIES: usize = 3;

/// Asks a person for the PIN of the key with this id (sealed with
/// `tpm-seal --pin`); `None` when there is nobody to ask or nobody answered.
pub type PinPrompt = fn(KeyId, usize) -> Option<Zeroizing<String>>;

static PIN_PROMPT: OnceLock<PinPrompt> = OnceLock::new();

/// Sets how the source asks for PINs (the loader: on the console). Without
/// one, a key sealed with a PIN does not unseal.
pub fn set_pin_prompt(prompt: PinPrompt) {
    let _ = PIN_PROMPT.set(prompt);
}

/// The signed policies read (labelled) and the reasons of those that did
/// not parse, read once per lookup.
type Policies = (Vec<(String, SignedPolicy)>, Vec<String>);

/// The keys one boot unsealed from the TPM, and why the others did not
/// unseal: asked first, so that a key is unsealed at most once per boot
/// (the lock PCR closes it after that).
#[derive(Debug, Default)]
pub struct BootKeys {
    /// Keys unsealed.
    pub keys: Vec<Key>,
    /// Keys that did not unseal, with the one-line reason.
    pub failed: Vec<(KeyId, String)>,
    /// Whether the lock PCR was extended.
    pub locked: bool,
}

impl BootKeys {
    fn answer(&self, needed: KeyId) -> Option<Result<Lookup, KeySourceError>> {
        if let Some(k) = self.keys.iter().find(|k| k.id() == needed) {
            return Some(Ok(Lookup::Found(k.clone())));
        }
        self.failed.iter().find(|(id, _)| *id == needed).map(|(_, why)| Err(KeySourceError::Failed(why.clone())))
    }
}

/// Sealed keys in `dir`, unsealed by the TPM `selector` names.
#[derive(Debug, Clone)]
pub struct TpmSource {
    /// Directory of `*.sealed` files.
    pub dir: PathBuf,
    /// Which TPM.
    pub selector: TpmSelector,
}

impl TpmSource {
    /// The sealed-key files in the directory, parsed; bad ones are logged
    /// and skipped.
    pub fn sealed(&self) -> Result<Vec<SealedKey>, KeySourceError> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|_| KeySourceError::Absent(format!("no sealed key ({} does not exist)", self.dir.display())))?;
        let mut paths: Vec<PathBuf> = rd
            .take(1024)
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sealed"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths.into_iter().take(MAX_SEALED_FILES) {
            match read_sealed_file(&p) {
                Ok(s) => out.push(s),
                Err(e) => log::warn!("skipping {}: {e}", p.display()),
            }
        }
        if out.is_empty() {
            return Err(KeySourceError::Absent(format!("no sealed key in {}", self.dir.display())));
        }
        Ok(out)
    }

    /// The signed policies in `dir/policies/*.signed`, then those in the
    /// lists `dir/fetched-policies/*.policies`, each in name order and
    /// labelled with its file name (and place in its list), at most
    /// [`MAX_POLICY_FILES`] in all. A policy that does not parse is kept as a
    /// reason for the error (named if no other policy works), not silently
    /// dropped; nor does it stop the others.
    pub fn policies(&self) -> (Vec<(String, SignedPolicy)>, Vec<String>) {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        let mut room = MAX_POLICY_FILES;
        for p in files_with(&self.dir.join(POLICY_SUBDIR), "signed") {
            let label = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if room == 0 {
                log::warn!("skipping {} and the policies after it: more than {MAX_POLICY_FILES}", p.display());
                return (good, bad);
            }
            room -= 1;
            match read_signed_policy_file(&p) {
                Ok(policy) => good.push((label, policy)),
                Err(e) => {
                    log::warn!("skipping {}: {e}", p.display());
                    bad.push(format!("{label}: {e}"));
                }
            }
        }
        for p in files_with(&self.dir.join(FETCHED_POLICY_SUBDIR), POLICY_LIST_EXT) {
            let label = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let entries = match read_policy_list(&p) {
                Ok(entries) => entries,
                Err(e) => {
                    log::warn!("skipping {}: {e}", p.display());
                    bad.push(format!("{label}: {e}"));
                    continue;
                }
            };
            for (n, entry) in entries.into_iter().enumerate() {
                let label = format!("{label} #{}", n + 1);
                if room == 0 {
                    log::warn!("skipping {label} and the policies after it: more than {MAX_POLICY_FILES}");
                    return (good, bad);
                }
                room -= 1;
                match entry {
                    Ok(policy) => good.push((label, policy)),
                    Err(e) => {
                        log::warn!("skipping {label} ({}): {e}", p.display());
                        bad.push(format!("{label}: {e}"));
                    }
                }
            }
        }
        (good, bad)
    }

    fn open(&self) -> Result<Tpm, KeySourceError> {
        if let TpmSelector::Device(p) = &self.selector {
            let until = Instant::now() + TPM_DEVICE_WAIT;
            while !p.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !p.exists() {
                return Err(KeySourceError::Absent(format!(
                    "no TPM ({} did not appear within {} s)",
                    p.display(),
                    TPM_DEVICE_WAIT.as_secs()
                )));
            }
        }
        Tpm::open(&self.selector).map_err(|e| KeySourceError::Failed(chain(&e)))
    }

    /// Unseals `s`; returns the key and whether the policy that let it
    /// unseal covers the lock PCR.
    fn unseal(&self, tpm: &mut Tpm, s: &SealedKey, policies: &mut Option<Policies>) -> Result<(Key, bool), String> {
        let t = Instant::now();
        if s.needs_pin() {
            return self.unseal_with_pin(tpm, s, policies);
        }
        let (key, covers) =
            self.unseal_plain(tpm, s, policies).map_err(|e| format!("key {}: {}", s.key_id.short(), chain(&e)))?;
        log::debug!("unsealed key {} with {} in {} ms", s.key_id.short(), self.selector, t.elapsed().as_millis());
        Ok((key, covers))
    }

    /// [`TpmSource::unseal`] with the PIN (if any) already set.
    fn unseal_plain(
        &self,
        tpm: &mut Tpm,
        s: &SealedKey,
        policies: &mut Option<Policies>,
    ) -> Result<(Key, bool), TpmError> {
        if s.policy_key.is_some() {
            let (policies, unreadable) = policies.get_or_insert_with(|| self.policies());
            match tpm.unseal_with_policy(s, policies) {
                Ok((key, used)) => {
                    let covers = used
                        .and_then(|i| policies.get(i))
                        .is_some_and(|(_, p)| p.pcrs.iter().any(|(i, _)| *i == LOCK_PCR));
                    Ok((key, covers))
                }
                Err(TpmError::NoSignedPolicy { mut reasons }) => {
                    reasons.extend(unreadable.iter().cloned());
                    Err(TpmError::NoSignedPolicy { reasons })
                }
                Err(e) => Err(e),
            }
        } else {
            tpm.unseal(s).map(|key| (key, covers_lock(s)))
        }
    }

    /// [`TpmSource::unseal`] of a key sealed with a PIN: asks for it (up to
    /// [`PIN_TRIES`] times while the TPM says it is wrong).
    fn unseal_with_pin(
        &self,
        tpm: &mut Tpm,
        s: &SealedKey,
        policies: &mut Option<Policies>,
    ) -> Result<(Key, bool), String> {
        let short = s.key_id.short();
        let Some(ask) = PIN_PROMPT.get() else {
            return Err(format!("key {short}: sealed with a PIN, and there is no console to ask for it"));
        };
        let mut last = String::new();
        for attempt in 1..=PIN_TRIES {
            let Some(pin) = ask(s.key_id, attempt) else {
                return Err(format!("key {short}: sealed with a PIN, and none was typed"));
            };
            let pin = Zeroizing::new(pin.trim_end_matches(['\r', '\n']).to_owned());
            tpm.set_pin(Some(pin.as_bytes())).map_err(|e| format!("key {short}: {e}"))?;
            let result = self.unseal_plain(tpm, s, policies);
            let _ = tpm.set_pin(None);
            match result {
                Ok(found) => return Ok(found),
                Err(e @ TpmError::WrongPin) if attempt < PIN_TRIES => log::warn!("TPM: key {short}: {e}"),
                Err(e) => {
                    last = format!("key {short}: {}", chain(&e));
                    break;
                }
            }
        }
        Err(last)
    }

    /// Looks up `needed` with `boot` holding what this boot unsealed
    /// already. The first lookup that reaches the TPM unseals `needed` and
    /// every other sealed key made under the same SRK, records them in
    /// `boot`, then extends the lock PCR ([`Tpm::lock`]) when a policy that
    /// let a key unseal covers it. Later lookups are answered from `boot`.
    pub fn lookup_for_boot(&self, needed: KeyId, boot: &mut BootKeys) -> Result<Lookup, KeySourceError> {
        if let Some(answer) = boot.answer(needed) {
            return answer;
        }
        let sealed = self.sealed()?;
        // Only the objects of the TPM that sealed the key the bundle names
        // are sent to it: a shared boot image's other nodes' keys never are.
        let Some(parent) = sealed.iter().find(|s| s.key_id == needed).map(|s| s.parent_name.clone()) else {
            return Ok(Lookup::Offered(sealed.iter().map(|s| s.key_id).collect()));
        };
        let mut tpm = self.open()?;
        let mut order: Vec<&SealedKey> = sealed.iter().filter(|s| s.key_id == needed).collect();
        order.extend(sealed.iter().filter(|s| s.key_id != needed && s.parent_name == parent));
        let mut policies = None;
        let (mut covered, mut open) = (false, Vec::new());
        for s in order {
            if boot.keys.iter().any(|k| k.id() == s.key_id) {
                continue;
            }
            match self.unseal(&mut tpm, s, &mut policies) {
                Ok((key, covers)) => {
                    boot.failed.retain(|(id, _)| *id != s.key_id);
                    boot.keys.push(key);
                    covered |= covers;
                    if !covers {
                        open.push(s.key_id);
                    }
                }
                Err(why) => {
                    if !boot.failed.iter().any(|(id, _)| *id == s.key_id) {
                        boot.failed.push((s.key_id, why));
                    }
                }
            }
        }
        for id in open {
            log::warn!(
                "TPM: key {}: its policy does not cover PCR {LOCK_PCR}, so it can be unsealed again after this boot (re-seal it, see docs/keys.md)",
                id.short()
            );
        }
        if covered && !boot.locked {
            match tpm.lock(&parent) {
                Ok(()) => {
                    boot.locked = true;
                    log::debug!("extended PCR {LOCK_PCR}: the sealed keys stay sealed until the next boot");
                }
                // The keys came from the TPM; an extend that did not happen
                // leaves them as unsealable as before this version, which an
                // active interposer could do anyway: say so, loudly.
                Err(e) => log::warn!(
                    "TPM: extending PCR {LOCK_PCR} after unsealing failed, the sealed keys stay unsealable on this boot: {}",
                    chain(&e)
                ),
            }
        }
        boot.answer(needed)
            .unwrap_or_else(|| Err(KeySourceError::Failed(format!("key {}: not unsealed", needed.short()))))
    }
}

impl TpmSource {
    /// Closes the sealed keys for the rest of the boot without unsealing
    /// them: extends the lock PCR when a sealed key here (or a signed
    /// policy for one) covers it. For the end of a loader run that did not
    /// unseal (a failed boot before its emergency shell, a key found
    /// elsewhere), so that nothing after the loader can unseal them either.
    /// Does not wait for a TPM device that is not there. Returns whether
    /// the PCR was extended.
    pub fn close(&self) -> Result<bool, KeySourceError> {
        let Ok(sealed) = self.sealed() else { return Ok(false) };
        let signed_covers = || self.policies().0.iter().any(|(_, p)| p.pcrs.iter().any(|(i, _)| *i == LOCK_PCR));
        let mut parents: Vec<&[u8]> = Vec::new();
        for s in &sealed {
            let covers = if s.policy_key.is_some() { signed_covers() } else { covers_lock(s) };
            if covers && !parents.contains(&s.parent_name.as_slice()) {
                parents.push(&s.parent_name);
            }
        }
        if parents.is_empty() {
            return Ok(false);
        }
        if let TpmSelector::Device(p) = &self.selector {
            if !p.exists() {
                return Ok(false);
            }
        }
        let mut tpm = Tpm::open(&self.selector).map_err(|e| KeySourceError::Failed(chain(&e)))?;
        // The keys of another node's TPM (a shared boot image) have another
        // SRK: the lock goes only to the SRK of this TPM's own keys.
        for parent in parents.into_iter().take(4) {
            match tpm.lock(parent) {
                Ok(()) => return Ok(true),
                Err(TpmError::SrkMismatch) => {}
                Err(e) => return Err(KeySourceError::Failed(chain(&e))),
            }
        }
        Ok(false)
    }
}

/// The files in `dir` ending in `.ext`, in name order (none when `dir`
/// cannot be read).
fn files_with(dir: &std::path::Path, ext: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .take(1024)
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    paths
}

/// Reads and parses a policy list file, at most [`MAX_POLICY_LIST_LEN`].
fn read_policy_list(
    path: &std::path::Path,
) -> Result<Vec<Result<SignedPolicy, super::policy::PolicyError>>, super::policy::PolicyError> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_POLICY_LIST_LEN as u64 + 1).read_to_end(&mut text))
        .map_err(|e| super::policy::PolicyError::Io(e.to_string()))?;
    parse_signed_policy_list(&text)
}

impl KeySource for TpmSource {
    fn describe(&self) -> String {
        "TPM".into()
    }

    /// Every sealed key, unsealed (and closed after, as for a lookup); the
    /// first that does not unseal is the error.
    fn keys(&self) -> Result<Vec<Key>, KeySourceError> {
        let sealed = self.sealed()?;
        let mut boot = BootKeys::default();
        let mut out = Vec::new();
        for s in &sealed {
            match self.lookup_for_boot(s.key_id, &mut boot)? {
                Lookup::Found(k) if !out.iter().any(|o: &Key| o.id() == k.id()) => out.push(k),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The TPM is not touched at all for a bundle whose key is not sealed
    /// here; see [`TpmSource::lookup_for_boot`], with a fresh [`BootKeys`].
    fn lookup(&self, needed: KeyId) -> Result<Lookup, KeySourceError> {
        self.lookup_for_boot(needed, &mut BootKeys::default())
    }
}
