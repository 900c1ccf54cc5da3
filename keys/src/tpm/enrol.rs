//! The node's side of zero-touch enrolment: what it tells the server about
//! its TPM (the endorsement key's public area, the storage root key's, and
//! the EK certificate when the TPM has one in NV), and turning a key wrapped
//! for it ([`super::import`]) into an ordinary sealed key with
//! `TPM2_Import`. See docs/keys.md "Zero-touch enrolment".

use sha2::{Digest, Sha256};

use zeroize::Zeroizing;

use super::import::{Credential, SrkPublic, WrappedKey};
use super::wire::{self, Auth, Command};
use super::{
    ALG_AES, ALG_CFB, ALG_NULL, ALG_SHA256, CC_CREATE_PRIMARY, CC_NV_READ, CC_NV_READ_PUBLIC, CC_START_AUTH_SESSION,
    RH_NULL, RH_OWNER, SE_POLICY, Tpm, TpmError,
};
use crate::sealed::{Bank, SealedKey};

const CC_IMPORT: u32 = 0x156;
const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
const CC_POLICY_SECRET: u32 = 0x151;
const CC_READ_PUBLIC: u32 = 0x173;
const CC_EVICT_CONTROL: u32 = 0x120;
const RH_ENDORSEMENT: u32 = 0x4000_000B;
/// Where the TCG EK Credential Profile has a provisioned RSA EK persisted.
pub const EK_PERSISTENT: u32 = 0x8101_0001;
/// The NV index of the RSA 2048 EK certificate (TCG EK Credential Profile).
pub const EK_CERT_NV_RSA: u32 = 0x01C0_0002;
/// Largest EK certificate read (they are around 1 KiB).
pub const MAX_EK_CERT: usize = 4096;
/// Bytes read from NV per TPM2_NV_Read (below every TPM's NV buffer size).
const NV_CHUNK: u16 = 512;

/// The TCG EK Credential Profile's EK authPolicy: PolicySecret(TPM_RH_ENDORSEMENT).
const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24, 0xFD, 0x52, 0xD7,
    0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
];

/// The RSA 2048 EK template (TCG EK Credential Profile, template L-1): the
/// key whose certificate TPM vendors (and swtpm's local CA) provision at
/// [`EK_CERT_NV_RSA`]. Derived from the endorsement seed, so it is the same
/// key on every boot and no NV space is used.
pub fn ek_template() -> Vec<u8> {
    let mut t = Vec::with_capacity(32 + 256 + 16);
    t.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
    t.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
    // fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted | decrypt
    t.extend_from_slice(&0x0003_00B2u32.to_be_bytes());
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(&EK_POLICY);
    t.extend_from_slice(&0x0006u16.to_be_bytes()); // AES
    t.extend_from_slice(&128u16.to_be_bytes());
    t.extend_from_slice(&0x0043u16.to_be_bytes()); // CFB
    t.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme: null
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // exponent: default
    t.extend_from_slice(&256u16.to_be_bytes());
    t.extend_from_slice(&[0u8; 256]);
    t
}

/// What a node tells the server about its TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// The EK's TPMT_PUBLIC.
    pub ek_public: Vec<u8>,
    /// The SRK's TPMT_PUBLIC.
    pub srk_public: Vec<u8>,
    /// The EK certificate (DER), when the TPM has one in NV.
    pub ek_cert: Option<Vec<u8>>,
    /// The SHA-256 PCR values at enrolment, for the admin to bind the key to.
    pub pcrs: Vec<(u8, Vec<u8>)>,
}

impl Enrolment {
    /// The body of `POST /v1/nodes/{node}/enrol` (docs/protocol.md): JSON
    /// whose values are all hex, so nothing needs escaping.
    pub fn to_json(&self) -> String {
        use stateless_bundle::key::hex_encode;
        let pcrs: Vec<String> = self.pcrs.iter().map(|(i, v)| format!("\"{i}\":\"{}\"", hex_encode(v))).collect();
        format!(
            "{{\"ek_public\":\"{}\",\"srk_public\":\"{}\",\"ek_cert\":{},\"pcrs\":{{{}}}}}",
            hex_encode(&self.ek_public),
            hex_encode(&self.srk_public),
            self.ek_cert.as_ref().map_or("null".to_owned(), |c| format!("\"{}\"", hex_encode(c))),
            pcrs.join(",")
        )
    }
}

/// The EK hash an admin compares with an inventory: SHA-256 of the EK's
/// TPMT_PUBLIC, in hex.
pub fn ek_hash(ek_public: &[u8]) -> String {
    stateless_bundle::key::hex_encode(&Sha256::digest(ek_public))
}

/// Names the command of a refusal (the shared table in the parent module
/// knows only the sealing commands).
fn named(e: TpmError, command: &'static str) -> TpmError {
    match e {
        TpmError::Rc { rc, .. } => TpmError::Rc { command, rc },
        TpmError::Malformed(_) => TpmError::Malformed(command),
        e => e,
    }
}

impl Tpm {
    /// The SRK's public area (the same key every time on the same TPM).
    pub fn srk_public(&mut self) -> Result<SrkPublic, TpmError> {
        let srk = self.create_srk()?;
        self.flush(srk.handle);
        SrkPublic::from_point(&srk.x, &srk.y).map_err(|_| TpmError::Malformed("TPM2_CreatePrimary"))
    }

    /// The EK's public area: the provisioned one at [`EK_PERSISTENT`] when
    /// there is one, otherwise the one [`ek_template`] makes.
    pub fn ek_public(&mut self) -> Result<Vec<u8>, TpmError> {
        let (handle, transient) = self.ek_handle()?;
        let mut cmd = Command::new(CC_READ_PUBLIC, &[handle], &[]);
        let reply = self.run(&mut cmd, 0).map_err(|e| named(e, "TPM2_ReadPublic (EK)"));
        if transient {
            self.flush(handle);
        }
        let reply = reply?;
        let public = wire::Reader::new(&reply.params).tpm2b().map_err(|_| TpmError::Malformed("TPM2_ReadPublic"))?;
        Ok(public.to_vec())
    }

    /// The RSA EK certificate from NV, `None` when the TPM has none.
    pub fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        let mut cmd = Command::new(CC_NV_READ_PUBLIC, &[EK_CERT_NV_RSA], &[]);
        let Ok(reply) = self.run(&mut cmd, 0) else { return Ok(None) };
        // TPM2B_NV_PUBLIC { index, nameAlg, attributes, authPolicy, dataSize }.
        let malformed = |_| TpmError::Malformed("TPM2_NV_ReadPublic");
        let nv_public = wire::Reader::new(&reply.params).tpm2b().map_err(malformed)?;
        let mut r = wire::Reader::new(nv_public);
        r.u32().map_err(malformed)?;
        r.u16().map_err(malformed)?;
        r.u32().map_err(malformed)?;
        r.tpm2b().map_err(malformed)?;
        let size = usize::from(r.u16().map_err(malformed)?);
        if size > MAX_EK_CERT {
            return Err(TpmError::Malformed("TPM2_NV_ReadPublic"));
        }
        let mut cert = Vec::with_capacity(size);
        while cert.len() < size {
            let n = u16::try_from(size - cert.len()).unwrap_or(NV_CHUNK).min(NV_CHUNK);
            let offset = u16::try_from(cert.len()).map_err(|_| TpmError::Malformed("TPM2_NV_Read"))?;
            // Read with the index's own (empty) auth, as tpm2_getekcertificate does.
            let mut cmd = Command::new(CC_NV_READ, &[EK_CERT_NV_RSA, EK_CERT_NV_RSA], &[Auth::EmptyPassword]);
            cmd.u16(n).u16(offset);
            let reply = self.run(&mut cmd, 0).map_err(|e| named(e, "TPM2_NV_Read (EK certificate)"))?;
            let part = wire::Reader::new(&reply.params).tpm2b().map_err(|_| TpmError::Malformed("TPM2_NV_Read"))?;
            if part.is_empty() || part.len() > usize::from(n) {
                return Err(TpmError::Malformed("TPM2_NV_Read"));
            }
            cert.extend_from_slice(part);
        }
        // Some vendors pad the index with zeros after the DER: cut to the
        // DER's own length when it is a definite long-form SEQUENCE.
        if let [0x30, 0x82, a, b, ..] = cert.as_slice() {
            let len = 4 + usize::from(u16::from_be_bytes([*a, *b]));
            cert.truncate(len);
        }
        Ok(Some(cert))
    }

    /// Everything the enrolment request carries.
    pub fn enrolment(&mut self) -> Result<Enrolment, TpmError> {
        let ek_public = self.ek_public()?;
        let srk_public = self.srk_public()?.public;
        // A certificate that cannot be read (an index only the owner may
        // read, say) is not worth failing the enrolment: the admin then
        // sees "none" and compares the EK hash instead.
        let ek_cert = self.ek_certificate().unwrap_or_else(|e| {
            log::warn!("the TPM's EK certificate could not be read ({e}); enrolling without it");
            None
        });
        let all: Vec<u8> = (0..24).collect();
        let first: Vec<u8> = (0..16).collect();
        // A TPM without a SHA-256 bank (or with fewer PCRs) reports none;
        // the admin can still bind the key to a policy key.
        let pcrs = self.pcr_read(Bank::Sha256, &all).or_else(|_| self.pcr_read(Bank::Sha256, &first));
        Ok(Enrolment { ek_public, srk_public, ek_cert, pcrs: pcrs.unwrap_or_default() })
    }

    /// Imports a key wrapped for this TPM: checks that it names this TPM's
    /// SRK, then `TPM2_Import` under the SRK. The result is an ordinary
    /// sealed key ([`Tpm::unseal`] / [`Tpm::unseal_with`] unseal it) that
    /// may be kept: its private blob is this TPM's own.
    pub fn import(&mut self, wrapped: &WrappedKey) -> Result<SealedKey, TpmError> {
        let srk = self.create_srk()?;
        let result = self.import_under(srk.handle, &srk.name, wrapped);
        self.flush(srk.handle);
        result
    }

    fn import_under(&mut self, srk: u32, srk_name: &[u8], wrapped: &WrappedKey) -> Result<SealedKey, TpmError> {
        if wrapped.sealed.parent_name != srk_name {
            return Err(TpmError::SrkMismatch);
        }
        let inner = match &wrapped.credential {
            Some(c) => Some(self.activate(srk, c)?),
            None => None,
        };
        // The seed is encrypted to the SRK and the sensitive area under the
        // seed (and the inner key). The inner key crosses the bus in the
        // clear here: someone reading the bus learns it, which only matters
        // together with the SRK's private key, which never leaves the TPM.
        // The key itself leaves the TPM only through the salted, encrypted
        // TPM2_Unseal.
        let mut cmd = Command::new(CC_IMPORT, &[srk], &[Auth::EmptyPassword]);
        match &inner {
            Some(k) => cmd.tpm2b(k.as_slice()),
            None => cmd.u16(0), // encryptionKey: no inner wrapper
        };
        cmd.bytes(&wrapped.sealed.public);
        cmd.bytes(&wrapped.sealed.private);
        cmd.tpm2b(&wrapped.seed);
        match inner {
            Some(_) => cmd.u16(ALG_AES).u16(128).u16(ALG_CFB),
            None => cmd.u16(ALG_NULL),
        };
        let reply = match self.run(&mut cmd, 0) {
            Ok(r) => r,
            Err(TpmError::Rc { rc, .. }) => return Err(TpmError::NotForThisTpm { rc }),
            Err(e) => return Err(e),
        };
        let private = wire::Reader::new(&reply.params).tpm2b_whole().map_err(|_| TpmError::Malformed("TPM2_Import"))?;
        Ok(SealedKey { private, ..wrapped.sealed.clone() })
    }

    /// `TPM2_ActivateCredential` of `credential` with the EK and the SRK
    /// (`srk`): the inner wrapper key, which this TPM gives back only if it
    /// holds the EK the credential was made for and the loaded SRK has the
    /// name it was bound to.
    fn activate(&mut self, srk: u32, credential: &Credential) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let (ek, transient) = self.ek_handle()?;
        let mut handles = Vec::new();
        if transient {
            handles.push(ek);
        }
        let result = self.activate_with(srk, ek, credential, &mut handles);
        for h in handles.into_iter().rev() {
            self.flush(h);
        }
        result
    }

    /// The EK's handle: the persistent one, or a transient one made from
    /// the template (`true`: to be flushed).
    fn ek_handle(&mut self) -> Result<(u32, bool), TpmError> {
        let mut cmd = Command::new(CC_READ_PUBLIC, &[EK_PERSISTENT], &[]);
        if self.run(&mut cmd, 0).is_ok() {
            return Ok((EK_PERSISTENT, false));
        }
        let mut cmd = Command::new(CC_CREATE_PRIMARY, &[RH_ENDORSEMENT], &[Auth::EmptyPassword]);
        cmd.u16(4).u16(0).u16(0).tpm2b(&ek_template()).u16(0).u32(0);
        let reply = self.run(&mut cmd, 1).map_err(|e| named(e, "TPM2_CreatePrimary (EK)"))?;
        let ek = Self::handle(&reply, "TPM2_CreatePrimary")?;
        // Made once, kept at the TCG's EK handle: creating an RSA EK is the
        // slowest step of every later boot's import (about 20 ms on swtpm,
        // seconds on some chips; docs/performance.md "TPM unseal"). Best
        // effort: an owner password or a full NV leaves it transient.
        let mut cmd = Command::new(CC_EVICT_CONTROL, &[RH_OWNER, ek], &[Auth::EmptyPassword]);
        cmd.u32(EK_PERSISTENT);
        match self.run(&mut cmd, 0) {
            Ok(_) => {
                self.flush(ek);
                Ok((EK_PERSISTENT, false))
            }
            Err(e) => {
                log::debug!("keeping the EK at {EK_PERSISTENT:#x}: {e}; it stays transient");
                Ok((ek, true))
            }
        }
    }

    fn activate_with(
        &mut self,
        srk: u32,
        ek: u32,
        credential: &Credential,
        handles: &mut Vec<u32>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        // The EK's policy is PolicySecret(TPM_RH_ENDORSEMENT): a policy
        // session (unsalted: it carries nothing secret) satisfied with the
        // endorsement hierarchy's (empty) password.
        let nonce = self.nonce()?;
        let mut cmd = Command::new(CC_START_AUTH_SESSION, &[RH_NULL, RH_NULL], &[]);
        cmd.tpm2b(&nonce).u16(0).u8(SE_POLICY).u16(ALG_NULL).u16(ALG_SHA256);
        let reply = self.run(&mut cmd, 1).map_err(|e| named(e, "TPM2_StartAuthSession"))?;
        let session = Self::handle(&reply, "TPM2_StartAuthSession")?;
        handles.push(session);
        let mut cmd = Command::new(CC_POLICY_SECRET, &[RH_ENDORSEMENT, session], &[Auth::EmptyPassword]);
        cmd.u16(0).u16(0).u16(0).u32(0); // nonceTPM, cpHashA, policyRef: empty; no expiration
        self.run(&mut cmd, 0).map_err(|e| named(e, "TPM2_PolicySecret (endorsement)"))?;
        let nonce = self.nonce()?;
        let auths = [Auth::EmptyPassword, Auth::Session { handle: session, nonce, attrs: 0, hmac: None }];
        let mut cmd = Command::new(CC_ACTIVATE_CREDENTIAL, &[srk, ek], &auths);
        cmd.bytes(&credential.blob).tpm2b(&credential.secret);
        let reply = match self.run(&mut cmd, 0) {
            Ok(r) => r,
            // Another EK, or an SRK other than the one it was bound to.
            Err(TpmError::Rc { rc, .. }) => return Err(TpmError::NotForThisTpm { rc }),
            Err(e) => return Err(e),
        };
        // The session ended with the command.
        handles.retain(|h| *h != session);
        let key =
            wire::Reader::new(&reply.params).tpm2b().map_err(|_| TpmError::Malformed("TPM2_ActivateCredential"))?;
        if key.len() != 16 {
            return Err(TpmError::Malformed("TPM2_ActivateCredential"));
        }
        Ok(Zeroizing::new(key.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ek_template_shape() {
        // type, nameAlg, attributes, policy, symmetric, scheme, bits, exponent, unique.
        assert_eq!(ek_template().len(), 2 + 2 + 4 + 34 + 6 + 2 + 2 + 4 + 258);
        assert_eq!(ek_hash(b"").len(), 64);
    }
}
