//! The root of `statelessctl`'s command line: the command tree and the
//! value parsers its commands share. Each command's own arguments live
//! beside its code (`cmd_key.rs`, `cmd_bundle.rs`, `cmd_usb.rs`,
//! `cmd_server.rs`, ...). The doc comments are the help text.

use clap::{Parser, Subcommand};

/// Stateless Loader admin tool: make site keys, publisher keys and configuration bundles.
#[derive(Debug, Parser)]
#[command(name = "statelessctl", version = env!("STATELESS_VERSION"), help_expected = true, propagate_version = true)]
pub struct Cli {
    /// More output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make and inspect site keys and publisher signing keys.
    #[command(subcommand)]
    Key(crate::cmd_key::KeyCmd),
    /// TPM policy signing keys and signed PCR policies (for keys sealed with `key tpm-seal --policy-key`).
    #[command(subcommand)]
    Tpm(crate::cmd_tpm::TpmCmd),
    /// Make, inspect, verify and open bundles.
    #[command(subcommand)]
    Bundle(crate::cmd_bundle::BundleCmd),
    /// Check, build and diff a site tree (layers, templates, models).
    #[command(subcommand)]
    Site(crate::cmd_site::SiteCmd),
    /// Show what the node model did to a root.
    #[command(subcommand)]
    Model(crate::cmd_model::ModelCmd),
    /// List the plugins a root runs (/etc/stateless/plugins.json).
    Plugins(crate::cmd_model::PluginsArgs),
    /// Serve a data directory to nodes (the reference config server).
    Serve(crate::cmd_server::ServeArgs),
    /// Publish a bundle into a data directory (atomic, generation must increase).
    Publish(crate::cmd_server::PublishArgs),
    /// The fleet: known, pending and rejected nodes with their last boot report (or one node's reports).
    Nodes(crate::cmd_nodes::NodesArgs),
    /// Copy a data directory's bundles to a mirror's directory: layers first, then the nodes' bundles.
    Mirror(crate::cmd_mirror::MirrorArgs),
    /// Approve a node (optionally put it in a group and enrol it for push).
    Approve(crate::cmd_server::ApproveArgs),
    /// Reject a node (revokes an approval and push enrolment).
    Reject(crate::cmd_server::RejectArgs),
    /// List bundles nodes pushed that await review.
    Pushes(crate::cmd_server::PushesArgs),
    /// Publish a node's pushed bundle.
    AcceptPush(crate::cmd_server::AcceptPushArgs),
    /// Turn another tool's configuration into a site layer (Ignition).
    #[command(subcommand)]
    Import(crate::cmd_import::ImportCmd),
    /// Moved: `persist` runs on a node, as `stateless-node persist`.
    #[command(hide = true)]
    Persist(MovedArgs),
}

/// The arguments of a command that moved to another program: accepted as
/// they come, so that the refusal names the new command whatever was given.
#[derive(Debug, Clone, clap::Args)]
pub struct MovedArgs {
    /// Whatever followed the command name.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Parses `123`, `64K`, `512M`, `2G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 4096, 64K, 512M, 2G)"))
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
    fn version_names_the_commit() {
        // packaging/build-version.rs: "0.2.0 (commit 1234abcd5678)", or
        // "(commit unknown)" when built outside a git checkout.
        let v = Cli::command().render_version();
        assert!(v.starts_with(concat!("statelessctl ", env!("CARGO_PKG_VERSION"), " (commit ")), "{v}");
        assert!(v.ends_with(")\n"), "{v}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
