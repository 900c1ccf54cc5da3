//! Command-line definition. The doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Stateless Loader admin tool: make site keys, publisher keys and configuration bundles.
#[derive(Debug, Parser)]
#[command(name = "statelessctl", version, help_expected = true, propagate_version = true)]
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
    Key(KeyCmd),
    /// Make, inspect, verify and open bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Serve a data directory to nodes (the reference config server).
    Serve(crate::cli_server::ServeArgs),
    /// Publish a bundle into a data directory (atomic, generation must increase).
    Publish(crate::cli_server::PublishArgs),
    /// List known, pending and rejected nodes, with when they were last seen.
    Nodes(crate::cli_server::NodesArgs),
    /// Approve a node (optionally put it in a group and enrol it for push).
    Approve(crate::cli_server::ApproveArgs),
    /// Reject a node (revokes an approval and push enrolment).
    Reject(crate::cli_server::RejectArgs),
    /// List bundles nodes pushed that await review.
    Pushes(crate::cli_server::PushesArgs),
    /// Publish a node's pushed bundle.
    AcceptPush(crate::cli_server::AcceptPushArgs),
    /// On a running node: push the persisted paths to the config server.
    Persist(crate::cli_server::PersistArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Generate a new 256-bit site key (mode 0600) and print its id.
    New {
        /// Where to write the key file.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the id of a key file.
    Id {
        /// The key file.
        file: PathBuf,
    },
    /// Generate a publisher signing key (Ed25519, mode 0600) and print its signer id.
    NewSigning {
        /// Where to write the signing key file.
        #[arg(short, long)]
        output: PathBuf,
        /// Also write its public key file here (mode 0644); `key pub` makes it later.
        #[arg(long, value_name = "FILE")]
        pub_out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Write the public key file of a publisher signing key (or print it).
    Pub {
        /// The signing key file.
        file: PathBuf,
        /// Where to write the public key file (mode 0644); without it, print the file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Derive a node's, a group's or the fleet-default key from the site key (mode 0600).
    Derive(crate::cmd_key::DeriveArgs),
    /// Append keys and publisher public keys to a boot image (initramfs) as an extra cpio archive.
    Initramfs(crate::cmd_initramfs::InitramfsArgs),
    /// Put keys on a USB stick or a stick image (vfat labelled STATELESS).
    Usb(crate::cmd_usb::UsbArgs),
    /// Seal a key to this machine's TPM and its current PCR values.
    TpmSeal(crate::cmd_tpm::SealArgs),
    /// Check that a TPM-sealed key unseals here (prints its id, never the key).
    TpmCheck(crate::cmd_tpm::CheckArgs),
}

/// Limits on what a bundle may hold (defaults in docs/bundle-format.md).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest payload, e.g. 512M (default 512 MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_payload: Option<u64>,
    /// Largest decompressed tar, e.g. 2G (default 2 GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_expanded: Option<u64>,
    /// Most entries (default 100000).
    #[arg(long, value_name = "N")]
    pub max_entries: Option<u32>,
    /// Longest path in bytes (default 4096).
    #[arg(long, value_name = "BYTES")]
    pub max_path: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Pack a directory tree into a bundle.
    Pack {
        /// The tree to pack (its contents become the root of the bundle).
        dir: PathBuf,
        /// Where to write the bundle.
        #[arg(short, long)]
        output: PathBuf,
        /// Encrypt for this site key.
        #[arg(long, required_unless_present = "unencrypted", conflicts_with = "unencrypted")]
        key: Option<PathBuf>,
        /// Make an unencrypted bundle (integrity checksum only, readable by anyone).
        #[arg(long)]
        unencrypted: bool,
        /// Sign the bundle with this publisher signing key (see key new-signing).
        #[arg(long, value_name = "SIGNING_KEY")]
        sign: Option<PathBuf>,
        /// Generation number; loaders refuse to go backwards.
        #[arg(long)]
        generation: u64,
        /// Which nodes may apply it: any, node:ID or group:NAME.
        #[arg(long, default_value = "any")]
        scope: String,
        /// Expiry time, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// zstd level, 1 to 19.
        #[arg(long, default_value_t = stateless_bundle::DEFAULT_LEVEL)]
        level: i32,
        /// zstd worker threads (default: the number of CPUs).
        #[arg(long)]
        threads: Option<u32>,
        /// Delete this path of the base image when applied (repeatable).
        #[arg(long = "delete", value_name = "PATH")]
        deletions: Vec<String>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Show a bundle's header (no key needed).
    Inspect {
        /// The bundle.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle completely without writing anything.
    Verify {
        /// The bundle.
        file: PathBuf,
        /// The site key (not needed for unencrypted bundles).
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        pubkey: PubkeyArg,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Extract a bundle into a new directory, only if all of it verifies.
    Open {
        /// The bundle.
        file: PathBuf,
        /// The site key (not needed for unencrypted bundles).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The directory to create (must not exist).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        pubkey: PubkeyArg,
        /// Do not apply owners from the bundle even when running as root.
        #[arg(long)]
        no_same_owner: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// The publisher whose signature a bundle must carry.
#[derive(Debug, Clone, Args)]
pub struct PubkeyArg {
    /// Require a valid signature by this publisher public key, and a payload
    /// matching the signed digest (without it, a signature is not checked).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub pubkey: Option<PathBuf>,
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
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
