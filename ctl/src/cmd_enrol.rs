//! `statelessctl approve NODE --tpm-key KEYFILE`: wraps a key for the TPM
//! the node enrolled (`POST /v1/nodes/{node}/enrol`, kept by the server in
//! `state/enrol/NODE.json`) and publishes it at `v1/nodes/NODE/tpm-key`.
//! See docs/keys.md "Zero-touch enrolment".

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use stateless_bundle::key::hex_decode;
use stateless_keys::read_key_file;
use stateless_keys::sealed::{Bank, parse_pcr_list};
use stateless_keys::tpm::import::{SrkPublic, WrapPolicy, wrap_bound};
use stateless_keys::tpm::policy::read_policy_public_file;
use stateless_server::enrol::{self, StoredEnrolment};
use stateless_server::{DataDir, store};

/// What `approve` was asked to do with the node's TPM.
#[derive(Debug, Clone)]
pub struct TpmApproval<'a> {
    /// The key to wrap.
    pub key: &'a Path,
    /// PCRs to bind to (values from the enrolment), e.g. `7`.
    pub pcrs: Option<&'a str>,
    /// A policy public key instead of PCR values.
    pub policy_key: Option<&'a Path>,
    /// The EK CA certificates (PEM) the EK certificate must chain to.
    pub ek_ca: Option<&'a Path>,
    /// The EK hash the admin expects (from an inventory).
    pub ek_hash: Option<&'a str>,
}

fn unhex(s: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![0u8; s.len() / 2];
    if s.len() % 2 != 0 || !hex_decode(s, &mut out) {
        bail!("the enrolment's {what} is not hex");
    }
    Ok(out)
}

/// Wraps the key for the node's TPM and publishes it; returns the lines
/// to print.
pub fn approve_tpm(data: &DataDir, node: &str, a: &TpmApproval<'_>) -> anyhow::Result<Vec<String>> {
    let Some(e) = enrol::read(data, node) else {
        bail!("node {node} has not enrolled a TPM (boot it with rd.stateless.key=tpm and a server it can reach)");
    };
    let mut lines = vec![format!("TPM of {node}: EK SHA-256 {} (enrolled from {})", e.ek_hash, e.address)];
    if let Some(want) = a.ek_hash {
        if !want.eq_ignore_ascii_case(&e.ek_hash) {
            bail!("the EK {node} enrolled ({}) is not the one given with --ek-hash ({want}): not approved", e.ek_hash);
        }
        lines.push("EK hash matches --ek-hash".into());
    }
    lines.push(check_ek_cert(&e, a.ek_ca)?);
    let srk = SrkPublic::parse(&unhex(&e.request.srk_public, "srk_public")?)
        .map_err(|err| anyhow::anyhow!("the storage key node {node} enrolled: {err}"))?;
    let key = read_key_file(a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let (policy, what) = match (a.policy_key, a.pcrs) {
        (Some(p), _) => {
            let pk = read_policy_public_file(p).with_context(|| format!("reading {}", p.display()))?;
            (WrapPolicy::Authorized(pk), "under signed PCR policies".to_owned())
        }
        (None, pcrs) => {
            let text = pcrs.unwrap_or("7");
            let list = parse_pcr_list(text).map_err(|err| anyhow::anyhow!("--tpm-pcrs {text}: {err}"))?;
            let mut values = Vec::new();
            for p in &list {
                let Some(hex) = e.request.pcrs.get(&p.to_string()) else {
                    bail!("node {node} did not report PCR {p} when it enrolled; choose others with --tpm-pcrs");
                };
                values.push((*p, unhex(hex, "PCR value")?));
            }
            (WrapPolicy::Pcrs(Bank::Sha256, values), format!("to PCR {text} (sha256) as the node reported them"))
        }
    };
    // Bound to the EK: only the TPM holding the EK checked above, with this
    // SRK loaded, can unwrap it (credential activation).
    let ek = unhex(&e.request.ek_public, "ek_public")?;
    let wrapped = wrap_bound(&key, &srk, &ek, &policy)
        .map_err(|err| anyhow::anyhow!("wrapping the key for the EK node {node} enrolled: {err}"))?;
    enrol::publish(data, node, &wrapped.to_text()).context("publishing the wrapped key")?;
    store::audit(
        data,
        "tpm-key",
        Some(node),
        format!("key {} wrapped for EK {} {what}", key.id(), e.ek_hash),
        store::by_uid(),
    )?;
    lines.push(format!("published key {} wrapped for {node}'s TPM {what} at v1/nodes/{node}/tpm-key", key.id()));
    lines.push("the storage key is bound to the EK: only the TPM holding that EK can import it".into());
    Ok(lines)
}

/// Checks the EK certificate against `ca` (with `openssl verify`) and that
/// it certifies the EK the node enrolled. Without `ca`, says what there is.
fn check_ek_cert(e: &StoredEnrolment, ca: Option<&Path>) -> anyhow::Result<String> {
    let cert = match (&e.request.ek_cert, ca) {
        (None, None) => return Ok("EK certificate: none in the TPM (compare the EK hash with an inventory)".into()),
        (None, Some(_)) => bail!("--ek-ca: node {} sent no EK certificate (its TPM has none in NV)", e.node),
        (Some(_), None) => return Ok("EK certificate: present, not checked (give --ek-ca)".into()),
        (Some(hex), Some(_)) => unhex(hex, "EK certificate")?,
    };
    let ca = ca.unwrap_or(Path::new(""));
    // The certificate must be for this EK: its public key (RSA modulus or
    // ECC point) appears in the certificate's SubjectPublicKeyInfo.
    let ek = unhex(&e.request.ek_public, "EK public")?;
    let key_bytes = ek_key_bytes(&ek).context("the enrolled EK public area does not parse")?;
    if !cert.windows(key_bytes.len()).any(|w| w == key_bytes.as_slice()) {
        bail!("the EK certificate node {} sent certifies another key than its EK: not approved", e.node);
    }
    let dir = tempfile::tempdir()?;
    let der = dir.path().join("ek.der");
    std::fs::write(&der, &cert)?;
    let pem: PathBuf = dir.path().join("ek.pem");
    let out = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem)
        .output()
        .context("running openssl (needed for --ek-ca)")?;
    if !out.status.success() {
        bail!("the EK certificate node {} sent is not an X.509 certificate: not approved", e.node);
    }
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(&pem)
        .output()
        .context("running openssl verify")?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        let why = why.lines().find(|l| l.contains("error")).unwrap_or("does not verify").trim().to_owned();
        bail!("the EK certificate of {} does not chain to {}: {why}: not approved", e.node, ca.display());
    }
    Ok(format!("EK certificate: verified against {}", ca.display()))
}

/// The EK's key as it appears in a certificate: the RSA modulus, or the
/// ECC point `04 || x || y` (TPMT_PUBLIC, Part 2 §12.2.4).
fn ek_key_bytes(public: &[u8]) -> Option<Vec<u8>> {
    let mut r = Cursor(public);
    let ty = r.u16()?;
    r.u16()?; // nameAlg
    r.take(4)?; // attributes
    r.tpm2b()?; // authPolicy
    if r.u16()? != 0x0010 {
        r.take(4)?; // symmetric: keyBits, mode
    }
    if r.u16()? != 0x0010 {
        r.take(2)?; // scheme's hash
    }
    match ty {
        0x0001 => {
            r.take(6)?; // keyBits, exponent
            let n = r.tpm2b()?;
            r.0.is_empty().then(|| n.to_vec())
        }
        0x0023 => {
            r.take(2)?; // curve
            if r.u16()? != 0x0010 {
                r.take(2)?; // kdf's hash
            }
            let (x, y) = (r.tpm2b()?, r.tpm2b()?);
            r.0.is_empty().then(|| [&[0x04][..], x, y].concat())
        }
        _ => None,
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
    fn tpm2b(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ek_key_bytes_of_the_rsa_template() {
        let t = stateless_keys::tpm::enrol::ek_template();
        assert_eq!(ek_key_bytes(&t), Some(vec![0; 256]));
        assert_eq!(ek_key_bytes(&t[..t.len() - 1]), None);
        let srk = stateless_keys::tpm::srk_template();
        // The SRK template has empty coordinates.
        assert_eq!(ek_key_bytes(&srk), Some(vec![4]));
    }
}
