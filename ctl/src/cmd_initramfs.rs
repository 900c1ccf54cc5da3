//! `statelessctl key initramfs`: append keys, TPM-sealed keys and publisher
//! public keys to a boot image as one extra `newc` cpio archive, which the
//! kernel unpacks after the image's own archives.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use sha2::Digest;
use stateless_keys::cpio::{Archive, pad_to};
use stateless_keys::tpm::policy::read_signed_policy_file;
use stateless_keys::tpm::source::POLICY_SUBDIR;
use stateless_keys::{EMBEDDED_KEY_DIR, PUBLISHER_DIR, SEALED_DIR, read_key_file, read_public_key_file, sealed};
use zeroize::Zeroizing;

/// Arguments of `statelessctl key initramfs`.
#[derive(Debug, Args)]
pub struct InitramfsArgs {
    /// Site key to embed at /etc/stateless/keys/<id>.key, mode 0600 (repeatable, for rotation).
    #[arg(long = "key", value_name = "FILE", required_unless_present_any = ["sealed", "pubkeys", "policies"])]
    pub keys: Vec<PathBuf>,
    /// TPM-sealed key (from `key tpm-seal`) to embed at /etc/stateless/tpm/<id>.sealed (repeatable).
    #[arg(long = "sealed", value_name = "FILE")]
    pub sealed: Vec<PathBuf>,
    /// Signed TPM policy (from `tpm sign-policy`) to embed at /etc/stateless/tpm/policies/, for keys sealed
    /// with `key tpm-seal --policy-key` (repeatable: ship the old and the new policy across an update).
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Publisher public key (from `key pub`) to embed at /etc/stateless/publishers/<signer>.pub (repeatable, for rotation).
    #[arg(long = "pubkey", value_name = "FILE")]
    pub pubkeys: Vec<PathBuf>,
    /// The boot image (initramfs) to start from; compressed or not.
    #[arg(long, value_name = "FILE")]
    pub initrd: PathBuf,
    /// Where to write the keyed boot image (mode 0600: it may hold a key).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: InitramfsArgs) -> anyhow::Result<ExitCode> {
    let mtime = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(0));
    let mut archive = Archive::new(mtime);
    // The kernel applies a directory entry's owner and mode to an existing
    // directory, so /etc and /etc/stateless get the usual root 0755.
    archive.dir("etc", 0o755)?;
    archive.dir("etc/stateless", 0o755)?;
    let mut ids = Vec::new();
    if !args.keys.is_empty() {
        archive.dir(EMBEDDED_KEY_DIR, 0o700)?;
    }
    for path in &args.keys {
        let key = read_key_file(path).context("reading key file")?;
        let text = Zeroizing::new(key.to_file_text());
        archive.file(&format!("{EMBEDDED_KEY_DIR}/{}.key", key.id()), 0o600, text.as_bytes())?;
        ids.push(format!("key {}", key.id()));
    }
    if !args.sealed.is_empty() {
        archive.dir(SEALED_DIR, 0o700)?;
    }
    for path in &args.sealed {
        let obj = sealed::read_sealed_file(path).with_context(|| format!("reading {}", path.display()))?;
        archive.file(&format!("{SEALED_DIR}/{}.sealed", obj.key_id), 0o600, obj.to_text().as_bytes())?;
        ids.push(format!("TPM-sealed key {}", obj.key_id));
    }
    // Signed policies are not secret either (0755, 0644). Named by a hash
    // of their text, so that the same policy given twice is one file and
    // two different ones never collide.
    let mut policies: Vec<(String, String)> = Vec::new();
    for path in &args.policies {
        let policy = read_signed_policy_file(path).with_context(|| format!("reading {}", path.display()))?;
        let text = policy.to_text();
        let name = stateless_bundle::key::hex_encode(sha2::Sha256::digest(text.as_bytes()).get(..8).unwrap_or(&[]));
        if !policies.iter().any(|(n, _)| *n == name) {
            policies.push((name, text));
        }
    }
    if !policies.is_empty() {
        if args.sealed.is_empty() {
            archive.dir(SEALED_DIR, 0o700)?;
        }
        archive.dir(&format!("{SEALED_DIR}/{POLICY_SUBDIR}"), 0o755)?;
    }
    for (name, text) in &policies {
        archive.file(&format!("{SEALED_DIR}/{POLICY_SUBDIR}/{name}.signed"), 0o644, text.as_bytes())?;
        ids.push(format!("signed TPM policy {name}"));
    }
    // Public keys are not secret: 0755 and 0644, so that a reader in the
    // initramfs needs no privilege and a check of the image sees them.
    let mut publishers = Vec::new();
    for path in &args.pubkeys {
        let key = read_public_key_file(path).context("reading publisher public key file")?;
        // The same publisher twice (two copies of one .pub) is one entry.
        if !publishers.contains(&key) {
            publishers.push(key);
        }
    }
    if !publishers.is_empty() {
        archive.dir(PUBLISHER_DIR, 0o755)?;
    }
    for key in &publishers {
        archive.file(&format!("{PUBLISHER_DIR}/{}.pub", key.signer_id()), 0o644, key.to_file_text().as_bytes())?;
        ids.push(format!("publisher {}", key.signer_id()));
    }
    let cpio = Zeroizing::new(archive.finish()?);
    write_image(&args.initrd, &args.output, args.force, &cpio)
        .with_context(|| format!("writing {}", args.output.display()))?;
    for id in ids {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies `initrd` to a temporary file beside `output`, pads it to a multiple
/// of 4 with zeros, appends `cpio`, and renames it into place.
fn write_image(initrd: &Path, output: &Path, force: bool, cpio: &[u8]) -> anyhow::Result<()> {
    if !force && fs::symlink_metadata(output).is_ok() {
        bail!("{} exists (use --force to replace it)", output.display());
    }
    let mut input = File::open(initrd).with_context(|| format!("opening {}", initrd.display()))?;
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let len = io::copy(&mut input, &mut out)?;
        out.write_all(&vec![0u8; pad_to(len)])?;
        out.write_all(cpio)?;
        out.sync_all()?;
        fs::rename(&tmp, output)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}
