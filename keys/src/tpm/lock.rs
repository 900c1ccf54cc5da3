//! Closing a sealed key for the rest of the boot: after the loader has
//! unsealed its keys it extends [`LOCK_PCR`], which every policy made by
//! `statelessctl key tpm-seal` and `tpm sign-policy` covers with the value
//! the PCR holds *before* that extend. From then on until the next reboot
//! the policy no longer matches, so nobody (root on the running system,
//! someone driving the TPM bus later, the emergency shell after the loader
//! ran) can unseal the same blob again. A PCR cannot be un-extended, and
//! PCR 15 cannot be reset at locality 0 (only PCRs 16 and 23 can).
//!
//! **Why PCR 15 and not systemd's PCR 11 "leave-initrd".** PCR 11 holds the
//! unified kernel image and systemd-pcrphase's phase words, and sites sign
//! policies that predict exactly those measurements (`systemd-measure`): a
//! second "leave-initrd" from the loader would break them. PCR 15 is the
//! PCR systemd itself puts "this has happened" measurements in
//! (systemd-cryptsetup `tpm2-measure-pcr=yes` measures a volume key there
//! once the volume is open; systemd-pcrmachine the machine id, on a UKI
//! boot, in the booted system); nothing the firmware, shim, grub or
//! systemd-stub measures goes there, so
//! in the initramfs before the loader it holds zeros, a value every node
//! shares and an admin can sign without reading it. The extend is a
//! `TPM2_PCR_Event` (the TPM hashes [`LOCK_EVENT`] into every bank it keeps)
//! sent in an HMAC session salted with the SRK, and the response HMAC is
//! checked: an interposer cannot drop the extend and answer "done".

use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

use super::wire::{self, Auth, Command};
use super::{SE_HMAC, Tpm, TpmError, check_response_hmac, salt};
use crate::sealed::{Bank, SealedKey};

/// The PCR the loader extends after unsealing.
pub const LOCK_PCR: u8 = 15;
/// The event the loader measures into [`LOCK_PCR`] after unsealing.
pub const LOCK_EVENT: &[u8] = b"stateless-loader: sealed keys unsealed, closed until reboot";
/// TPM_CC_PCR_Event.
pub(super) const CC_PCR_EVENT: u32 = 0x13C;

/// The value [`LOCK_PCR`] holds before the loader's extend on a node where
/// nothing else measures into it: all zeros, the reset value.
pub fn boot_value(bank: Bank) -> Vec<u8> {
    vec![0u8; bank.digest_len()]
}

/// The value a PCR of `bank` holding `before` has after the loader's
/// extend, when this build can compute it (SHA-256 and SHA-384; `None` for
/// SHA-1, which this crate does not carry).
pub fn locked_value(bank: Bank, before: &[u8]) -> Option<Vec<u8>> {
    match bank {
        Bank::Sha256 => {
            Some(Sha256::new().chain_update(before).chain_update(Sha256::digest(LOCK_EVENT)).finalize().to_vec())
        }
        Bank::Sha384 => {
            Some(Sha384::new().chain_update(before).chain_update(Sha384::digest(LOCK_EVENT)).finalize().to_vec())
        }
        Bank::Sha1 => None,
    }
}

/// What [`LOCK_PCR`] holds now, as far as this build can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Its boot value: nothing closed it on this boot (yet).
    Open,
    /// Its boot value extended by the loader's lock: the loader ran.
    Closed,
    /// Something else: something else measures into it on this node.
    Other,
}

/// What `current`, the value [`LOCK_PCR`] holds in `bank`, says.
pub fn lock_state(bank: Bank, current: &[u8]) -> LockState {
    let boot = boot_value(bank);
    if current == boot.as_slice() {
        LockState::Open
    } else if locked_value(bank, &boot).is_some_and(|v| v == current) {
        LockState::Closed
    } else {
        LockState::Other
    }
}

/// `values` (PCR index and value, any order) with [`LOCK_PCR`] set to
/// `lock` (added when missing), sorted by index: what a policy that closes
/// after the loader's unseal covers.
pub fn with_lock(mut values: Vec<(u8, Vec<u8>)>, lock: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    values.retain(|(i, _)| *i != LOCK_PCR);
    values.push((LOCK_PCR, lock));
    values.sort_by_key(|(i, _)| *i);
    values
}

/// Whether [`LOCK_PCR`] in `now` (PCR values as read) holds what the
/// loader's lock makes of its value in `sealed` (PCR values of a policy):
/// then the key was closed on this boot, rather than sealed to a value
/// something else moved. SHA-1 cannot be computed here: assumed.
pub fn closed_since(bank: Bank, sealed: &[(u8, Vec<u8>)], now: &[(u8, Vec<u8>)]) -> bool {
    let value = |values: &[(u8, Vec<u8>)]| values.iter().find(|(i, _)| *i == LOCK_PCR).map(|(_, v)| v.clone());
    match (value(sealed), value(now)) {
        (Some(before), Some(after)) => locked_value(bank, &before).is_none_or(|v| v == after),
        _ => false,
    }
}

/// Whether a key sealed to PCR values (`stateless-sealed-v1`) has
/// [`LOCK_PCR`] in its policy: only then does the extend close it.
pub fn covers_lock(sealed: &SealedKey) -> bool {
    sealed.policy_key.is_none() && sealed.pcrs.iter().any(|(i, _)| *i == LOCK_PCR)
}

impl Tpm {
    /// Extends [`LOCK_PCR`] in every bank with [`LOCK_EVENT`]
    /// (`TPM2_PCR_Event`), in an HMAC session salted with the SRK whose name
    /// must be `parent_name` (the `parent-name` of the keys just unsealed,
    /// so the salt goes to the TPM that unsealed them), and checks the
    /// response HMAC: the answer proves the TPM did it.
    pub fn lock(&mut self, parent_name: &[u8]) -> Result<(), TpmError> {
        let srk = self.create_srk()?;
        let mut handles = vec![srk.handle];
        let result =
            if srk.name == parent_name { self.lock_in_session(&srk, &mut handles) } else { Err(TpmError::SrkMismatch) };
        for h in handles.into_iter().rev() {
            self.flush(h);
        }
        result
    }

    fn lock_in_session(&mut self, srk: &super::Srk, handles: &mut Vec<u32>) -> Result<(), TpmError> {
        let (session, session_key, nonce_tpm) = self.salted_session(srk, SE_HMAC, handles)?;
        let nonce = self.nonce()?;
        let pcr = u32::from(LOCK_PCR);
        let mut params = Zeroizing::new(Vec::with_capacity(2 + LOCK_EVENT.len()));
        params.extend_from_slice(&u16::try_from(LOCK_EVENT.len()).unwrap_or(0).to_be_bytes());
        params.extend_from_slice(LOCK_EVENT);
        // cpHash = SHA-256(commandCode || name of the PCR (its handle) ||
        // parameters); the PCR's auth value is empty, so the HMAC key is the
        // session key alone.
        let cp_hash: [u8; 32] = Sha256::new()
            .chain_update(CC_PCR_EVENT.to_be_bytes())
            .chain_update(pcr.to_be_bytes())
            .chain_update(&params[..])
            .finalize()
            .into();
        let attrs = 0u8;
        let hmac = salt::hmac(&session_key, &[&cp_hash, &nonce, &nonce_tpm, &[attrs]]).map_err(TpmError::Salt)?;
        let mut cmd =
            Command::new(CC_PCR_EVENT, &[pcr], &[Auth::Session { handle: session, nonce, attrs, hmac: Some(hmac) }]);
        cmd.bytes(&params);
        let reply = self.run(&mut cmd, 0)?;
        handles.retain(|h| *h != session);
        check_response_hmac(&session_key, CC_PCR_EVENT, &reply, &nonce)?;
        // TPML_DIGEST_VALUES: at least one bank extended.
        let count = wire::Reader::new(&reply.params).u32().map_err(|_| TpmError::Malformed("TPM2_PCR_Event"))?;
        if count == 0 {
            return Err(TpmError::Malformed("TPM2_PCR_Event"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_states_and_values() {
        let boot = boot_value(Bank::Sha256);
        assert_eq!(lock_state(Bank::Sha256, &boot), LockState::Open);
        let after = locked_value(Bank::Sha256, &boot).unwrap();
        assert_ne!(after, boot);
        assert_eq!(lock_state(Bank::Sha256, &after), LockState::Closed);
        assert_eq!(lock_state(Bank::Sha256, &[0x42; 32]), LockState::Other);
        assert_eq!(locked_value(Bank::Sha384, &boot_value(Bank::Sha384)).unwrap().len(), 48);
        assert!(locked_value(Bank::Sha1, &boot_value(Bank::Sha1)).is_none());
        let sealed = vec![(7, vec![7; 32]), (15, boot.clone())];
        assert!(closed_since(Bank::Sha256, &sealed, &[(7, vec![7; 32]), (15, after.clone())]));
        assert!(!closed_since(Bank::Sha256, &sealed, &[(7, vec![7; 32]), (15, vec![0x42; 32])]));
        assert!(!closed_since(Bank::Sha256, &[(7, vec![7; 32])], &[(7, vec![7; 32])]));
        assert!(closed_since(Bank::Sha1, &[(15, vec![0; 20])], &[(15, vec![1; 20])]));
        let v = with_lock(vec![(15, vec![1; 32]), (7, vec![7; 32]), (23, vec![2; 32])], boot.clone());
        assert_eq!(v, vec![(7, vec![7; 32]), (15, boot), (23, vec![2; 32])]);
    }
}
