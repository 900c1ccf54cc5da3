//! Signed PCR policies (TPM2_PolicyAuthorize): a key sealed under a policy
//! signing key unseals when the PCRs match *any* PCR policy that key signed,
//! so a firmware or kernel update ships a new signed policy instead of a
//! reseal on every node.
//!
//! **The policy signing key** is ECDSA NIST P-256 with SHA-256: the TPM must
//! verify the signature itself (`TPM2_VerifySignature`, which knows no
//! Ed25519), every TPM 2.0 implements P-256 (RSA-2048 too, but its keys and
//! signatures are eight times larger and slower to make), and the RustCrypto
//! `p256` crate the salted session already uses signs it deterministically
//! (RFC 6979). Two text files:
//!
//! ```text
//! stateless-tpm-policy-key-v1        (policy.sign, 0600, keep it offline)
//! secret <64 hex digits: the P-256 scalar>
//!
//! stateless-tpm-policy-pub-v1        (policy.pub)
//! name <hex of the key's TPM name: 000b and SHA-256 of its TPMT_PUBLIC>
//! x <64 hex digits>
//! y <64 hex digits>
//! ```
//!
//! The TPM knows the key by its *name*, the SHA-256 of the public area the
//! loader gives `TPM2_LoadExternal` ([`PolicyPublicKey::public_area`]:
//! ECC P-256, `sign|userWithAuth`, no scheme, no symmetric algorithm). A
//! sealed object's authPolicy is `TPM2_PolicyAuthorize(name, policyRef)`
//! with an empty policyRef ([`POLICY_REF`]).
//!
//! **A signed policy** (`*.signed`) is text too:
//!
//! ```text
//! stateless-tpm-signed-policy-v1
//! policy-key <hex of the signing key's name>
//! bank sha256
//! pcr 7 <hex of the PCR value>
//! pcr 9 <hex>
//! policy <hex of the TPM2_PolicyPCR digest of those values>
//! signature <hex of the TPMT_SIGNATURE: ECDSA, SHA-256, r, s>
//! ```
//!
//! The signature is over `aHash = SHA-256(policy || policyRef)`, as
//! TPM2_PolicyAuthorize requires. Everything in the file is untrusted: the
//! loader checks the signature itself only to name a bad one; the TPM checks
//! it again (`TPM2_VerifySignature` makes the ticket PolicyAuthorize needs)
//! and enforces the PCR values.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use stateless_bundle::key::{hex_decode, hex_encode};
use zeroize::Zeroizing;

use super::{ALG_NULL, ALG_SHA256};
use crate::sealed::{Bank, PCR_COUNT, pcr_values, policy_pcr_digest};

/// First line of a policy signing key file.
pub const KEY_MAGIC: &str = "stateless-tpm-policy-key-v1";
/// First line of a policy public key file.
pub const PUB_MAGIC: &str = "stateless-tpm-policy-pub-v1";
/// First line of a signed policy file.
pub const SIGNED_MAGIC: &str = "stateless-tpm-signed-policy-v1";
/// The policyRef of every signed policy: empty. A policy signing key signs
/// only PCR policies for this project's sealed keys; a site that wants to
/// keep several sets of keys apart uses one policy signing key per set.
pub const POLICY_REF: &[u8] = b"";
/// Files larger than this are refused unread.
pub const MAX_POLICY_FILE_LEN: usize = 8 * 1024;
/// Largest policy list: several signed policies in one file, as a server
/// publishes them (`v1/default/tpm-policies`, docs/keys.md).
pub const MAX_POLICY_LIST_LEN: usize = 256 * 1024;
/// TPM_CC_PolicyAuthorize, part of the policy digest.
pub const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
const ALG_ECC: u16 = 0x0023;
const ALG_ECDSA: u16 = 0x0018;
const CURVE_NIST_P256: u16 = 0x0003;
/// objectAttributes of the loaded public key: sign | userWithAuth.
const KEY_ATTRIBUTES: u32 = 0x0004_0040;

/// Why a policy key or signed policy file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not the expected kind of file.
    #[error("not a {what}: the first line is not {magic}")]
    Magic {
        /// The kind of file wanted.
        what: &'static str,
        /// Its first line.
        magic: &'static str,
    },
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
    /// The name line is not the name of the x, y point.
    #[error("the name does not match the public key (file edited or corrupt)")]
    NameMismatch,
    /// The policy digest is not the one of the PCR values.
    #[error("the policy digest does not match the PCR values (file edited or corrupt)")]
    PolicyMismatch,
    /// The point or scalar is not a valid P-256 key.
    #[error("not a valid P-256 key")]
    BadKey,
    /// A policy list larger than [`MAX_POLICY_LIST_LEN`].
    #[error("larger than {MAX_POLICY_LIST_LEN} bytes")]
    ListTooLarge,
    /// Larger than [`MAX_POLICY_FILE_LEN`].
    #[error("larger than {MAX_POLICY_FILE_LEN} bytes")]
    TooLarge,
    /// The file could not be read.
    #[error("{0}")]
    Io(String),
}

/// The fields of a policy file after its magic line: (line number, name, value).
fn fields<'a>(
    text: &'a [u8],
    magic: &'static str,
    what: &'static str,
) -> Result<Vec<(usize, &'a str, &'a str)>, PolicyError> {
    if text.len() > MAX_POLICY_FILE_LEN {
        return Err(PolicyError::TooLarge);
    }
    let wrong = PolicyError::Magic { what, magic };
    let text = std::str::from_utf8(text).map_err(|_| wrong.clone())?;
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    if lines.next().map(|(_, l)| l) != Some(magic) {
        return Err(wrong);
    }
    lines
        .map(|(n, l)| match l.split_once(' ') {
            Some((k, v)) => Ok((n, k, v.trim())),
            None => Err(PolicyError::Line { line: n, what: format!("{l:?}: no value") }),
        })
        .collect()
}

fn hex_field<const N: usize>(n: usize, name: &str, value: &str) -> Result<[u8; N], PolicyError> {
    let mut out = [0u8; N];
    if value.len() != 2 * N || !hex_decode(value, &mut out) {
        return Err(PolicyError::Line { line: n, what: format!("{name}: not {} hex digits", 2 * N) });
    }
    Ok(out)
}

fn read_limited(path: &Path) -> Result<Zeroizing<Vec<u8>>, PolicyError> {
    let file = std::fs::File::open(path).map_err(|e| PolicyError::Io(format!("{}: {e}", path.display())))?;
    let mut text = Zeroizing::new(Vec::new());
    file.take(MAX_POLICY_FILE_LEN as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| PolicyError::Io(format!("{}: {e}", path.display())))?;
    Ok(text)
}

/// The public half of a policy signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPublicKey {
    key: VerifyingKey,
}

impl PolicyPublicKey {
    /// The affine coordinates, 32 bytes each.
    fn xy(&self) -> ([u8; 32], [u8; 32]) {
        let point = self.key.to_encoded_point(false);
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        if let (Some(px), Some(py)) = (point.x(), point.y()) {
            x.copy_from_slice(px);
            y.copy_from_slice(py);
        }
        (x, y)
    }

    /// The key from its point, x then y (32 bytes each).
    pub fn from_point(xy: &[u8; 64]) -> Result<PolicyPublicKey, PolicyError> {
        let (x, y) = xy.split_at(32);
        let point = p256::EncodedPoint::from_affine_coordinates(x.into(), y.into(), false);
        Ok(PolicyPublicKey { key: VerifyingKey::from_encoded_point(&point).map_err(|_| PolicyError::BadKey)? })
    }

    /// The point, x then y.
    pub fn point(&self) -> [u8; 64] {
        let (x, y) = self.xy();
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&x);
        out[32..].copy_from_slice(&y);
        out
    }

    /// The TPMT_PUBLIC given to TPM2_LoadExternal (without its TPM2B size).
    pub fn public_area(&self) -> Vec<u8> {
        let (x, y) = self.xy();
        let mut t = Vec::with_capacity(90);
        t.extend_from_slice(&ALG_ECC.to_be_bytes());
        t.extend_from_slice(&ALG_SHA256.to_be_bytes()); // nameAlg
        t.extend_from_slice(&KEY_ATTRIBUTES.to_be_bytes());
        t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
        t.extend_from_slice(&ALG_NULL.to_be_bytes()); // symmetric: none
        t.extend_from_slice(&ALG_NULL.to_be_bytes()); // scheme: any (the signature names it)
        t.extend_from_slice(&CURVE_NIST_P256.to_be_bytes());
        t.extend_from_slice(&ALG_NULL.to_be_bytes()); // kdf
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&x);
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&y);
        t
    }

    /// The key's TPM name: `000b` and the SHA-256 of [`Self::public_area`].
    pub fn name(&self) -> Vec<u8> {
        let mut n = ALG_SHA256.to_be_bytes().to_vec();
        n.extend_from_slice(&Sha256::digest(self.public_area()));
        n
    }

    /// Whether `signature` (a TPMT_SIGNATURE) signs `approved || POLICY_REF`.
    pub fn verifies(&self, approved: &[u8; 32], signature: &[u8]) -> bool {
        parse_signature(signature).is_some_and(|sig| self.key.verify_prehash(&authorize_hash(approved), &sig).is_ok())
    }

    /// Parses a policy public key file.
    pub fn parse(text: &[u8]) -> Result<PolicyPublicKey, PolicyError> {
        let (mut name, mut x, mut y) = (None, None, None);
        for (n, k, v) in fields(text, PUB_MAGIC, "policy public key file")? {
            match k {
                "name" => name = Some(hex_field::<34>(n, k, v)?),
                "x" => x = Some(hex_field::<32>(n, k, v)?),
                "y" => y = Some(hex_field::<32>(n, k, v)?),
                other => return Err(PolicyError::Line { line: n, what: format!("unknown field {other:?}") }),
            }
        }
        let (x, y) = (x.ok_or(PolicyError::Missing("x"))?, y.ok_or(PolicyError::Missing("y"))?);
        let key = PolicyPublicKey::from_point(&[x, y].concat().try_into().map_err(|_| PolicyError::BadKey)?)?;
        if key.name() != name.ok_or(PolicyError::Missing("name"))? {
            return Err(PolicyError::NameMismatch);
        }
        Ok(key)
    }

    /// The file text.
    pub fn to_text(&self) -> String {
        let (x, y) = self.xy();
        format!(
            "# Stateless Loader TPM policy public key (ECDSA P-256). Seal keys to it with\n\
             # `statelessctl key tpm-seal --policy-key`; see docs/keys.md.\n\
             {PUB_MAGIC}\nname {}\nx {}\ny {}\n",
            hex_encode(&self.name()),
            hex_encode(&x),
            hex_encode(&y)
        )
    }
}

/// A policy signing key (the private half).
pub struct PolicySigningKey {
    key: SigningKey,
}

impl std::fmt::Debug for PolicySigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicySigningKey({})", hex_encode(&self.public().name()))
    }
}

impl PolicySigningKey {
    /// A new random key (from the OS's random source).
    pub fn generate() -> Result<PolicySigningKey, PolicyError> {
        // Rejection sampling: a random 32-byte string is a valid scalar
        // except with odds ~2^-32.
        for _ in 0..8 {
            let mut bytes = Zeroizing::new([0u8; 32]);
            getrandom::fill(bytes.as_mut_slice()).map_err(|e| PolicyError::Io(format!("random source: {e}")))?;
            if let Ok(key) = SigningKey::from_slice(bytes.as_slice()) {
                return Ok(PolicySigningKey { key });
            }
        }
        Err(PolicyError::BadKey)
    }

    /// The public half.
    pub fn public(&self) -> PolicyPublicKey {
        PolicyPublicKey { key: *self.key.verifying_key() }
    }

    /// Signs a PolicyPCR digest: the TPMT_SIGNATURE (ECDSA, SHA-256) over
    /// `SHA-256(approved || POLICY_REF)`.
    pub fn sign(&self, approved: &[u8; 32]) -> Result<Vec<u8>, PolicyError> {
        let sig: Signature = self.key.sign_prehash(&authorize_hash(approved)).map_err(|_| PolicyError::BadKey)?;
        let bytes = sig.to_bytes();
        let (r, s) = bytes.split_at(32);
        let mut out = Vec::with_capacity(72);
        out.extend_from_slice(&ALG_ECDSA.to_be_bytes());
        out.extend_from_slice(&ALG_SHA256.to_be_bytes());
        out.extend_from_slice(&32u16.to_be_bytes());
        out.extend_from_slice(r);
        out.extend_from_slice(&32u16.to_be_bytes());
        out.extend_from_slice(s);
        Ok(out)
    }

    /// Parses a policy signing key file.
    pub fn parse(text: &[u8]) -> Result<PolicySigningKey, PolicyError> {
        let mut secret = None;
        for (n, k, v) in fields(text, KEY_MAGIC, "policy signing key file")? {
            match k {
                "secret" => secret = Some(Zeroizing::new(hex_field::<32>(n, k, v)?)),
                other => return Err(PolicyError::Line { line: n, what: format!("unknown field {other:?}") }),
            }
        }
        let secret = secret.ok_or(PolicyError::Missing("secret"))?;
        Ok(PolicySigningKey { key: SigningKey::from_slice(secret.as_slice()).map_err(|_| PolicyError::BadKey)? })
    }

    /// The file text (secret: write it 0600).
    pub fn to_text(&self) -> Zeroizing<String> {
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(self.key.to_bytes().into());
        Zeroizing::new(format!(
            "# Stateless Loader TPM policy signing key (ECDSA P-256), public name {}.\n\
             # Whoever holds it can let the sealed keys unseal under any PCR values: keep it offline.\n\
             {KEY_MAGIC}\nsecret {}\n",
            hex_encode(&self.public().name()),
            hex_encode(secret.as_ref())
        ))
    }
}

/// `aHash` of TPM2_PolicyAuthorize: SHA-256(approvedPolicy || policyRef).
pub fn authorize_hash(approved: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(approved);
    h.update(POLICY_REF);
    h.finalize().into()
}

/// The authPolicy of an object sealed under `key_name`: one
/// TPM2_PolicyAuthorize (TPM 2.0 Part 3, 23.16), which resets the digest and
/// extends it with `TPM_CC_PolicyAuthorize || keyName`, then with policyRef.
pub fn policy_authorize_digest(key_name: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM_CC_POLICY_AUTHORIZE.to_be_bytes());
    h.update(key_name);
    let first: [u8; 32] = h.finalize().into();
    let mut h = Sha256::new();
    h.update(first);
    h.update(POLICY_REF);
    h.finalize().into()
}

/// An ECDSA/SHA-256 TPMT_SIGNATURE with 32-byte r and s, as a signature.
fn parse_signature(sig: &[u8]) -> Option<Signature> {
    let mut r = crate::tpm::wire::Reader::new(sig);
    if r.u16().ok()? != ALG_ECDSA || r.u16().ok()? != ALG_SHA256 {
        return None;
    }
    let (sr, ss) = (r.tpm2b().ok()?, r.tpm2b().ok()?);
    if !r.rest().is_empty() || sr.len() != 32 || ss.len() != 32 {
        return None;
    }
    Signature::from_slice(&[sr, ss].concat()).ok()
}

/// A signed PCR policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    /// The name of the key that signed it.
    pub key_name: Vec<u8>,
    /// The PCR bank.
    pub bank: Bank,
    /// PCR index and value, ascending.
    pub pcrs: Vec<(u8, Vec<u8>)>,
    /// The TPM2_PolicyPCR digest of `pcrs` (recomputed when parsing).
    pub policy: [u8; 32],
    /// The TPMT_SIGNATURE over `SHA-256(policy || POLICY_REF)`.
    pub signature: Vec<u8>,
}

impl SignedPolicy {
    /// Signs the PolicyPCR policy of `pcrs` (ascending, no duplicates).
    pub fn sign(key: &PolicySigningKey, bank: Bank, pcrs: Vec<(u8, Vec<u8>)>) -> Result<SignedPolicy, PolicyError> {
        let policy = policy_pcr_digest(bank, &pcrs);
        Ok(SignedPolicy { key_name: key.public().name(), bank, pcrs, policy, signature: key.sign(&policy)? })
    }

    /// The PCR indices, ascending.
    pub fn pcr_indices(&self) -> Vec<u8> {
        self.pcrs.iter().map(|(i, _)| *i).collect()
    }

    /// Parses a signed policy file. The signature is not checked here (the
    /// key may not be at hand): [`PolicyPublicKey::verifies`] does.
    pub fn parse(text: &[u8]) -> Result<SignedPolicy, PolicyError> {
        let (mut key_name, mut bank, mut policy, mut signature) = (None, None, None, None);
        let mut pending: Vec<(usize, u8, &str)> = Vec::new();
        for (n, k, v) in fields(text, SIGNED_MAGIC, "signed policy file")? {
            let bad = |what: String| PolicyError::Line { line: n, what };
            let once = |set: bool| if set { Err(bad(format!("{k} given twice"))) } else { Ok(()) };
            match k {
                "policy-key" => {
                    once(key_name.is_some())?;
                    key_name = Some(hex_field::<34>(n, k, v)?.to_vec());
                }
                "bank" => {
                    once(bank.is_some())?;
                    bank = Some(Bank::parse(v).ok_or_else(|| bad(format!("unknown PCR bank {v:?}")))?);
                }
                "pcr" => {
                    let (idx, hex) = v.split_once(' ').ok_or_else(|| bad("pcr: want INDEX HEX".into()))?;
                    let idx: u8 =
                        idx.parse().ok().filter(|i| *i < PCR_COUNT).ok_or_else(|| bad("pcr: bad index".into()))?;
                    if pending.iter().any(|(_, i, _)| *i == idx) {
                        return Err(bad(format!("pcr {idx} given twice")));
                    }
                    pending.push((n, idx, hex.trim()));
                }
                "policy" => {
                    once(policy.is_some())?;
                    policy = Some(hex_field::<32>(n, k, v)?);
                }
                "signature" => {
                    once(signature.is_some())?;
                    // ECDSA P-256: 2 + 2 + (2 + 32) * 2 bytes.
                    let sig = hex_field::<72>(n, k, v)?;
                    if parse_signature(&sig).is_none() {
                        return Err(bad("signature: not an ECDSA P-256 SHA-256 signature".into()));
                    }
                    signature = Some(sig.to_vec());
                }
                other => return Err(bad(format!("unknown field {other:?}"))),
            }
        }
        let bank = bank.ok_or(PolicyError::Missing("bank"))?;
        let pcrs = pcr_values(bank, pending).map_err(|(line, what)| PolicyError::Line { line, what })?;
        if pcrs.is_empty() {
            return Err(PolicyError::Missing("pcr"));
        }
        let policy = policy.ok_or(PolicyError::Missing("policy"))?;
        if policy != policy_pcr_digest(bank, &pcrs) {
            return Err(PolicyError::PolicyMismatch);
        }
        Ok(SignedPolicy {
            key_name: key_name.ok_or(PolicyError::Missing("policy-key"))?,
            bank,
            pcrs,
            policy,
            signature: signature.ok_or(PolicyError::Missing("signature"))?,
        })
    }

    /// The file text.
    pub fn to_text(&self) -> String {
        let list: Vec<String> = self.pcrs.iter().map(|(i, _)| i.to_string()).collect();
        let mut s = format!(
            "# Stateless Loader signed TPM policy: keys sealed to policy key {name}\n\
             # unseal while PCR {list} ({bank}) hold the values below. See docs/keys.md.\n\
             {SIGNED_MAGIC}\npolicy-key {name}\nbank {bank}\n",
            name = hex_encode(&self.key_name),
            list = list.join(","),
            bank = self.bank.name(),
        );
        for (i, v) in &self.pcrs {
            let _ = writeln!(s, "pcr {i} {}", hex_encode(v));
        }
        let _ = writeln!(s, "policy {}", hex_encode(&self.policy));
        let _ = writeln!(s, "signature {}", hex_encode(&self.signature));
        s
    }
}

/// Reads a policy public key file.
pub fn read_policy_public_file(path: &Path) -> Result<PolicyPublicKey, PolicyError> {
    PolicyPublicKey::parse(&read_limited(path)?)
}

/// Reads a policy signing key file.
pub fn read_policy_signing_file(path: &Path) -> Result<PolicySigningKey, PolicyError> {
    PolicySigningKey::parse(&read_limited(path)?)
}

/// Reads a signed policy file.
pub fn read_signed_policy_file(path: &Path) -> Result<SignedPolicy, PolicyError> {
    SignedPolicy::parse(&read_limited(path)?)
}

/// Parses a policy list: complete signed policy texts one after another
/// (what `statelessctl tpm publish-policy` writes). Each entry begins at a
/// line that is [`SIGNED_MAGIC`] and is parsed by [`SignedPolicy::parse`],
/// so one bad entry is one error and does not hide the others. Comment
/// lines before an entry's magic end up in the entry before, where they are
/// comments still. The list as a whole is refused when it is too large, not
/// UTF-8, or has anything but comments before its first entry; an empty
/// list (comments only) has no entries.
pub fn parse_signed_policy_list(text: &[u8]) -> Result<Vec<Result<SignedPolicy, PolicyError>>, PolicyError> {
    if text.len() > MAX_POLICY_LIST_LEN {
        return Err(PolicyError::ListTooLarge);
    }
    let wrong = PolicyError::Magic { what: "signed policy list", magic: SIGNED_MAGIC };
    let text = std::str::from_utf8(text).map_err(|_| wrong.clone())?;
    let mut starts = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim();
        if l == SIGNED_MAGIC {
            starts.push(at);
        } else if starts.is_empty() && !l.is_empty() && !l.starts_with('#') {
            return Err(wrong);
        }
        at += line.len();
    }
    let ends = starts.iter().skip(1).copied().chain([text.len()]);
    Ok(starts
        .iter()
        .zip(ends)
        .map(|(&a, b)| SignedPolicy::parse(text.get(a..b).unwrap_or_default().as_bytes()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_sign() {
        let key = PolicySigningKey::generate().unwrap();
        let again = PolicySigningKey::parse(key.to_text().as_bytes()).unwrap();
        assert_eq!(again.public(), key.public());
        let public = PolicyPublicKey::parse(key.public().to_text().as_bytes()).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.name().len(), 34);
        assert_eq!(public.public_area().len(), 2 + 2 + 4 + 2 + 2 + 2 + 2 + 2 + 34 + 34);

        let signed = SignedPolicy::sign(&key, Bank::Sha256, vec![(7, vec![0x77; 32]), (9, vec![0; 32])]).unwrap();
        assert!(public.verifies(&signed.policy, &signed.signature));
        assert!(!public.verifies(&[0; 32], &signed.signature));
        let other = PolicySigningKey::generate().unwrap().public();
        assert!(!other.verifies(&signed.policy, &signed.signature));
        assert_eq!(SignedPolicy::parse(signed.to_text().as_bytes()).unwrap(), signed);
    }

    #[test]
    fn refusals() {
        let key = PolicySigningKey::generate().unwrap();
        let signed = SignedPolicy::sign(&key, Bank::Sha256, vec![(7, vec![0x77; 32])]).unwrap().to_text();
        let public = key.public().to_text();
        let cases: Vec<(String, &str)> = vec![
            ("hello".into(), "first line is not stateless-tpm-signed-policy-v1"),
            (signed.replace(&"77".repeat(32), &"78".repeat(32)), "policy digest does not match"),
            (signed.replace("pcr 7 ", "pcr 24 "), "bad index"),
            (signed.replace("bank sha256", "bank md5"), "unknown PCR bank"),
            (signed.replace("signature 0018", "signature 0014"), "not an ECDSA"),
            (format!("{signed}frob 1\n"), "unknown field"),
            (
                signed.lines().filter(|l| !l.starts_with("signature")).collect::<Vec<_>>().join("\n"),
                "missing signature",
            ),
            ("#".repeat(MAX_POLICY_FILE_LEN + 1), "larger than"),
        ];
        for (text, want) in cases {
            let err = SignedPolicy::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let name = hex_encode(&key.public().name());
        let err = PolicyPublicKey::parse(public.replace(&name, &format!("000b{}", "00".repeat(32))).as_bytes());
        assert_eq!(err, Err(PolicyError::NameMismatch));
        assert!(
            PolicySigningKey::parse(public.as_bytes()).unwrap_err().to_string().contains("policy signing key file")
        );
    }

    #[test]
    fn policy_lists() {
        let key = PolicySigningKey::generate().unwrap();
        let a = SignedPolicy::sign(&key, Bank::Sha256, vec![(7, vec![0x77; 32])]).unwrap();
        let b = SignedPolicy::sign(&key, Bank::Sha1, vec![(9, vec![0x99; 20])]).unwrap();
        let bad = b.to_text().replace("bank sha1", "bank md5");
        let list = format!("# published\n\n{}{bad}{}", a.to_text(), b.to_text());
        let got = parse_signed_policy_list(list.as_bytes()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Ok(a.clone()));
        assert!(got[1].as_ref().unwrap_err().to_string().contains("unknown PCR bank"));
        assert_eq!(got[2], Ok(b));
        // Without trailing newline, and empty.
        assert_eq!(parse_signed_policy_list(a.to_text().trim_end().as_bytes()).unwrap(), vec![Ok(a.clone())]);
        assert_eq!(parse_signed_policy_list(b"# none yet\n").unwrap(), vec![]);
        for text in
            [format!("junk\n{}", a.to_text()).into_bytes(), vec![0xff, 0xfe], vec![b'#'; MAX_POLICY_LIST_LEN + 1]]
        {
            assert!(parse_signed_policy_list(&text).is_err());
        }
    }

    #[test]
    fn authorize_digest_shape() {
        // Two hashes even with an empty policyRef (PolicyUpdate always hashes it in).
        let name = [&[0u8, 0x0b][..], &[1; 32]].concat();
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update([0, 0, 1, 0x6a]);
        h.update(&name);
        let first: [u8; 32] = h.finalize().into();
        assert_eq!(policy_authorize_digest(&name), <[u8; 32]>::from(Sha256::digest(first)));
    }
}
