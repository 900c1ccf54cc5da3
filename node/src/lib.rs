//! `stateless-node`: what runs on a booted node after the loader has done
//! its work in the initramfs.
//!
//! - [`persist`]: push the state worth keeping back to the config server;
//! - [`status`]: show what the loader did on this boot (`status.json`).
//!
//! The admin's commands are in `statelessctl` (`ctl/`), the server in
//! `server/`; nothing here runs on the admin's machine or in the initramfs.
//! The binary (`src/main.rs`) parses the command line and calls [`run`].

use std::process::ExitCode;

pub mod cli;
pub mod persist;
pub mod status;

/// Runs one command; the error is printed by `main` as one line.
pub fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Persist(a) => {
            println!("{}", persist::run(&a)?);
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Status(a) => status::run(&a),
    }
}
