//! A salted policy session, so that the unsealed key crosses the bus from
//! the TPM encrypted (TPM 2.0 Library Part 1: §11.4.10 key derivation,
//! §19.6 session key, §21 parameter encryption).
//!
//! The salt is agreed by ECDH with the storage root key: an ephemeral P-256
//! key pair is made, the TPM gets its public point as `encryptedSalt`, and
//! both sides derive `salt = KDFe(Z, "SECRET", ephemeral.x, srk.x)`. The
//! session key is `KDFa(salt, "ATH", nonceTPM, nonceCaller)`, and the first
//! response parameter of a command sent with the `encrypt` attribute (here
//! `TPM2_Unseal`'s `outData`) is AES-128-CFB encrypted under
//! `KDFa(sessionKey, "CFB", nonceTPM', nonceCaller')`. Someone reading the
//! bus sees only the ephemeral public point and the ciphertext.

use aes::cipher::BlockCipherEncrypt;
use hmac::{Hmac, KeyInit, Mac};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{AffinePoint, PublicKey, SecretKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The salt sent to the TPM and the value both sides derive from it.
pub struct Salt {
    /// `TPMS_ECC_POINT` of the ephemeral public key, for `encryptedSalt`.
    pub encrypted: Vec<u8>,
    /// The salt.
    pub salt: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

/// KDFa with SHA-256 (Part 1 §11.4.10.2): HMAC over a counter, the label
/// with its terminating NUL, the two contexts and the output size in bits.
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Zeroizing<Vec<u8>> {
    let want = usize::try_from(bits.div_ceil(8)).unwrap_or(0);
    let mut out = Zeroizing::new(Vec::with_capacity(want + 32));
    let mut counter = 1u32;
    while out.len() < want {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else { break };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], String> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| "bad HMAC key".to_owned())?;
    for p in parts {
        mac.update(p);
    }
    Ok(mac.finalize().into_bytes().into())
}

/// KDFe with SHA-256 for a 256-bit output (Part 1 §11.4.10.3): one hash
/// over the counter 1, Z, the label with its NUL and the two party infos.
pub fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(label.as_bytes());
    h.update([0]);
    h.update(party_u);
    h.update(party_v);
    Zeroizing::new(h.finalize().to_vec())
}

/// Makes a salt for a TPM key whose public point is (`x`, `y`), drawing the
/// ephemeral key from `random`.
pub fn make_salt(x: &[u8], y: &[u8], random: &mut dyn FnMut(&mut [u8]) -> Result<(), String>) -> Result<Salt, String> {
    if x.len() != 32 || y.len() != 32 {
        return Err("the storage root key is not a P-256 point".into());
    }
    // SEC1 uncompressed form; refused unless the point is on the curve.
    let sec1 = [&[0x04][..], x, y].concat();
    let srk = PublicKey::from_sec1_bytes(&sec1).map_err(|_| "the storage root key's point is not on the curve")?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    let secret = loop {
        random(bytes.as_mut_slice())?;
        // Out of range (zero or above the order): draw again.
        if let Ok(s) = SecretKey::from_slice(bytes.as_slice()) {
            break s;
        }
    };
    let ephemeral = secret.public_key().to_encoded_point(false);
    let (ex, ey) = match (ephemeral.x(), ephemeral.y()) {
        (Some(x), Some(y)) => (x.to_vec(), y.to_vec()),
        _ => return Err("making the ephemeral key".into()),
    };
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), AffinePoint::from(*srk.as_affine()));
    let z: &[u8] = shared.raw_secret_bytes();
    let salt = kdfe(z, "SECRET", &ex, x);
    let mut encrypted = Vec::with_capacity(68);
    for c in [&ex, &ey] {
        encrypted.extend_from_slice(&32u16.to_be_bytes());
        encrypted.extend_from_slice(c);
    }
    Ok(Salt { encrypted, salt })
}

/// AES-128-CFB encryption in place (full-block feedback, as TPMs use it).
pub fn cfb_encrypt(key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<(), String> {
    cfb(key, iv, data, false)
}

/// AES-128-CFB decryption in place (full-block feedback, as TPMs use it).
pub fn cfb_decrypt(key: &[u8], iv: &[u8], data: &mut [u8]) -> Result<(), String> {
    cfb(key, iv, data, true)
}

/// CFB both ways: the keystream is AES of the previous ciphertext block (the
/// IV first), so the directions differ only in whether the ciphertext is the
/// input (decrypting) or the output (encrypting). A short last block ends it.
fn cfb(key: &[u8], iv: &[u8], data: &mut [u8], decrypt: bool) -> Result<(), String> {
    let aes = aes::Aes128::new_from_slice(key).map_err(|_| "bad AES key length".to_owned())?;
    let mut feedback = aes::Block::default();
    if iv.len() != feedback.len() {
        return Err("bad IV length".into());
    }
    feedback.copy_from_slice(iv);
    for chunk in data.chunks_mut(16) {
        let mut stream = feedback;
        aes.encrypt_block(&mut stream);
        if decrypt {
            if let Some(next) = feedback.get_mut(..chunk.len()) {
                next.copy_from_slice(chunk);
            }
        }
        for (c, s) in chunk.iter_mut().zip(stream.iter()) {
            *c ^= s;
        }
        if !decrypt {
            if let Some(next) = feedback.get_mut(..chunk.len()) {
                next.copy_from_slice(chunk);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_shape() {
        let a = kdfa(b"key", "ATH", b"u", b"v", 256);
        assert_eq!(a.len(), 32);
        let b = kdfa(b"key", "CFB", b"u", b"v", 256);
        assert_ne!(a.as_slice(), b.as_slice());
        // Longer outputs repeat the HMAC with a higher counter; the bit count
        // is part of every block, so a prefix differs.
        let long = kdfa(b"key", "ATH", b"u", b"v", 512);
        assert_eq!(long.len(), 64);
        assert_ne!(&long[..32], a.as_slice());
    }

    #[test]
    fn salt_agrees_with_the_other_side() {
        // Play the TPM: a static key, and the same derivation from its side.
        let tpm = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pubpt = tpm.public_key().to_encoded_point(false);
        let (x, y) = (pubpt.x().unwrap().to_vec(), pubpt.y().unwrap().to_vec());
        let mut os = |b: &mut [u8]| getrandom::fill(b).map_err(|e| e.to_string());
        let salt = make_salt(&x, &y, &mut os).unwrap();
        let ex = &salt.encrypted[2..34];
        let ey = &salt.encrypted[36..68];
        let eph = PublicKey::from_sec1_bytes(&[&[0x04][..], ex, ey].concat()).unwrap();
        let z = p256::ecdh::diffie_hellman(tpm.to_nonzero_scalar(), eph.as_affine());
        let z: &[u8] = z.raw_secret_bytes();
        assert_eq!(kdfe(z, "SECRET", ex, &x).as_slice(), salt.salt.as_slice());
        assert!(make_salt(&x[..31], &y, &mut os).is_err());
        assert!(make_salt(&[1; 32], &[2; 32], &mut os).is_err());
    }

    #[test]
    fn cfb_round_trip() {
        let (key, iv) = ([3u8; 16], [9u8; 16]);
        let plain: Vec<u8> = (0..45u8).collect();
        // Encrypt by hand: c_i = p_i ^ E(c_{i-1}).
        let aes = aes::Aes128::new_from_slice(&key).unwrap();
        let mut fb = aes::Block::default();
        fb.copy_from_slice(&iv);
        let mut ct = Vec::new();
        for chunk in plain.chunks(16) {
            let mut s = fb;
            aes.encrypt_block(&mut s);
            let c: Vec<u8> = chunk.iter().zip(s.iter()).map(|(p, k)| p ^ k).collect();
            fb[..c.len()].copy_from_slice(&c);
            ct.extend_from_slice(&c);
        }
        let mut again = plain.clone();
        cfb_encrypt(&key, &iv, &mut again).unwrap();
        assert_eq!(again, ct);
        cfb_decrypt(&key, &iv, &mut ct).unwrap();
        assert_eq!(ct, plain);
    }
}
