//! `statelessctl`: make keys and bundles, look inside them, open them.
//!
//! Exit codes: 0 success, 1 failure (one line on stderr says why), 2 usage
//! error.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd_bundle;
mod cmd_key;
mod logger;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    logger::init(args.verbose);
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("statelessctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Key(k) => cmd_key::run(k),
        cli::Command::Bundle(b) => cmd_bundle::run(b),
    }
}
