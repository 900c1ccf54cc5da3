//! `rd.stateless.rollback=tpm`: the rollback floor of each layer target
//! kept in TPM NV counters ([`stateless_keys::tpm::nv`]), so that a node
//! without a cache disk still refuses an older bundle after a reboot.
//!
//! The pipeline asks [`TpmRollback::check`] for every bundle from a server
//! or local media once it has authenticated (never for the cache's own
//! slots, which are exempt from the rollback rule as before); it raises
//! the counters of the layers it applied from there with
//! [`TpmRollback::raise`], and [`TpmRollback::finish`] write-locks every
//! counter at the end of each run, applied or not, so nothing after the
//! loader can raise one until the next reboot.
//!
//! A target's counter is made when its first bundle is checked, so that a
//! counter someone deleted comes back (at least as high: see the module
//! docs of [`stateless_keys::tpm::nv`]) before an older bundle could pass.
//! A TPM that is missing or fails refuses the network bundle (the site
//! asked for this check and it cannot be made; the cache still boots the
//! node). A target whose counter does not fit in NV is checked against
//! the cache's floor only, with a warning, unless the site asked for
//! `rd.stateless.rollback=tpm-strict`, which refuses it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stateless_bundle::error_chain as chain;
use stateless_keys::tpm::nv::{NvError, Raised};
use stateless_keys::tpm::{Tpm, TpmSelector};

use crate::cmdline::Rollback;
use crate::error::Refusal;

/// How long to wait for the TPM device node (a TPM driver built as a
/// module may still be loading this early).
const DEVICE_WAIT: Duration = stateless_keys::tpm::source::TPM_DEVICE_WAIT;

/// The rollback state in the TPM for one run of the loader.
#[derive(Debug)]
pub struct TpmRollback {
    strict: bool,
    selector: TpmSelector,
    /// Why the TPM could not be opened, once it could not.
    broken: Option<String>,
    /// Targets whose counter had no room in NV this run (not strict).
    no_room: std::collections::BTreeSet<String>,
    /// Floors read this run, per target; `None`: no counter (first use,
    /// or no room and not strict).
    floors: BTreeMap<String, Option<u64>>,
    warnings: Vec<String>,
}

impl TpmRollback {
    /// The state for `mode`; `None` for `rollback=cache`.
    pub fn new(mode: Rollback, selector: &TpmSelector) -> Option<TpmRollback> {
        let strict = match mode {
            Rollback::Cache => return None,
            Rollback::Tpm => false,
            Rollback::TpmStrict => true,
        };
        Some(TpmRollback {
            strict,
            selector: selector.clone(),
            broken: None,
            no_room: std::collections::BTreeSet::new(),
            floors: BTreeMap::new(),
            warnings: Vec::new(),
        })
    }

    /// Warnings gathered since the last call, for the console and
    /// `status.json`.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Runs `f` on the TPM, opened for it and closed after: the key
    /// ladder opens the TPM too, and swtpm serves one connection at a
    /// time. A TPM that failed to open is not waited for again.
    fn with_tpm<T>(&mut self, f: impl FnOnce(&mut Tpm) -> T) -> Result<T, String> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        match open(&self.selector) {
            Ok(mut tpm) => Ok(f(&mut tpm)),
            Err(e) => {
                self.broken = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Checks `generation` of `target` against its floor in the TPM:
    /// [`Refusal::Rollback`] when older, [`Refusal::RollbackState`] when
    /// the floor cannot be read.
    pub fn check(&mut self, target: &str, generation: u64) -> Result<(), Refusal> {
        let floor = match self.floors.get(target) {
            Some(f) => *f,
            None => {
                let f = self.read(target)?;
                self.floors.insert(target.to_owned(), f);
                f
            }
        };
        match floor {
            Some(applied) if generation < applied => Err(Refusal::Rollback { got: generation, applied }),
            _ => Ok(()),
        }
    }

    fn read(&mut self, target: &str) -> Result<Option<u64>, Refusal> {
        let strict = self.strict;
        let refuse = |why: String| Refusal::RollbackState { target: target.to_owned(), why };
        let t = Instant::now();
        // A target without a counter gets one now, before its bundle is
        // accepted: a counter someone deleted comes back at least as high
        // as it was (the TPM starts new counters above every deleted one),
        // so deleting it does not let an older bundle through; and a
        // strict site learns of no room before anything is applied.
        let read = self.with_tpm(|tpm| tpm.rollback_floor(target, true)).map_err(refuse)?;
        log::debug!("TPM rollback floor of {target}: {read:?} in {} ms", t.elapsed().as_millis());
        match read {
            Ok(Some(f)) => {
                if f.defined && f.generation > 0 {
                    self.warnings.push(starts_high(target, f.generation));
                }
                Ok(Some(f.generation))
            }
            Ok(None) => Ok(None),
            Err(e @ (NvError::Full { .. } | NvError::Exhausted { .. } | NvError::OwnerAuth { .. })) if !strict => {
                self.warnings.push(format!("{e}; checked against the cache only"));
                self.no_room.insert(target.to_owned());
                Ok(None)
            }
            Err(e) => Err(refuse(chain(&e))),
        }
    }

    /// Raises the counters of the layers applied (target, generation).
    /// Failures are warnings: the bundles are applied already.
    pub fn raise(&mut self, applied: &[(String, u64)]) {
        let t = Instant::now();
        // A target found without room this run was warned about already.
        let applied: Vec<&(String, u64)> = applied.iter().filter(|(t, _)| !self.no_room.contains(t)).collect();
        if applied.is_empty() {
            return;
        }
        let raised = self.with_tpm(|tpm| {
            applied.iter().map(|(target, generation)| tpm.rollback_raise(target, *generation)).collect::<Vec<_>>()
        });
        let raised = match raised {
            Ok(r) => r,
            Err(e) => {
                self.warnings.push(format!("rollback state in the TPM not raised: {e}"));
                return;
            }
        };
        log::debug!("TPM rollback counters raised in {} ms", t.elapsed().as_millis());
        for ((target, generation), raised) in applied.into_iter().zip(raised) {
            match raised {
                Ok(Raised::To(g)) => log::info!("TPM rollback floor of {target} raised to generation {g}"),
                // Above what was just applied: a counter made now started
                // where the TPM starts new ones (or something raised it
                // since the check); the next boot refuses below it.
                Ok(Raised::Already(g)) if g > *generation => self.warnings.push(starts_high(target, g)),
                Ok(Raised::Already(g)) => log::debug!("TPM rollback floor of {target} is generation {g}"),
                Ok(Raised::Partly(g)) => self.warnings.push(format!(
                    "TPM rollback floor of {target} raised to generation {g} of {generation}: a TPM counter goes up \
                     {} per boot, the next boots raise it further",
                    stateless_keys::tpm::nv::MAX_STEPS
                )),
                Err(e) => self.warnings.push(format!("rollback state in the TPM not raised: {}", chain(&e))),
            }
            self.floors.remove(target);
        }
    }

    /// Write-locks every rollback counter until the next reboot; returns
    /// the warnings left.
    pub fn finish(mut self) -> Vec<String> {
        let locked = self.with_tpm(|tpm| tpm.rollback_lock().map_err(|e| chain(&e))).and_then(|r| r);
        match locked {
            Ok(n) => log::debug!("TPM rollback counters locked until the next reboot: {n}"),
            Err(e) => self.warnings.push(format!("rollback counters in the TPM not locked: {e}")),
        }
        self.warnings
    }
}

fn starts_high(target: &str, floor: u64) -> String {
    format!(
        "the TPM started the new rollback counter of {target} at generation {floor} (a counter was deleted on this TPM \
         before; counters never go down): {target} needs generation {floor} or above"
    )
}

/// Opens the TPM, waiting briefly for its device node.
fn open(selector: &TpmSelector) -> Result<Tpm, String> {
    if let TpmSelector::Device(p) = selector {
        let until = Instant::now() + DEVICE_WAIT;
        while !p.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !p.exists() {
            return Err(format!("no TPM ({} did not appear within {} s)", p.display(), DEVICE_WAIT.as_secs()));
        }
    }
    Tpm::open(selector).map_err(|e| chain(&e))
}
