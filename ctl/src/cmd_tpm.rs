//! `statelessctl key tpm-seal` and `key tpm-check`: seal a site key to this
//! machine's TPM and PCR values, and check that a sealed key still unseals.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use stateless_keys::read_key_file;
use stateless_keys::sealed::{Bank, parse_pcr_list, read_sealed_file};
use stateless_keys::tpm::{Tpm, TpmSelector};

/// Arguments of `statelessctl key tpm-seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// The site key to seal.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// PCRs whose current values the key is sealed to, e.g. 7 or 0,7.
    #[arg(long, value_name = "LIST", default_value = "7")]
    pub pcrs: String,
    /// PCR bank: sha256, sha1 or sha384.
    #[arg(long, default_value = "sha256", value_parser = parse_bank)]
    pub bank: Bank,
    /// Which TPM: device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT.
    #[arg(long, value_name = "SELECTOR", default_value = "device:/dev/tpmrm0")]
    pub tpm: TpmSelector,
    /// Where to write the sealed key (mode 0600).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `statelessctl key tpm-check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The sealed key (from `key tpm-seal`).
    pub sealed: PathBuf,
    /// Which TPM: device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT.
    #[arg(long, value_name = "SELECTOR", default_value = "device:/dev/tpmrm0")]
    pub tpm: TpmSelector,
}

fn parse_bank(s: &str) -> Result<Bank, String> {
    Bank::parse(s).ok_or_else(|| format!("{s:?}: want sha256, sha1 or sha384"))
}

pub fn seal(args: SealArgs) -> anyhow::Result<ExitCode> {
    let key = read_key_file(&args.key).context("reading key file")?;
    let pcrs = parse_pcr_list(&args.pcrs).map_err(|e| anyhow::anyhow!("--pcrs {}: {e}", args.pcrs))?;
    if !args.force && fs::symlink_metadata(&args.output).is_ok() {
        bail!("{} exists (use --force to replace it)", args.output.display());
    }
    let mut tpm = Tpm::open(&args.tpm).context("opening the TPM")?;
    let sealed = tpm.seal(&key, args.bank, &pcrs).context("sealing")?;
    let tmp = args.output.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(sealed.to_text().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &args.output)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", args.output.display()))?;
    let list: Vec<String> = pcrs.iter().map(u8::to_string).collect();
    println!("key {} sealed to PCR {} ({}) -> {}", key.id(), list.join(","), args.bank.name(), args.output.display());
    Ok(ExitCode::SUCCESS)
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let sealed = read_sealed_file(&args.sealed).with_context(|| format!("reading {}", args.sealed.display()))?;
    let t = Instant::now();
    let mut tpm = Tpm::open(&args.tpm).context("opening the TPM")?;
    let key = tpm.unseal(&sealed).with_context(|| format!("unsealing key {}", sealed.key_id.short()))?;
    // Only the id, never the key.
    println!("key {} unseals ({} ms)", key.id(), t.elapsed().as_millis());
    Ok(ExitCode::SUCCESS)
}
