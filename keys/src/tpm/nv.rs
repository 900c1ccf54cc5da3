//! Rollback state in the TPM: the highest generation applied per layer
//! target, kept in TPM NV so that a node without a cache disk still
//! refuses an older bundle after a reboot (`rd.stateless.rollback=tpm`,
//! docs/keys.md "Rollback state in the TPM").
//!
//! **One monotonic NV counter per target** (`TPM_NT_COUNTER`). A counter
//! can only go up (TPM2_NV_Increment adds one), so nobody who can drive
//! the TPM after boot can lower a floor by writing it. Deleting the index
//! does not lower it either: a TPM remembers the highest value of every
//! counter it ever deleted and starts a new counter above it (TPM 2.0
//! Library Part 1 §37.2.4 "NV Counters", Part 3 TPM2_NV_Increment), even
//! across TPM2_Clear. The counter holds `generation + 1`, so a freshly
//! initialised counter (value 1 on a TPM that never deleted a counter)
//! means "generation 0 applied", which refuses nothing.
//!
//! **Who writes.** The counters are `AUTHWRITE` with an empty auth value
//! and `WRITE_STCLEAR`: the loader raises them and then write-locks every
//! counter of its range ([`Tpm::rollback_lock`]) before the boot goes on,
//! and the lock lasts until the next TPM reset (a reboot). What is left to
//! someone with root on the running node is deleting and redefining a
//! counter (with the owner's auth, empty on most machines): the new one
//! starts above the old value, so that only pushes the floor forward, a
//! denial of service (the node refuses that target's bundles until the
//! site publishes a higher generation), never a rollback. That holds as
//! long as the caller reads a floor with `define` set before it accepts a
//! bundle ([`Tpm::rollback_floor`]): a deleted counter must be made again
//! (and start high) before the check, not be read as "no floor".
//!
//! **Which index.** A layer target (`default`, `plugin:NAME`,
//! `group:NAME`, `node:ID`) is tagged by `SHA-256("stateless-rollback-v1\0"
//! || target)`, stored as the index's `authPolicy` (an unsatisfiable
//! policy: no one knows a session that ends in that digest, and the
//! counter is not `POLICYWRITE`/`POLICYREAD`, so it grants nothing) and
//! read back with TPM2_NV_ReadPublic. Its first handle is [`NV_BASE`] plus
//! the first two bytes of the tag; [`PROBES`] handles from there are
//! tried, past indices that are not this target's counter.
//!
//! Every answer from the TPM is parsed here with bounds checks and
//! refused when it is not what was asked for (fuzzed: `keys_tpm_nv` in
//! `fuzz/`). The answers are not authenticated (no salted session): an
//! active interposer on the TPM bus could claim a low count; see
//! docs/keys.md.

use sha2::{Digest, Sha256};

use super::wire::{self, Auth, Command};
use super::{ALG_SHA256, CC_NV_READ, CC_NV_READ_PUBLIC, RH_OWNER, Tpm, TpmError};

/// The first NV handle of the loader's range (the owner's range of the TCG
/// handle registry, 0x01000000-0x013FFFFF).
pub const NV_BASE: u32 = 0x0135_0000;
/// Handles in the range: [`NV_BASE`] to `NV_BASE + NV_SLOTS - 1`.
pub const NV_SLOTS: u32 = 0x1_0000;
/// How many handles after a target's first one are tried when the first is
/// another index.
pub const PROBES: u32 = 8;
/// Most increments one raise sends: a counter goes up by one per command
/// (a few milliseconds on a TPM chip, microseconds on swtpm), so a jump of
/// more generations than this is spread over several boots, each raising
/// it this far, and the console says so.
pub const MAX_STEPS: u64 = 256;

const CC_NV_DEFINE_SPACE: u32 = 0x12A;
const CC_NV_INCREMENT: u32 = 0x134;
const CC_NV_WRITE_LOCK: u32 = 0x138;
const CC_GET_CAPABILITY: u32 = 0x17A;

/// `TPMA_NV_AUTHWRITE`.
const NV_AUTHWRITE: u32 = 1 << 2;
/// `TPM_NT_COUNTER` in the type field (bits 4-7).
const NV_COUNTER: u32 = 1 << 4;
/// `TPMA_NV_WRITELOCKED`.
const NV_WRITELOCKED: u32 = 1 << 11;
/// `TPMA_NV_WRITE_STCLEAR`: TPM2_NV_WriteLock holds until the next reset.
const NV_WRITE_STCLEAR: u32 = 1 << 14;
/// `TPMA_NV_OWNERREAD`.
const NV_OWNERREAD: u32 = 1 << 17;
/// `TPMA_NV_AUTHREAD`.
const NV_AUTHREAD: u32 = 1 << 18;
/// `TPMA_NV_NO_DA`: a wrong auth value does not count towards lockout.
const NV_NO_DA: u32 = 1 << 25;
/// `TPMA_NV_WRITTEN`.
const NV_WRITTEN: u32 = 1 << 29;
/// The attributes the loader defines its counters with.
pub const COUNTER_ATTRIBUTES: u32 =
    NV_AUTHWRITE | NV_COUNTER | NV_WRITE_STCLEAR | NV_OWNERREAD | NV_AUTHREAD | NV_NO_DA;

const CAP_HANDLES: u32 = 0x1;
const CAP_TPM_PROPERTIES: u32 = 0x6;
/// `TPM_PT_NV_COUNTERS_MAX`: most counters the TPM allows (0: no limit
/// but space).
const PT_NV_COUNTERS_MAX: u32 = 0x116;
/// `TPM_PT_NV_INDEX_MAX`: largest NV index data size.
const PT_NV_INDEX_MAX: u32 = 0x117;
/// `TPM_PT_HR_NV_INDEX`: NV indices defined.
const PT_HR_NV_INDEX: u32 = 0x202;
/// `TPM_PT_NV_COUNTERS`: counters defined.
const PT_NV_COUNTERS: u32 = 0x20A;
/// `TPM_PT_NV_COUNTERS_AVAIL`: counters that can still be defined.
const PT_NV_COUNTERS_AVAIL: u32 = 0x20B;

/// `TPM_RC_NV_LOCKED`.
const RC_NV_LOCKED: u32 = 0x148;
/// `TPM_RC_NV_UNINITIALIZED`.
const RC_NV_UNINITIALIZED: u32 = 0x14A;
/// `TPM_RC_NV_SPACE`.
const RC_NV_SPACE: u32 = 0x14B;
/// `TPM_RC_NV_DEFINED`.
const RC_NV_DEFINED: u32 = 0x14C;
/// `TPM_RC_BAD_AUTH`, format one, without the session number.
const RC_BAD_AUTH: u32 = 0x0A2;
/// `TPM_RC_AUTH_FAIL`, format one, without the session number.
const RC_AUTH_FAIL: u32 = 0x08E;
/// `TPM_RC_HANDLE`, format one, without the handle number.
const RC_HANDLE: u32 = 0x08B;

/// Why the rollback state in the TPM could not be read or raised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NvError {
    /// The TPM has no room for another counter.
    #[error(
        "no room in the TPM's NV for the rollback counter of {target} (TPM_RC_NV_SPACE): its generations are not kept in the TPM (see docs/keys.md)"
    )]
    Full {
        /// The layer target.
        target: String,
    },
    /// Every handle the target may use holds another index.
    #[error(
        "NV handles {first:#010x}+{PROBES} all hold other indices: the rollback counter of {target} has no place in the TPM (see docs/keys.md)"
    )]
    Exhausted {
        /// The layer target.
        target: String,
        /// The target's first handle.
        first: u32,
    },
    /// The owner hierarchy has a password: the loader cannot define a
    /// counter for a new target.
    #[error(
        "the TPM's owner hierarchy has a password, so the rollback counter of {target} cannot be created (see docs/keys.md)"
    )]
    OwnerAuth {
        /// The layer target.
        target: String,
    },
    /// The counter is write-locked until the next TPM reset: this boot
    /// did not reset the TPM (kexec), or something locked it early.
    #[error(
        "the rollback counter of {target} ({handle:#010x}) is locked until the TPM is reset (a reboot without a TPM reset, such as kexec?)"
    )]
    Locked {
        /// The layer target.
        target: String,
        /// Its NV handle.
        handle: u32,
    },
    /// The counter cannot hold that generation (`u64::MAX`).
    #[error("generation {generation} of {target} is beyond what a TPM counter holds")]
    TooHigh {
        /// The layer target.
        target: String,
        /// The generation.
        generation: u64,
    },
    /// The TPM failed, refused, or answered something that does not parse.
    #[error("{0}")]
    Tpm(#[from] TpmError),
}

/// The public area of an NV index (`TPMS_NV_PUBLIC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    /// The handle.
    pub index: u32,
    /// `nameAlg`.
    pub name_alg: u16,
    /// `TPMA_NV`.
    pub attributes: u32,
    /// `authPolicy` (the target's tag for the loader's counters).
    pub auth_policy: Vec<u8>,
    /// `dataSize`.
    pub data_size: u16,
}

impl NvPublic {
    /// `TPMS_NV_PUBLIC` marshalled.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(12 + self.auth_policy.len());
        b.extend_from_slice(&self.index.to_be_bytes());
        b.extend_from_slice(&self.name_alg.to_be_bytes());
        b.extend_from_slice(&self.attributes.to_be_bytes());
        b.extend_from_slice(&u16::try_from(self.auth_policy.len()).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(&self.auth_policy);
        b.extend_from_slice(&self.data_size.to_be_bytes());
        b
    }

    /// The index's name: `000b` and the SHA-256 of the public area.
    pub fn name(&self) -> Vec<u8> {
        let mut n = ALG_SHA256.to_be_bytes().to_vec();
        n.extend_from_slice(&Sha256::digest(self.to_bytes()));
        n
    }

    /// Whether this is the loader's counter for the target tagged `tag`: a
    /// counter (nothing else is monotonic; an ordinary index with the
    /// right tag is someone's attempt to hold a lower number), with the
    /// tag. The WRITTEN and WRITELOCKED bits change with use; the other
    /// attribute bits must be the loader's, or the counter could be one
    /// whose auth value someone else set.
    pub fn is_counter_for(&self, tag: &[u8; 32]) -> bool {
        self.name_alg == ALG_SHA256
            && self.attributes & !(NV_WRITTEN | NV_WRITELOCKED) == COUNTER_ATTRIBUTES
            && self.data_size == 8
            && self.auth_policy == tag
    }

    /// Whether this index has the loader's counter attributes (any target).
    pub fn is_rollback_counter(&self) -> bool {
        self.name_alg == ALG_SHA256
            && self.attributes & !(NV_WRITTEN | NV_WRITELOCKED) == COUNTER_ATTRIBUTES
            && self.data_size == 8
    }

    /// Whether the index has been written (a counter: incremented once).
    pub fn written(&self) -> bool {
        self.attributes & NV_WRITTEN != 0
    }
}

/// The tag of a layer target: `SHA-256("stateless-rollback-v1\0" || target)`.
pub fn target_tag(target: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"stateless-rollback-v1\0");
    h.update(target.as_bytes());
    h.finalize().into()
}

/// The first NV handle of a target.
pub fn first_handle(target: &str) -> u32 {
    let tag = target_tag(target);
    let slot = u32::from(u16::from_be_bytes([tag[0], tag[1]]));
    NV_BASE + slot % NV_SLOTS
}

/// The handles a target may use, in probing order (they wrap round
/// inside the range).
pub fn probe_handles(target: &str) -> impl Iterator<Item = u32> {
    let first = first_handle(target) - NV_BASE;
    (0..PROBES).map(move |i| NV_BASE + (first + i) % NV_SLOTS)
}

/// Parses the parameters of a TPM2_NV_ReadPublic response: the public area
/// and the name, which must be the name of that public area and name the
/// handle asked about. `None` when anything is off. Untrusted bytes.
pub fn parse_nv_public(params: &[u8], handle: u32) -> Option<NvPublic> {
    let mut r = wire::Reader::new(params);
    let public = r.tpm2b().ok()?;
    let name = r.tpm2b().ok()?;
    if !r.rest().is_empty() {
        return None;
    }
    let mut p = wire::Reader::new(public);
    let index = p.u32().ok()?;
    let name_alg = p.u16().ok()?;
    let attributes = p.u32().ok()?;
    let auth_policy = p.tpm2b().ok()?.to_vec();
    let data_size = p.u16().ok()?;
    if !p.rest().is_empty() || index != handle {
        return None;
    }
    let out = NvPublic { index, name_alg, attributes, auth_policy, data_size };
    // The name is derived from the public area; one that is not says the
    // answer was put together by something else than a TPM.
    if name_alg == ALG_SHA256 && out.name() != name {
        return None;
    }
    Some(out)
}

/// Parses the parameters of a TPM2_NV_Read of a counter: exactly eight
/// bytes, big-endian. Untrusted bytes.
pub fn parse_counter(params: &[u8]) -> Option<u64> {
    let mut r = wire::Reader::new(params);
    let data = r.tpm2b().ok()?;
    if !r.rest().is_empty() {
        return None;
    }
    let bytes: [u8; 8] = data.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Parses the parameters of a TPM2_GetCapability response for
/// `capability` (`TPM_CAP_HANDLES` or `TPM_CAP_TPM_PROPERTIES`): moreData
/// and the list, as (handle, 0) or (property, value) pairs. At most
/// `max` entries. Untrusted bytes.
pub fn parse_capability(params: &[u8], capability: u32, max: usize) -> Option<(bool, Vec<(u32, u32)>)> {
    let mut r = wire::Reader::new(params);
    let more = match r.take(1).ok()?.first()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    if r.u32().ok()? != capability {
        return None;
    }
    let count = usize::try_from(r.u32().ok()?).ok()?;
    if count > max {
        return None;
    }
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        match capability {
            CAP_HANDLES => out.push((r.u32().ok()?, 0)),
            CAP_TPM_PROPERTIES => out.push((r.u32().ok()?, r.u32().ok()?)),
            _ => return None,
        }
    }
    if !r.rest().is_empty() {
        return None;
    }
    Some((more, out))
}

/// What the TPM says about its NV room for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NvCapacity {
    /// NV indices defined (all owners).
    pub indices: u32,
    /// Counters defined (all owners).
    pub counters: u32,
    /// Counters that can still be defined, as the TPM estimates it (0 when
    /// it does not know).
    pub counters_avail: u32,
    /// Most counters the TPM allows (0: limited by space only).
    pub counters_max: u32,
    /// Largest NV index the TPM allows, in bytes.
    pub index_max: u32,
}

/// The result of raising a target's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// It already held this generation or a higher one.
    Already(u64),
    /// Raised to the generation.
    To(u64),
    /// Raised [`MAX_STEPS`] towards it: the floor is this, lower than the
    /// generation; the next boots raise it further.
    Partly(u64),
}

/// What reading a target's floor found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// The highest generation the counter says was applied.
    pub generation: u64,
    /// The NV handle.
    pub handle: u32,
    /// The counter was defined by this call (first use of the target).
    pub defined: bool,
}

impl Tpm {
    /// Runs an NV command, naming it in errors (the shared command table
    /// in the parent module does not know the NV commands).
    fn run_nv(&mut self, name: &'static str, cmd: &mut Command, handles: usize) -> Result<super::Reply, TpmError> {
        self.run(cmd, handles).map_err(|e| match e {
            TpmError::Rc { rc, .. } => TpmError::Rc { command: name, rc },
            TpmError::Malformed(_) => TpmError::Malformed(name),
            other => other,
        })
    }

    /// The public area of the index at `handle`, `None` when there is none.
    pub fn nv_read_public(&mut self, handle: u32) -> Result<Option<NvPublic>, TpmError> {
        let mut cmd = Command::new(CC_NV_READ_PUBLIC, &[handle], &[]);
        match self.run_nv("TPM2_NV_ReadPublic", &mut cmd, 0) {
            Ok(reply) => {
                parse_nv_public(&reply.params, handle).map(Some).ok_or(TpmError::Malformed("TPM2_NV_ReadPublic"))
            }
            // TPM_RC_HANDLE blaming handle 1: no such index.
            Err(TpmError::Rc { rc, .. }) if rc & 0xFF == RC_HANDLE => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The value of the counter at `handle`; `None` when never incremented.
    fn nv_read_counter(&mut self, handle: u32) -> Result<Option<u64>, TpmError> {
        let mut cmd = Command::new(CC_NV_READ, &[handle, handle], &[Auth::EmptyPassword]);
        cmd.u16(8).u16(0);
        match self.run_nv("TPM2_NV_Read", &mut cmd, 0) {
            Ok(reply) => parse_counter(&reply.params).map(Some).ok_or(TpmError::Malformed("TPM2_NV_Read")),
            Err(TpmError::Rc { rc: RC_NV_UNINITIALIZED, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn nv_increment(&mut self, handle: u32) -> Result<(), TpmError> {
        let mut cmd = Command::new(CC_NV_INCREMENT, &[handle, handle], &[Auth::EmptyPassword]);
        self.run_nv("TPM2_NV_Increment", &mut cmd, 0).map(|_| ())
    }

    fn nv_define_counter(&mut self, handle: u32, tag: &[u8; 32]) -> Result<(), TpmError> {
        let public = NvPublic {
            index: handle,
            name_alg: ALG_SHA256,
            attributes: COUNTER_ATTRIBUTES,
            auth_policy: tag.to_vec(),
            data_size: 8,
        };
        let mut cmd = Command::new(CC_NV_DEFINE_SPACE, &[RH_OWNER], &[Auth::EmptyPassword]);
        cmd.u16(0).tpm2b(&public.to_bytes());
        self.run_nv("TPM2_NV_DefineSpace", &mut cmd, 0).map(|_| ())
    }

    /// Finds the target's counter: `Ok(Ok(handle, public))` when it exists,
    /// `Ok(Err(free))` with the first free handle on its probe path, else
    /// [`NvError::Exhausted`].
    fn find_counter(&mut self, target: &str) -> Result<Result<(u32, NvPublic), u32>, NvError> {
        let tag = target_tag(target);
        let mut free = None;
        for handle in probe_handles(target) {
            match self.nv_read_public(handle)? {
                Some(p) if p.is_counter_for(&tag) => return Ok(Ok((handle, p))),
                Some(p) => log::debug!("NV {handle:#010x}: another index ({:#010x}), not {target}'s", p.attributes),
                None => {
                    // Keep looking: a counter further on may be the
                    // target's, if this handle was free when it was made
                    // and was taken since.
                    free = free.or(Some(handle));
                }
            }
        }
        free.map(Err).ok_or_else(|| NvError::Exhausted { target: target.to_owned(), first: first_handle(target) })
    }

    /// The rollback floor of `target` in the TPM: the highest generation
    /// its counter says was applied. With `define`, a target without a
    /// counter gets one (first use), and its floor is where the TPM starts
    /// it (0 unless a counter was ever deleted on this TPM); without,
    /// `Ok(None)`.
    pub fn rollback_floor(&mut self, target: &str, define: bool) -> Result<Option<Floor>, NvError> {
        let (handle, defined) = match self.find_counter(target)? {
            Ok((handle, _)) => (handle, false),
            Err(_) if !define => return Ok(None),
            Err(free) => {
                match self.nv_define_counter(free, &target_tag(target)) {
                    Ok(()) => {}
                    Err(TpmError::Rc { rc: RC_NV_SPACE, .. }) => {
                        return Err(NvError::Full { target: target.to_owned() });
                    }
                    // A wrong owner auth (format one, blaming session 1):
                    // the site set an owner password.
                    Err(TpmError::Rc { rc, .. }) if matches!(rc & 0xBF, RC_BAD_AUTH | RC_AUTH_FAIL) => {
                        return Err(NvError::OwnerAuth { target: target.to_owned() });
                    }
                    // Someone defined it in between: look again.
                    Err(TpmError::Rc { rc: RC_NV_DEFINED, .. }) => return self.rollback_floor(target, false),
                    Err(e) => return Err(e.into()),
                }
                (free, true)
            }
        };
        let value = match self.nv_read_counter(handle)? {
            Some(v) => v,
            None => {
                // Defined but never incremented (a define that this or an
                // earlier boot did not follow up): the first increment
                // starts it where the TPM starts counters.
                match self.nv_increment(handle) {
                    Ok(()) => {}
                    Err(TpmError::Rc { rc: RC_NV_LOCKED, .. }) => {
                        return Err(NvError::Locked { target: target.to_owned(), handle });
                    }
                    Err(e) => return Err(e.into()),
                }
                self.nv_read_counter(handle)?.ok_or(TpmError::Malformed("TPM2_NV_Read"))?
            }
        };
        Ok(Some(Floor { generation: value.saturating_sub(1), handle, defined }))
    }

    /// Raises `target`'s counter so that its floor is `generation` (at most
    /// [`MAX_STEPS`] increments); defines the counter on first use.
    pub fn rollback_raise(&mut self, target: &str, generation: u64) -> Result<Raised, NvError> {
        let want =
            generation.checked_add(1).ok_or_else(|| NvError::TooHigh { target: target.to_owned(), generation })?;
        let floor = self.rollback_floor(target, true)?.ok_or(TpmError::Malformed("TPM2_NV_ReadPublic"))?;
        let mut have = floor.generation + 1;
        if have >= want {
            return Ok(Raised::Already(floor.generation));
        }
        let mut steps = 0;
        while have < want && steps < MAX_STEPS {
            match self.nv_increment(floor.handle) {
                Ok(()) => {}
                Err(TpmError::Rc { rc: RC_NV_LOCKED, .. }) => {
                    return Err(NvError::Locked { target: target.to_owned(), handle: floor.handle });
                }
                Err(e) => return Err(e.into()),
            }
            have += 1;
            steps += 1;
        }
        // Read back: the TPM's count is what the next boot sees.
        let now = self.nv_read_counter(floor.handle)?.ok_or(TpmError::Malformed("TPM2_NV_Read"))?;
        let reached = now.saturating_sub(1);
        if reached >= generation { Ok(Raised::To(reached)) } else { Ok(Raised::Partly(reached)) }
    }

    /// Write-locks every rollback counter in the loader's range until the
    /// next TPM reset, so that nothing after the loader can raise one
    /// (burn it forward). Returns how many were locked.
    pub fn rollback_lock(&mut self) -> Result<usize, TpmError> {
        let mut locked = 0;
        for handle in self.nv_handles(NV_BASE, NV_BASE + NV_SLOTS)? {
            let Some(p) = self.nv_read_public(handle)? else { continue };
            if !p.is_rollback_counter() || p.attributes & NV_WRITELOCKED != 0 {
                continue;
            }
            let mut cmd = Command::new(CC_NV_WRITE_LOCK, &[handle, handle], &[Auth::EmptyPassword]);
            match self.run_nv("TPM2_NV_WriteLock", &mut cmd, 0) {
                Ok(_) => locked += 1,
                Err(TpmError::Rc { rc, .. }) => log::debug!("NV {handle:#010x} not locked: {}", wire::rc_text(rc)),
                Err(e) => return Err(e),
            }
        }
        Ok(locked)
    }

    /// The NV handles defined in `[from, to)`.
    pub fn nv_handles(&mut self, from: u32, to: u32) -> Result<Vec<u32>, TpmError> {
        let mut out = Vec::new();
        let mut next = from;
        // Each round returns what fits in a response; a TPM that keeps
        // saying "more" without moving on is cut off.
        for _ in 0..64 {
            let mut cmd = Command::new(CC_GET_CAPABILITY, &[], &[]);
            cmd.u32(CAP_HANDLES).u32(next).u32(256);
            let reply = self.run_nv("TPM2_GetCapability", &mut cmd, 0)?;
            let (more, handles) =
                parse_capability(&reply.params, CAP_HANDLES, 256).ok_or(TpmError::Malformed("TPM2_GetCapability"))?;
            let mut last = None;
            for (h, _) in handles {
                if h < next || last.is_some_and(|l| h <= l) {
                    return Err(TpmError::Malformed("TPM2_GetCapability"));
                }
                last = Some(h);
                if h >= to {
                    return Ok(out);
                }
                out.push(h);
            }
            match (more, last) {
                (true, Some(l)) if l < u32::MAX => next = l + 1,
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// What the TPM says about room for counters.
    pub fn nv_capacity(&mut self) -> Result<NvCapacity, TpmError> {
        let mut cap = NvCapacity::default();
        for (first, count) in [(PT_NV_COUNTERS_MAX, 2u32), (PT_HR_NV_INDEX, 1), (PT_NV_COUNTERS, 2)] {
            let mut cmd = Command::new(CC_GET_CAPABILITY, &[], &[]);
            cmd.u32(CAP_TPM_PROPERTIES).u32(first).u32(count);
            let reply = self.run_nv("TPM2_GetCapability", &mut cmd, 0)?;
            let (_, props) = parse_capability(&reply.params, CAP_TPM_PROPERTIES, 64)
                .ok_or(TpmError::Malformed("TPM2_GetCapability"))?;
            for (p, v) in props {
                match p {
                    PT_NV_COUNTERS_MAX => cap.counters_max = v,
                    PT_NV_INDEX_MAX => cap.index_max = v,
                    PT_HR_NV_INDEX => cap.indices = v,
                    PT_NV_COUNTERS => cap.counters = v,
                    PT_NV_COUNTERS_AVAIL => cap.counters_avail = v,
                    _ => {}
                }
            }
        }
        Ok(cap)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The type field of `TPMA_NV`.
    const NV_TYPE_MASK: u32 = 0xF << 4;

    fn ours(target: &str, handle: u32, written: bool) -> NvPublic {
        NvPublic {
            index: handle,
            name_alg: ALG_SHA256,
            attributes: COUNTER_ATTRIBUTES | if written { NV_WRITTEN } else { 0 },
            auth_policy: target_tag(target).to_vec(),
            data_size: 8,
        }
    }

    fn read_public_params(p: &NvPublic) -> Vec<u8> {
        let public = p.to_bytes();
        let name = p.name();
        let mut out = (public.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&public);
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(&name);
        out
    }

    #[test]
    fn handles_stay_in_range_and_differ_per_target() {
        for t in ["default", "node:n1", "group:rack7", "plugin:acme"] {
            let hs: Vec<u32> = probe_handles(t).collect();
            assert_eq!(hs.len(), PROBES as usize);
            assert!(hs.iter().all(|h| (NV_BASE..NV_BASE + NV_SLOTS).contains(h)), "{t}");
            assert_eq!(hs[0], first_handle(t));
        }
        assert_ne!(target_tag("node:n1"), target_tag("node:n2"));
    }

    #[test]
    fn read_public_parses_and_checks_the_name() {
        let p = ours("node:n1", 0x0135_0001, true);
        let params = read_public_params(&p);
        assert_eq!(parse_nv_public(&params, 0x0135_0001), Some(p.clone()));
        assert!(p.is_counter_for(&target_tag("node:n1")));
        assert!(!p.is_counter_for(&target_tag("node:n2")));
        // Another handle than asked about; every truncation; a trailing
        // byte; any flipped byte of the public area or name.
        assert_eq!(parse_nv_public(&params, 0x0135_0002), None);
        for cut in 0..params.len() {
            assert_eq!(parse_nv_public(&params[..cut], 0x0135_0001), None, "cut {cut}");
        }
        let mut long = params.clone();
        long.push(0);
        assert_eq!(parse_nv_public(&long, 0x0135_0001), None);
        for i in 2..params.len() {
            let mut bad = params.clone();
            bad[i] ^= 0x01;
            // The name covers the public area; only a changed nameAlg
            // (whose name this code cannot compute) still parses, and it
            // is no longer the counter.
            if let Some(q) = parse_nv_public(&bad, 0x0135_0001) {
                assert!(!q.is_counter_for(&target_tag("node:n1")), "byte {i} flipped: {q:?}");
            }
        }
    }

    #[test]
    fn only_a_counter_with_the_tag_is_the_targets() {
        let tag = target_tag("default");
        let mut p = ours("default", NV_BASE, false);
        assert!(p.is_counter_for(&tag));
        // An ordinary index with the right tag could be written low.
        p.attributes = (p.attributes & !NV_TYPE_MASK) | NV_WRITTEN;
        assert!(!p.is_counter_for(&tag));
        let mut p = ours("default", NV_BASE, true);
        p.attributes |= NV_WRITELOCKED;
        assert!(p.is_counter_for(&tag));
        p.attributes &= !NV_WRITE_STCLEAR;
        assert!(!p.is_counter_for(&tag));
        let mut p = ours("default", NV_BASE, true);
        p.data_size = 4;
        assert!(!p.is_counter_for(&tag));
    }

    #[test]
    fn counter_reads_are_exactly_eight_bytes() {
        assert_eq!(parse_counter(&[0, 8, 0, 0, 0, 0, 0, 0, 1, 2]), Some(0x102));
        assert_eq!(parse_counter(&[0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]), Some(u64::MAX));
        for bad in [&[][..], &[0, 4, 0, 0, 0, 1], &[0, 8, 1, 2, 3], &[0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 9], &[0, 0]] {
            assert_eq!(parse_counter(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn capability_lists_are_bounded() {
        let mut p = vec![1];
        p.extend_from_slice(&CAP_HANDLES.to_be_bytes());
        p.extend_from_slice(&2u32.to_be_bytes());
        p.extend_from_slice(&NV_BASE.to_be_bytes());
        p.extend_from_slice(&(NV_BASE + 5).to_be_bytes());
        assert_eq!(parse_capability(&p, CAP_HANDLES, 8), Some((true, vec![(NV_BASE, 0), (NV_BASE + 5, 0)])));
        assert_eq!(parse_capability(&p, CAP_HANDLES, 1), None);
        assert_eq!(parse_capability(&p, CAP_TPM_PROPERTIES, 8), None);
        for cut in 0..p.len() {
            assert_eq!(parse_capability(&p[..cut], CAP_HANDLES, 8), None);
        }
        p[0] = 2;
        assert_eq!(parse_capability(&p, CAP_HANDLES, 8), None);
        // A count that claims far more than the bytes hold.
        let mut huge = vec![0];
        huge.extend_from_slice(&CAP_HANDLES.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_capability(&huge, CAP_HANDLES, usize::MAX), None);
    }
}
