//! A `log` facade logger for the initramfs: one `write()` per record to
//! `/dev/kmsg`, so records from the loader, systemd and the kernel interleave
//! whole and end up in the journal after switch-root.
//!
//! A kmsg record is `<N>stateless: message\n`, where `N` is the syslog
//! priority (user facility is implied). When `/dev/kmsg` cannot be opened
//! (a workstation, a container) records go to stderr as
//! `stateless: [warning: |error: |debug: ]message`. Records are capped at
//! [`MAX_RECORD`] bytes because the kernel rejects longer writes, and control
//! characters become spaces so one record stays one console line.
//!
//! The kernel rate-limits `/dev/kmsg` writers (10 records per 5 s by
//! default), so info is terse; debug (`rd.stateless.debug`) may lose records.
//! Other crates (TLS, DNS, HTTP) are let through at warning and above only:
//! their debug output would drown the loader's own.

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The tag in front of every record.
pub const TAG: &str = "stateless: ";

/// The longest record written, prefix and newline included.
pub const MAX_RECORD: usize = 900;

/// The device the kernel log is written through.
const KMSG: &str = "/dev/kmsg";

/// Where the records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `/dev/kmsg`.
    Kmsg,
    /// stderr, because `/dev/kmsg` could not be opened.
    Stderr,
}

#[derive(Debug)]
struct Logger {
    /// `/dev/kmsg`, or `None` for stderr.
    kmsg: Option<File>,
}

static TO_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether records go to stderr (so a line already logged is on the console).
pub fn to_stderr() -> bool {
    TO_STDERR.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs the logger (once per process). `debug` enables debug records.
/// The panic hook that logs a panic as one error record is
/// [`crate::crash::install`]'s.
pub fn init(debug: bool) -> Result<Destination, log::SetLoggerError> {
    init_to(debug, false)
}

/// As [`init`], but `stderr` forces stderr even when `/dev/kmsg` is there
/// (for runs on a workstation and for tests).
pub fn init_to(debug: bool, stderr: bool) -> Result<Destination, log::SetLoggerError> {
    let kmsg = if stderr { None } else { OpenOptions::new().write(true).open(KMSG).ok() };
    TO_STDERR.store(kmsg.is_none(), std::sync::atomic::Ordering::Relaxed);
    let destination = if kmsg.is_some() { Destination::Kmsg } else { Destination::Stderr };
    // The logger lives for the rest of the process.
    log::set_logger(Box::leak(Box::new(Logger { kmsg })))?;
    set_debug(debug);
    Ok(destination)
}

/// Switches debug records on or off (after the command line is read).
pub fn set_debug(debug: bool) {
    log::set_max_level(if debug { LevelFilter::Debug } else { LevelFilter::Info });
}

/// The syslog priority of a level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether a record from `target` at `level` is written at all (before
/// the global maximum level): other crates only at warning and above.
pub fn wanted(target: &str, level: Level) -> bool {
    level <= Level::Warn || target == "stateless_loader" || target.starts_with("stateless_")
}

/// Formats one record, newline included, at most [`MAX_RECORD`] bytes.
/// `kmsg` selects the `<N>` prefix, otherwise a level word for stderr.
pub fn format_record(level: Level, args: &fmt::Arguments<'_>, kmsg: bool) -> String {
    const ELLIPSIS: &str = "...";
    let mut out = Bounded { buf: String::with_capacity(128), limit: MAX_RECORD - ELLIPSIS.len() - 1, cut: false };
    let _ = if kmsg {
        write!(out.buf, "<{}>{TAG}", priority(level))
    } else {
        let word = match level {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug | Level::Trace => "debug: ",
        };
        write!(out.buf, "{TAG}{word}")
    };
    let _ = out.write_fmt(*args);
    if out.cut {
        out.buf.push_str(ELLIPSIS);
    }
    out.buf.push('\n');
    out.buf
}

/// A `fmt::Write` that keeps at most `limit` bytes (on a char boundary)
/// and turns control characters into spaces.
struct Bounded {
    buf: String,
    limit: usize,
    cut: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if self.buf.len() + c.len_utf8() > self.limit {
                self.cut = true;
                break;
            }
            self.buf.push(c);
        }
        Ok(())
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && wanted(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.write(record);
        }
    }

    fn flush(&self) {}
}

impl Logger {
    fn write(&self, record: &Record<'_>) {
        if let Some(mut kmsg) = self.kmsg.as_ref() {
            // One write() is one kernel log record.
            if kmsg.write(format_record(record.level(), record.args(), true).as_bytes()).is_ok() {
                return;
            }
        }
        let _ = io::stderr().lock().write_all(format_record(record.level(), record.args(), false).as_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn fmt_(level: Level, msg: &str, kmsg: bool) -> String {
        format_record(level, &format_args!("{msg}"), kmsg)
    }

    #[test]
    fn format_table() {
        let cases: &[(Level, &str, bool, &str)] = &[
            (Level::Error, "boom", true, "<3>stateless: boom\n"),
            (Level::Warn, "hm", true, "<4>stateless: hm\n"),
            (Level::Info, "applied generation 41", true, "<6>stateless: applied generation 41\n"),
            (Level::Debug, "d", true, "<7>stateless: d\n"),
            (Level::Trace, "t", true, "<7>stateless: t\n"),
            (Level::Error, "boom", false, "stateless: error: boom\n"),
            (Level::Warn, "hm", false, "stateless: warning: hm\n"),
            (Level::Info, "ok", false, "stateless: ok\n"),
            (Level::Debug, "d", false, "stateless: debug: d\n"),
            (Level::Info, "", true, "<6>stateless: \n"),
            (Level::Info, "two\nlines\r\tand\u{1b}[31m", true, "<6>stateless: two lines  and [31m\n"),
            (Level::Info, "généré ✓", true, "<6>stateless: généré ✓\n"),
        ];
        for (level, msg, kmsg, want) in cases {
            assert_eq!(fmt_(*level, msg, *kmsg), *want, "{level} {msg:?} kmsg={kmsg}");
        }
    }

    #[test]
    fn truncation_sizes() {
        let prefix = "<6>stateless: ".len();
        let room = MAX_RECORD - prefix - "...".len() - 1;
        // (message length, whether it is cut)
        for (len, cut) in [(0, false), (1, false), (room - 1, false), (room, false), (room + 1, true), (100_000, true)]
        {
            let msg = "x".repeat(len);
            let rec = fmt_(Level::Info, &msg, true);
            assert!(rec.len() <= MAX_RECORD, "len {len}: {} bytes", rec.len());
            assert!(rec.ends_with('\n'));
            assert_eq!(rec.ends_with("...\n"), cut, "len {len}");
            assert_eq!(rec.matches('\n').count(), 1);
        }
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        for pad in 0..4 {
            let msg = format!("{}{}", "a".repeat(pad), "€".repeat(400));
            let rec = fmt_(Level::Warn, &msg, true);
            assert!(rec.len() <= MAX_RECORD && rec.ends_with("...\n"), "pad {pad}");
        }
    }

    #[test]
    fn priority_table() {
        let cases = [(Level::Error, 3), (Level::Warn, 4), (Level::Info, 6), (Level::Debug, 7), (Level::Trace, 7)];
        for (level, want) in cases {
            assert_eq!(priority(level), want, "{level}");
        }
    }

    #[test]
    fn wanted_table() {
        let cases = [
            ("stateless_loader", Level::Debug, true),
            ("stateless_loader::srv", Level::Debug, true),
            ("stateless_bundle::extract", Level::Info, true),
            ("rustls::client", Level::Debug, false),
            ("rustls::client", Level::Info, false),
            ("rustls::client", Level::Warn, true),
            ("hickory_proto", Level::Error, true),
            ("statelessness", Level::Info, false),
        ];
        for (target, level, want) in cases {
            assert_eq!(wanted(target, level), want, "{target} {level}");
        }
    }

    #[test]
    fn one_write_per_record_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        let logger = Logger { kmsg: Some(File::create(&path).unwrap()) };
        for msg in ["first", "second"] {
            logger.write(
                &Record::builder().level(Level::Error).target("stateless_loader").args(format_args!("{msg}")).build(),
            );
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<3>stateless: first\n<3>stateless: second\n");
    }
}
