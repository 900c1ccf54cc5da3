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
    }
    Ok(ExitCode::SUCCESS)
}
