//! `statelessctl`: make keys and bundles, look inside them, open them.
//!
//! Exit codes: 0 success, 1 failure (one line on stderr says why), 2 usage
//! error.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cli_server;
mod cmd_bundle;
mod cmd_initramfs;
mod cmd_key;
mod cmd_server;
mod cmd_tpm;
mod cmd_usb;
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
        cli::Command::Serve(a) => cmd_server::serve(a),
        cli::Command::Publish(a) => cmd_server::publish(a),
        cli::Command::Nodes(a) => cmd_server::nodes(a),
        cli::Command::Approve(a) => cmd_server::approve(a),
        cli::Command::Reject(a) => cmd_server::reject(a),
        cli::Command::Pushes(a) => cmd_server::list_pushes(a),
        cli::Command::AcceptPush(a) => cmd_server::accept_push(a),
        cli::Command::Persist(_) => {
            // A node runs it, not the admin: it moved to the node agent.
            eprintln!("statelessctl: persist moved to the node agent: run `stateless-node persist` on the node");
            Ok(ExitCode::from(2))
        }
    }
}
