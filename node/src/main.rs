//! `stateless-node`: the node agent (see the library's docs).
//!
//! Exit codes: 0 success, 1 failure (one line on stderr says why), 2 usage
//! error. A closed output pipe (`stateless-node status | head -1`) ends a
//! command quietly with 0.

use std::process::ExitCode;

use clap::Parser;
use stateless_node::cli::Cli;

mod logger;

fn main() -> ExitCode {
    let args = Cli::parse();
    logger::init(args.verbose);
    match stateless_node::run(args) {
        Ok(code) => code,
        Err(err) if stateless_node::broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stateless-node: {err:#}");
            ExitCode::FAILURE
        }
    }
}
