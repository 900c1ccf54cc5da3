//! `TPM2_MakeCredential` in software, for the RSA endorsement key (TPM 2.0
//! Library Part 1 §24, "Credential protection"): a secret that only the TPM
//! holding the EK releases (`TPM2_ActivateCredential`), and only while an
//! object with a given name is loaded in that same TPM.
//!
//! Enrolment uses it to bind the storage root key to the EK the admin
//! checked ([`super::import::wrap_bound`]): the secret is the inner wrapper
//! key of the duplicate, and the object name is the SRK's. A seed is
//! encrypted to the EK with RSA-OAEP (SHA-256, label `IDENTITY`); the
//! credential (a TPM2B_DIGEST) is AES-128-CFB encrypted under
//! `KDFa(seed, "STORAGE", name)` and HMACed under `KDFa(seed, "INTEGRITY")`
//! over the ciphertext and the name. RSA encryption with the public
//! exponent needs only modular exponentiation (`crypto-bigint`, already used
//! by the P-256 code); nothing here touches a private key.

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U4096};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::import::WrapError;
use super::salt;

/// The largest RSA modulus handled (bytes).
const MAX_MODULUS: usize = 512;

/// An RSA public key from a TPMT_PUBLIC: modulus (big-endian) and exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    /// The modulus.
    pub n: Vec<u8>,
    /// The public exponent.
    pub e: u32,
}

/// The RSA key and the symmetric key size of an RSA storage key's public
/// area (the EK): TPMT_PUBLIC, Part 2 §12.2.4.
pub fn rsa_public(public: &[u8]) -> Result<RsaPublic, WrapError> {
    let mut r = super::wire::Reader::new(public);
    let bad = |_| WrapError::BadEk;
    if r.u16().map_err(bad)? != 0x0001 || r.u16().map_err(bad)? != 0x000B {
        return Err(WrapError::BadEk); // not RSA with a SHA-256 name
    }
    r.take(4).map_err(bad)?; // attributes
    r.tpm2b().map_err(bad)?; // authPolicy
    // The credential is encrypted with the EK's symmetric algorithm: only
    // AES-128-CFB (the EK profile's) is implemented here.
    if r.u16().map_err(bad)? != 0x0006 || r.u16().map_err(bad)? != 128 || r.u16().map_err(bad)? != 0x0043 {
        return Err(WrapError::BadEk);
    }
    if r.u16().map_err(bad)? != 0x0010 {
        return Err(WrapError::BadEk); // a decryption key has no scheme
    }
    let bits = r.u16().map_err(bad)?;
    let e = r.u32().map_err(bad)?;
    let n = r.tpm2b().map_err(bad)?;
    if !r.rest().is_empty() || n.len() * 8 != usize::from(bits) || !(256..=MAX_MODULUS).contains(&n.len()) {
        return Err(WrapError::BadEk);
    }
    if n.last().is_none_or(|b| b & 1 == 0) || n.first().is_none_or(|b| *b & 0x80 == 0) {
        return Err(WrapError::BadEk); // even, or shorter than its size
    }
    Ok(RsaPublic { n: n.to_vec(), e: if e == 0 { 65_537 } else { e } })
}

/// MGF1 with SHA-256.
fn mgf1(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// RSAES-OAEP encryption with SHA-256 (RFC 8017 §7.1.1); `label` as the
/// TPM uses it, with its terminating NUL.
pub fn oaep_encrypt(key: &RsaPublic, label: &str, message: &[u8]) -> Result<Vec<u8>, WrapError> {
    let k = key.n.len();
    let h = 32;
    if message.len() + 2 * h + 2 > k {
        return Err(WrapError::BadEk);
    }
    let mut l = label.as_bytes().to_vec();
    l.push(0);
    let mut db = Zeroizing::new(Vec::with_capacity(k - h - 1));
    db.extend_from_slice(&Sha256::digest(&l));
    db.resize(k - message.len() - h - 2, 0);
    db.push(1);
    db.extend_from_slice(message);
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(|e| WrapError::Random(e.to_string()))?;
    for (d, m) in db.iter_mut().zip(mgf1(seed.as_slice(), k - h - 1)) {
        *d ^= m;
    }
    let mut masked_seed = *seed;
    for (s, m) in masked_seed.iter_mut().zip(mgf1(&db, h)) {
        *s ^= m;
    }
    let mut em = Zeroizing::new(vec![0u8; MAX_MODULUS]);
    // EM = 0x00 || maskedSeed || maskedDB, right-aligned in 512 bytes.
    let start = MAX_MODULUS - k + 1;
    em.get_mut(start..start + h).ok_or(WrapError::BadEk)?.copy_from_slice(&masked_seed);
    em.get_mut(start + h..).ok_or(WrapError::BadEk)?.copy_from_slice(&db);
    let mut n = vec![0u8; MAX_MODULUS];
    n.get_mut(MAX_MODULUS - k..).ok_or(WrapError::BadEk)?.copy_from_slice(&key.n);
    // DynResidueParams::new needs an odd modulus (an RSA modulus is).
    if key.n.last().is_none_or(|b| b & 1 == 0) {
        return Err(WrapError::BadEk);
    }
    let params = DynResidueParams::new(&U4096::from_be_slice(&n));
    let m = DynResidue::new(&U4096::from_be_slice(&em), params);
    let c = m.pow(&U4096::from_u32(key.e)).retrieve().to_be_bytes();
    Ok(c.get(MAX_MODULUS - k..).ok_or(WrapError::BadEk)?.to_vec())
}

/// `TPM2_MakeCredential` for `ek_public` (an RSA EK), the object `name` and
/// the `secret` (at most 32 bytes): the TPM2B_ID_OBJECT (size included) and
/// the encrypted seed (TPM2B_ENCRYPTED_SECRET contents).
pub fn make_credential(ek_public: &[u8], name: &[u8], secret: &[u8]) -> Result<(Vec<u8>, Vec<u8>), WrapError> {
    let ek = rsa_public(ek_public)?;
    if secret.len() > 32 {
        return Err(WrapError::BadEk);
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(|e| WrapError::Random(e.to_string()))?;
    let encrypted_seed = oaep_encrypt(&ek, "IDENTITY", seed.as_slice())?;
    let mut identity = Zeroizing::new(Vec::with_capacity(secret.len() + 2));
    identity.extend_from_slice(&u16::try_from(secret.len()).unwrap_or(0).to_be_bytes());
    identity.extend_from_slice(secret);
    let sym = salt::kdfa(seed.as_slice(), "STORAGE", name, &[], 128);
    salt::cfb_encrypt(&sym, &[0u8; 16], &mut identity).map_err(|_| WrapError::BadEk)?;
    let hmac_key = salt::kdfa(seed.as_slice(), "INTEGRITY", &[], &[], 256);
    let integrity = salt::hmac(&hmac_key, &[&identity, name]).map_err(|_| WrapError::BadEk)?;
    let body = 2 + integrity.len() + identity.len();
    let mut blob = Vec::with_capacity(body + 2);
    blob.extend_from_slice(&u16::try_from(body).unwrap_or(0).to_be_bytes());
    blob.extend_from_slice(&32u16.to_be_bytes());
    blob.extend_from_slice(&integrity);
    blob.extend_from_slice(&identity);
    Ok((blob, encrypted_seed))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_ek_template_is_not_a_key_but_its_shape_parses() {
        // The template's modulus is zeros (even): refused as a key.
        assert_eq!(rsa_public(&super::super::enrol::ek_template()), Err(WrapError::BadEk));
        let mut t = super::super::enrol::ek_template();
        let n = t.len();
        t[n - 256] = 0xC0;
        t[n - 1] = 0x01;
        let k = rsa_public(&t).unwrap();
        assert_eq!((k.n.len(), k.e), (256, 65_537));
        assert_eq!(rsa_public(&t[..n - 1]), Err(WrapError::BadEk));
        assert_eq!(rsa_public(&super::super::srk_template()), Err(WrapError::BadEk));
    }

    #[test]
    fn oaep_shape() {
        // A toy check of the arithmetic: with n = 2^2047 + 1 style moduli the
        // output has the modulus' length; the round trip is tested against
        // swtpm (TPM2_ActivateCredential) in keys/tests/tpm_enrol.rs.
        let mut n = vec![0xFFu8; 256];
        n[255] = 0xF1;
        let key = RsaPublic { n, e: 65_537 };
        let c = oaep_encrypt(&key, "IDENTITY", &[7; 32]).unwrap();
        assert_eq!(c.len(), 256);
        assert_ne!(c, oaep_encrypt(&key, "IDENTITY", &[7; 32]).unwrap(), "randomised");
        assert!(oaep_encrypt(&key, "IDENTITY", &[7; 200]).is_err());
    }
}
