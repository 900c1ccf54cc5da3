//! Panics: the loader must never stop without `status.json` and without
//! falling back to the cache.
//!
//! The loader is built with `panic = "unwind"` so that a panic can be
//! caught where one source's bundle is processed ([`catch`]): it becomes a
//! refusal of that source (its staging directory is removed as the stack
//! unwinds) and the next source is tried. The panic hook ([`install`])
//! writes one line to the kernel log (or stderr) and, because a panic may
//! yet end the process (one on a thread nobody joins, or one during
//! unwinding, which aborts), a provisional `status.json` saying the loader
//! crashed; the pipeline's own `status.json` replaces it when the panic was
//! caught.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::cmdline::OnFail;

/// Where the provisional `status.json` goes, once the pipeline knows.
static STATUS: OnceLock<(PathBuf, OnFail)> = OnceLock::new();
/// The last panic's one-line description, for the refusal that catches it.
static LAST: Mutex<Option<String>> = Mutex::new(None);
/// Panics so far, on any thread.
static PANICS: AtomicU64 = AtomicU64::new(0);
/// Panics a [`catch`] has already turned into an error: an enclosing
/// `catch` does not count them again.
static HANDLED: AtomicU64 = AtomicU64::new(0);

fn unhandled() -> u64 {
    PANICS.load(Ordering::SeqCst).saturating_sub(HANDLED.load(Ordering::SeqCst))
}

/// Installs the panic hook (once per process, by the binary).
pub fn install() {
    panic::set_hook(Box::new(hook));
}

/// Tells the hook where to write `status.json` and which `onfail` it
/// reports.
pub fn set_status_target(run_dir: PathBuf, onfail: OnFail) {
    let _ = STATUS.set((run_dir, onfail));
}

fn hook(info: &PanicHookInfo<'_>) {
    let line = describe(info.payload(), info.location());
    // A panic must look like a crash on the console, not a hang.
    log::error!("internal error: {line}");
    if let Ok(mut last) = LAST.lock() {
        *last = Some(line.clone());
    }
    PANICS.fetch_add(1, Ordering::SeqCst);
    if let Some((run_dir, onfail)) = STATUS.get() {
        let _ = crate::pipeline::write_crash_status(run_dir, &line, *onfail);
    }
}

fn describe(payload: &dyn Any, location: Option<&panic::Location<'_>>) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned());
    // One console line, whatever the message holds.
    let msg = msg.replace(['\n', '\r'], " ");
    match location {
        Some(l) => format!("{msg} at {}:{}", l.file(), l.line()),
        None => msg,
    }
}

/// Runs `f`, turning a panic into `Err` with the panic's description.
/// Whatever `f` owned is dropped as the stack unwinds (a staging
/// directory removes itself). A panic on another thread while `f` ran
/// counts too, even if `f` turned it into an error of its own (the bundle
/// code reports a decoder thread's panic as a corrupt bundle): the result
/// of work during which the loader panicked is not trusted.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    let before = unhandled();
    // The caller gives up on what `f` was doing and moves on to another
    // source, so state it left half-changed is not looked at again.
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let seen = unhandled().saturating_sub(before);
    if result.is_ok() && seen == 0 {
        return result.map_err(|_| Panicked(String::new()));
    }
    HANDLED.fetch_add(seen, Ordering::SeqCst);
    // The hook saw the first panic (a decoder thread's); the payload is
    // the one that reached here ("a scoped thread panicked"), if any.
    let last = LAST.lock().ok().and_then(|mut l| l.take());
    Err(Panicked(last.unwrap_or_else(|| match &result {
        Err(payload) => describe(payload.as_ref(), None),
        Ok(_) => "panic".to_owned(),
    })))
}

/// A panic [`catch`] caught: its message and where it happened, one line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);
