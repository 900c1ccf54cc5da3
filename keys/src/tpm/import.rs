//! A site key wrapped for one node's TPM: software duplication
//! (TPM 2.0 Library Part 1 §23.3, "Protected storage hierarchy: duplication")
//! to the node's storage root key, which only that TPM can undo with
//! `TPM2_Import`.
//!
//! The admin's machine has no TPM of the node's, only the SRK's public area
//! the node sent at enrolment ([`SrkPublic`]). From it [`wrap`] makes what
//! `TPM2_Duplicate` would make with an outer wrapper and no inner one:
//!
//! - a keyed-hash *sealed data* object holding the 32 key bytes, with an
//!   authPolicy (PCR values, or TPM2_PolicyAuthorize by a policy key) and
//!   neither `fixedTPM` nor `fixedParent` (a duplicated object cannot have
//!   them; the TPM refuses the import otherwise);
//! - a seed agreed by ECDH with the SRK (it is ECC P-256, see
//!   [`super::srk_template`]): an ephemeral key pair, `Z = d_e · Q_srk`,
//!   `seed = KDFe(Z, "DUPLICATE", x_e, x_srk)`; the TPM gets the ephemeral
//!   point as `inSymSeed`;
//! - the object's TPMT_SENSITIVE encrypted with AES-128-CFB (zero IV) under
//!   `KDFa(seed, "STORAGE", name)`, and an outer HMAC under
//!   `KDFa(seed, "INTEGRITY")` over the ciphertext and the object's name.
//!
//! Only the TPM holding the SRK's private half can recompute the seed, so
//! only it can check the HMAC and decrypt; any other TPM answers
//! `TPM2_Import` with an integrity error. The file ([`WrappedKey`], text like
//! the sealed-key file) names the SRK it is for, so the loader can say
//! "another TPM's key" before asking the TPM at all. Nothing in it is secret.

use std::fmt::Write as _;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{AffinePoint, PublicKey, SecretKey};
use sha2::{Digest, Sha256};
use stateless_bundle::Key;
use stateless_bundle::key::{KEY_LEN, hex_decode, hex_encode};
use zeroize::Zeroizing;

use super::policy::{PolicyPublicKey, policy_authorize_digest};
use super::{ALG_NULL, ALG_SHA256, salt};
use crate::sealed::{Bank, SEALED_AUTHORIZED_MAGIC, SEALED_MAGIC, SealedError, SealedKey, policy_pcr_digest};

/// First line of a wrapped-key file (after comments).
pub const WRAPPED_MAGIC: &str = "stateless-tpm-wrapped-v1";
/// A wrapped-key file larger than this is refused unread.
pub const MAX_WRAPPED_LEN: usize = crate::sealed::MAX_SEALED_FILE_LEN;

const ALG_KEYEDHASH: u16 = 0x0008;

/// Why a key could not be wrapped, or a wrapped-key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The storage key public area is not the SRK of our template.
    #[error("not the public area of a storage root key made from this project's template (ECC P-256, AES-128-CFB)")]
    NotSrk,
    /// The SRK's point is not on the curve.
    #[error("the storage root key's point is not on P-256")]
    BadPoint,
    /// No random bytes.
    #[error("no random bytes: {0}")]
    Random(String),
    /// The file is not a wrapped key.
    #[error("not a TPM-wrapped key file: {0}")]
    NotWrapped(&'static str),
    /// A field of the file is wrong (same checks as a sealed-key file).
    #[error("TPM-wrapped key file: {0}")]
    Field(#[from] SealedError),
    /// The seed line is malformed.
    #[error("TPM-wrapped key file: line {0}: seed: not a P-256 point (TPMS_ECC_POINT in hex)")]
    Seed(usize),
    /// A credential line is malformed, or only one of the two is there.
    #[error("TPM-wrapped key file: line {0}: credential: {1}")]
    Credential(usize, &'static str),
    /// The endorsement key is not one a credential can be made for.
    #[error("not the public area of an RSA endorsement key (TCG EK profile: RSA 2048 to 4096, SHA-256, AES-128-CFB)")]
    BadEk,
}

/// The public area of a node's SRK as it sent it at enrolment: checked
/// against the template, with its name and point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrkPublic {
    /// The marshalled TPMT_PUBLIC.
    pub public: Vec<u8>,
    /// `000b` and the SHA-256 of `public`.
    pub name: Vec<u8>,
    /// The point's x coordinate.
    pub x: Vec<u8>,
    /// The point's y coordinate.
    pub y: Vec<u8>,
}

impl SrkPublic {
    /// Parses a TPMT_PUBLIC (no size prefix): everything but the point must
    /// be the template's, and the point must be on P-256.
    pub fn parse(public: &[u8]) -> Result<SrkPublic, WrapError> {
        let template = super::srk_template();
        let fixed = template.len().saturating_sub(4);
        if public.get(..fixed) != template.get(..fixed) {
            return Err(WrapError::NotSrk);
        }
        let mut r = super::wire::Reader::new(public.get(fixed..).ok_or(WrapError::NotSrk)?);
        let x = r.tpm2b().map_err(|_| WrapError::NotSrk)?.to_vec();
        let y = r.tpm2b().map_err(|_| WrapError::NotSrk)?.to_vec();
        if !r.rest().is_empty() || x.len() != 32 || y.len() != 32 {
            return Err(WrapError::NotSrk);
        }
        PublicKey::from_sec1_bytes(&[&[0x04][..], &x, &y].concat()).map_err(|_| WrapError::BadPoint)?;
        Ok(SrkPublic { name: name_of(public), public: public.to_vec(), x, y })
    }

    /// The public area of an SRK with point (`x`, `y`).
    pub fn from_point(x: &[u8], y: &[u8]) -> Result<SrkPublic, WrapError> {
        let template = super::srk_template();
        let mut public = template.get(..template.len().saturating_sub(4)).unwrap_or_default().to_vec();
        for c in [x, y] {
            public.extend_from_slice(&u16::try_from(c.len()).map_err(|_| WrapError::NotSrk)?.to_be_bytes());
            public.extend_from_slice(c);
        }
        SrkPublic::parse(&public)
    }
}

/// `000b` and the SHA-256 of a TPMT_PUBLIC: the object's TPM name.
pub fn name_of(public: &[u8]) -> Vec<u8> {
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(public));
    name
}

/// What unseals the wrapped key once imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WrapPolicy {
    /// These PCR values (index, value) of the bank.
    Pcrs(Bank, Vec<(u8, Vec<u8>)>),
    /// Any PCR policy the holder of this key signed (TPM2_PolicyAuthorize).
    Authorized(PolicyPublicKey),
}

/// A key wrapped for one TPM: the sealed object's public area, its
/// duplicate and the seed, with what the sealed-key file records (key id,
/// the SRK's name, the policy). After `TPM2_Import` the TPM's private blob
/// replaces `sealed.private` and it is an ordinary sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The sealed key, with `private` holding the duplicate (TPM2B_PRIVATE:
    /// outer HMAC and encrypted sensitive area), not a TPM private blob.
    pub sealed: SealedKey,
    /// TPM2B_ENCRYPTED_SECRET contents: the ephemeral point (TPMS_ECC_POINT).
    pub seed: Vec<u8>,
    /// The inner wrapper's key, as a credential to the node's EK bound to
    /// the SRK's name ([`wrap_bound`]); `None` for an outer wrapper only.
    pub credential: Option<Credential>,
}

/// The duplicate's inner wrapper key, made with `TPM2_MakeCredential` for
/// the EK the admin approved and the SRK's name: only that TPM, with that
/// SRK loaded, gets it back (`TPM2_ActivateCredential`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// TPM2B_ID_OBJECT, size included.
    pub blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the seed, RSA-OAEP encrypted to the EK.
    pub secret: Vec<u8>,
}

/// Largest credential field (an ID object is ~70 bytes; a 4096-bit RSA
/// secret 512).
const MAX_CREDENTIAL_FIELD: usize = 1024;

/// The sealed-data object's public area. Policy-only: no userWithAuth, so
/// even someone holding the imported object on this TPM needs the policy.
fn object_public(policy: &[u8; 32], unique: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(80);
    t.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    t.extend_from_slice(&ALG_SHA256.to_be_bytes());
    // No fixedTPM/fixedParent (TPM2_Import refuses them); noDA, because a
    // failed policy is not a guessed password.
    t.extend_from_slice(&0x0000_0400u32.to_be_bytes());
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(policy);
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // scheme: sealed data
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(unique);
    t
}

/// Wraps `key` for the TPM whose SRK is `srk`, unsealable under `policy`,
/// with the outer wrapper only: whoever holds the SRK's private key can
/// unwrap it. See [`wrap_bound`].
pub fn wrap(key: &Key, srk: &SrkPublic, policy: &WrapPolicy) -> Result<WrappedKey, WrapError> {
    wrap_with(key, srk, policy, None)
}

/// Wraps `key` for the SRK `srk` of the TPM whose endorsement key is
/// `ek_public` (an RSA EK's TPMT_PUBLIC), unsealable under `policy`. The
/// duplicate also has an inner wrapper whose key is sent as a credential
/// to the EK, bound to the SRK's name: the SRK alone, without the TPM that
/// holds that EK, cannot unwrap it. This is what makes checking the EK
/// (hash, certificate) mean something for the SRK.
pub fn wrap_bound(key: &Key, srk: &SrkPublic, ek_public: &[u8], policy: &WrapPolicy) -> Result<WrappedKey, WrapError> {
    super::credential::rsa_public(ek_public)?;
    let mut inner = Zeroizing::new([0u8; 16]);
    getrandom::fill(inner.as_mut_slice()).map_err(|e| WrapError::Random(e.to_string()))?;
    let mut w = wrap_with(key, srk, policy, Some(&inner))?;
    let (blob, secret) = super::credential::make_credential(ek_public, &srk.name, inner.as_slice())?;
    w.credential = Some(Credential { blob, secret });
    Ok(w)
}

fn wrap_with(
    key: &Key,
    srk: &SrkPublic,
    policy: &WrapPolicy,
    inner: Option<&[u8; 16]>,
) -> Result<WrappedKey, WrapError> {
    let random = |out: &mut [u8]| getrandom::fill(out).map_err(|e| WrapError::Random(e.to_string()));
    let (bank, pcrs, policy_key, digest) = match policy {
        WrapPolicy::Pcrs(bank, values) => (*bank, values.clone(), None, policy_pcr_digest(*bank, values)),
        WrapPolicy::Authorized(k) => (Bank::Sha256, Vec::new(), Some(k.clone()), policy_authorize_digest(&k.name())),
    };
    // The sensitive area: the key, and a random obfuscation value whose
    // hash with the key is the public `unique` (the TPM checks it on load).
    let mut obfuscation = Zeroizing::new([0u8; 32]);
    random(obfuscation.as_mut_slice())?;
    let unique: [u8; 32] = {
        let mut h = Sha256::new();
        h.update(obfuscation.as_slice());
        h.update(key.as_bytes());
        h.finalize().into()
    };
    let public = object_public(&digest, &unique);
    let name = name_of(&public);
    let mut sensitive = Zeroizing::new(Vec::with_capacity(80));
    sensitive.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    sensitive.extend_from_slice(&0u16.to_be_bytes()); // authValue: empty
    sensitive.extend_from_slice(&32u16.to_be_bytes());
    sensitive.extend_from_slice(obfuscation.as_slice());
    sensitive.extend_from_slice(&u16::try_from(KEY_LEN).unwrap_or(0).to_be_bytes());
    sensitive.extend_from_slice(key.as_bytes());
    // encSensitive is the TPM2B of it, size included, encrypted whole.
    let mut enc = Zeroizing::new(Vec::with_capacity(sensitive.len() + 36));
    let mut sensitive_2b = Zeroizing::new(Vec::with_capacity(sensitive.len() + 2));
    sensitive_2b.extend_from_slice(&u16::try_from(sensitive.len()).unwrap_or(0).to_be_bytes());
    sensitive_2b.extend_from_slice(&sensitive);
    if let Some(inner) = inner {
        // The inner wrapper (Part 1 §23.3.2.3): an integrity digest over the
        // sensitive area and the name, then both AES-128-CFB encrypted
        // (zero IV) under the inner key that TPM2_Import is given.
        let integrity = {
            let mut h = Sha256::new();
            h.update(sensitive_2b.as_slice());
            h.update(&name);
            h.finalize()
        };
        enc.extend_from_slice(&32u16.to_be_bytes());
        enc.extend_from_slice(&integrity);
        enc.extend_from_slice(&sensitive_2b);
        salt::cfb_encrypt(inner, &[0u8; 16], &mut enc).map_err(|_| WrapError::BadPoint)?;
    } else {
        enc.extend_from_slice(&sensitive_2b);
    }

    // The seed, by ECDH with the SRK.
    let srk_point =
        PublicKey::from_sec1_bytes(&[&[0x04][..], &srk.x, &srk.y].concat()).map_err(|_| WrapError::BadPoint)?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    let ephemeral = loop {
        random(bytes.as_mut_slice())?;
        if let Ok(s) = SecretKey::from_slice(bytes.as_slice()) {
            break s;
        }
    };
    let point = ephemeral.public_key().to_encoded_point(false);
    let (ex, ey) = match (point.x(), point.y()) {
        (Some(x), Some(y)) => (x.to_vec(), y.to_vec()),
        _ => return Err(WrapError::BadPoint),
    };
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), AffinePoint::from(*srk_point.as_affine()));
    let seed = salt::kdfe(shared.raw_secret_bytes(), "DUPLICATE", &ex, &srk.x);

    let sym = salt::kdfa(&seed, "STORAGE", &name, &[], 128);
    salt::cfb_encrypt(&sym, &[0u8; 16], &mut enc).map_err(|_| WrapError::BadPoint)?;
    let hmac_key = salt::kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let outer = salt::hmac(&hmac_key, &[&enc, &name]).map_err(|_| WrapError::BadPoint)?;
    let mut duplicate = Vec::with_capacity(enc.len() + 36);
    let body_len = 2 + outer.len() + enc.len();
    duplicate.extend_from_slice(&u16::try_from(body_len).unwrap_or(0).to_be_bytes());
    duplicate.extend_from_slice(&32u16.to_be_bytes());
    duplicate.extend_from_slice(&outer);
    duplicate.extend_from_slice(&enc);

    let mut seed_point = Vec::with_capacity(68);
    for c in [&ex, &ey] {
        seed_point.extend_from_slice(&32u16.to_be_bytes());
        seed_point.extend_from_slice(c);
    }
    let mut public_2b = u16::try_from(public.len()).unwrap_or(0).to_be_bytes().to_vec();
    public_2b.extend_from_slice(&public);
    Ok(WrappedKey {
        sealed: SealedKey {
            key_id: key.id(),
            parent_name: srk.name.clone(),
            bank,
            pcrs,
            policy_key,
            policy: digest,
            public: public_2b,
            private: duplicate,
        },
        seed: seed_point,
        credential: None,
    })
}

impl WrappedKey {
    /// Parses a wrapped-key file. Every field but `seed` is checked as in a
    /// sealed-key file (the `duplicate` line as its `private`): PCR values
    /// against the policy digest, TPM2B sizes, the SRK's name.
    pub fn parse(text: &[u8]) -> Result<WrappedKey, WrapError> {
        if text.len() > MAX_WRAPPED_LEN {
            return Err(WrapError::Field(SealedError::TooLarge));
        }
        let text = std::str::from_utf8(text).map_err(|_| WrapError::NotWrapped("not text"))?;
        let mut magic_seen = false;
        let authorized = text.lines().any(|l| l.trim().starts_with("policy-key "));
        let mut seed = None;
        let (mut blob, mut secret) = (None, None);
        // The same text as a sealed-key file, line for line (so that line
        // numbers in errors are the file's).
        let mut sealed = String::with_capacity(text.len());
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            let out = if t.is_empty() || t.starts_with('#') {
                t.to_owned()
            } else if !magic_seen {
                if t != WRAPPED_MAGIC {
                    return Err(WrapError::NotWrapped(if t.starts_with("stateless-tpm-wrapped-") {
                        "unknown format version (expected stateless-tpm-wrapped-v1)"
                    } else {
                        "no stateless-tpm-wrapped-v1 line"
                    }));
                }
                magic_seen = true;
                if authorized { SEALED_AUTHORIZED_MAGIC } else { SEALED_MAGIC }.to_owned()
            } else if let Some(v) = t.strip_prefix("seed ") {
                if seed.is_some() {
                    return Err(WrapError::Seed(i + 1));
                }
                seed = Some(parse_seed(v.trim()).ok_or(WrapError::Seed(i + 1))?);
                "#".to_owned()
            } else if let Some(v) = t.strip_prefix("credential ") {
                if blob.is_some() {
                    return Err(WrapError::Credential(i + 1, "given twice"));
                }
                let b = parse_hex(v.trim()).ok_or(WrapError::Credential(i + 1, "not hex of a TPM2B_ID_OBJECT"))?;
                match b.as_slice() {
                    [a, c, rest @ ..] if usize::from(u16::from_be_bytes([*a, *c])) == rest.len() => {}
                    _ => return Err(WrapError::Credential(i + 1, "size prefix does not match its length")),
                }
                blob = Some(b);
                "#".to_owned()
            } else if let Some(v) = t.strip_prefix("credential-secret ") {
                if secret.is_some() {
                    return Err(WrapError::Credential(i + 1, "secret given twice"));
                }
                secret = Some(parse_hex(v.trim()).ok_or(WrapError::Credential(i + 1, "secret: not hex"))?);
                "#".to_owned()
            } else if let Some(v) = t.strip_prefix("duplicate ") {
                format!("private {v}")
            } else if t.starts_with("private ") || t.starts_with("stateless-sealed-") {
                return Err(WrapError::NotWrapped("a sealed-key line in a wrapped-key file"));
            } else {
                t.to_owned()
            };
            sealed.push_str(&out);
            sealed.push('\n');
        }
        if !magic_seen {
            return Err(WrapError::NotWrapped("no stateless-tpm-wrapped-v1 line"));
        }
        let seed = seed.ok_or(WrapError::Field(SealedError::Missing("seed")))?;
        let credential = match (blob, secret) {
            (Some(blob), Some(secret)) => Some(Credential { blob, secret }),
            (None, None) => None,
            _ => return Err(WrapError::Credential(0, "credential and credential-secret go together")),
        };
        let sealed = SealedKey::parse(sealed.as_bytes()).map_err(|e| match e {
            SealedError::Missing("private") => SealedError::Missing("duplicate"),
            e => e,
        })?;
        Ok(WrappedKey { sealed, seed, credential })
    }

    /// The file text.
    pub fn to_text(&self) -> String {
        let s = &self.sealed;
        let mut out = format!(
            "# Stateless Loader site key {id}, wrapped for one TPM: only the TPM whose storage\n\
             # root key is named below can import it (TPM2_Import), and unseal it only under the\n\
             # policy below. Not secret. See docs/keys.md \"Zero-touch enrolment\".\n\
             {WRAPPED_MAGIC}\nkey-id {id}\nparent {parent}\nparent-name {name}\n",
            id = s.key_id,
            parent = crate::sealed::PARENT_SRK_ECC,
            name = hex_encode(&s.parent_name),
        );
        match &s.policy_key {
            Some(k) => {
                let _ = writeln!(out, "policy-key {}", hex_encode(&k.point()));
            }
            None => {
                let _ = writeln!(out, "bank {}", s.bank.name());
                for (i, v) in &s.pcrs {
                    let _ = writeln!(out, "pcr {i} {}", hex_encode(v));
                }
            }
        }
        let _ = writeln!(out, "policy {}", hex_encode(&s.policy));
        let _ = writeln!(out, "public {}", hex_encode(&s.public));
        let _ = writeln!(out, "duplicate {}", hex_encode(&s.private));
        let _ = writeln!(out, "seed {}", hex_encode(&self.seed));
        if let Some(c) = &self.credential {
            let _ = writeln!(out, "credential {}", hex_encode(&c.blob));
            let _ = writeln!(out, "credential-secret {}", hex_encode(&c.secret));
        }
        out
    }
}

/// Non-empty hex of at most [`MAX_CREDENTIAL_FIELD`] bytes.
fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 || hex.len() / 2 > MAX_CREDENTIAL_FIELD {
        return None;
    }
    let mut b = vec![0u8; hex.len() / 2];
    hex_decode(hex, &mut b).then_some(b)
}

/// A TPMS_ECC_POINT of two 32-byte coordinates, in hex.
fn parse_seed(hex: &str) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 68];
    if hex.len() != 136 || !hex_decode(hex, &mut b) {
        return None;
    }
    if b.get(..2) != Some(&[0, 32][..]) || b.get(34..36) != Some(&[0, 32][..]) {
        return None;
    }
    Some(b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn srk() -> (SecretKey, SrkPublic) {
        let d = SecretKey::from_slice(&[5u8; 32]).unwrap();
        let p = d.public_key().to_encoded_point(false);
        let srk = SrkPublic::from_point(p.x().unwrap(), p.y().unwrap()).unwrap();
        (d, srk)
    }

    /// Plays the TPM's TPM2_Import: recomputes the seed with the SRK's
    /// private key, checks the HMAC and decrypts the key.
    fn import(d: &SecretKey, srk: &SrkPublic, w: &WrappedKey) -> Option<Vec<u8>> {
        let eph = PublicKey::from_sec1_bytes(&[&[0x04][..], &w.seed[2..34], &w.seed[36..68]].concat()).ok()?;
        let z = p256::ecdh::diffie_hellman(d.to_nonzero_scalar(), eph.as_affine());
        let seed = salt::kdfe(z.raw_secret_bytes(), "DUPLICATE", &w.seed[2..34], &srk.x);
        let name = name_of(&w.sealed.public[2..]);
        let dup = &w.sealed.private[2..];
        let (hmac, enc) = (&dup[2..34], &dup[34..]);
        let want = salt::hmac(&salt::kdfa(&seed, "INTEGRITY", &[], &[], 256), &[enc, &name]).unwrap();
        if want != hmac {
            return None;
        }
        let mut plain = enc.to_vec();
        salt::cfb_decrypt(&salt::kdfa(&seed, "STORAGE", &name, &[], 128), &[0; 16], &mut plain).unwrap();
        Some(plain[plain.len() - 32..].to_vec())
    }

    #[test]
    fn only_the_srk_holder_recovers_the_key() {
        let key = Key::generate().unwrap();
        let (d, srk) = srk();
        let w = wrap(&key, &srk, &WrapPolicy::Pcrs(Bank::Sha256, vec![(7, vec![0; 32])])).unwrap();
        assert_eq!(import(&d, &srk, &w).unwrap(), key.as_bytes());
        let other = SecretKey::from_slice(&[6u8; 32]).unwrap();
        assert!(import(&other, &srk, &w).is_none());
        // The public area's unique is H(obfuscation || key): a different
        // key gives a different object.
        let w2 = wrap(&key, &srk, &WrapPolicy::Pcrs(Bank::Sha256, vec![(7, vec![0; 32])])).unwrap();
        assert_ne!(w.sealed.public, w2.sealed.public);
    }

    #[test]
    fn text_round_trip_and_refusals() {
        let key = Key::generate().unwrap();
        let (_, srk) = srk();
        let pk = crate::tpm::policy::PolicySigningKey::generate().unwrap().public();
        for policy in
            [WrapPolicy::Pcrs(Bank::Sha256, vec![(0, vec![1; 32]), (7, vec![0; 32])]), WrapPolicy::Authorized(pk)]
        {
            let w = wrap(&key, &srk, &policy).unwrap();
            let text = w.to_text();
            assert_eq!(WrappedKey::parse(text.as_bytes()).unwrap(), w);
        }
        let w = wrap(&key, &srk, &WrapPolicy::Pcrs(Bank::Sha256, vec![(7, vec![0; 32])])).unwrap();
        let good = w.to_text();
        let seed_hex = hex_encode(&w.seed);
        let cases: Vec<(String, &str)> = vec![
            ("hello".into(), "no stateless-tpm-wrapped-v1 line"),
            (good.replace(WRAPPED_MAGIC, "stateless-tpm-wrapped-v9"), "unknown format version"),
            (good.replace(&seed_hex, "00"), "seed: not a P-256 point"),
            (format!("{good}seed {seed_hex}\n"), "seed"),
            (good.lines().filter(|l| !l.starts_with("seed")).collect::<Vec<_>>().join("\n"), "missing seed"),
            (good.lines().filter(|l| !l.starts_with("duplicate")).collect::<Vec<_>>().join("\n"), "missing duplicate"),
            (good.replace("duplicate ", "private "), "sealed-key line"),
            (good.replace(&"00".repeat(32), &"01".repeat(32)), "policy digest does not match"),
            ("#".repeat(MAX_WRAPPED_LEN + 1), "larger than"),
        ];
        for (text, want) in cases {
            let err = WrappedKey::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        for cut in 0..good.len() {
            let _ = WrappedKey::parse(&good.as_bytes()[..cut]);
        }
        // Bound to an EK: both credential lines or none.
        let mut ek = crate::tpm::enrol::ek_template();
        let n = ek.len();
        ek[n - 256] = 0xC0;
        ek[n - 1] = 0x01;
        let b = wrap_bound(&key, &srk, &ek, &WrapPolicy::Pcrs(Bank::Sha256, vec![(7, vec![0; 32])])).unwrap();
        let text = b.to_text();
        assert_eq!(WrappedKey::parse(text.as_bytes()).unwrap(), b);
        let c = b.credential.clone().unwrap();
        assert_eq!(c.secret.len(), 256);
        let without = |prefix: &str| text.lines().filter(|l| !l.starts_with(prefix)).collect::<Vec<_>>().join("\n");
        let cases: Vec<(String, &str)> = vec![
            (without("credential-secret"), "go together"),
            (without("credential "), "go together"),
            (format!("{text}credential {}\n", hex_encode(&c.blob)), "given twice"),
            (text.replace(&hex_encode(&c.blob), "0001"), "size prefix"),
            (text.replace(&hex_encode(&c.secret), "zz"), "secret: not hex"),
        ];
        for (text, want) in cases {
            let err = WrappedKey::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        assert_eq!(
            wrap_bound(
                &key,
                &srk,
                &srk.public,
                &WrapPolicy::Authorized(crate::tpm::policy::PolicySigningKey::generate().unwrap().public())
            )
            .unwrap_err(),
            WrapError::BadEk
        );
    }

    #[test]
    fn srk_public_is_checked() {
        let (_, srk) = srk();
        assert_eq!(SrkPublic::parse(&srk.public).unwrap(), srk);
        let mut bad = srk.public.clone();
        bad[3] ^= 1;
        assert_eq!(SrkPublic::parse(&bad), Err(WrapError::NotSrk));
        let mut off = srk.public.clone();
        let n = off.len();
        off[n - 1] ^= 1;
        assert_eq!(SrkPublic::parse(&off), Err(WrapError::BadPoint));
        assert_eq!(SrkPublic::parse(&srk.public[..srk.public.len() - 1]), Err(WrapError::NotSrk));
    }
}
