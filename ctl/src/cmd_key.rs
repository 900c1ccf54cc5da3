//! `statelessctl key …`

use std::process::ExitCode;

use anyhow::Context;
use stateless_bundle::Key;
use stateless_keys::{read_key_file, write_key_file};

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
        KeyCmd::Initramfs(args) => return crate::cmd_initramfs::run(args),
        KeyCmd::Usb(args) => return crate::cmd_usb::run(args),
        KeyCmd::TpmSeal(args) => return crate::cmd_tpm::seal(args),
        KeyCmd::TpmCheck(args) => return crate::cmd_tpm::check(args),
    }
    Ok(ExitCode::SUCCESS)
}
