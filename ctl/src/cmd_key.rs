//! `statelessctl key …`

use std::process::ExitCode;

use anyhow::{Context, bail};
use stateless_bundle::{Key, SigningKey};
use stateless_keys::{
    read_key_file, read_signing_key_file, write_key_file, write_public_key_file, write_signing_key_file,
};

use crate::cli::KeyCmd;

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
