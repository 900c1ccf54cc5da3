//! TPM enrolment: a node booting with `rd.stateless.key=tpm` and no key
//! posts its TPM's endorsement key (EK), storage root key (SRK) and EK
//! certificate to `POST /v1/nodes/{node}/enrol`; it is kept beside the
//! node's pending record in `state/enrol/{node}.json`. `statelessctl approve
//! NODE --tpm-key KEYFILE` wraps the key for that SRK and publishes it at
//! `v1/nodes/{node}/tpm-key` (served in the clear: only that TPM can import
//! it); `reject` withdraws it and forgets the enrolment.
//!
//! The request carries no proof (the node has no key yet): it is trust on
//! first use, which the admin closes by comparing the EK hash `approve`
//! shows with an inventory, or by checking the EK certificate. So that a
//! later request cannot swap the TPM of a node the admin is about to approve,
//! the first enrolment of a node stays until `reject` clears it: the same
//! enrolment again is accepted (a node reboots while it waits), a different
//! one is refused (409). Bounds: the body ([`MAX_BODY`]), the fields' sizes,
//! the number of enrolments kept ([`EnrolLimits::max_kept`]), and refused or
//! new enrolments per address per minute ([`EnrolLimits::per_minute`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::{DataDir, check_name};
use crate::registry::write_atomic;

/// Largest enrolment body accepted (an RSA EK, an SRK, a certificate of
/// up to 4 KiB and 24 PCR values, in hex).
pub const MAX_BODY: u64 = 16 * 1024;
/// Largest EK public area (an RSA-4096 or ECC P-521 TPMT_PUBLIC is below).
pub const MAX_EK_PUBLIC: usize = 1024;
/// Largest SRK public area.
pub const MAX_SRK_PUBLIC: usize = 256;
/// Largest EK certificate.
pub const MAX_EK_CERT: usize = 4096;
/// The published wrapped key's file name in the node's directory.
pub const TPM_KEY_FILE: &str = "tpm-key";
/// The published signed PCR policies' file name, in `v1/default/` and in a
/// node's directory (`statelessctl tpm publish-policy`, docs/keys.md).
pub const TPM_POLICIES_FILE: &str = "tpm-policies";

/// The bounds on enrolment, set with `statelessctl serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrolLimits {
    /// Refused and new enrolments per address per minute before 429 (the
    /// same enrolment again does not count); 0 for no limit.
    pub per_minute: u32,
    /// Most enrolments kept; new nodes are refused (503) beyond it.
    pub max_kept: usize,
}

impl Default for EnrolLimits {
    fn default() -> EnrolLimits {
        EnrolLimits { per_minute: 60, max_kept: crate::registry::MAX_SEEN }
    }
}

/// The node id of an enrolment path `/v1/nodes/{node}/enrol`.
pub fn enrol_path(path: &str) -> Option<&str> {
    let node = path.strip_prefix("/v1/nodes/")?.strip_suffix("/enrol")?;
    check_name(node).ok().map(|()| node)
}

/// The node id of a wrapped-key path `/v1/nodes/{node}/tpm-key`.
pub fn tpm_key_path(path: &str) -> Option<&str> {
    let node = path.strip_prefix("/v1/nodes/")?.strip_suffix("/tpm-key")?;
    check_name(node).ok().map(|()| node)
}

/// The data-directory path of a signed-policy list path:
/// `/v1/default/tpm-policies` or `/v1/nodes/{node}/tpm-policies`. Served in
/// the clear: a signed policy is public and only authorises with the policy
/// key it was signed by.
pub fn tpm_policies_path(path: &str) -> Option<String> {
    if path == "/v1/default/tpm-policies" {
        return Some(format!("v1/default/{TPM_POLICIES_FILE}"));
    }
    let node = path.strip_prefix("/v1/nodes/")?.strip_suffix("/tpm-policies")?;
    check_name(node).ok().map(|()| format!("v1/nodes/{node}/{TPM_POLICIES_FILE}"))
}

/// Where signed policies are published: for every node, or for `node`.
pub fn tpm_policies_file(data: &DataDir, node: Option<&str>) -> io::Result<PathBuf> {
    match node {
        None => Ok(data.root().join("v1/default").join(TPM_POLICIES_FILE)),
        Some(node) => {
            check_name(node).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(data.root().join("v1/nodes").join(node).join(TPM_POLICIES_FILE))
        }
    }
}

/// Publishes a signed-policy list (atomically); the caller has checked it.
pub fn publish_policies(data: &DataDir, node: Option<&str>, text: &str) -> io::Result<PathBuf> {
    let path = tpm_policies_file(data, node)?;
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// The request body, as the node sends it: hex of the marshalled areas.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The EK's TPMT_PUBLIC.
    pub ek_public: String,
    /// The SRK's TPMT_PUBLIC.
    pub srk_public: String,
    /// The EK certificate (DER), when the TPM has one.
    #[serde(default)]
    pub ek_cert: Option<String>,
    /// SHA-256 PCR values at enrolment, by index ("7": hex), so the admin
    /// can bind the key to them.
    #[serde(default)]
    pub pcrs: BTreeMap<String, String>,
}

/// Why an enrolment was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// Not the JSON object of [`EnrolRequest`].
    #[error("the enrolment is not the expected JSON object: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A field is not hex of an acceptable size.
    #[error("{0}: not hex of an acceptable size")]
    BadField(String),
    /// The node already enrolled another TPM.
    #[error("node {0} already enrolled another TPM; the admin must reject it before it can enrol again")]
    Conflict(String),
    /// Too many enrolments kept.
    #[error("the server keeps no more enrolments")]
    Full,
    /// Storing failed.
    #[error("keeping the enrolment: {0}")]
    Io(#[from] io::Error),
}

fn hex_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() % 2 == 0 && s.len() / 2 <= max && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl EnrolRequest {
    /// Parses and checks a body.
    pub fn parse(body: &[u8]) -> Result<EnrolRequest, EnrolError> {
        let mut r: EnrolRequest = serde_json::from_slice(body).map_err(EnrolError::NotJson)?;
        if !hex_ok(&r.ek_public, MAX_EK_PUBLIC) {
            return Err(EnrolError::BadField("ek_public".into()));
        }
        if !hex_ok(&r.srk_public, MAX_SRK_PUBLIC) {
            return Err(EnrolError::BadField("srk_public".into()));
        }
        if r.ek_cert.as_deref().is_some_and(|c| !hex_ok(c, MAX_EK_CERT)) {
            return Err(EnrolError::BadField("ek_cert".into()));
        }
        if r.pcrs.len() > 24 {
            return Err(EnrolError::BadField("pcrs".into()));
        }
        for (i, v) in &r.pcrs {
            if !i.parse::<u8>().is_ok_and(|i| i < 24) || v.len() != 64 || !hex_ok(v, 32) {
                return Err(EnrolError::BadField(format!("pcrs.{}", i.chars().take(8).collect::<String>())));
            }
        }
        r.ek_public.make_ascii_lowercase();
        r.srk_public.make_ascii_lowercase();
        if let Some(c) = &mut r.ek_cert {
            c.make_ascii_lowercase();
        }
        for v in r.pcrs.values_mut() {
            v.make_ascii_lowercase();
        }
        Ok(r)
    }
}

/// An enrolment as kept in `state/enrol/{node}.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredEnrolment {
    /// The node id.
    pub node: String,
    /// Unix seconds of the first request.
    pub received: i64,
    /// Unix seconds of the latest request.
    #[serde(default)]
    pub last: i64,
    /// The address of the first request.
    pub address: String,
    /// SHA-256 of the EK public area, hex: what an inventory lists.
    pub ek_hash: String,
    /// What the node sent.
    #[serde(flatten)]
    pub request: EnrolRequest,
}

/// The EK hash of an EK public area in hex (SHA-256 of the bytes).
pub fn ek_hash_hex(ek_public_hex: &str) -> String {
    let mut bytes = vec![0u8; ek_public_hex.len() / 2];
    if !stateless_bundle::key::hex_decode(ek_public_hex, &mut bytes) {
        return String::new();
    }
    stateless_bundle::key::hex_encode(&Sha256::digest(&bytes))
}

fn dir(data: &DataDir) -> PathBuf {
    data.state().join("enrol")
}

fn file(data: &DataDir, node: &str) -> PathBuf {
    dir(data).join(format!("{node}.json"))
}

/// The node's enrolment, if it enrolled.
pub fn read(data: &DataDir, node: &str) -> Option<StoredEnrolment> {
    check_name(node).ok()?;
    fs::read(file(data, node)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Keeps `req` for `node`. Returns whether it is new (false: the same
/// enrolment again).
pub fn store(
    data: &DataDir,
    node: &str,
    req: EnrolRequest,
    address: &str,
    now: i64,
    limits: &EnrolLimits,
) -> Result<bool, EnrolError> {
    check_name(node).map_err(|e| EnrolError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let d = dir(data);
    fs::create_dir_all(&d)?;
    let (new, rec) = match read(data, node) {
        Some(old) if old.request.ek_public == req.ek_public && old.request.srk_public == req.srk_public => {
            // The same TPM: only the time and the PCR values may move.
            (false, StoredEnrolment { last: now, request: EnrolRequest { pcrs: req.pcrs, ..old.request }, ..old })
        }
        Some(_) => return Err(EnrolError::Conflict(node.to_owned())),
        None => {
            // Counted only when a node is new, and bounded by the rate limit.
            let kept = fs::read_dir(&d).map(|rd| rd.take(limits.max_kept.saturating_add(1)).count()).unwrap_or(0);
            if kept >= limits.max_kept {
                return Err(EnrolError::Full);
            }
            let ek_hash = ek_hash_hex(&req.ek_public);
            (
                true,
                StoredEnrolment {
                    node: node.to_owned(),
                    received: now,
                    last: now,
                    address: address.to_owned(),
                    ek_hash,
                    request: req,
                },
            )
        }
    };
    let json = serde_json::to_vec_pretty(&rec).map_err(io::Error::other)?;
    write_atomic(&file(data, node), &json)?;
    Ok(new)
}

/// Where a node's wrapped key is published.
pub fn tpm_key_file(data: &DataDir, node: &str) -> PathBuf {
    data.root().join("v1/nodes").join(node).join(TPM_KEY_FILE)
}

/// Publishes a wrapped key for `node` (atomically).
pub fn publish(data: &DataDir, node: &str, text: &str) -> io::Result<()> {
    check_name(node).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let path = tpm_key_file(data, node);
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    write_atomic(&path, text.as_bytes())
}

/// Withdraws the node's wrapped key and forgets its enrolment (so that it
/// may enrol again, e.g. with a new TPM, once approved again). Returns
/// whether a wrapped key was published.
pub fn withdraw(data: &DataDir, node: &str) -> io::Result<bool> {
    check_name(node).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let had = match fs::remove_file(tpm_key_file(data, node)) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    match fs::remove_file(file(data, node)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(had)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn body(ek: &str) -> Vec<u8> {
        format!(r#"{{"ek_public":"{ek}","srk_public":"0023AB","pcrs":{{"7":"{}"}}}}"#, "00".repeat(32)).into_bytes()
    }

    #[test]
    fn paths() {
        assert_eq!(enrol_path("/v1/nodes/n1/enrol"), Some("n1"));
        assert_eq!(tpm_key_path("/v1/nodes/n1/tpm-key"), Some("n1"));
        for bad in ["/v1/nodes/../enrol", "/v1/nodes/a/b/enrol", "/v1/nodes//enrol", "/v1/nodes/n/enrol/"] {
            assert_eq!(enrol_path(bad), None, "{bad}");
        }
        assert_eq!(tpm_key_path("/v1/nodes/.x/tpm-key"), None);
        assert_eq!(tpm_policies_path("/v1/default/tpm-policies").as_deref(), Some("v1/default/tpm-policies"));
        assert_eq!(tpm_policies_path("/v1/nodes/n1/tpm-policies").as_deref(), Some("v1/nodes/n1/tpm-policies"));
        for bad in ["/v1/nodes/../tpm-policies", "/v1/nodes/a/b/tpm-policies", "/v1/groups/g/tpm-policies"] {
            assert_eq!(tpm_policies_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bodies_are_checked() {
        let r = EnrolRequest::parse(&body("0001")).unwrap();
        assert_eq!(r.srk_public, "0023ab");
        for bad in [
            &b"[]"[..],
            br#"{"ek_public":"zz","srk_public":"00"}"#,
            br#"{"ek_public":"001","srk_public":"00"}"#,
            br#"{"ek_public":"00","srk_public":""}"#,
            br#"{"ek_public":"00","srk_public":"00","other":1}"#,
            br#"{"ek_public":"00","srk_public":"00","pcrs":{"24":"00"}}"#,
            br#"{"ek_public":"00","srk_public":"00","pcrs":{"7":"00"}}"#,
        ] {
            assert!(EnrolRequest::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"{{"ek_public":"{}","srk_public":"00"}}"#, "00".repeat(MAX_EK_PUBLIC + 1));
        assert!(matches!(EnrolRequest::parse(long.as_bytes()), Err(EnrolError::BadField(_))));
    }

    #[test]
    fn first_enrolment_stays_until_withdrawn() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let limits = EnrolLimits { per_minute: 0, max_kept: 2 };
        let req = || EnrolRequest::parse(&body("0001")).unwrap();
        assert!(store(&data, "n1", req(), "192.0.2.1", 10, &limits).unwrap());
        assert!(!store(&data, "n1", req(), "192.0.2.1", 20, &limits).unwrap());
        let rec = read(&data, "n1").unwrap();
        assert_eq!((rec.received, rec.last), (10, 20));
        assert_eq!(rec.ek_hash, stateless_bundle::key::hex_encode(&Sha256::digest([0u8, 1])));
        let other = EnrolRequest::parse(&body("0002")).unwrap();
        assert!(matches!(store(&data, "n1", other.clone(), "192.0.2.9", 30, &limits), Err(EnrolError::Conflict(_))));
        assert!(store(&data, "n2", req(), "192.0.2.1", 10, &limits).unwrap());
        assert!(matches!(store(&data, "n3", req(), "192.0.2.1", 10, &limits), Err(EnrolError::Full)));
        publish(&data, "n1", "wrapped").unwrap();
        assert_eq!(fs::read_to_string(tpm_key_file(&data, "n1")).unwrap(), "wrapped");
        assert!(withdraw(&data, "n1").unwrap());
        assert!(!tpm_key_file(&data, "n1").exists());
        assert!(!withdraw(&data, "n1").unwrap());
        assert!(store(&data, "n1", other, "192.0.2.9", 40, &limits).unwrap());
    }
}
