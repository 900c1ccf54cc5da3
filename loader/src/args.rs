//! The loader's flags: one table, read by a small parser here and, in a
//! `gen-docs` build only, turned into a clap command for the man page.
//!
//! In the initramfs the loader takes no arguments at all; the flags are for
//! tests and for people running it on a workstation against a scratch root.
//! A general command-line parser (clap, ~200 KB of the static binary) bought
//! nothing on the boot path and pushed the initramfs past its size budget
//! (docs/performance.md, "Size"), so the parser is these few lines: long
//! flags only, `--flag VALUE` or `--flag=VALUE`, `--help`, `--version`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// Where the kernel command line is read from in the initramfs.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// "0.2.0 (commit 1234abcd5678)", from packaging/build-version.rs.
pub const VERSION: &str = env!("STATELESS_VERSION");

/// The program's one-line description (`--help`, the man page's NAME).
pub const ABOUT: &str = "Fetch, verify and apply this node's configuration bundle before switch-root";

/// The paragraph after it (`--help`, the man page's DESCRIPTION).
pub const LONG_ABOUT: &str = "In the initramfs it takes no arguments: everything it needs comes from the \
kernel command line (rd.stateless.*, see stateless.cmdline(7)). The flags let tests and people on a \
workstation run it against a scratch root.";

/// One flag of the table.
#[derive(Debug)]
pub struct Flag {
    /// The name after `--`.
    pub long: &'static str,
    /// The value's placeholder in help text; None for a switch.
    pub value: Option<&'static str>,
    /// The value used when the flag is not given.
    pub default: Option<&'static str>,
    /// May be given more than once (the values are collected).
    pub repeat: bool,
    pub help: &'static str,
}

const fn value(long: &'static str, value: &'static str, default: Option<&'static str>, help: &'static str) -> Flag {
    Flag { long, value: Some(value), default, repeat: false, help }
}

/// Every flag, in the order `--help` lists them.
pub const FLAGS: &[Flag] = &[
    value("cmdline", "STRING", None, "Kernel command line to use instead of /proc/cmdline"),
    value(
        "cmdline-file",
        "FILE",
        Some(PROC_CMDLINE),
        "File to read the kernel command line from (bytes that are not UTF-8 are replaced, not fatal)",
    ),
    value("sysroot", "DIR", Some("/sysroot"), "Root filesystem the bundle is applied to"),
    value(
        "run-dir",
        "DIR",
        Some("/run/stateless"),
        "Run-time directory for the download, the cache mount and status.json",
    ),
    value(
        "cache-dir",
        "DIR",
        None,
        "Directory standing in for the mounted cache device (overrides rd.stateless.cache=)",
    ),
    Flag {
        long: "log-stderr",
        value: None,
        default: None,
        repeat: false,
        help: "Log to stderr even when /dev/kmsg can be written",
    },
    value(
        "key-dir",
        "DIR",
        Some(stateless_keys::EMBEDDED_KEY_DIR),
        "Directory of key files embedded in the boot image",
    ),
    value(
        "sealed-dir",
        "DIR",
        Some(stateless_keys::SEALED_DIR),
        "Directory of TPM-sealed keys embedded in the boot image",
    ),
    value(
        "console",
        "PATH",
        Some("/dev/console"),
        "Where to ask for the PIN of a TPM key sealed with one (key tpm-seal --pin)",
    ),
    value(
        "publisher-dir",
        "DIR",
        Some(stateless_keys::PUBLISHER_DIR),
        "Directory of publisher public keys (*.pub) embedded in the boot image",
    ),
    Flag {
        long: "usb-device",
        value: Some("PATH"),
        default: None,
        repeat: true,
        help: "Look for the USB key stick only on this device or image file (repeatable; tests)",
    },
];

/// The parsed flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub cmdline: Option<String>,
    pub cmdline_file: PathBuf,
    pub sysroot: PathBuf,
    pub run_dir: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub log_stderr: bool,
    pub key_dir: PathBuf,
    pub sealed_dir: PathBuf,
    pub console: PathBuf,
    pub publisher_dir: PathBuf,
    pub usb_devices: Vec<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Run(Box<Args>),
    /// `--help` / `-h`: print this and exit 0.
    Help(String),
    /// `--version` / `-V`: print this and exit 0.
    Version(String),
}

/// A command line the loader does not understand. Exit status 2, as usual
/// for a usage error.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; see stateless-loader --help", self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses `argv` (without the program name).
pub fn parse<I>(argv: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut given: Vec<(&'static Flag, OsString)> = Vec::new();
    let mut rest = argv.into_iter().map(Into::into);
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        match &*text {
            "--help" | "-h" => return Ok(Invocation::Help(help())),
            "--version" | "-V" => return Ok(Invocation::Version(format!("stateless-loader {VERSION}\n"))),
            _ => {}
        }
        let Some(body) = text.strip_prefix("--").filter(|b| !b.is_empty()) else {
            return Err(UsageError(format!("unexpected argument '{text}'")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let flag = FLAGS.iter().find(|f| f.long == name).ok_or_else(|| UsageError(format!("unknown flag --{name}")))?;
        let value = match (flag.value, inline) {
            (None, None) => OsString::new(),
            (None, Some(_)) => return Err(UsageError(format!("--{name} takes no value"))),
            // Split from the original, so that a non-UTF-8 path survives.
            (Some(_), Some(_)) => split_value(&arg),
            (Some(placeholder), None) => {
                rest.next().ok_or_else(|| UsageError(format!("--{name} needs a value ({placeholder})")))?
            }
        };
        if !flag.repeat && given.iter().any(|(f, _)| f.long == flag.long) {
            return Err(UsageError(format!("--{name} given twice")));
        }
        given.push((flag, value));
    }
    Ok(Invocation::Run(Box::new(Args::from_given(&given)?)))
}

/// The part of `--name=value` after the first `=`, bytes kept as they are.
fn split_value(arg: &OsString) -> OsString {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let bytes = arg.as_bytes();
    let at = bytes.iter().position(|b| *b == b'=').map_or(bytes.len(), |i| i + 1);
    OsString::from_vec(bytes.get(at..).unwrap_or_default().to_vec())
}

impl Args {
    fn from_given(given: &[(&'static Flag, OsString)]) -> Result<Args, UsageError> {
        let last = |long: &str| given.iter().rev().find(|(f, _)| f.long == long).map(|(_, v)| v.clone());
        let path = |long: &str| -> PathBuf {
            last(long).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default_of(long)))
        };
        let cmdline = match last("cmdline") {
            Some(v) => Some(v.into_string().map_err(|_| UsageError("--cmdline is not UTF-8".to_owned()))?),
            None => None,
        };
        Ok(Args {
            cmdline,
            cmdline_file: path("cmdline-file"),
            sysroot: path("sysroot"),
            run_dir: path("run-dir"),
            cache_dir: last("cache-dir").map(PathBuf::from),
            log_stderr: last("log-stderr").is_some(),
            key_dir: path("key-dir"),
            sealed_dir: path("sealed-dir"),
            console: path("console"),
            publisher_dir: path("publisher-dir"),
            usb_devices: given.iter().filter(|(f, _)| f.long == "usb-device").map(|(_, v)| PathBuf::from(v)).collect(),
        })
    }
}

fn default_of(long: &str) -> &'static str {
    FLAGS.iter().find(|f| f.long == long).and_then(|f| f.default).unwrap_or_default()
}

/// `--help`: what the man page says, in the terminal's words.
pub fn help() -> String {
    let mut out = format!("{ABOUT}\n\n{LONG_ABOUT}\n\nUsage: stateless-loader [OPTIONS]\n\nOptions:\n");
    for f in FLAGS {
        let head = match f.value {
            Some(v) => format!("--{} <{v}>", f.long),
            None => format!("--{}", f.long),
        };
        out.push_str(&format!("  {head}\n          {}", f.help));
        if let Some(d) = f.default {
            out.push_str(&format!(" [default: {d}]"));
        }
        out.push('\n');
    }
    out.push_str("  -h, --help\n          Print help\n  -V, --version\n          Print version\n");
    out
}

/// The same table as a clap command, for the man page (`scripts/package`).
#[cfg(feature = "gen-docs")]
pub fn command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let mut cmd = Command::new("stateless-loader").version(VERSION).about(ABOUT).long_about(LONG_ABOUT);
    for f in FLAGS {
        let mut arg = Arg::new(f.long).long(f.long).help(f.help);
        arg = match (f.value, f.repeat) {
            (None, _) => arg.action(ArgAction::SetTrue),
            (Some(v), true) => arg.value_name(v).action(ArgAction::Append),
            (Some(v), false) => arg.value_name(v).action(ArgAction::Set),
        };
        if let Some(d) = f.default {
            arg = arg.default_value(d);
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> Args {
        match parse(argv.iter().copied()) {
            Ok(Invocation::Run(a)) => *a,
            other => panic!("{argv:?}: {other:?}"),
        }
    }

    fn usage(argv: &[&str]) -> String {
        parse(argv.iter().copied()).unwrap_err().to_string()
    }

    #[test]
    fn no_arguments_are_the_initramfs_defaults() {
        let a = run(&[]);
        assert_eq!(a.cmdline, None);
        assert_eq!(a.cmdline_file, PathBuf::from("/proc/cmdline"));
        assert_eq!(a.sysroot, PathBuf::from("/sysroot"));
        assert_eq!(a.run_dir, PathBuf::from("/run/stateless"));
        assert_eq!(a.cache_dir, None);
        assert!(!a.log_stderr);
        assert_eq!(a.key_dir, PathBuf::from(stateless_keys::EMBEDDED_KEY_DIR));
        assert_eq!(a.sealed_dir, PathBuf::from(stateless_keys::SEALED_DIR));
        assert_eq!(a.publisher_dir, PathBuf::from(stateless_keys::PUBLISHER_DIR));
        assert_eq!(a.console, PathBuf::from("/dev/console"));
        assert!(a.usb_devices.is_empty());
    }

    #[test]
    fn both_spellings_of_a_value_and_repeats() {
        let a = run(&[
            "--cmdline",
            "rd.stateless.debug a=b",
            "--sysroot=/tmp/root",
            "--run-dir",
            "/tmp/run",
            "--cache-dir=/tmp/c=d",
            "--log-stderr",
            "--usb-device",
            "/dev/sdb",
            "--usb-device=/tmp/stick.img",
        ]);
        assert_eq!(a.cmdline.as_deref(), Some("rd.stateless.debug a=b"));
        assert_eq!(a.sysroot, PathBuf::from("/tmp/root"));
        assert_eq!(a.run_dir, PathBuf::from("/tmp/run"));
        // Only the first '=' separates.
        assert_eq!(a.cache_dir, Some(PathBuf::from("/tmp/c=d")));
        assert!(a.log_stderr);
        assert_eq!(a.usb_devices, [PathBuf::from("/dev/sdb"), PathBuf::from("/tmp/stick.img")]);
        // A value may start with dashes when it is a separate word.
        assert_eq!(run(&["--cmdline", "--x"]).cmdline.as_deref(), Some("--x"));
    }

    #[test]
    fn a_non_utf8_path_is_kept_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt as _;
        let raw = std::ffi::OsStr::from_bytes(b"--sysroot=/tmp/\xff");
        let Ok(Invocation::Run(a)) = parse([raw.to_owned()]) else { panic!("not parsed") };
        assert_eq!(a.sysroot.as_os_str().as_bytes(), b"/tmp/\xff");
    }

    #[test]
    fn usage_errors_name_the_flag() {
        assert_eq!(usage(&["--sysroot"]), "--sysroot needs a value (DIR); see stateless-loader --help");
        assert_eq!(usage(&["--nope"]), "unknown flag --nope; see stateless-loader --help");
        assert_eq!(usage(&["-x"]), "unexpected argument '-x'; see stateless-loader --help");
        assert_eq!(usage(&["root"]), "unexpected argument 'root'; see stateless-loader --help");
        assert_eq!(usage(&["--"]), "unexpected argument '--'; see stateless-loader --help");
        assert_eq!(usage(&["--log-stderr=yes"]), "--log-stderr takes no value; see stateless-loader --help");
        assert_eq!(usage(&["--sysroot", "a", "--sysroot=b"]), "--sysroot given twice; see stateless-loader --help");
        assert_eq!(usage(&["--cmdline-fil", "x"]), "unknown flag --cmdline-fil; see stateless-loader --help");
    }

    #[test]
    fn help_and_version() {
        let Ok(Invocation::Help(h)) = parse(["--sysroot", "/x", "-h"]) else { panic!("no help") };
        for f in FLAGS {
            assert!(h.contains(&format!("--{}", f.long)), "{h}");
            assert!(h.contains(f.help), "{h}");
        }
        assert!(h.contains("[default: /sysroot]"), "{h}");
        assert_eq!(parse(["--version"]), Ok(Invocation::Version(format!("stateless-loader {VERSION}\n"))));
        assert_eq!(parse(["-V"]), Ok(Invocation::Version(format!("stateless-loader {VERSION}\n"))));
    }

    #[test]
    fn version_names_the_commit() {
        // "0.2.0 (commit 1234abcd5678)" or "(commit unknown)" outside a checkout.
        assert!(VERSION.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (commit ")), "{VERSION}");
        assert!(VERSION.ends_with(')'), "{VERSION}");
    }

    #[cfg(feature = "gen-docs")]
    #[test]
    fn the_man_page_command_has_every_flag() {
        let cmd = command();
        cmd.clone().debug_assert();
        for f in FLAGS {
            assert!(cmd.get_arguments().any(|a| a.get_long() == Some(f.long)), "{}", f.long);
        }
    }
}
