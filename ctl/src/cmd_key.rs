//! `statelessctl key …`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use stateless_bundle::{Key, SigningKey};
use stateless_keys::derive::{Target, derive};
use stateless_keys::{
    read_key_file, read_signing_key_file, write_key_file, write_public_key_file, write_signing_key_file,
};

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
    Derive(DeriveArgs),
    /// Append keys and publisher public keys to a boot image (initramfs) as an extra cpio archive.
    Initramfs(crate::cmd_initramfs::InitramfsArgs),
    /// Put keys on a USB stick or a stick image (vfat labelled STATELESS).
    Usb(crate::cmd_usb::UsbArgs),
    /// Seal a key to this machine's TPM and its current PCR values.
    TpmSeal(crate::cmd_tpm::SealArgs),
    /// Check that a TPM-sealed key unseals here (prints its id, never the key).
    TpmCheck(crate::cmd_tpm::CheckArgs),
}

/// Arguments of `statelessctl key derive`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["node", "group", "default"])))]
pub struct DeriveArgs {
    /// The site key to derive from.
    #[arg(long, value_name = "FILE")]
    pub site: PathBuf,
    /// The key for this node id (its bundles have scope node:ID).
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    /// The key for this group (its bundles have scope group:NAME).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// The fleet-default key, for the default bundle every node fetches.
    #[arg(long)]
    pub default: bool,
    /// Where to write the derived key file (mode 0600).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: KeyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCmd::New { output, force } => {
            let key = Key::generate().context("generating key")?;
            write_key_file(&output, &key, force).context("writing key file")?;
            println!("{}", key.id());
        }
        KeyCmd::Id { file } => {
            let key = read_key_file(&file).context("reading key file")?;
            println!("{}", key.id());
        }
        KeyCmd::NewSigning { output, pub_out, force } => {
            // Check both names first, so that a refusal leaves no half pair.
            for path in std::iter::once(&output).chain(&pub_out) {
                if !force && path.symlink_metadata().is_ok() {
                    bail!("{} exists (use --force to replace it)", path.display());
                }
            }
            let key = SigningKey::generate().context("generating signing key")?;
            write_signing_key_file(&output, &key, force).context("writing signing key file")?;
            if let Some(p) = &pub_out {
                write_public_key_file(p, &key.public_key(), force).context("writing public key file")?;
            }
            println!("{}", key.signer_id());
        }
        KeyCmd::Pub { file, output, force } => {
            let key = read_signing_key_file(&file).context("reading signing key file")?;
            match output {
                Some(p) => {
                    write_public_key_file(&p, &key.public_key(), force).context("writing public key file")?;
                    println!("{}", key.signer_id());
                }
                None => print!("{}", key.public_key().to_file_text()),
            }
        }
        KeyCmd::Derive(args) => {
            let target = match (args.node, args.group) {
                (Some(n), _) => Target::Node(n),
                (_, Some(g)) => Target::Group(g),
                // clap's "target" group guarantees one of the three.
                (None, None) => Target::Default,
            };
            // The name first: a bad one is a usage mistake, whatever the key.
            target.label().context("deriving a key")?;
            let site = read_key_file(&args.site).context("reading site key file")?;
            if same_file(&args.site, &args.output) {
                bail!("{} is the site key itself; write the derived key elsewhere", args.output.display());
            }
            let key = derive(&site, &target).context("deriving a key")?;
            write_key_file(&args.output, &key, args.force).context("writing key file")?;
            println!("{}", key.id());
        }
        KeyCmd::Initramfs(args) => return crate::cmd_initramfs::run(args),
        KeyCmd::Usb(args) => return crate::cmd_usb::run(args),
        KeyCmd::TpmSeal(args) => return crate::cmd_tpm::seal(args),
        KeyCmd::TpmCheck(args) => return crate::cmd_tpm::check(args),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `a` and `b` name the same existing file (a link or another
/// spelling of the path included).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
