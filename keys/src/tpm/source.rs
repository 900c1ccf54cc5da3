//! The TPM as a key source: sealed-key files in a directory (in the boot
//! image, `/etc/stateless/tpm/*.sealed`), unsealed by the TPM on demand.
//! A key sealed under a policy key (`stateless-sealed-v2`) is unsealed with
//! the signed PCR policies in the `policies/` directory beside the sealed
//! keys (`/etc/stateless/tpm/policies/*.signed`), tried in name order.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stateless_bundle::error_chain as chain;
use stateless_bundle::{Key, KeyId};

use super::policy::{SignedPolicy, read_signed_policy_file};
use super::{Tpm, TpmSelector};
use crate::sealed::{SealedKey, read_sealed_file};
use crate::source::{KeySource, KeySourceError, Lookup};

/// Most sealed-key files read from the directory.
pub const MAX_SEALED_FILES: usize = 64;
/// Most signed policy files read from the `policies/` directory.
pub const MAX_POLICY_FILES: usize = 64;
/// The directory of signed policies, inside the sealed-key directory.
pub const POLICY_SUBDIR: &str = "policies";
/// How long to wait for the TPM device node when a sealed key needs it: a
/// TPM driver built as a module may still be loading this early in boot.
pub const TPM_DEVICE_WAIT: Duration = Duration::from_secs(2);

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

    /// The signed policies in `dir/policies/*.signed`, labelled with their
    /// file names. A file that does not parse is kept as a reason for the
    /// error (named if no other policy works), not silently dropped.
    pub fn policies(&self) -> (Vec<(String, SignedPolicy)>, Vec<String>) {
        let dir = self.dir.join(POLICY_SUBDIR);
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .take(1024)
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "signed"))
                .collect(),
            Err(_) => Vec::new(),
        };
        paths.sort();
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for p in paths.into_iter().take(MAX_POLICY_FILES) {
            let label = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match read_signed_policy_file(&p) {
                Ok(policy) => good.push((label, policy)),
                Err(e) => {
                    log::warn!("skipping {}: {e}", p.display());
                    bad.push(format!("{label}: {e}"));
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

    fn unseal(&self, tpm: &mut Tpm, s: &SealedKey) -> Result<Key, KeySourceError> {
        let t = Instant::now();
        let result = if s.policy_key.is_some() {
            let (policies, unreadable) = self.policies();
            match tpm.unseal_with(s, &policies) {
                Err(super::TpmError::NoSignedPolicy { mut reasons }) => {
                    reasons.extend(unreadable);
                    Err(super::TpmError::NoSignedPolicy { reasons })
                }
                other => other,
            }
        } else {
            tpm.unseal(s)
        };
        let key = result.map_err(|e| KeySourceError::Failed(format!("key {}: {}", s.key_id.short(), chain(&e))))?;
        log::debug!("unsealed key {} with {} in {} ms", s.key_id.short(), self.selector, t.elapsed().as_millis());
        Ok(key)
    }
}

impl KeySource for TpmSource {
    fn describe(&self) -> String {
        "TPM".into()
    }

    fn keys(&self) -> Result<Vec<Key>, KeySourceError> {
        let sealed = self.sealed()?;
        let mut tpm = self.open()?;
        sealed.iter().map(|s| self.unseal(&mut tpm, s)).collect()
    }

    fn lookup(&self, needed: KeyId) -> Result<Lookup, KeySourceError> {
        let sealed = self.sealed()?;
        // Only the object the bundle names is unsealed: the TPM is not
        // touched at all for a bundle that needs another key.
        match sealed.iter().find(|s| s.key_id == needed) {
            Some(s) => Ok(Lookup::Found(self.unseal(&mut self.open()?, s)?)),
            None => Ok(Lookup::Offered(sealed.iter().map(|s| s.key_id).collect())),
        }
    }
}
