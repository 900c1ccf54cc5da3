//! Command-line definition of `stateless-node`. The doc comments are the help
//! text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where the loader leaves its report of the boot (kept across switch-root).
pub const STATUS_FILE: &str = "/run/stateless/status.json";

/// Stateless Loader node agent: what runs on a booted node (push persisted state, show the boot's status).
#[derive(Debug, Parser)]
#[command(name = "stateless-node", version = env!("STATELESS_VERSION"), help_expected = true, propagate_version = true)]
pub struct Cli {
    /// More output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Push the persisted paths of this node to the config server.
    Persist(Box<PersistArgs>),
    /// Show what the loader did on this boot (from its status.json).
    Status(StatusArgs),
    /// Send the boot reports the loader kept because no server answered.
    Report(ReportArgs),
}

/// Where the loader keeps boot reports no server took (without a cache disk).
pub const PENDING_REPORTS: &str = "/run/stateless/reports";

/// `stateless-node report`
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The directory of kept reports (a mounted cache disk keeps them in its reports/).
    #[arg(long, default_value = PENDING_REPORTS)]
    pub dir: PathBuf,
    /// The persist config file (server, node, key, ca).
    #[arg(long, default_value = "/etc/stateless/persist.conf")]
    pub config: PathBuf,
    /// The server's base URL (default: the config file's, else the one each report names).
    #[arg(long)]
    pub server: Option<String>,
    /// The node id (default: the config file's, else each report's).
    #[arg(long)]
    pub node: Option<String>,
    /// The node's key file, from which the push key that signs reports is derived.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) for an https server.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

/// `stateless-node persist`
#[derive(Debug, Clone, Args)]
pub struct PersistArgs {
    /// Paths to persist, besides those in the config file (absolute, as on the running node).
    pub paths: Vec<String>,
    /// The persist config file.
    #[arg(long, default_value = "/etc/stateless/persist.conf")]
    pub config: PathBuf,
    /// The loader's status file (server, node and generation when not configured).
    #[arg(long, default_value = STATUS_FILE)]
    pub status: PathBuf,
    /// The root the paths are read from.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The server's base URL, e.g. https://cfg.example:8443.
    #[arg(long)]
    pub server: Option<String>,
    /// The node id.
    #[arg(long)]
    pub node: Option<String>,
    /// The node's key file.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) for an https server.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Generation of the pushed bundle (default: one more than the newest known).
    #[arg(long)]
    pub generation: Option<u64>,
    /// Do not start from the node's current bundle; push only the listed paths.
    #[arg(long)]
    pub only_paths: bool,
    /// Write the bundle here instead of pushing it.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the push public key to enrol with `statelessctl approve --push-public-key`, and exit.
    #[arg(long)]
    pub print_public_key: bool,
}

/// `stateless-node status`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the status file as the loader wrote it (JSON).
    #[arg(long)]
    pub json: bool,
    /// The loader's status file.
    #[arg(long, default_value = STATUS_FILE)]
    pub status: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn persist_defaults_are_the_node_paths() {
        let cli = Cli::try_parse_from(["stateless-node", "persist", "/etc/ssh"]).unwrap();
        let Command::Persist(a) = cli.command else { panic!("not persist") };
        assert_eq!(a.paths, ["/etc/ssh"]);
        assert_eq!(a.status, PathBuf::from(STATUS_FILE));
        assert_eq!(a.config, PathBuf::from("/etc/stateless/persist.conf"));
    }
}
