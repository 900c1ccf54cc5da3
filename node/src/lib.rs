//! `stateless-node`: what runs on a booted node after the loader has done
//! its work in the initramfs.
//!
//! - [`persist`]: push the state worth keeping back to the config server;
//! - [`status`]: show what the loader did on this boot (`status.json`);
//! - [`report`]: send the boot reports the loader kept while no server answered.
//!
//! The admin's commands are in `statelessctl` (`ctl/`), the server in
//! `server/`; nothing here runs on the admin's machine or in the initramfs.
//! The binary (`src/main.rs`) parses the command line and calls [`run`].

use std::io::Write as _;
use std::process::ExitCode;

pub mod cli;
pub mod persist;
pub mod report;
pub mod status;

/// Runs one command; the error is printed by `main` as one line.
pub fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Persist(a) => {
            // Not println!, which panics on a closed pipe: the error lets
            // `main` end quietly instead.
            let line = persist::run(&a)?;
            writeln!(std::io::stdout().lock(), "{line}")
                .map_err(|e| anyhow::Error::new(e).context("writing to stdout"))?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Status(a) => status::run(&a),
        cli::Command::Report(a) => {
            let line = report::run(&a)?;
            writeln!(std::io::stdout().lock(), "{line}")
                .map_err(|e| anyhow::Error::new(e).context("writing to stdout"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether an error comes from writing to a reader that went away
/// (`stateless-node status | head -1`): the reader has what it wanted, so
/// the command ends quietly with 0, as a C tool would by SIGPIPE.
pub fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}
