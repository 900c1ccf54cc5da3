//! Node push authentication: a node proves it holds its key without sending
//! it, and the server stores only a public value.
//!
//! From the node's key and its id, both sides of enrolment derive an
//! Ed25519 key pair:
//!
//! ```text
//! seed   = HKDF-SHA256(salt = none, ikm = node key, info = "stateless-push/v1/ed25519:" || node id)
//! public = Ed25519 public key of seed
//! ```
//!
//! `statelessctl approve --push-key KEYFILE` (or `--push-public-key HEX`,
//! printed on the node by `stateless-node persist --print-public-key`) stores
//! only `public` in the node's record. A push is
//!
//! ```text
//! PUT /v1/nodes/{node}/bundle
//! Authorization: Stateless-Push-Ed25519 node={node},ts={unix seconds},sig={128 hex}
//! ```
//!
//! where `sig` signs [`signed_message`]: the method, path, node, timestamp,
//! the SHA-256 of the body and its length. The server checks the node is
//! enrolled and the timestamp within [`MAX_SKEW`] before it reads the body,
//! and the signature after it has hashed the body, before anything is kept.
//! Each proof is accepted once ([`UsedProofs`]): a captured request
//! replayed within the window is refused with 401, and outside it by its
//! timestamp.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use stateless_bundle::Key;
use stateless_bundle::key::{hex_decode, hex_encode};
use zeroize::Zeroizing;

/// The authorization scheme name.
pub const SCHEME: &str = "Stateless-Push-Ed25519";
/// How far a push's timestamp may be from the server's clock, in seconds.
pub const MAX_SKEW: i64 = 300;

const SEED_INFO: &[u8] = b"stateless-push/v1/ed25519:";

/// Why a push proof was refused (all answered with 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header of our scheme.
    #[error("no push credentials (Authorization: {SCHEME} …)")]
    Missing,
    /// The header does not parse.
    #[error("malformed push credentials")]
    Malformed,
    /// The header names another node than the path.
    #[error("credentials are for another node")]
    WrongNode,
    /// The node is not enrolled for push.
    #[error("node is not enrolled for push")]
    NotEnrolled,
    /// The timestamp is too far from the server's clock.
    #[error("timestamp is {0} s from the server's clock (limit {MAX_SKEW} s)")]
    Skew(i64),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The same proof was already accepted once (a replayed request).
    #[error("this push proof was already used; sign each push anew")]
    Replayed,
}

/// The signing side, on the node.
pub struct PushSigner {
    pair: SigningKey,
    node: String,
}

impl std::fmt::Debug for PushSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSigner").field("node", &self.node).field("public", &self.public_key_hex()).finish()
    }
}

impl PushSigner {
    /// Derives the node's push key pair from its key.
    pub fn new(key: &Key, node: &str) -> Result<PushSigner, AuthError> {
        let seed = derive_seed(key, node);
        let pair = SigningKey::from_bytes(&seed);
        Ok(PushSigner { pair, node: node.to_owned() })
    }

    /// The public key to enrol, 64 hex digits.
    pub fn public_key_hex(&self) -> String {
        hex_encode(self.pair.verifying_key().as_bytes())
    }

    /// The `Authorization` header value for a PUT of a body with this
    /// SHA-256 and length to `path` at time `ts`.
    pub fn authorization(&self, method: &str, path: &str, ts: i64, body_sha256: &[u8; 32], len: u64) -> String {
        let msg = signed_message(method, path, &self.node, ts, body_sha256, len);
        let sig = self.pair.sign(&msg);
        format!("{SCHEME} node={},ts={ts},sig={}", self.node, hex_encode(&sig.to_bytes()))
    }
}

fn derive_seed(key: &Key, node: &str) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(None, key.as_bytes());
    let mut seed = Zeroizing::new([0u8; 32]);
    let mut info = SEED_INFO.to_vec();
    info.extend_from_slice(node.as_bytes());
    // 32 bytes is always a valid HKDF-SHA256 output length; a failure would
    // leave the seed zero, which then simply never verifies.
    let _ = hk.expand(&info, seed.as_mut_slice());
    seed
}

/// The exact bytes a push signature covers.
pub fn signed_message(method: &str, path: &str, node: &str, ts: i64, body_sha256: &[u8; 32], len: u64) -> Vec<u8> {
    format!("stateless-push/v1\n{method}\n{path}\n{node}\n{ts}\n{}\n{len}\n", hex_encode(body_sha256)).into_bytes()
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The node it claims to be.
    pub node: String,
    /// Unix seconds when it was made.
    pub ts: i64,
    /// The Ed25519 signature.
    pub sig: [u8; 64],
}

impl Proof {
    /// Parses `Stateless-Push-Ed25519 node=…,ts=…,sig=…`, strictly: the
    /// scheme, whitespace, then exactly the three parameters, each once,
    /// in any order (optional spaces after commas); `ts` in decimal
    /// without sign or leading zeros, `sig` 128 hex digits. A repeated or
    /// unknown parameter is refused, so two readers of the header can
    /// never disagree on what it says.
    pub fn parse(header: Option<&str>) -> Result<Proof, AuthError> {
        let h = header.ok_or(AuthError::Missing)?.trim();
        let rest = h.strip_prefix(SCHEME).ok_or(AuthError::Missing)?;
        if !rest.starts_with([' ', '\t']) {
            return Err(AuthError::Malformed);
        }
        let (mut node, mut ts, mut sig) = (None, None, None);
        for part in rest.trim().split(',') {
            let (k, v) = part.trim_start_matches([' ', '\t']).split_once('=').ok_or(AuthError::Malformed)?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(AuthError::Malformed);
            }
            let slot_taken = match k {
                "node" => node.replace(v.to_owned()).is_some(),
                "ts" => {
                    let t = v.parse::<i64>().ok().filter(|t| *t >= 0 && t.to_string() == v);
                    ts.replace(t.ok_or(AuthError::Malformed)?).is_some()
                }
                "sig" => {
                    let mut s = [0u8; 64];
                    if !hex_decode(v, &mut s) {
                        return Err(AuthError::Malformed);
                    }
                    sig.replace(s).is_some()
                }
                _ => return Err(AuthError::Malformed),
            };
            if slot_taken {
                return Err(AuthError::Malformed);
            }
        }
        match (node, ts, sig) {
            (Some(node), Some(ts), Some(sig)) => Ok(Proof { node, ts, sig }),
            _ => Err(AuthError::Malformed),
        }
    }

    /// Checks the timestamp against `now` (Unix seconds).
    pub fn check_time(&self, now: i64) -> Result<(), AuthError> {
        let skew = now.saturating_sub(self.ts);
        if skew.saturating_abs() > MAX_SKEW { Err(AuthError::Skew(skew)) } else { Ok(()) }
    }

    /// Verifies the signature with the enrolled public key (hex).
    pub fn verify(
        &self,
        public_hex: &str,
        method: &str,
        path: &str,
        body_sha256: &[u8; 32],
        len: u64,
    ) -> Result<(), AuthError> {
        let mut public = [0u8; 32];
        if !hex_decode(public_hex, &mut public) {
            return Err(AuthError::NotEnrolled);
        }
        let public = VerifyingKey::from_bytes(&public).map_err(|_| AuthError::NotEnrolled)?;
        let msg = signed_message(method, path, &self.node, self.ts, body_sha256, len);
        public.verify_strict(&msg, &Signature::from_bytes(&self.sig)).map_err(|_| AuthError::BadSignature)
    }
}

/// The proofs accepted within the last [`MAX_SKEW`] window, each usable
/// once: a captured push replayed while its timestamp is still good is
/// refused, even when its bundle would be newer again (after the admin
/// published an older generation, or removed a push awaiting review).
/// Only proofs whose signature verified are remembered, so only enrolled
/// nodes can add to it; entries older than the window are dropped (their
/// timestamp alone refuses them), and the table is bounded.
#[derive(Debug, Default)]
pub struct UsedProofs(std::sync::Mutex<std::collections::HashMap<[u8; 64], i64>>);

/// Most proofs remembered; past it the oldest half goes (a node pushes a
/// few times a day, so this is far beyond any real window's traffic).
const MAX_USED_PROOFS: usize = 65_536;

impl UsedProofs {
    /// Records `proof` as used at `now`; [`AuthError::Replayed`] when it
    /// already was.
    pub fn use_once(&self, proof: &Proof, now: i64) -> Result<(), AuthError> {
        let mut used = self.0.lock().map_err(|_| AuthError::Replayed)?;
        if used.contains_key(&proof.sig) {
            return Err(AuthError::Replayed);
        }
        if used.len() >= MAX_USED_PROOFS {
            used.retain(|_, ts| now.saturating_sub(*ts).saturating_abs() <= MAX_SKEW);
            if used.len() >= MAX_USED_PROOFS {
                let mut times: Vec<i64> = used.values().copied().collect();
                times.sort_unstable();
                let cut = times.get(times.len() / 2).copied().unwrap_or(i64::MAX);
                used.retain(|_, ts| *ts > cut);
            }
        }
        used.insert(proof.sig, proof.ts);
        Ok(())
    }
}

/// Checks that a string is a public key as `--push-public-key` takes it.
pub fn valid_public_hex(s: &str) -> bool {
    let mut b = [0u8; 32];
    hex_decode(s, &mut b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = Key::from_bytes([7; 32]);
        let signer = PushSigner::new(&key, "node42").unwrap();
        let public = signer.public_key_hex();
        assert_eq!(public.len(), 64);
        // Bound to the node id: another node with the same key has another pair.
        assert_ne!(PushSigner::new(&key, "node43").unwrap().public_key_hex(), public);
        let body = [1u8; 32];
        let path = "/v1/nodes/node42/bundle";
        let auth = signer.authorization("PUT", path, 1000, &body, 500);
        let proof = Proof::parse(Some(&auth)).unwrap();
        assert_eq!(proof.node, "node42");
        proof.verify(&public, "PUT", path, &body, 500).unwrap();
        proof.check_time(1200).unwrap();
        assert_eq!(proof.check_time(1301), Err(AuthError::Skew(301)));
        assert_eq!(proof.verify(&public, "PUT", path, &[2u8; 32], 500), Err(AuthError::BadSignature));
        assert_eq!(proof.verify(&public, "PUT", path, &body, 501), Err(AuthError::BadSignature));
        assert_eq!(proof.verify(&public, "PUT", "/v1/nodes/x/bundle", &body, 500), Err(AuthError::BadSignature));
        let other = PushSigner::new(&Key::from_bytes([8; 32]), "node42").unwrap();
        assert_eq!(proof.verify(&other.public_key_hex(), "PUT", path, &body, 500), Err(AuthError::BadSignature));
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(Proof::parse(None), Err(AuthError::Missing));
        assert_eq!(Proof::parse(Some("Basic abc")), Err(AuthError::Missing));
        for bad in [
            "Stateless-Push-Ed25519 node=a,ts=1",
            "Stateless-Push-Ed25519 node=a,ts=x,sig=00",
            "Stateless-Push-Ed25519 node=a,ts=1,sig=zz",
            "Stateless-Push-Ed25519 garbage",
            "Stateless-Push-Ed25519 node=a,ts=1,sig=00,extra=1",
        ] {
            assert!(Proof::parse(Some(bad)).is_err(), "{bad}");
        }
        // A well-formed proof, then every way of repeating, adding or
        // re-encoding a parameter.
        let sig = "ab".repeat(64);
        let good = format!("Stateless-Push-Ed25519 node=a,ts=100,sig={sig}");
        assert_eq!(Proof::parse(Some(&good)).unwrap().node, "a");
        let spaced = format!("Stateless-Push-Ed25519 ts=100, sig={sig}, node=a");
        assert_eq!(Proof::parse(Some(&spaced)).unwrap().ts, 100);
        for bad in [
            format!("Stateless-Push-Ed25519 node=a,node=b,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a,ts=100,sig={sig},node=a"),
            format!("Stateless-Push-Ed25519 node=a,ts=100,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a,ts=100,sig={sig},sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a,ts=100,sig={sig},realm=x"),
            format!("Stateless-Push-Ed25519 node=a,ts=100,sig={sig},"),
            format!("Stateless-Push-Ed25519 node=a,,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node =a,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node= a,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 NODE=a,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a,ts=+100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a,ts=0100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a,ts=-100,sig={sig}"),
            format!("Stateless-Push-Ed25519node=a,ts=100,sig={sig}"),
            format!("Stateless-Push-Ed25519 node=a;ts=100,sig={sig}"),
        ] {
            assert_eq!(Proof::parse(Some(&bad)), Err(AuthError::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_proof_is_good_once_and_the_memory_is_bounded() {
        let used = UsedProofs::default();
        let proof = |i: u32, ts: i64| {
            let mut sig = [0u8; 64];
            sig[..4].copy_from_slice(&i.to_le_bytes());
            Proof { node: "n".into(), ts, sig }
        };
        assert_eq!(used.use_once(&proof(1, 1000), 1000), Ok(()));
        assert_eq!(used.use_once(&proof(1, 1000), 1000), Err(AuthError::Replayed));
        assert_eq!(used.use_once(&proof(2, 1000), 1000), Ok(()));
        // Far more proofs than the bound, all within one window.
        for i in 3..(MAX_USED_PROOFS as u32 * 2) {
            used.use_once(&proof(i, 2000 + i64::from(i) / 1000), 2000).unwrap();
        }
        let n = used.0.lock().unwrap().len();
        assert!(n <= MAX_USED_PROOFS, "{n}");
        // The newest are still remembered.
        let last = MAX_USED_PROOFS as u32 * 2 - 1;
        assert_eq!(used.use_once(&proof(last, 2000 + i64::from(last) / 1000), 2000), Err(AuthError::Replayed));
    }
}
