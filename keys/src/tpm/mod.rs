//! Sealing a site key to a TPM 2.0 and unsealing it, in pure Rust.
//!
//! The loader must stay one static binary, so instead of the TSS C
//! libraries this module marshals the handful of commands it needs itself
//! ([`wire`]) and talks to `/dev/tpmrm0` or to swtpm over TCP
//! ([`transport`]).
//!
//! **Objects.** The parent is a storage root key (SRK) created on the fly in
//! the owner hierarchy from a fixed template ([`srk_template`]: ECC NIST
//! P-256, AES-128-CFB, the TCG provisioning guidance's attributes). It is
//! the same key every time on the same TPM, so nothing needs to be persisted
//! in the TPM, and tpm2-tools can make the same parent:
//!
//! ```text
//! tpm2_createprimary -C o -g sha256 -G ecc256:aes128cfb \
//!   -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' -c srk.ctx
//! ```
//!
//! The sealed object is a keyed-hash object holding the 32 key bytes, with
//! `fixedTPM|fixedParent`, no `userWithAuth` (only the policy can unseal it)
//! and an `authPolicy` of exactly one `TPM2_PolicyPCR` over the chosen PCRs.
//!
//! **Threat model.** Unsealing uses a policy session salted by ECDH with
//! the SRK ([`salt`]), and `TPM2_Unseal`'s output is encrypted with the
//! session key: someone reading the bus between TPM and CPU sees neither
//! the salt nor the key. Before sending the salt the loader checks that the
//! SRK the TPM returns has the name recorded at sealing time, so an
//! interposer cannot substitute its own key to learn the salt, and it checks
//! the response HMAC. Sealing works the same way: `TPM2_Create` runs in an
//! HMAC session salted with the SRK, with the key encrypted on its way in;
//! but at sealing the SRK is trusted as the TPM answers it (nothing checks
//! it against the endorsement key): its name is what later unseals check.
//! None of this stops someone who can send the TPM commands of their own
//! while the PCRs match; the lock PCR ([`lock`]) closes the key after the
//! loader's unseal, for the rest of the boot. The sealing protects
//! against the disk or boot image being copied and used on another machine,
//! or booted with a different firmware configuration or boot chain (PCR 7:
//! Secure Boot state and keys).

pub mod credential;
pub mod enrol;
pub mod import;
pub mod lock;
pub mod nv;
pub mod policy;
pub mod salt;
pub mod source;
pub mod transport;
pub mod wire;

use std::fmt;

use stateless_bundle::Key;
use stateless_bundle::key::KEY_LEN;
use zeroize::Zeroizing;

pub use transport::{DEFAULT_DEVICE, TpmSelector, Transport};
use wire::{Auth, Command, Parsed, is_retry, parse_response, rc_text};

use crate::sealed::{Bank, SealedKey, pcr_digest, pcr_selection, policy_pcr_digest};
use policy::{PolicyPublicKey, SignedPolicy, authorize_hash, policy_authorize_digest};

const CC_CREATE_PRIMARY: u32 = 0x131;
const CC_CREATE: u32 = 0x153;
const CC_LOAD: u32 = 0x157;
const CC_UNSEAL: u32 = 0x15E;
const CC_FLUSH_CONTEXT: u32 = 0x165;
const CC_GET_RANDOM: u32 = 0x17B;
const CC_START_AUTH_SESSION: u32 = 0x176;
const CC_PCR_READ: u32 = 0x17E;
const CC_POLICY_PCR: u32 = 0x17F;
const CC_PCR_EXTEND: u32 = 0x182;
const CC_LOAD_EXTERNAL: u32 = 0x167;
const CC_VERIFY_SIGNATURE: u32 = 0x177;
const CC_POLICY_AUTHORIZE: u32 = 0x16A;
// Shared by the enrolment (EK certificate) and the rollback counters.
const CC_NV_READ: u32 = 0x14E;
const CC_NV_READ_PUBLIC: u32 = 0x169;

const RH_OWNER: u32 = 0x4000_0001;
const RH_NULL: u32 = 0x4000_0007;
const ALG_NULL: u16 = 0x0010;
const ALG_SHA256: u16 = 0x000B;
const SE_HMAC: u8 = 0x00;
const SE_POLICY: u8 = 0x01;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
/// The longest PIN: an auth value is at most the size of the object's
/// name hash (SHA-256).
pub const MAX_PIN_LEN: usize = 32;
const CC_POLICY_AUTH_VALUE: u32 = 0x16B;
/// How often a command is sent again after a "try again" warning.
const RETRIES: usize = 5;

/// The SRK's public template (TPMT_PUBLIC, without the TPM2B size).
pub fn srk_template() -> Vec<u8> {
    let mut t = Vec::with_capacity(32);
    t.extend_from_slice(&0x0023u16.to_be_bytes()); // TPM_ALG_ECC
    t.extend_from_slice(&ALG_SHA256.to_be_bytes()); // nameAlg
    // fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt
    t.extend_from_slice(&0x0003_0472u32.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
    t.extend_from_slice(&0x0006u16.to_be_bytes()); // symmetric: AES
    t.extend_from_slice(&128u16.to_be_bytes()); //   128 bits
    t.extend_from_slice(&0x0043u16.to_be_bytes()); //   CFB
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // scheme
    t.extend_from_slice(&0x0003u16.to_be_bytes()); // curve: NIST P-256
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // kdf
    t.extend_from_slice(&0u16.to_be_bytes()); // unique.x: empty
    t.extend_from_slice(&0u16.to_be_bytes()); // unique.y: empty
    t
}

/// The sealed object's public template for `policy`.
fn sealed_template(policy: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(48);
    t.extend_from_slice(&0x0008u16.to_be_bytes()); // TPM_ALG_KEYEDHASH
    t.extend_from_slice(&ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&0x0000_0012u32.to_be_bytes()); // fixedTPM | fixedParent
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(policy);
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // keyed-hash scheme: none (sealed data)
    t.extend_from_slice(&0u16.to_be_bytes()); // unique: empty
    t
}

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TPM could not be reached.
    #[error("TPM {selector}")]
    Io {
        /// Which TPM.
        selector: String,
        /// The cause.
        #[source]
        err: std::io::Error,
    },
    /// The TPM refused a command.
    #[error("{command}: {}", rc_text(*rc))]
    Rc {
        /// The command, e.g. `TPM2_Load`.
        command: &'static str,
        /// The response code.
        rc: u32,
    },
    /// The response did not parse.
    #[error("{0}: malformed TPM response")]
    Malformed(&'static str),
    /// The PCRs hold other values than the key was sealed to.
    #[error("PCR {} ({bank}) differs from the sealed policy; the key stays sealed (re-seal after a firmware or boot chain change, see docs/keys.md)", list(.pcrs))]
    PcrMismatch {
        /// The PCRs whose value differs.
        pcrs: Vec<u8>,
        /// The bank.
        bank: &'static str,
    },
    /// Only the lock PCR differs from the policy: the key was unsealed on
    /// this boot already and closed after use ([`lock`]).
    #[error(
        "PCR {} ({bank}) has moved since this boot's loader unsealed the key: it stays sealed until the next boot (see docs/keys.md)",
        lock::LOCK_PCR
    )]
    Locked {
        /// The bank.
        bank: &'static str,
    },
    /// The sealed object was not made by this TPM, or is corrupt.
    #[error("the sealed object was not made by this TPM or is corrupt (TPM2_Load: {})", rc_text(*rc))]
    WrongObject {
        /// The response code of TPM2_Load.
        rc: u32,
    },
    /// A key wrapped for a TPM (zero-touch enrolment) that this TPM
    /// refused to import: it was wrapped for another TPM, or edited.
    #[error("the TPM refused the wrapped key: it was made for another TPM or is corrupt (TPM2_Import: {})", rc_text(*rc))]
    NotForThisTpm {
        /// The response code of TPM2_Import.
        rc: u32,
    },
    /// The unsealed bytes are not the key the file claims.
    #[error("the unsealed key is not key {claimed} that the file names")]
    WrongKey {
        /// The key id in the file.
        claimed: String,
    },
    /// A PCR is not in the TPM's bank.
    #[error("the TPM does not have PCR {0} in that bank")]
    NoSuchPcr(u8),
    /// The key is sealed under a policy signing key and no signed policy
    /// let it unseal; each reason names a policy file and why.
    #[error("{}", no_policy_text(.reasons))]
    NoSignedPolicy {
        /// `FILE: why` for each signed policy tried.
        reasons: Vec<String>,
    },
    /// The TPM loaded the policy key under another name than the file's.
    #[error("the TPM gives the policy key another name than the sealed-key file (corrupt file or not a TPM)")]
    PolicyKeyName,
    /// The key is sealed with a PIN and none was given.
    #[error("the key is sealed with a PIN and none was given")]
    PinNeeded,
    /// The TPM refused the PIN.
    #[error("wrong PIN (the TPM counts failed tries and locks out for a while after too many)")]
    WrongPin,
    /// A PIN that is empty or too long.
    #[error("a PIN is 1 to {MAX_PIN_LEN} bytes")]
    BadPin,
    /// The SRK is not the one the key was sealed under.
    #[error(
        "the TPM's storage root key is not the one the key was sealed under (TPM cleared, another TPM, or someone between CPU and TPM)"
    )]
    SrkMismatch,
    /// The salted session could not be set up.
    #[error("salted session: {0}")]
    Salt(String),
    /// A response in the salted session carries an HMAC that does not
    /// verify: it did not come from the TPM that holds the SRK (or was
    /// changed on the way), so nothing in it is used.
    #[error("{command}: the response HMAC does not verify: the answer did not come from the TPM")]
    BadResponseHmac {
        /// The command whose response was refused, e.g. `TPM2_Unseal`.
        command: &'static str,
    },
}

fn no_policy_text(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "the key is sealed under a policy key and no signed policy was found (make one with `statelessctl tpm sign-policy`, see docs/keys.md)".into()
    } else {
        format!("no signed policy lets the key unseal: {}", reasons.join("; "))
    }
}

fn list(pcrs: &[u8]) -> String {
    pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

fn command_name(cc: u32) -> &'static str {
    match cc {
        CC_CREATE_PRIMARY => "TPM2_CreatePrimary",
        CC_CREATE => "TPM2_Create",
        CC_LOAD => "TPM2_Load",
        CC_UNSEAL => "TPM2_Unseal",
        CC_FLUSH_CONTEXT => "TPM2_FlushContext",
        CC_GET_RANDOM => "TPM2_GetRandom",
        CC_START_AUTH_SESSION => "TPM2_StartAuthSession",
        CC_PCR_READ => "TPM2_PCR_Read",
        CC_POLICY_PCR => "TPM2_PolicyPCR",
        CC_PCR_EXTEND => "TPM2_PCR_Extend",
        CC_LOAD_EXTERNAL => "TPM2_LoadExternal",
        CC_VERIFY_SIGNATURE => "TPM2_VerifySignature",
        CC_POLICY_AUTHORIZE => "TPM2_PolicyAuthorize",
        CC_POLICY_AUTH_VALUE => "TPM2_PolicyAuthValue",
        lock::CC_PCR_EVENT => "TPM2_PCR_Event",
        _ => "TPM command",
    }
}

/// An open TPM.
pub struct Tpm {
    transport: Transport,
    selector: TpmSelector,
    /// The PIN for sealing with one and for unsealing keys sealed with one
    /// ([`Tpm::set_pin`]).
    pin: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tpm({})", self.selector)
    }
}

/// A successful response: handles and the parameter bytes (zeroized on
/// drop, as they may be a key).
struct Reply {
    handles: Vec<u32>,
    params: Zeroizing<Vec<u8>>,
    auth: Vec<u8>,
}

impl Tpm {
    /// Opens the TPM `selector` names.
    pub fn open(selector: &TpmSelector) -> Result<Tpm, TpmError> {
        let transport =
            Transport::open(selector).map_err(|err| TpmError::Io { selector: selector.to_string(), err })?;
        Ok(Tpm { transport, selector: selector.clone(), pin: None })
    }

    /// Sets the PIN (or none): keys sealed from now on need it (their policy
    /// ends in TPM2_PolicyAuthValue and it is their auth value), and keys
    /// sealed with one unseal with it. At most [`MAX_PIN_LEN`] bytes.
    pub fn set_pin(&mut self, pin: Option<&[u8]>) -> Result<(), TpmError> {
        self.pin = match pin {
            None => None,
            Some(p) if p.is_empty() || p.len() > MAX_PIN_LEN => return Err(TpmError::BadPin),
            Some(p) => Some(Zeroizing::new(p.to_vec())),
        };
        Ok(())
    }

    /// Sends `cmd`, retrying on the TPM's "try again" warnings.
    fn run(&mut self, cmd: &mut Command, handles: usize) -> Result<Reply, TpmError> {
        let name = command_name(cmd.code());
        let mut tries = 0;
        loop {
            let bytes = Zeroizing::new(
                self.transport
                    .transact(cmd.finish())
                    .map_err(|err| TpmError::Io { selector: self.selector.to_string(), err })?,
            );
            match parse_response(&bytes, handles).map_err(|_| TpmError::Malformed(name))? {
                Parsed::Ok(r) => {
                    return Ok(Reply {
                        handles: r.handles,
                        params: Zeroizing::new(r.params.rest().to_vec()),
                        auth: r.auth.rest().to_vec(),
                    });
                }
                Parsed::Rc(rc) if is_retry(rc) && tries < RETRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20 << tries));
                }
                Parsed::Rc(rc) => return Err(TpmError::Rc { command: name, rc }),
            }
        }
    }

    fn handle(reply: &Reply, name: &'static str) -> Result<u32, TpmError> {
        reply.handles.first().copied().ok_or(TpmError::Malformed(name))
    }

    /// Reads PCR values of one bank, in ascending PCR order.
    pub fn pcr_read(&mut self, bank: Bank, pcrs: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, TpmError> {
        let mut want: Vec<u8> = pcrs.to_vec();
        want.sort_unstable();
        want.dedup();
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        // A TPM returns at most 8 digests per call; 24 PCRs take 3 rounds.
        for _ in 0..4 {
            let missing: Vec<u8> = want.iter().copied().filter(|p| !out.iter().any(|(q, _)| q == p)).collect();
            let Some(first) = missing.first() else { break };
            let mut cmd = Command::new(CC_PCR_READ, &[], &[]);
            cmd.bytes(&pcr_selection(bank, &missing));
            let reply = self.run(&mut cmd, 0)?;
            let got = parse_pcr_read(&reply.params, bank).ok_or(TpmError::Malformed("TPM2_PCR_Read"))?;
            if got.is_empty() {
                return Err(TpmError::NoSuchPcr(*first));
            }
            for (p, v) in got {
                if missing.contains(&p) {
                    out.push((p, v));
                }
            }
        }
        out.sort_by_key(|(p, _)| *p);
        if let Some(p) = want.iter().find(|p| !out.iter().any(|(q, _)| q == *p)) {
            return Err(TpmError::NoSuchPcr(*p));
        }
        Ok(out)
    }

    /// Extends PCR `pcr` of `bank` with `digest` (tests use it to change a
    /// PCR the way a different boot chain would).
    pub fn pcr_extend(&mut self, pcr: u8, bank: Bank, digest: &[u8]) -> Result<(), TpmError> {
        let mut cmd = Command::new(CC_PCR_EXTEND, &[u32::from(pcr)], &[Auth::EmptyPassword]);
        cmd.u32(1).u16(bank.alg()).bytes(digest);
        self.run(&mut cmd, 0).map(|_| ())
    }

    /// Makes the SRK (the same key every time on the same TPM) and returns
    /// its transient handle, name and public point.
    fn create_srk(&mut self) -> Result<Srk, TpmError> {
        let mut cmd = Command::new(CC_CREATE_PRIMARY, &[RH_OWNER], &[Auth::EmptyPassword]);
        cmd.u16(4).u16(0).u16(0); // inSensitive: no auth value, no data
        cmd.tpm2b(&srk_template());
        cmd.u16(0); // outsideInfo
        cmd.u32(0); // creationPCR: none
        let reply = self.run(&mut cmd, 1)?;
        let handle = Self::handle(&reply, "TPM2_CreatePrimary")?;
        match parse_srk_public(&reply.params) {
            Some((name, x, y)) => Ok(Srk { handle, name, x, y }),
            None => {
                self.flush(handle);
                Err(TpmError::Malformed("TPM2_CreatePrimary"))
            }
        }
    }

    /// Flushes a transient object or session; failures only logged (the
    /// resource manager flushes what is left when the device is closed).
    fn flush(&mut self, handle: u32) {
        let mut cmd = Command::new(CC_FLUSH_CONTEXT, &[], &[]);
        cmd.u32(handle);
        if let Err(e) = self.run(&mut cmd, 0) {
            log::debug!("flushing TPM handle {handle:#x}: {e}");
        }
    }

    /// Seals `key` to the current values of `pcrs` in `bank`.
    pub fn seal(&mut self, key: &Key, bank: Bank, pcrs: &[u8]) -> Result<SealedKey, TpmError> {
        let values = self.pcr_read(bank, pcrs)?;
        let policy = policy_pcr_digest(bank, &values);
        self.seal_to(key, bank, values, None, policy)
    }

    /// Seals `key` to the given `values` of PCRs of `bank` (ascending, as
    /// [`Tpm::pcr_read`] returns them), which need not be the current ones:
    /// the value [`lock::LOCK_PCR`] holds before the loader's extend.
    pub fn seal_values(
        &mut self,
        key: &Key,
        bank: Bank,
        mut values: Vec<(u8, Vec<u8>)>,
    ) -> Result<SealedKey, TpmError> {
        values.sort_by_key(|(i, _)| *i);
        values.dedup_by_key(|(i, _)| *i);
        let policy = policy_pcr_digest(bank, &values);
        self.seal_to(key, bank, values, None, policy)
    }

    /// The name of this TPM's SRK (the `parent-name` of keys it sealed).
    pub fn srk_name(&mut self) -> Result<Vec<u8>, TpmError> {
        let srk = self.create_srk()?;
        self.flush(srk.handle);
        Ok(srk.name)
    }

    /// Seals `key` under TPM2_PolicyAuthorize with `policy_key`: it unseals
    /// while the PCRs match any PCR policy the holder of its private half
    /// signed ([`SignedPolicy`]).
    pub fn seal_authorized(&mut self, key: &Key, policy_key: &PolicyPublicKey) -> Result<SealedKey, TpmError> {
        let policy = policy_authorize_digest(&policy_key.name());
        self.seal_to(key, Bank::Sha256, Vec::new(), Some(policy_key.clone()), policy)
    }

    fn seal_to(
        &mut self,
        key: &Key,
        bank: Bank,
        values: Vec<(u8, Vec<u8>)>,
        policy_key: Option<PolicyPublicKey>,
        policy: [u8; 32],
    ) -> Result<SealedKey, TpmError> {
        // With a PIN the policy also asks for the object's auth value.
        let policy = if self.pin.is_some() { crate::sealed::policy_auth_value_digest(&policy) } else { policy };
        let srk = self.create_srk()?;
        let mut handles = vec![srk.handle];
        let result = self.create_sealed(&srk, key, &policy, &mut handles).map(|(public, private)| SealedKey {
            key_id: key.id(),
            parent_name: srk.name.clone(),
            bank,
            pcrs: values,
            policy_key,
            policy,
            public,
            private,
        });
        for h in handles.into_iter().rev() {
            self.flush(h);
        }
        result
    }

    /// TPM2_Create of the sealed object under the SRK, in an HMAC session
    /// salted with the SRK whose `decrypt` attribute makes the key travel
    /// to the TPM encrypted. Returns the TPM2B_PUBLIC and TPM2B_PRIVATE.
    fn create_sealed(
        &mut self,
        srk: &Srk,
        key: &Key,
        policy: &[u8; 32],
        handles: &mut Vec<u32>,
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let (session, session_key, nonce_tpm) = self.salted_session(srk, SE_HMAC, handles)?;
        // inSensitive: TPMS_SENSITIVE_CREATE { userAuth: the PIN or empty, data: key },
        // its contents encrypted (the size stays clear) under
        // KDFa(sessionKey, "CFB", nonceCaller, nonceTPM) — the SRK's auth
        // value, which would follow the session key, is empty.
        let nonce = self.nonce()?;
        let mut sensitive = Zeroizing::new(Vec::with_capacity(4 + MAX_PIN_LEN + KEY_LEN));
        let pin: &[u8] = self.pin.as_ref().map_or(&[], |p| p.as_slice());
        sensitive.extend_from_slice(&u16::try_from(pin.len()).unwrap_or(0).to_be_bytes());
        sensitive.extend_from_slice(pin);
        sensitive.extend_from_slice(&u16::try_from(KEY_LEN).unwrap_or(0).to_be_bytes());
        sensitive.extend_from_slice(key.as_bytes());
        let key_iv = salt::kdfa(&session_key, "CFB", &nonce, &nonce_tpm, 256);
        let (k, iv) = key_iv.split_at(16);
        salt::cfb_encrypt(k, iv, &mut sensitive).map_err(TpmError::Salt)?;
        let mut params = Vec::with_capacity(128);
        params.extend_from_slice(&u16::try_from(sensitive.len()).unwrap_or(0).to_be_bytes());
        params.extend_from_slice(&sensitive);
        let template = sealed_template(policy);
        params.extend_from_slice(&u16::try_from(template.len()).unwrap_or(0).to_be_bytes());
        params.extend_from_slice(&template);
        params.extend_from_slice(&0u16.to_be_bytes()); // outsideInfo
        params.extend_from_slice(&0u32.to_be_bytes()); // creationPCR: none
        let cp_hash: [u8; 32] = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(CC_CREATE.to_be_bytes());
            h.update(&srk.name);
            h.update(&params);
            h.finalize().into()
        };
        let attrs = wire::ATTR_DECRYPT;
        let hmac = salt::hmac(&session_key, &[&cp_hash, &nonce, &nonce_tpm, &[attrs]]).map_err(TpmError::Salt)?;
        let mut cmd = Command::new(
            CC_CREATE,
            &[srk.handle],
            &[Auth::Session { handle: session, nonce, attrs, hmac: Some(hmac) }],
        );
        cmd.bytes(&params);
        let reply = self.run(&mut cmd, 0)?;
        handles.retain(|h| *h != session);
        check_response_hmac(&session_key, CC_CREATE, &reply, &nonce)?;
        let mut r = wire::Reader::new(&reply.params);
        let private = r.tpm2b_whole().map_err(|_| TpmError::Malformed("TPM2_Create"))?;
        let public = r.tpm2b_whole().map_err(|_| TpmError::Malformed("TPM2_Create"))?;
        Ok((public, private))
    }

    /// Starts a session of `kind` salted with the SRK; returns its handle
    /// (also pushed on `handles`), the session key and the TPM's nonce.
    fn salted_session(&mut self, srk: &Srk, kind: u8, handles: &mut Vec<u32>) -> Result<Session, TpmError> {
        let mut bytes = Zeroizing::new([0u8; 64]);
        self.random(bytes.as_mut_slice())?;
        let mut pool = bytes.chunks(32);
        let mut take = |out: &mut [u8]| -> Result<(), String> {
            // Two tries are plenty: a draw is out of range with odds 2^-32.
            let chunk = pool.next().ok_or("no random bytes left")?;
            out.copy_from_slice(chunk.get(..out.len()).ok_or("short random bytes")?);
            Ok(())
        };
        let salt = salt::make_salt(&srk.x, &srk.y, &mut take).map_err(TpmError::Salt)?;
        let nonce_caller = self.nonce()?;
        let mut cmd = Command::new(CC_START_AUTH_SESSION, &[srk.handle, RH_NULL], &[]);
        cmd.tpm2b(&nonce_caller).tpm2b(&salt.encrypted).u8(kind);
        cmd.u16(ALG_AES).u16(128).u16(ALG_CFB).u16(ALG_SHA256);
        let reply = self.run(&mut cmd, 1)?;
        let session = Self::handle(&reply, "TPM2_StartAuthSession")?;
        handles.push(session);
        let nonce_tpm = wire::Reader::new(&reply.params)
            .tpm2b()
            .map_err(|_| TpmError::Malformed("TPM2_StartAuthSession"))?
            .to_vec();
        // No bind entity: the session key comes from the salt alone.
        let session_key = salt::kdfa(&salt.salt, "ATH", &nonce_tpm, &nonce_caller, 256);
        Ok((session, session_key, nonce_tpm))
    }

    /// The PCRs of `sealed` whose current value differs from the sealed one.
    pub fn changed_pcrs(&mut self, sealed: &SealedKey) -> Result<Vec<u8>, TpmError> {
        let now = self.pcr_read(sealed.bank, &sealed.pcr_indices())?;
        Ok(sealed.pcrs.iter().zip(&now).filter(|((_, want), (_, have))| want != have).map(|((p, _), _)| *p).collect())
    }

    /// Unseals `sealed`. Fails closed, naming the PCRs that changed, when
    /// the PCRs no longer hold the sealed values. A key sealed under a
    /// policy key needs [`Tpm::unseal_with`].
    pub fn unseal(&mut self, sealed: &SealedKey) -> Result<Key, TpmError> {
        self.unseal_with(sealed, &[])
    }

    /// Unseals `sealed`; a key sealed under a policy key is tried with each
    /// of `policies` (a label for the error, the policy) in turn until one
    /// lets it unseal. When none does, the error names each policy and why:
    /// signed by another key, a signature that does not verify, the PCRs
    /// that differ, or what the TPM said.
    pub fn unseal_with(&mut self, sealed: &SealedKey, policies: &[(String, SignedPolicy)]) -> Result<Key, TpmError> {
        self.unseal_with_policy(sealed, policies).map(|(key, _)| key)
    }

    /// [`Tpm::unseal_with`], also returning which of `policies` let the key
    /// unseal (`None` for a key sealed to PCR values).
    pub fn unseal_with_policy(
        &mut self,
        sealed: &SealedKey,
        policies: &[(String, SignedPolicy)],
    ) -> Result<(Key, Option<usize>), TpmError> {
        if sealed.needs_pin() && self.pin.is_none() {
            return Err(TpmError::PinNeeded);
        }
        let Some(policy_key) = &sealed.policy_key else {
            // The TPM enforces the policy; reading the PCRs first only lets
            // the refusal name what changed.
            let now = self.pcr_read(sealed.bank, &sealed.pcr_indices())?;
            let changed: Vec<u8> = sealed
                .pcrs
                .iter()
                .zip(&now)
                .filter(|((_, want), (_, have))| want != have)
                .map(|((p, _), _)| *p)
                .collect();
            if changed == [lock::LOCK_PCR] && lock::closed_since(sealed.bank, &sealed.pcrs, &now) {
                return Err(TpmError::Locked { bank: sealed.bank.name() });
            }
            if !changed.is_empty() {
                return Err(TpmError::PcrMismatch { pcrs: changed, bank: sealed.bank.name() });
            }
            return self.unseal_once(sealed, None).map(|key| (key, None));
        };
        let name = policy_key.name();
        let mut reasons = Vec::new();
        for (index, (label, p)) in policies.iter().enumerate() {
            // Checked here only to name the reason: the TPM checks the
            // signature (TPM2_VerifySignature) and the PCRs itself.
            if p.key_name != name {
                reasons.push(format!("{label}: signed by another policy key"));
                continue;
            }
            if !policy_key.verifies(&p.policy, &p.signature) {
                reasons.push(format!("{label}: the signature does not verify (file edited or corrupt)"));
                continue;
            }
            let now = match self.pcr_read(p.bank, &p.pcr_indices()) {
                Ok(now) => now,
                // A policy for a bank this TPM does not keep does not stop
                // the others from being tried.
                Err(TpmError::NoSuchPcr(i)) => {
                    reasons.push(format!("{label}: the TPM has no PCR {i} in the {} bank", p.bank.name()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let changed: Vec<u8> =
                p.pcrs.iter().zip(&now).filter(|((_, want), (_, have))| want != have).map(|((i, _), _)| *i).collect();
            if changed == [lock::LOCK_PCR] && lock::closed_since(p.bank, &p.pcrs, &now) {
                reasons.push(format!(
                    "{label}: PCR {} ({}) has moved since this boot's loader unsealed the key",
                    lock::LOCK_PCR,
                    p.bank.name()
                ));
                continue;
            }
            if !changed.is_empty() {
                reasons.push(format!("{label}: PCR {} ({}) differs", list(&changed), p.bank.name()));
                continue;
            }
            match self.unseal_once(sealed, Some((policy_key, p))) {
                Ok(key) => return Ok((key, Some(index))),
                // The TPM refused this policy (a PCR moved in between, or a
                // TPM that disagrees with our check): try the next one.
                Err(e @ TpmError::Rc { .. }) => reasons.push(format!("{label}: {e}")),
                Err(e) => return Err(e),
            }
        }
        Err(TpmError::NoSignedPolicy { reasons })
    }

    fn unseal_once(
        &mut self,
        sealed: &SealedKey,
        authorized: Option<(&PolicyPublicKey, &SignedPolicy)>,
    ) -> Result<Key, TpmError> {
        let srk = self.create_srk()?;
        let mut handles = vec![srk.handle];
        let result = self.unseal_under(&srk, sealed, authorized, &mut handles);
        for h in handles.into_iter().rev() {
            self.flush(h);
        }
        result
    }

    /// TPM2_LoadExternal of the policy key's public half (owner hierarchy:
    /// a key in the null hierarchy gets only null tickets) and
    /// TPM2_VerifySignature of the policy's signature: the ticket
    /// TPM2_PolicyAuthorize takes.
    fn verify_policy(
        &mut self,
        key: &PolicyPublicKey,
        policy: &SignedPolicy,
        handles: &mut Vec<u32>,
    ) -> Result<Vec<u8>, TpmError> {
        let mut cmd = Command::new(CC_LOAD_EXTERNAL, &[], &[]);
        cmd.u16(0).tpm2b(&key.public_area()).u32(RH_OWNER);
        let reply = self.run(&mut cmd, 1)?;
        let handle = Self::handle(&reply, "TPM2_LoadExternal")?;
        handles.push(handle);
        let name =
            wire::Reader::new(&reply.params).tpm2b().map_err(|_| TpmError::Malformed("TPM2_LoadExternal"))?.to_vec();
        if name != key.name() {
            return Err(TpmError::PolicyKeyName);
        }
        let mut cmd = Command::new(CC_VERIFY_SIGNATURE, &[handle], &[]);
        cmd.tpm2b(&authorize_hash(&policy.policy)).bytes(&policy.signature);
        let reply = self.run(&mut cmd, 0)?;
        // TPMT_TK_VERIFIED: tag, hierarchy, digest; passed back as it came.
        let mut r = wire::Reader::new(&reply.params);
        let malformed = |_| TpmError::Malformed("TPM2_VerifySignature");
        r.u16().map_err(malformed)?;
        r.u32().map_err(malformed)?;
        r.tpm2b().map_err(malformed)?;
        let used = reply.params.len() - r.rest().len();
        Ok(reply.params.get(..used).ok_or(TpmError::Malformed("TPM2_VerifySignature"))?.to_vec())
    }

    fn unseal_under(
        &mut self,
        srk: &Srk,
        sealed: &SealedKey,
        authorized: Option<(&PolicyPublicKey, &SignedPolicy)>,
        handles: &mut Vec<u32>,
    ) -> Result<Key, TpmError> {
        // The salt goes to the SRK: make sure it is the key sealed under.
        if srk.name != sealed.parent_name {
            return Err(TpmError::SrkMismatch);
        }
        let mut cmd = Command::new(CC_LOAD, &[srk.handle], &[Auth::EmptyPassword]);
        cmd.bytes(&sealed.private).bytes(&sealed.public);
        let (object, object_name) = match self.run(&mut cmd, 1) {
            Ok(reply) => {
                let name =
                    wire::Reader::new(&reply.params).tpm2b().map_err(|_| TpmError::Malformed("TPM2_Load"))?.to_vec();
                (Self::handle(&reply, "TPM2_Load")?, name)
            }
            // Integrity and value errors: another TPM's object, or edited.
            Err(TpmError::Rc { rc, .. }) => return Err(TpmError::WrongObject { rc }),
            Err(e) => return Err(e),
        };
        handles.push(object);
        let ticket = match authorized {
            Some((key, policy)) => Some(self.verify_policy(key, policy, handles)?),
            None => None,
        };

        let (session, session_key, nonce_tpm) = self.salted_session(srk, SE_POLICY, handles)?;

        let (bank, pcrs) = match authorized {
            Some((_, policy)) => (policy.bank, &policy.pcrs),
            None => (sealed.bank, &sealed.pcrs),
        };
        let indices: Vec<u8> = pcrs.iter().map(|(i, _)| *i).collect();
        let mut cmd = Command::new(CC_POLICY_PCR, &[session], &[]);
        cmd.tpm2b(&pcr_digest(pcrs)).bytes(&pcr_selection(bank, &indices));
        self.run(&mut cmd, 0)?;
        if let (Some((key, policy)), Some(ticket)) = (authorized, ticket) {
            // The session's digest is now the signed PolicyPCR digest;
            // PolicyAuthorize replaces it with the object's authPolicy when
            // the ticket proves that digest was signed by the key.
            let mut cmd = Command::new(CC_POLICY_AUTHORIZE, &[session], &[]);
            cmd.tpm2b(&policy.policy).tpm2b(policy::POLICY_REF).tpm2b(&key.name()).bytes(&ticket);
            self.run(&mut cmd, 0)?;
        }
        // A PIN: the policy asks for the auth value, which then joins the
        // session key in the HMACs (and proves the PIN without sending it).
        let mut hmac_key = Zeroizing::new(session_key.to_vec());
        if sealed.needs_pin() {
            let pin = self.pin.clone().ok_or(TpmError::PinNeeded)?;
            let mut cmd = Command::new(CC_POLICY_AUTH_VALUE, &[session], &[]);
            self.run(&mut cmd, 0)?;
            hmac_key.extend_from_slice(&pin);
        }

        // A session with a session key needs the command HMAC:
        // HMAC(sessionKey, cpHash || nonceCaller || nonceTPM || attributes),
        // cpHash = SHA-256(commandCode || name of the object), Unseal having
        // no parameters.
        let nonce = self.nonce()?;
        let cp_hash: [u8; 32] = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(CC_UNSEAL.to_be_bytes());
            h.update(&object_name);
            h.finalize().into()
        };
        let attrs = wire::ATTR_ENCRYPT;
        let hmac = salt::hmac(&hmac_key, &[&cp_hash, &nonce, &nonce_tpm, &[attrs]]).map_err(TpmError::Salt)?;
        let auth = Auth::Session { handle: session, nonce, attrs, hmac: Some(hmac) };
        let mut cmd = Command::new(CC_UNSEAL, &[object], &[auth]);
        let reply = match self.run(&mut cmd, 0) {
            // TPM_RC_AUTH_FAIL for session 1: the HMAC with the PIN did
            // not match the object's auth value.
            // A failed command leaves the session loaded: it stays in
            // `handles`, to be flushed.
            Err(TpmError::Rc { rc, .. }) if sealed.needs_pin() && rc & 0xBF == 0x8E => {
                return Err(TpmError::WrongPin);
            }
            other => other?,
        };
        // The session ended with the command (continueSession clear).
        handles.retain(|h| *h != session);
        let malformed = || TpmError::Malformed("TPM2_Unseal");
        let mut data = Zeroizing::new(wire::Reader::new(&reply.params).tpm2b().map_err(|_| malformed())?.to_vec());
        let nonce_tpm = check_response_hmac(&hmac_key, CC_UNSEAL, &reply, &nonce)?;
        // outData is AES-128-CFB encrypted under the session key (and the
        // auth value, with a PIN) with the response's nonces (TPM nonce
        // newer, caller nonce older).
        let key_iv = salt::kdfa(&hmac_key, "CFB", &nonce_tpm, &nonce, 256);
        let (k, iv) = key_iv.split_at(16);
        salt::cfb_decrypt(k, iv, &mut data).map_err(TpmError::Salt)?;
        let mut bytes: [u8; KEY_LEN] =
            data.as_slice().try_into().map_err(|_| TpmError::WrongKey { claimed: sealed.key_id.to_string() })?;
        let key = Key::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        if key.id() != sealed.key_id {
            return Err(TpmError::WrongKey { claimed: sealed.key_id.to_string() });
        }
        Ok(key)
    }

    /// `n` (at most 32) random bytes from the TPM's RNG.
    pub fn get_random(&mut self, n: u16) -> Result<Vec<u8>, TpmError> {
        let mut cmd = Command::new(CC_GET_RANDOM, &[], &[]);
        cmd.u16(n.min(32));
        let reply = self.run(&mut cmd, 0)?;
        let bytes = wire::Reader::new(&reply.params).tpm2b().map_err(|_| TpmError::Malformed("TPM2_GetRandom"))?;
        Ok(bytes.to_vec())
    }

    /// A fresh 16-byte caller nonce.
    fn nonce(&mut self) -> Result<[u8; 16], TpmError> {
        let mut nonce = [0u8; 16];
        self.random(&mut nonce)?;
        Ok(nonce)
    }

    /// Random bytes that never make the boot wait. The kernel's random
    /// source when it is ready; otherwise (early boot in a virtual machine
    /// without a hardware RNG, where `getrandom` blocks for a minute or
    /// more) SHA-256 over the TPM's own random bytes, the kernel's
    /// not-yet-initialised pool and the clock, so that neither someone who
    /// reads the TPM's answer on the bus nor a weak early pool alone gives
    /// the bytes away.
    fn random(&mut self, out: &mut [u8]) -> Result<(), TpmError> {
        use rustix::rand::{GetRandomFlags, getrandom};
        if matches!(getrandom(&mut *out, GetRandomFlags::NONBLOCK), Ok(n) if n == out.len()) {
            return Ok(());
        }
        log::debug!("the kernel's random source is not ready; mixing in the TPM's");
        let tpm = self.get_random(32)?;
        let mut early = Zeroizing::new([0u8; 32]);
        let _ = getrandom(early.as_mut_slice(), GetRandomFlags::INSECURE);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        for (i, chunk) in out.chunks_mut(32).enumerate() {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update((i as u64).to_be_bytes());
            h.update(&tpm);
            h.update(early.as_slice());
            h.update(now.to_be_bytes());
            h.update(std::process::id().to_be_bytes());
            let block = h.finalize();
            for (o, b) in chunk.iter_mut().zip(block.iter()) {
                *o = *b;
            }
        }
        Ok(())
    }
}

/// [`check_response_auth`] of a reply.
fn check_response_hmac(session_key: &[u8], cc: u32, reply: &Reply, nonce: &[u8]) -> Result<Vec<u8>, TpmError> {
    check_response_auth(session_key, cc, &reply.params, &reply.auth, nonce)
}

/// Checks the response HMAC of a command sent in a salted session: it
/// proves the answer comes from the TPM that holds the SRK (only it knows
/// the salt). HMAC(sessionKey, rpHash || nonceTPM || nonceCaller ||
/// attributes), rpHash = SHA-256(rc || commandCode || parameters), over
/// the response's parameter area `params` and its one-session
/// authorization area `auth`. Returns the TPM's new nonce. The bytes are
/// untrusted and fuzzed (`keys_tpm_hmac` in `fuzz/`).
pub fn check_response_auth(
    session_key: &[u8],
    cc: u32,
    params: &[u8],
    auth: &[u8],
    nonce: &[u8],
) -> Result<Vec<u8>, TpmError> {
    use sha2::{Digest, Sha256};
    let malformed = || TpmError::Malformed(command_name(cc));
    let mut auth = wire::Reader::new(auth);
    let nonce_tpm = auth.tpm2b().map_err(|_| malformed())?;
    let attrs = auth.take(1).map_err(|_| malformed())?;
    let their_hmac = auth.tpm2b().map_err(|_| malformed())?;
    let mut h = Sha256::new();
    h.update(0u32.to_be_bytes());
    h.update(cc.to_be_bytes());
    h.update(params);
    let rp_hash: [u8; 32] = h.finalize().into();
    let want = salt::hmac(session_key, &[&rp_hash, nonce_tpm, nonce, attrs]).map_err(TpmError::Salt)?;
    // No early exit: the time taken must not say how many leading bytes matched.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(want.as_slice(), their_hmac)) {
        return Err(TpmError::BadResponseHmac { command: command_name(cc) });
    }
    Ok(nonce_tpm.to_vec())
}

/// A started session: handle, session key, the TPM's nonce.
type Session = (u32, Zeroizing<Vec<u8>>, Vec<u8>);

/// The SRK as created: handle, name, public point.
struct Srk {
    handle: u32,
    name: Vec<u8>,
    x: Vec<u8>,
    y: Vec<u8>,
}

/// From a TPM2_CreatePrimary response's parameters, the SRK's name
/// (`000b` and the SHA-256 of its TPMT_PUBLIC) and its ECC point, checking
/// that the public area is the ECC key of our template.
/// The bytes come from the TPM (or whatever answers in its place):
/// untrusted, and fuzzed (`keys_tpm_srk_public` in `fuzz/`).
pub fn parse_srk_public(params: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    use sha2::{Digest, Sha256};
    let public = wire::Reader::new(params).tpm2b().ok()?;
    let mut r = wire::Reader::new(public);
    let template = srk_template();
    // Everything before the unique field must be the template's.
    let fixed = template.len().checked_sub(4)?;
    if r.take(fixed).ok()? != template.get(..fixed)? {
        return None;
    }
    let x = r.tpm2b().ok()?.to_vec();
    let y = r.tpm2b().ok()?.to_vec();
    if !r.rest().is_empty() {
        return None;
    }
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(public));
    Some((name, x, y))
}

/// Parses the parameters of a TPM2_PCR_Read response: which PCRs of `bank`
/// came back and their values, in the order of the selection. The bytes come
/// from the TPM (or whatever answers on its device or socket): untrusted,
/// and fuzzed (`keys_tpm_pcr_read` in `fuzz/`). `None` when they do not
/// parse, when the digest count differs from the PCRs selected, or when a
/// digest is not the bank's length.
pub fn parse_pcr_read(params: &[u8], bank: Bank) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut r = wire::Reader::new(params);
    r.u32().ok()?; // pcrUpdateCounter
    let count = r.u32().ok()?;
    let mut returned = Vec::new();
    for _ in 0..count.min(16) {
        let alg = r.u16().ok()?;
        let n = r.take(1).ok()?.first().copied()?;
        let bits = r.take(usize::from(n)).ok()?;
        if alg != bank.alg() {
            continue;
        }
        for (byte, b) in bits.iter().enumerate() {
            for bit in 0..8u8 {
                if b & (1 << bit) != 0 {
                    returned.push(u8::try_from(byte * 8).ok()? + bit);
                }
            }
        }
    }
    let n = r.u32().ok()?;
    if usize::try_from(n).ok()? != returned.len() {
        return None;
    }
    let mut out = Vec::new();
    for p in returned {
        let v = r.tpm2b().ok()?;
        if v.len() != bank.digest_len() {
            return None;
        }
        out.push((p, v.to_vec()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_read_parse() {
        let mut p = vec![0, 0, 0, 5, 0, 0, 0, 1, 0, 0x0B, 3, 0x81, 0, 0, 0, 0, 0, 2];
        p.extend_from_slice(&[0, 32]);
        p.extend_from_slice(&[0xAA; 32]);
        p.extend_from_slice(&[0, 32]);
        p.extend_from_slice(&[0x77; 32]);
        let got = parse_pcr_read(&p, Bank::Sha256).unwrap();
        assert_eq!(got, vec![(0, vec![0xAA; 32]), (7, vec![0x77; 32])]);
        for cut in 0..p.len() {
            assert!(parse_pcr_read(&p[..cut], Bank::Sha256).is_none());
        }
    }

    /// A TPM2_Unseal reply in a salted session, with the response HMAC the
    /// TPM would compute under `session_key`.
    fn unseal_reply(session_key: &[u8], nonce_caller: &[u8]) -> Reply {
        use sha2::{Digest, Sha256};
        let params = vec![0, 4, 1, 2, 3, 4];
        let nonce_tpm = [0x5a; 16];
        let attrs = [wire::ATTR_ENCRYPT];
        let mut h = Sha256::new();
        h.update(0u32.to_be_bytes());
        h.update(CC_UNSEAL.to_be_bytes());
        h.update(&params);
        let rp_hash: [u8; 32] = h.finalize().into();
        let hmac = salt::hmac(session_key, &[&rp_hash, &nonce_tpm, nonce_caller, &attrs]).unwrap();
        let mut auth = vec![0, 16];
        auth.extend_from_slice(&nonce_tpm);
        auth.extend_from_slice(&attrs);
        auth.extend_from_slice(&[0, 32]);
        auth.extend_from_slice(&hmac);
        Reply { handles: vec![], params: Zeroizing::new(params), auth }
    }

    #[test]
    fn response_hmac_refuses_any_flipped_byte() {
        let (key, nonce) = ([7u8; 32], [9u8; 16]);
        let good = unseal_reply(&key, &nonce);
        assert_eq!(check_response_hmac(&key, CC_UNSEAL, &good, &nonce).unwrap(), vec![0x5a; 16]);
        // Every byte of the HMAC (the last 32 bytes of the auth area), every
        // byte of the parameters and of the TPM's nonce: refused.
        let hmac_at = good.auth.len() - 32;
        for i in 0..good.auth.len() {
            let mut bad = unseal_reply(&key, &nonce);
            bad.auth[i] ^= 0x01;
            let err = check_response_hmac(&key, CC_UNSEAL, &bad, &nonce);
            if i >= hmac_at || (2..18).contains(&i) || i == 18 {
                assert!(
                    matches!(err, Err(TpmError::BadResponseHmac { command: "TPM2_Unseal" })),
                    "auth byte {i}: {err:?}"
                );
            } else {
                // A length byte: the auth area no longer parses.
                assert!(err.is_err(), "auth byte {i}");
            }
        }
        for i in 0..good.params.len() {
            let mut bad = unseal_reply(&key, &nonce);
            bad.params[i] ^= 0x80;
            assert!(matches!(
                check_response_hmac(&key, CC_UNSEAL, &bad, &nonce),
                Err(TpmError::BadResponseHmac { .. })
            ));
        }
        // Another session key, another caller nonce, another command.
        assert!(check_response_hmac(&[8; 32], CC_UNSEAL, &good, &nonce).is_err());
        assert!(check_response_hmac(&key, CC_UNSEAL, &good, &[0; 16]).is_err());
        assert!(check_response_hmac(&key, CC_LOAD, &good, &nonce).is_err());
        let err = check_response_hmac(&[8; 32], CC_UNSEAL, &good, &nonce).unwrap_err().to_string();
        assert_eq!(err, "TPM2_Unseal: the response HMAC does not verify: the answer did not come from the TPM");
    }

    #[test]
    fn templates() {
        assert_eq!(srk_template().len(), 26);
        assert_eq!(sealed_template(&[0; 32]).len(), 2 + 2 + 4 + 2 + 32 + 2 + 2);
    }
}
