//! `stateless-loader`: runs in the initramfs before switch-root, finds the
//! configuration server, fetches, verifies and applies this node's bundle.
//!
//! This file stays thin: parse the flags, install the logger and the panic
//! hook, call [`run`], map the outcome to an exit code. The flags and exit codes are documented
//! in `docs/cmdline.md`.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use stateless_loader::cmdline::{Config, OnFail};
use stateless_loader::pipeline::{self, Paths};
use stateless_loader::{crash, entropy, logger, overlay, report};

use crate::args::{Args, Invocation, PROC_CMDLINE, VERSION};

mod args;

// scripts/package only: man pages and completions (see that file).
#[cfg(feature = "gen-docs")]
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

fn main() -> ExitCode {
    #[cfg(feature = "gen-docs")]
    if let Some(code) = gen_docs::generate_if_asked(args::command(), "8", false) {
        return code;
    }
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(Invocation::Run(args)) => *args,
        Ok(Invocation::Help(text) | Invocation::Version(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("stateless-loader: {err}");
            return ExitCode::from(2);
        }
    };
    // Info level until the command line says whether to debug.
    // Tests and workstations may also ask through the environment, so that
    // wrappers need not know the flag.
    let stderr = args.log_stderr || std::env::var_os("STATELESS_LOG_STDERR").is_some();
    if let Err(err) = logger::init_to(false, stderr) {
        eprintln!("stateless: installing the logger: {err}");
    }
    crash::install();
    let run_dir = args.run_dir.clone();
    // The pipeline catches panics per source; this is the last net, so
    // that even a panic outside it ends with status.json and the exit
    // code onfail asks for (emergency while the command line is unread).
    match crash::catch(|| run(args)) {
        Ok(Ok(code)) => code,
        Ok(Err(err)) => {
            log::error!("{err:#}");
            // Exit status 1 is treated as emergency; status.json says why,
            // as for every other run.
            let _ = pipeline::failed_before_start(&run_dir, &format!("no bundle applied: {err:#}"), OnFail::Emergency);
            ExitCode::FAILURE
        }
        Err(panicked) => {
            let onfail = ONFAIL.get().copied().unwrap_or(OnFail::Emergency);
            let report = pipeline::crashed(&run_dir, &panicked.0, onfail);
            log::error!("{}", report.message);
            if !logger::to_stderr() {
                eprintln!("{}{}", logger::TAG, report.message);
            }
            ExitCode::from(pipeline::exit_code(&report, onfail))
        }
    }
}

/// `rd.stateless.onfail`, once the command line is read.
static ONFAIL: OnceLock<OnFail> = OnceLock::new();

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cmdline = match &args.cmdline {
        Some(line) => line.clone(),
        // Lossy: one stray byte elsewhere on the line (a bootloader's
        // label, a typo) must not stop the boot before `onfail` is known.
        None => {
            let bytes =
                fs::read(&args.cmdline_file).with_context(|| format!("reading {}", args.cmdline_file.display()))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let config = Config::from_cmdline(&cmdline).context("reading the kernel command line")?;
    let _ = ONFAIL.set(config.onfail);
    crash::set_status_target(args.run_dir.clone(), config.onfail);
    logger::set_debug(config.debug);
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    log_config(&args, &config);
    // Before anything takes random bytes (see entropy.rs).
    if let Some(waited) = entropy::wait_for_pool().filter(|d| *d > Duration::from_millis(100)) {
        log::info!("waited {} ms for the kernel's random pool", waited.as_millis());
    }
    stateless_loader::keyladder::ask_pins_on(&args.console);
    let paths = Paths {
        sysroot: args.sysroot.clone(),
        run_dir: args.run_dir.clone(),
        cache_dir: args.cache_dir.clone(),
        host_root: PathBuf::from("/"),
        key_dir: args.key_dir.clone(),
        sealed_dir: args.sealed_dir.clone(),
        usb_devices: args.usb_devices.clone(),
        publisher_dir: args.publisher_dir.clone(),
    };
    // The overlay, when asked for or when the root cannot be written, comes
    // first: the bundle must land in the upper layer, never in the base image.
    match overlay::prepare(&args.sysroot, &args.run_dir, config.overlay) {
        Ok(Some(note)) => log::info!("{note}"),
        Ok(None) => {}
        Err(err) => {
            let err = anyhow::Error::from(err);
            let line = format!("no bundle applied: making the root writable: {err:#}");
            let failed = pipeline::failed_before_start(&args.run_dir, &line, config.onfail);
            log::error!("{}", failed.message);
            if !logger::to_stderr() {
                eprintln!("{}{}", logger::TAG, failed.message);
            }
            return Ok(ExitCode::from(pipeline::exit_code(&failed, config.onfail)));
        }
    }
    // A person typing a TPM PIN: before anything runs under a deadline.
    pipeline::unseal_pins_early(&config, &paths);
    let report = pipeline::run(&config, &paths);
    // The one line a person reads off the console: on stderr (the console
    // in the initramfs, whatever the kernel's loglevel) and in the kernel log.
    // In debug mode it also names the build, so that a photo of the screen
    // says which loader ran.
    let message = console_message(&report.message, config.debug);
    let line = format!("{}{message}", logger::TAG);
    if report.result == "applied" {
        log::info!("{message}");
    } else {
        log::error!("{message}");
    }
    if !logger::to_stderr() {
        eprintln!("{line}");
    }
    // After the decision and its console line: the probe goes into
    // status.json and the report to the server, within report::BUDGET.
    report::after_boot(&config, &paths, &report);
    // Last, after everything that needs a key: whatever happened, the
    // TPM-sealed keys stay sealed for the rest of this boot.
    pipeline::close_tpm(&config, &paths);
    Ok(ExitCode::from(pipeline::exit_code(&report, config.onfail)))
}

/// The console line: the report's message, and in debug mode the loader's
/// version and commit after it.
fn console_message(message: &str, debug: bool) -> String {
    if debug { format!("{message} [stateless-loader {VERSION}]") } else { message.to_owned() }
}

/// The parsed configuration at debug level, a few short records.
fn log_config(args: &Args, config: &Config) {
    log::debug!("stateless-loader {VERSION}");
    let servers: Vec<&str> = config.servers.iter().map(|t| t.as_str()).collect();
    let cache_dir = args.cache_dir.as_ref().map(|d| d.display().to_string());
    log::debug!(
        "flags: cmdline from {}, sysroot {}, run dir {}, cache dir {}",
        if args.cmdline.is_some() { "--cmdline" } else { PROC_CMDLINE },
        args.sysroot.display(),
        args.run_dir.display(),
        cache_dir.as_deref().unwrap_or("(none)"),
    );
    log::debug!(
        "discovery: servers {servers:?}, domain {:?}, srv {}, dns {:?}, timeout {} s",
        config.domain,
        config.srv,
        config.dns,
        config.timeout.as_secs(),
    );
    log::debug!(
        "identity: node {:?}, groups {:?}, BOOTIF {:?}; key {:?}, cache {:?}, onfail {}, overlay {:?}",
        config.node,
        config.groups,
        config.bootif,
        config.key,
        config.cache,
        config.onfail,
        config.overlay,
    );
    log::debug!("trust: ca {:?}, pins {:?}, insecure {}", config.ca, config.pins, config.insecure);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn debug_console_line_names_the_build() {
        assert_eq!(console_message("applied generation 7", false), "applied generation 7");
        assert_eq!(
            console_message("applied generation 7", true),
            format!("applied generation 7 [stateless-loader {VERSION}]")
        );
    }

    #[test]
    fn bad_cmdline_is_an_error_before_any_network() {
        let Ok(Invocation::Run(args)) = args::parse(["--cmdline", "rd.stateless.timeout=abc"]) else {
            panic!("flags not parsed");
        };
        let err = run(*args).map(|_| ()).map_err(|e| format!("{e:#}"));
        assert_eq!(
            err,
            Err("reading the kernel command line: rd.stateless.timeout=abc: not a number of seconds".to_owned())
        );
    }
}
