//! `stateless-node`: the node agent (see the library's docs).
//!
//! Exit codes: 0 success, 1 failure (one line on stderr says why), 2 usage
//! error. A closed output pipe (`stateless-node status | head -1`) ends a
//! command quietly with 0.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use stateless_node::cli::Cli;

mod logger;
// scripts/package only: man pages and completions (see that file).
#[cfg(feature = "gen-docs")]
#[path = "../../packaging/gen_docs.rs"]
mod gen_docs;

fn main() -> ExitCode {
    #[cfg(feature = "gen-docs")]
    if let Some(code) = gen_docs::generate_if_asked(<Cli as clap::CommandFactory>::command(), "1", true) {
        return code;
    }
    let args = Cli::parse();
    logger::init(args.verbose);
    match stateless_node::run(args) {
        Ok(code) => code,
        Err(err) if stateless_node::broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Not eprintln!, which panics when stderr is a closed pipe: the
            // failure must still end with status 1.
            let _ = writeln!(std::io::stderr(), "stateless-node: {err:#}");
            ExitCode::FAILURE
        }
    }
}
