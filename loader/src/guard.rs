//! The reader between a bundle's source (a response body, a cache file)
//! and the bundle code: it ends the processing once the time budget has
//! run out.
//!
//! The bundle code reads its input as it needs it (decryption and
//! decompression stay at most a few frames ahead of extraction), and reads
//! once more past the end to check that nothing follows the payload, after
//! the last entry is extracted. So a deadline checked at every read
//! reaches verification and extraction as well as the download, and a
//! bundle whose processing outlasts the budget is refused at the latest
//! when it is done, never applied late. [`Guarded::tripped`] tells the
//! caller that this, and not the bytes, is why the bundle code failed.
//!
//! Debug builds also honour a fault for tests (`STATELESS_LOADER_FAULT`,
//! see [`Fault`]); release builds compile it out.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A reader that fails once `deadline` has passed.
#[derive(Debug)]
pub struct Guarded<R> {
    inner: R,
    deadline: Option<Instant>,
    tripped: Arc<AtomicBool>,
    fault: Option<Fault>,
    delivered: u64,
}

/// The error a [`Guarded`] read returns after the deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the time budget ran out")]
pub struct DeadlinePassed;

impl<R> Guarded<R> {
    /// Guards `inner`; `deadline` `None` guards nothing (but still injects
    /// `fault`).
    pub fn new(inner: R, deadline: Option<Instant>, fault: Option<Fault>) -> Self {
        Guarded { inner, deadline, tripped: Arc::new(AtomicBool::new(false)), fault, delivered: 0 }
    }

    /// A flag set when a read failed because the deadline had passed, so
    /// that the deadline, not the bytes, is why the bundle code failed; it
    /// stays readable after the reader moved into the bundle code.
    pub fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }

    fn check(&self) -> io::Result<()> {
        match self.deadline {
            Some(d) if Instant::now() >= d => {
                self.tripped.store(true, Ordering::Relaxed);
                Err(io::Error::new(io::ErrorKind::TimedOut, DeadlinePassed))
            }
            _ => Ok(()),
        }
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        if self.delivered > stateless_bundle::header::HEADER_LEN as u64 {
            if let Some(Fault::Panic) = self.fault {
                self.fault = None;
                fault_panic();
            }
        }
        let n = self.inner.read(buf)?;
        self.delivered += n as u64;
        if n == 0 {
            if let Some(Fault::Sleep(d)) = self.fault.take() {
                std::thread::sleep(d);
            }
            // The bundle code reads past the end only once it is done: a
            // deadline passed during the last entries counts too.
            self.check()?;
        }
        Ok(n)
    }
}

/// Sets a flag when a deadline passes, unless dropped before: the flag a
/// caller checks between steps, or hands to code that does (the bundle
/// code may have read all of a small bundle long before it is done with
/// it, so the reads alone do not see the deadline in time).
#[derive(Debug)]
pub struct Watchdog {
    flag: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Sets [`Watchdog::flag`] at `deadline`.
    pub fn start(deadline: Instant) -> Watchdog {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        // If no thread can be made, the reads still check the deadline.
        let thread = std::thread::Builder::new()
            .name("deadline".into())
            .spawn(move || {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(left) {
                    set.store(true, Ordering::Relaxed);
                }
            })
            .ok();
        Watchdog { flag, stop: Some(stop), thread }
    }

    /// Set once the deadline has passed.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which then ends.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::panic, reason = "the test fault's whole point")]
fn fault_panic() {
    panic!("fault injected by STATELESS_LOADER_FAULT");
}

/// A fault injected into one source's processing, for tests: the loader
/// must survive it (a panic becomes a refusal of that source; a slow
/// source runs into the budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic at the first read past the bundle header, that is in the
    /// middle of verification and extraction (on a decoder thread when the
    /// payload is decoded on several).
    Panic,
    /// Sleep this long when the input ends, as if the last entries took
    /// that long to extract.
    Sleep(Duration),
    /// Panic again while unwinding from a panic, which aborts the process:
    /// the case no `catch` can handle (only at [`fault_point`]).
    Abort,
}

/// A place in the pipeline outside any one source's processing where a
/// test may make the loader panic (`panic@pipeline`) or abort
/// (`abort@pipeline`).
pub fn fault_point(name: &str) {
    match fault_for(name) {
        Some(Fault::Panic) => fault_panic(),
        Some(Fault::Abort) => {
            let _bomb = PanicOnDrop;
            fault_panic();
        }
        _ => {}
    }
}

struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        fault_panic();
    }
}

/// The environment variable naming the fault, debug builds only:
/// `panic@SOURCE` or `sleep=MILLISECONDS@SOURCE`, where SOURCE is
/// `server`, `cache-current` or `cache-previous`; `panic@pipeline` and
/// `abort@pipeline` (see [`fault_point`]).
pub const FAULT_VAR: &str = "STATELESS_LOADER_FAULT";

/// The fault to inject into `source`, if the environment asks for one
/// (never in release builds).
pub fn fault_for(source: &str) -> Option<Fault> {
    #[cfg(debug_assertions)]
    {
        let spec = std::env::var(FAULT_VAR).ok()?;
        let (what, at) = spec.split_once('@')?;
        if at != source {
            return None;
        }
        match what.split_once('=') {
            None if what == "panic" => Some(Fault::Panic),
            None if what == "abort" => Some(Fault::Abort),
            Some(("sleep", ms)) => ms.parse().ok().map(|ms| Fault::Sleep(Duration::from_millis(ms))),
            _ => None,
        }
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = source;
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passes_everything_before_the_deadline() {
        let data = vec![7u8; 100_000];
        let mut g = Guarded::new(&data[..], Some(Instant::now() + Duration::from_secs(60)), None);
        let mut out = Vec::new();
        g.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert!(!g.tripped().load(Ordering::Relaxed));
    }

    #[test]
    fn fails_after_the_deadline_and_says_so() {
        let data = [1u8; 10];
        let mut g = Guarded::new(&data[..], Some(Instant::now()), None);
        let flag = g.tripped();
        let err = g.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().is_some_and(|e| e.is::<DeadlinePassed>()));
        assert!(flag.load(Ordering::Relaxed));
    }

    #[test]
    fn the_read_at_the_end_is_checked_too() {
        // Everything was read in time; the deadline passes before the
        // bundle code looks past the end.
        let data = [1u8; 10];
        let mut g = Guarded::new(&data[..], Some(Instant::now() + Duration::from_millis(50)), None);
        let mut buf = [0u8; 10];
        assert_eq!(g.read(&mut buf).unwrap(), 10);
        std::thread::sleep(Duration::from_millis(60));
        assert!(g.read(&mut buf).is_err());
        assert!(g.tripped().load(Ordering::Relaxed));
    }

    #[test]
    fn the_watchdog_sets_the_flag_at_the_deadline_and_not_after_a_drop() {
        let dog = Watchdog::start(Instant::now() + Duration::from_millis(30));
        let flag = dog.flag();
        assert!(!flag.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(200));
        assert!(flag.load(Ordering::Relaxed));
        drop(dog);
        let started = Instant::now();
        let dog = Watchdog::start(Instant::now() + Duration::from_secs(60));
        let flag = dog.flag();
        drop(dog);
        assert!(started.elapsed() < Duration::from_secs(5), "the drop waited for the deadline");
        assert!(!flag.load(Ordering::Relaxed));
    }

    #[test]
    fn no_deadline_never_trips() {
        let data = [1u8; 10];
        let mut g = Guarded::new(&data[..], None, None);
        let mut out = Vec::new();
        g.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10);
    }
}
