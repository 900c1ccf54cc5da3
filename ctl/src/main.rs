//! `statelessctl`: make keys and bundles, look inside them, open them.
//!
//! Exit codes: 0 success, 1 failure (one line on stderr says why), 2 usage
//! error. A closed output pipe (`statelessctl nodes | head -1`) ends a command
//! quietly with 0.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd_bundle;
mod cmd_enrol;
mod cmd_history;
mod cmd_import;
mod cmd_initramfs;
mod cmd_key;
mod cmd_mirror;
mod cmd_model;
mod cmd_nodes;
mod cmd_server;
mod cmd_site;
mod cmd_tpm;
mod cmd_usb;
mod erofs;
mod ignition;
mod logger;
// scripts/package only: man pages and completions (see that file).
#[cfg(feature = "gen-docs")]
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

fn main() -> ExitCode {
    #[cfg(feature = "gen-docs")]
    if let Some(code) = gen_docs::generate_if_asked(<cli::Cli as clap::CommandFactory>::command(), "1", true) {
        return code;
    }
    quiet_on_broken_pipe();
    let args = cli::Cli::parse();
    logger::init(args.verbose);
    match run(args) {
        Ok(code) => code,
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Not eprintln!, which panics when stderr is a closed pipe: the
            // failure must still end with status 1, never with a panic or 0.
            let _ = writeln!(std::io::stderr(), "statelessctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether an error comes from writing to a reader that went away
/// (`statelessctl nodes | head -1`): the reader has what it wanted, so the
/// command ends quietly, as it would by SIGPIPE in a C tool. (Rust ignores
/// SIGPIPE, and restoring it needs `unsafe`, which this crate does not use.)
fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// `println!` panics when stdout is a closed pipe; the commands that print
/// with it would then abort (exit 134). A panic that says exactly that ends
/// the process quietly with 0 instead. Output to a closed stderr is never
/// a success: it ends with 1 (the command did not finish), and nothing is
/// printed, as there is nowhere to print. Any other panic is reported as
/// before.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        if msg.starts_with("failed printing to stderr") {
            std::process::exit(1);
        }
        default(info);
    }));
}

fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    match args.command {
        cli::Command::Key(k) => cmd_key::run(k),
        cli::Command::Tpm(t) => cmd_tpm::run(t),
        cli::Command::Bundle(b) => cmd_bundle::run(b),
        cli::Command::Site(s) => cmd_site::run(s),
        cli::Command::Model(m) => cmd_model::run(m),
        cli::Command::Plugins(a) => cmd_model::plugins(a),
        cli::Command::Serve(a) => cmd_server::serve(a),
        cli::Command::Publish(a) => cmd_server::publish(a),
        cli::Command::Nodes(a) => cmd_nodes::run(a),
        cli::Command::Mirror(a) => cmd_mirror::run(a),
        cli::Command::Approve(a) => cmd_server::approve(a),
        cli::Command::Reject(a) => cmd_server::reject(a),
        cli::Command::Pushes(a) => cmd_server::list_pushes(a),
        cli::Command::AcceptPush(a) => cmd_server::accept_push(a),
        cli::Command::Import(i) => cmd_import::run(i),
        cli::Command::Persist(_) => {
            // A node runs it, not the admin: it moved to the node agent.
            let _ = writeln!(
                std::io::stderr(),
                "statelessctl: persist moved to the node agent: run `stateless-node persist` on the node"
            );
            Ok(ExitCode::from(2))
        }
    }
}
