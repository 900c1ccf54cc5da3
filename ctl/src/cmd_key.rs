//! `statelessctl key …`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use stateless_bundle::{Key, SigningKey};
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
    /// Append keys to a boot image (initramfs) as an extra cpio archive.
    Initramfs(crate::cmd_initramfs::InitramfsArgs),
    /// Put keys on a USB stick or a stick image (vfat labelled STATELESS).
    Usb(crate::cmd_usb::UsbArgs),
    /// Seal a key to this machine's TPM and its current PCR values.
    TpmSeal(crate::cmd_tpm::SealArgs),
    /// Check that a TPM-sealed key unseals here (prints its id, never the key).
    TpmCheck(crate::cmd_tpm::CheckArgs),
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
        KeyCmd::Initramfs(args) => return crate::cmd_initramfs::run(args),
        KeyCmd::Usb(args) => return crate::cmd_usb::run(args),
        KeyCmd::TpmSeal(args) => return crate::cmd_tpm::seal(args),
        KeyCmd::TpmCheck(args) => return crate::cmd_tpm::check(args),
    }
    Ok(ExitCode::SUCCESS)
}
