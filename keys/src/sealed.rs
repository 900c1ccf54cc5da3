//! The sealed-key file: a site key sealed by a TPM to PCR values.
//!
//! Text, one field per line, so that a person can read which PCRs a node is
//! bound to and a script can cut the TPM blobs out for `tpm2_load`:
//!
//! ```text
//! # Stateless Loader TPM-sealed site key. ...
//! stateless-sealed-v1
//! key-id 73d6fb7e07e1ba223b6ba33a50327f0f
//! parent srk-ecc-p256
//! parent-name <hex of the SRK's TPM2B_NAME contents: 000b and a SHA-256>
//! bank sha256
//! pcr 7 <hex of the PCR value the key is sealed to>
//! policy <hex of the TPM2_PolicyPCR policy digest>
//! public <hex of the TPM2B_PUBLIC of the sealed object>
//! private <hex of the TPM2B_PRIVATE of the sealed object>
//! ```
//!
//! A key sealed under a policy signing key (`tpm-seal --policy-key`,
//! [`crate::tpm::policy`]) has a second format version: no PCR lines (the
//! PCR values come from signed policies), a `policy-key` line with the name
//! of the key whose signed policies unseal it, and as `policy` the
//! TPM2_PolicyAuthorize digest of that name:
//!
//! ```text
//! stateless-sealed-v2
//! key-id 73d6fb7e07e1ba223b6ba33a50327f0f
//! parent srk-ecc-p256
//! parent-name <hex>
//! policy-key <hex of the policy signing key's point, x then y (P-256)>
//! policy <hex of the TPM2_PolicyAuthorize policy digest>
//! public <hex>
//! private <hex>
//! ```
//!
//! A key sealed with a PIN (`tpm-seal --pin`) has, in either version, an
//! `auth pin` line before `policy`, and its policy digest ends in
//! TPM2_PolicyAuthValue ([`policy_auth_value_digest`]).
//!
//! Everything in the file is untrusted until the TPM unseals: the key id is
//! used only to skip objects a bundle does not need and is checked against
//! the unsealed key; the PCR values only explain a refusal (the TPM enforces
//! the policy). See `docs/keys.md`.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use stateless_bundle::KeyId;
use stateless_bundle::key::{hex_decode, hex_encode};

/// First line of a sealed-key file (after comments).
pub const SEALED_MAGIC: &str = "stateless-sealed-v1";
/// First line of a sealed-key file whose key unseals under signed policies.
pub const SEALED_AUTHORIZED_MAGIC: &str = "stateless-sealed-v2";
/// The only parent this version knows: the SRK made from the template in
/// [`crate::tpm`] (ECC NIST P-256, AES-128-CFB, owner hierarchy).
pub const PARENT_SRK_ECC: &str = "srk-ecc-p256";
/// A sealed-key file larger than this is refused unread.
pub const MAX_SEALED_FILE_LEN: usize = 16 * 1024;
/// Largest TPM2B blob accepted from a file (a keyed-hash object is ~100
/// bytes; TPM2B_PUBLIC can never exceed ~1 KiB).
pub const MAX_BLOB_LEN: usize = 2048;
/// PCR indices run 0..=23 on PC TPMs.
pub const PCR_COUNT: u8 = 24;

/// A PCR bank (the hash of the PCR values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bank {
    /// SHA-1 (20-byte PCRs).
    Sha1,
    /// SHA-256 (32-byte PCRs), the default.
    Sha256,
    /// SHA-384 (48-byte PCRs).
    Sha384,
}

impl Bank {
    /// Parses `sha1`, `sha256`, `sha384`.
    pub fn parse(s: &str) -> Option<Bank> {
        match s {
            "sha1" => Some(Bank::Sha1),
            "sha256" => Some(Bank::Sha256),
            "sha384" => Some(Bank::Sha384),
            _ => None,
        }
    }

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Bank::Sha1 => "sha1",
            Bank::Sha256 => "sha256",
            Bank::Sha384 => "sha384",
        }
    }

    /// The TPM_ALG_ID of the hash.
    pub fn alg(self) -> u16 {
        match self {
            Bank::Sha1 => 0x0004,
            Bank::Sha256 => 0x000B,
            Bank::Sha384 => 0x000C,
        }
    }

    /// Size of a PCR value in this bank.
    pub fn digest_len(self) -> usize {
        match self {
            Bank::Sha1 => 20,
            Bank::Sha256 => 32,
            Bank::Sha384 => 48,
        }
    }
}

/// Parses a PCR list such as `0,7` or `7`: sorted, no duplicates, 0..=23.
pub fn parse_pcr_list(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let n: u8 = part.parse().map_err(|_| format!("{part:?} is not a PCR number"))?;
        if n >= PCR_COUNT {
            return Err(format!("PCR {n} does not exist (0 to {})", PCR_COUNT - 1));
        }
        out.push(n);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no PCR given".into());
    }
    Ok(out)
}

/// The TPM_CC of TPM2_PolicyPCR, part of the policy digest.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;

/// The marshalled TPML_PCR_SELECTION for one bank and `pcrs`.
pub fn pcr_selection(bank: Bank, pcrs: &[u8]) -> Vec<u8> {
    let mut bits = [0u8; 3];
    for &p in pcrs {
        if let Some(b) = bits.get_mut(usize::from(p / 8)) {
            *b |= 1 << (p % 8);
        }
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&bank.alg().to_be_bytes());
    out.push(3);
    out.extend_from_slice(&bits);
    out
}

/// The PCR composite digest TPM2_PolicyPCR compares: SHA-256 (the session's
/// hash) over the values in ascending PCR order.
pub fn pcr_digest(values: &[(u8, Vec<u8>)]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (_, v) in values {
        h.update(v);
    }
    h.finalize().into()
}

/// The TPM_CC of TPM2_PolicyAuthValue.
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;

/// The policy digest after `prev` and a TPM2_PolicyAuthValue (TPM 2.0
/// Part 3, 23.17): `SHA-256(prev || TPM_CC_PolicyAuthValue)`. A key sealed
/// with a PIN (`tpm-seal --pin`) has this after its PCR or authorize policy,
/// and the PIN as the object's auth value.
pub fn policy_auth_value_digest(prev: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(TPM_CC_POLICY_AUTH_VALUE.to_be_bytes());
    h.finalize().into()
}

/// The policy digest of a policy that is exactly one TPM2_PolicyPCR
/// (TPM 2.0 Part 3, 23.7): `SHA-256(0^32 || TPM_CC_PolicyPCR || pcrs || digest)`.
pub fn policy_pcr_digest(bank: Bank, values: &[(u8, Vec<u8>)]) -> [u8; 32] {
    let pcrs: Vec<u8> = values.iter().map(|(p, _)| *p).collect();
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM_CC_POLICY_PCR.to_be_bytes());
    h.update(pcr_selection(bank, &pcrs));
    h.update(pcr_digest(values));
    h.finalize().into()
}

/// A parsed sealed-key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// The id of the sealed key (claimed; checked after unsealing).
    pub key_id: KeyId,
    /// The name of the SRK the key was sealed under (`000b` and the
    /// SHA-256 of its public area): the unsealing side checks that the TPM
    /// answers with this key before it sends it a salt.
    pub parent_name: Vec<u8>,
    /// The PCR bank of the policy.
    pub bank: Bank,
    /// PCR index and the value the key is sealed to, ascending (empty for
    /// a key sealed under a policy signing key).
    pub pcrs: Vec<(u8, Vec<u8>)>,
    /// The name of the policy signing key whose signed PCR policies unseal
    /// this key (TPM2_PolicyAuthorize), or `None` for a key sealed to PCR
    /// values directly.
    pub policy_key: Option<crate::tpm::policy::PolicyPublicKey>,
    /// The policy digest (recomputed from `pcrs` or `policy_key` when parsing).
    pub policy: [u8; 32],
    /// TPM2B_PUBLIC of the sealed object, size prefix included.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE of the sealed object, size prefix included.
    pub private: Vec<u8>,
}

/// Why a sealed-key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedError {
    /// Not a sealed-key file at all.
    #[error("not a sealed-key file: {0}")]
    NotSealed(&'static str),
    /// A line is malformed.
    #[error("line {line}: {what}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A field is missing.
    #[error("missing {0} line")]
    Missing(&'static str),
    /// The policy line does not match the PCR values.
    #[error("the policy digest does not match the PCR values (file edited or corrupt)")]
    PolicyMismatch,
    /// Larger than [`MAX_SEALED_FILE_LEN`].
    #[error("larger than {MAX_SEALED_FILE_LEN} bytes")]
    TooLarge,
    /// The file could not be read.
    #[error("{0}")]
    Io(String),
}

fn decode_blob(hex: &str, line: usize, what: &str) -> Result<Vec<u8>, SealedError> {
    let bad = |why: &str| SealedError::Line { line, what: format!("{what}: {why}") };
    if hex.len() % 2 != 0 || hex.len() / 2 > MAX_BLOB_LEN {
        return Err(bad("not hex of an acceptable length"));
    }
    let mut out = vec![0u8; hex.len() / 2];
    if !hex_decode(hex, &mut out) {
        return Err(bad("not hex"));
    }
    // A TPM2B: a big-endian u16 size, then exactly that many bytes.
    let declared = match out.as_slice() {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => return Err(bad("too short")),
    };
    if declared + 2 != out.len() {
        return Err(bad("size prefix does not match its length"));
    }
    Ok(out)
}

impl SealedKey {
    /// Parses the text of a sealed-key file.
    pub fn parse(text: &[u8]) -> Result<SealedKey, SealedError> {
        if text.len() > MAX_SEALED_FILE_LEN {
            return Err(SealedError::TooLarge);
        }
        let text = std::str::from_utf8(text).map_err(|_| SealedError::NotSealed("not text"))?;
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let authorized = match lines.next() {
            Some((_, SEALED_MAGIC)) => false,
            Some((_, SEALED_AUTHORIZED_MAGIC)) => true,
            Some((_, l)) if l.starts_with("stateless-sealed-") => {
                return Err(SealedError::NotSealed("unknown format version (expected stateless-sealed-v1 or -v2)"));
            }
            _ => return Err(SealedError::NotSealed("no stateless-sealed-v1 line")),
        };
        let mut policy_key = None;
        let mut pin = None;
        let (mut key_id, mut bank, mut parent, mut policy, mut public, mut private) =
            (None, None, None, None, None, None);
        let mut parent_name: Option<Vec<u8>> = None;
        let mut pcrs: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut pending_pcrs: Vec<(usize, u8, &str)> = Vec::new();
        for (n, line) in lines {
            let bad = |what: String| SealedError::Line { line: n, what };
            let (name, value) = line.split_once(' ').ok_or_else(|| bad(format!("{line:?}: no value")))?;
            let value = value.trim();
            let once = |slot: bool| if slot { Err(bad(format!("{name} given twice"))) } else { Ok(()) };
            match name {
                "key-id" => {
                    once(key_id.is_some())?;
                    key_id = Some(KeyId::from_hex(value).ok_or_else(|| bad("key-id: not 32 hex digits".into()))?);
                }
                "parent" => {
                    once(parent.is_some())?;
                    if value != PARENT_SRK_ECC {
                        return Err(bad(format!("unknown parent {value:?} (this build knows {PARENT_SRK_ECC})")));
                    }
                    parent = Some(());
                }
                "parent-name" => {
                    once(parent_name.is_some())?;
                    let mut n = vec![0u8; 34];
                    if !hex_decode(value, &mut n) || n.get(..2) != Some(&[0x00, 0x0b][..]) {
                        return Err(bad("parent-name: not a SHA-256 name (000b and 64 hex digits)".into()));
                    }
                    parent_name = Some(n);
                }
                "policy-key" if authorized => {
                    once(policy_key.is_some())?;
                    let mut xy = [0u8; 64];
                    if value.len() != 128 || !hex_decode(value, &mut xy) {
                        return Err(bad("policy-key: not a P-256 point (128 hex digits)".into()));
                    }
                    let key = crate::tpm::policy::PolicyPublicKey::from_point(&xy)
                        .map_err(|_| bad("policy-key: not a point on P-256".into()))?;
                    policy_key = Some(key);
                }
                "bank" | "pcr" if authorized => {
                    return Err(bad(format!("{name}: a key sealed under a policy key has no PCR values of its own")));
                }
                "bank" => {
                    once(bank.is_some())?;
                    bank = Some(Bank::parse(value).ok_or_else(|| bad(format!("unknown PCR bank {value:?}")))?);
                }
                "pcr" => {
                    let (idx, hex) = value.split_once(' ').ok_or_else(|| bad("pcr: want INDEX HEX".into()))?;
                    let idx: u8 =
                        idx.parse().ok().filter(|i| *i < PCR_COUNT).ok_or_else(|| bad("pcr: bad index".into()))?;
                    if pending_pcrs.iter().any(|(_, i, _)| *i == idx) {
                        return Err(bad(format!("pcr {idx} given twice")));
                    }
                    if pending_pcrs.len() >= usize::from(PCR_COUNT) {
                        return Err(bad("too many pcr lines".into()));
                    }
                    pending_pcrs.push((n, idx, hex.trim()));
                }
                "policy" => {
                    once(policy.is_some())?;
                    let mut d = [0u8; 32];
                    if !hex_decode(value, &mut d) {
                        return Err(bad("policy: not 64 hex digits".into()));
                    }
                    policy = Some(d);
                }
                "auth" => {
                    once(pin.is_some())?;
                    if value != "pin" {
                        return Err(bad(format!("unknown auth {value:?} (this build knows pin)")));
                    }
                    pin = Some(());
                }
                "public" => {
                    once(public.is_some())?;
                    public = Some(decode_blob(value, n, "public")?);
                }
                "private" => {
                    once(private.is_some())?;
                    private = Some(decode_blob(value, n, "private")?);
                }
                other => return Err(bad(format!("unknown field {other:?}"))),
            }
        }
        parent.ok_or(SealedError::Missing("parent"))?;
        if authorized {
            let key = policy_key.ok_or(SealedError::Missing("policy-key"))?;
            let policy = policy.ok_or(SealedError::Missing("policy"))?;
            if policy != with_pin(crate::tpm::policy::policy_authorize_digest(&key.name()), pin.is_some()) {
                return Err(SealedError::PolicyMismatch);
            }
            return Ok(SealedKey {
                key_id: key_id.ok_or(SealedError::Missing("key-id"))?,
                parent_name: parent_name.ok_or(SealedError::Missing("parent-name"))?,
                bank: Bank::Sha256,
                pcrs: Vec::new(),
                policy_key: Some(key),
                policy,
                public: public.ok_or(SealedError::Missing("public"))?,
                private: private.ok_or(SealedError::Missing("private"))?,
            });
        }
        let bank = bank.ok_or(SealedError::Missing("bank"))?;
        pcrs.extend(pcr_values(bank, pending_pcrs).map_err(|(line, what)| SealedError::Line { line, what })?);
        if pcrs.is_empty() {
            return Err(SealedError::Missing("pcr"));
        }
        let policy = policy.ok_or(SealedError::Missing("policy"))?;
        if policy != with_pin(policy_pcr_digest(bank, &pcrs), pin.is_some()) {
            return Err(SealedError::PolicyMismatch);
        }
        Ok(SealedKey {
            key_id: key_id.ok_or(SealedError::Missing("key-id"))?,
            parent_name: parent_name.ok_or(SealedError::Missing("parent-name"))?,
            bank,
            pcrs,
            policy_key: None,
            policy,
            public: public.ok_or(SealedError::Missing("public"))?,
            private: private.ok_or(SealedError::Missing("private"))?,
        })
    }

    /// The policy before a PIN: the TPM2_PolicyPCR digest of the PCR
    /// values, or the TPM2_PolicyAuthorize digest of the policy key.
    pub fn base_policy(&self) -> [u8; 32] {
        match &self.policy_key {
            Some(key) => crate::tpm::policy::policy_authorize_digest(&key.name()),
            None => policy_pcr_digest(self.bank, &self.pcrs),
        }
    }

    /// Whether the key was sealed with a PIN (`tpm-seal --pin`): its policy
    /// ends in TPM2_PolicyAuthValue, and the PIN is the object's auth value.
    pub fn needs_pin(&self) -> bool {
        self.policy != self.base_policy() && self.policy == policy_auth_value_digest(&self.base_policy())
    }

    /// The PCR indices of the policy, ascending.
    pub fn pcr_indices(&self) -> Vec<u8> {
        self.pcrs.iter().map(|(i, _)| *i).collect()
    }

    /// Serialises to the file text.
    pub fn to_text(&self) -> String {
        if let Some(key) = &self.policy_key {
            return format!(
                "# Stateless Loader TPM-sealed site key {id}, unsealed by signed PCR policies of\n\
                 # policy key {name}. Only the TPM that sealed it can unseal it, and only while the\n\
                 # PCRs match a policy that key signed. Not secret, but keep it 0600. See docs/keys.md.\n\
                 {SEALED_AUTHORIZED_MAGIC}\nkey-id {id}\nparent {PARENT_SRK_ECC}\nparent-name {parent}\n\
                 policy-key {point}\n{auth}policy {policy}\npublic {public}\nprivate {private}\n",
                id = self.key_id,
                name = hex_encode(&key.name()),
                point = hex_encode(&key.point()),
                auth = if self.needs_pin() { "auth pin\n" } else { "" },
                parent = hex_encode(&self.parent_name),
                policy = hex_encode(&self.policy),
                public = hex_encode(&self.public),
                private = hex_encode(&self.private),
            );
        }
        let list: Vec<String> = self.pcrs.iter().map(|(i, _)| i.to_string()).collect();
        let mut s = format!(
            "# Stateless Loader TPM-sealed site key {id}, bound to PCR {list} ({bank}).\n\
             # Only the TPM that sealed it can unseal it, and only while those PCRs hold\n\
             # the values below. Not secret, but keep it 0600 like the key. See docs/keys.md.\n\
             {SEALED_MAGIC}\nkey-id {id}\nparent {PARENT_SRK_ECC}\nparent-name {name}\nbank {bank}\n",
            id = self.key_id,
            name = hex_encode(&self.parent_name),
            list = list.join(","),
            bank = self.bank.name(),
        );
        for (i, v) in &self.pcrs {
            let _ = writeln!(s, "pcr {i} {}", hex_encode(v));
        }
        if self.needs_pin() {
            s.push_str("auth pin\n");
        }
        let _ = writeln!(s, "policy {}", hex_encode(&self.policy));
        let _ = writeln!(s, "public {}", hex_encode(&self.public));
        let _ = writeln!(s, "private {}", hex_encode(&self.private));
        s
    }
}

/// `policy`, followed by TPM2_PolicyAuthValue when `pin`.
fn with_pin(policy: [u8; 32], pin: bool) -> [u8; 32] {
    if pin { policy_auth_value_digest(&policy) } else { policy }
}

/// Reads and parses a sealed-key file, refusing anything over the size limit
/// unread.
pub fn read_sealed_file(path: &Path) -> Result<SealedKey, SealedError> {
    let file = std::fs::File::open(path).map_err(|e| SealedError::Io(e.to_string()))?;
    let mut text = Vec::new();
    file.take(MAX_SEALED_FILE_LEN as u64 + 1).read_to_end(&mut text).map_err(|e| SealedError::Io(e.to_string()))?;
    SealedKey::parse(&text)
}

/// PCR index and value pairs, sorted by index.
pub(crate) type PcrValues = Vec<(u8, Vec<u8>)>;

/// The `pcr = INDEX HEX` lines of a sealed-key or signed-policy file, as
/// values of `bank`, sorted by index: `Err((line, what))` names the first
/// value that is not exactly one digest of the bank in hex.
pub(crate) fn pcr_values(bank: Bank, pending: Vec<(usize, u8, &str)>) -> Result<PcrValues, (usize, String)> {
    let mut pcrs = Vec::with_capacity(pending.len());
    for (n, idx, hex) in pending {
        let mut v = vec![0u8; bank.digest_len()];
        if hex.len() != 2 * bank.digest_len() || !hex_decode(hex, &mut v) {
            return Err((n, format!("pcr {idx}: not a {} value ({} hex digits)", bank.name(), bank.digest_len() * 2)));
        }
        pcrs.push((idx, v));
    }
    pcrs.sort_by_key(|(i, _)| *i);
    Ok(pcrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedKey {
        let pcrs = vec![(0u8, vec![0x11; 32]), (7u8, vec![0x77; 32])];
        SealedKey {
            key_id: KeyId([0xab; 16]),
            parent_name: [&[0u8, 0x0b][..], &[0x5a; 32]].concat(),
            bank: Bank::Sha256,
            policy: policy_pcr_digest(Bank::Sha256, &pcrs),
            pcrs,
            policy_key: None,
            public: vec![0, 3, 1, 2, 3],
            private: vec![0, 1, 9],
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let text = s.to_text();
        assert_eq!(SealedKey::parse(text.as_bytes()).unwrap(), s);
        assert!(text.contains("bound to PCR 0,7 (sha256)"), "{text}");
    }

    #[test]
    fn authorized_round_trip_and_refusals() {
        let key = crate::tpm::policy::PolicySigningKey::generate().unwrap().public();
        let other = crate::tpm::policy::PolicySigningKey::generate().unwrap().public();
        let s = SealedKey {
            pcrs: Vec::new(),
            policy: crate::tpm::policy::policy_authorize_digest(&key.name()),
            policy_key: Some(key.clone()),
            ..sample()
        };
        let text = s.to_text();
        assert!(text.contains("stateless-sealed-v2\n"), "{text}");
        assert_eq!(SealedKey::parse(text.as_bytes()).unwrap(), s);
        let cases: Vec<(String, &str)> = vec![
            (text.replace(&hex_encode(&key.point()), &hex_encode(&other.point())), "policy digest does not match"),
            (text.replace(&hex_encode(&key.point()), &"01".repeat(64)), "not a point on P-256"),
            (format!("{text}pcr 7 {}\n", "00".repeat(32)), "no PCR values of its own"),
            (text.replace(&format!("policy-key {}", hex_encode(&key.point())), "policy-key 00"), "128 hex digits"),
            (
                text.lines().filter(|l| !l.starts_with("policy-key")).collect::<Vec<_>>().join("\n"),
                "missing policy-key",
            ),
            // A v1 file has no policy-key line.
            (sample().to_text() + "policy-key 00\n", "unknown field"),
        ];
        for (text, want) in cases {
            let err = SealedKey::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn a_pin_is_an_auth_line_and_a_policy_auth_value() {
        let plain = sample();
        assert!(!plain.needs_pin());
        let pinned = SealedKey { policy: policy_auth_value_digest(&plain.policy), ..sample() };
        assert!(pinned.needs_pin());
        let text = pinned.to_text();
        assert!(text.contains("\nauth pin\npolicy "), "{text}");
        assert_eq!(SealedKey::parse(text.as_bytes()).unwrap(), pinned);
        let key = crate::tpm::policy::PolicySigningKey::generate().unwrap().public();
        let base = crate::tpm::policy::policy_authorize_digest(&key.name());
        let v2 =
            SealedKey { pcrs: Vec::new(), policy: policy_auth_value_digest(&base), policy_key: Some(key), ..sample() };
        assert!(v2.needs_pin());
        assert_eq!(SealedKey::parse(v2.to_text().as_bytes()).unwrap(), v2);
        // The line and the digest must agree; only `pin` is known.
        let cases = [
            (text.replace("auth pin\n", ""), "policy digest does not match"),
            (plain.to_text().replace("policy ", "auth pin\npolicy "), "policy digest does not match"),
            (text.replace("auth pin", "auth fido"), "unknown auth"),
            (text.replace("auth pin", "auth pin\nauth pin"), "auth given twice"),
        ];
        for (t, want) in cases {
            let err = SealedKey::parse(t.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn pcr_selection_bitmap() {
        // One bank, three bytes of bitmap, PCR n is bit n%8 of byte n/8. The
        // policy digest itself is checked against tpm2_createpolicy in the
        // swtpm tests.
        assert_eq!(hex_encode(&pcr_selection(Bank::Sha256, &[7])), "00000001000b03800000");
        assert_eq!(hex_encode(&pcr_selection(Bank::Sha1, &[0, 8, 23])), "000000010004030101".to_owned() + "80");
    }

    #[test]
    fn refusals() {
        let good = sample().to_text();
        let cases: Vec<(String, &str)> = vec![
            ("hello".into(), "no stateless-sealed-v1"),
            ("stateless-sealed-v3\n".into(), "unknown format version"),
            (good.replace("bank sha256", "bank md5"), "unknown PCR bank"),
            (good.replace("parent srk-ecc-p256", "parent srk-rsa"), "unknown parent"),
            (good.replace("parent-name 000b", "parent-name 0004"), "not a SHA-256 name"),
            (
                good.lines().filter(|l| !l.starts_with("parent-name")).collect::<Vec<_>>().join("\n"),
                "missing parent-name",
            ),
            (good.replace("pcr 7 ", "pcr 0 "), "pcr 0 given twice"),
            (good.replace("pcr 7 ", "pcr 24 "), "bad index"),
            (good.replace(&"77".repeat(32), &"78".repeat(32)), "policy digest does not match"),
            (good.replace("public 0003010203", "public 0009010203"), "size prefix"),
            (good.replace("public 0003010203", "public zz"), "public: not hex"),
            (good.lines().filter(|l| !l.starts_with("private")).collect::<Vec<_>>().join("\n"), "missing private"),
            (format!("{good}frob 1\n"), "unknown field"),
            ("#".repeat(MAX_SEALED_FILE_LEN + 1), "larger than"),
        ];
        for (text, want) in cases {
            let err = SealedKey::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn pcr_lists() {
        assert_eq!(parse_pcr_list("7"), Ok(vec![7]));
        assert_eq!(parse_pcr_list("7,0,7"), Ok(vec![0, 7]));
        assert!(parse_pcr_list("24").is_err());
        assert!(parse_pcr_list("x").is_err());
        assert!(parse_pcr_list("").is_err());
    }
}
