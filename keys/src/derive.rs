//! Per-node, per-group and fleet-default keys derived from the site key.
//!
//! The admin keeps one secret, the site key; a node holds only the keys of
//! the bundles meant for it: its own node key, its groups' keys and (if the
//! default bundle is encrypted) the fleet-default key. Each is
//!
//! ```text
//! derived = HKDF-SHA256(salt = none, ikm = site key, info = label)[0..32]
//! label   = "stateless/v1/derive/node:"  || node id      (one node)
//!         | "stateless/v1/derive/group:" || group name   (one group)
//!         | "stateless/v1/derive/default"                (the default bundle)
//! ```
//!
//! with the id or name as its ASCII bytes, exactly as a bundle's scope
//! carries it (compared byte for byte, so `Node42` and `node42` are two
//! nodes). Names follow the scope rules ([`validate_name`]): 1 to 64 bytes of
//! `[A-Za-z0-9._:-]`, not starting with a dot. The kind is spelled out before
//! the name and `default` carries no `:`, so no two targets share a label,
//! and every label differs from the key-id label (`stateless-bundle/v1/key-id`)
//! that expands the same pseudo-random key: a derived key says nothing about
//! the site key, its id, or any other derived key. A derived key is an
//! ordinary site key (the same file format, its own key id), so bundles are
//! packed and opened with it as with any key, and a bundle sealed for one
//! node's key cannot be opened with another node's key or with the site key
//! itself. The derivation is deterministic: the admin can always make a
//! node's key again from the site key, and nothing else needs to be kept.
//! `docs/bundle-format.md` (*Key derivation*) documents it with test vectors
//! in `tests/vectors/derive/`.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use stateless_bundle::header::{HeaderError, validate_name};
use stateless_bundle::key::KEY_LEN;
use stateless_bundle::{Key, Scope};
use zeroize::Zeroizing;

/// The common start of every derivation label.
pub const DERIVE_LABEL_PREFIX: &str = "stateless/v1/derive/";

/// What a derived key is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One node, by its id (the bundle scope `node:ID`).
    Node(String),
    /// One group, by its name (the bundle scope `group:NAME`).
    Group(String),
    /// The fleet's default bundle, which every node may fetch.
    Default,
}

impl Target {
    /// The HKDF info: `stateless/v1/derive/` and `node:ID`, `group:NAME` or
    /// `default`. Checks the name first.
    pub fn label(&self) -> Result<Vec<u8>, DeriveError> {
        let (kind, name) = match self {
            Target::Node(n) => ("node", n.as_str()),
            Target::Group(g) => ("group", g.as_str()),
            Target::Default => return Ok(format!("{DERIVE_LABEL_PREFIX}default").into_bytes()),
        };
        validate_name(name.as_bytes()).map_err(|e| DeriveError::BadName {
            kind,
            name: shorten(name),
            reason: match e {
                HeaderError::BadScope(reason) => reason,
                _ => "not a valid name",
            },
        })?;
        Ok(format!("{DERIVE_LABEL_PREFIX}{kind}:{name}").into_bytes())
    }

    /// The bundle scope whose bundles this key is meant to seal: `node:ID`,
    /// `group:NAME`, or `any` for the default bundle.
    pub fn scope(&self) -> Scope {
        match self {
            Target::Node(n) => Scope::Node(n.clone()),
            Target::Group(g) => Scope::Group(g.clone()),
            Target::Default => Scope::Any,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => write!(f, "node:{n}"),
            Target::Group(g) => write!(f, "group:{g}"),
            Target::Default => f.write_str("default"),
        }
    }
}

/// Why a key could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeriveError {
    /// The node id or group name breaks the scope naming rules.
    #[error("{kind} {name:?}: {reason}")]
    BadName {
        /// `node` or `group`.
        kind: &'static str,
        /// The name as given (shortened when very long).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
}

/// Derives the key for `target` from `site` (see the module documentation).
pub fn derive(site: &Key, target: &Target) -> Result<Key, DeriveError> {
    let label = target.label()?;
    let hk = Hkdf::<Sha256>::new(None, site.as_bytes());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // HKDF-SHA256 can expand up to 8160 bytes; 32 always fits.
    if hk.expand(&label, out.as_mut_slice()).is_err() {
        unreachable!("HKDF output length 32 is always valid");
    }
    Ok(Key::from_bytes(*out))
}

/// A name for an error message: at most 64 characters (names longer than
/// that are refused anyway), so a pasted file does not fill the console.
fn shorten(name: &str) -> String {
    const MAX: usize = 64;
    match name.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", name.get(..i).unwrap_or_default()),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stateless_bundle::key::hex_encode;

    fn site() -> Key {
        Key::from_bytes(*b"stateless derive unit test key!!")
    }

    #[test]
    fn labels_are_the_documented_bytes() {
        let cases = [
            (Target::Node("node42".into()), "stateless/v1/derive/node:node42"),
            (Target::Group("rack7".into()), "stateless/v1/derive/group:rack7"),
            (Target::Default, "stateless/v1/derive/default"),
            (Target::Node("a:b.c_d-E9".into()), "stateless/v1/derive/node:a:b.c_d-E9"),
        ];
        for (t, want) in cases {
            assert_eq!(t.label().unwrap(), want.as_bytes());
        }
    }

    #[test]
    fn the_derivation_is_hkdf_as_documented() {
        // An independent HKDF: Extract with a zero salt, one Expand block.
        use hmac::{Hmac, KeyInit, Mac};
        let k = site();
        let mut ext = <Hmac<Sha256> as KeyInit>::new_from_slice(&[0u8; 32]).unwrap();
        ext.update(k.as_bytes());
        let prk = ext.finalize().into_bytes();
        let mut exp = <Hmac<Sha256> as KeyInit>::new_from_slice(&prk).unwrap();
        exp.update(b"stateless/v1/derive/node:node42");
        exp.update(&[1]);
        let want = exp.finalize().into_bytes();
        let got = derive(&k, &Target::Node("node42".into())).unwrap();
        assert_eq!(got.as_bytes()[..], want[..]);
    }

    #[test]
    fn deterministic_and_distinct() {
        let k = site();
        let targets = [
            Target::Node("node42".into()),
            Target::Node("node43".into()),
            Target::Node("Node42".into()),
            Target::Node("default".into()),
            Target::Group("node42".into()),
            Target::Group("rack7".into()),
            Target::Default,
        ];
        let mut ids = vec![k.id()];
        for t in &targets {
            let a = derive(&k, t).unwrap();
            assert_eq!(a.as_bytes(), derive(&k, t).unwrap().as_bytes(), "{t}");
            assert_ne!(a.as_bytes(), k.as_bytes(), "{t}");
            ids.push(a.id());
        }
        let mut unique = ids.clone();
        unique.sort_by_key(|id| id.0);
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "every target has its own key id, unlike the site key's");
        // Another site key gives other keys for the same node.
        let other = Key::from_bytes([7; 32]);
        let t = Target::Node("node42".into());
        assert_ne!(derive(&other, &t).unwrap().as_bytes(), derive(&k, &t).unwrap().as_bytes());
    }

    #[test]
    fn names_are_checked_like_scopes() {
        let long = "n".repeat(65);
        let bad: &[(Target, &str)] = &[
            (Target::Node(String::new()), "node \"\": name must be 1 to 64 bytes"),
            (Target::Node(long.clone()), "name must be 1 to 64 bytes"),
            (Target::Group("../x".into()), "group \"../x\": name may use only"),
            (Target::Node(".hidden".into()), "must not start with a dot"),
            (Target::Node("a/b".into()), "name may use only"),
            (Target::Node("a b".into()), "name may use only"),
            (Target::Node("nöde".into()), "name may use only"),
            (Target::Node("x\n".into()), "node \"x\\n\""),
        ];
        for (t, want) in bad {
            let err = derive(&site(), t).unwrap_err().to_string();
            assert!(err.contains(want), "{t:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            // Every name a scope refuses is refused here, and the other way round.
            assert!(Scope::parse(&t.to_string()).is_err(), "{t}");
        }
        let err = derive(&site(), &Target::Node("x".repeat(500))).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
        let edge = "n".repeat(64);
        assert!(derive(&site(), &Target::Node(edge.clone())).is_ok());
        assert_eq!(Scope::parse(&format!("node:{edge}")).unwrap(), Target::Node(edge).scope());
        assert_eq!(Target::Default.scope(), Scope::Any);
    }

    #[test]
    fn debug_of_a_derived_key_shows_no_bytes() {
        let d = derive(&site(), &Target::Default).unwrap();
        assert!(!format!("{d:?}").contains(&hex_encode(d.as_bytes())[..16]));
    }
}
