//! `statelessctl key tpm-seal` and `key tpm-check`: seal a site key to this
//! machine's TPM and PCR values (or under a policy signing key), and check
//! that a sealed key still unseals. `statelessctl tpm new-policy-key` and
//! `tpm sign-policy`: make a policy signing key and sign PCR policies with
//! it (signed policies, `docs/keys.md`); `tpm publish-policy`: publish
//! signed policies on the server for the loader to fetch.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use stateless_keys::read_key_file;
use stateless_keys::sealed::{Bank, PCR_COUNT, parse_pcr_list, read_sealed_file};
use stateless_keys::tpm::import::WrappedKey;
use stateless_keys::tpm::lock::{LOCK_PCR, LockState, boot_value, lock_state, with_lock};
use stateless_keys::tpm::policy::{
    PolicySigningKey, SignedPolicy, read_policy_public_file, read_policy_signing_file, read_signed_policy_file,
};
use stateless_keys::tpm::{MAX_PIN_LEN, Tpm, TpmError, TpmSelector};
use zeroize::Zeroizing;

/// Arguments of `statelessctl key tpm-seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// The site key to seal.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// PCRs whose current values the key is sealed to, e.g. 7 or 0,7 (default 7).
    #[arg(long, value_name = "LIST", conflicts_with = "policy_key")]
    pub pcrs: Option<String>,
    /// PCR bank: sha256, sha1 or sha384 (default sha256).
    #[arg(long, value_parser = parse_bank, conflicts_with = "policy_key")]
    pub bank: Option<Bank>,
    /// Seal under this policy public key (from `tpm new-policy-key`) instead of PCR values: the key
    /// unseals while the PCRs match any policy signed with its private half (`tpm sign-policy`).
    #[arg(long, value_name = "FILE")]
    pub policy_key: Option<PathBuf>,
    /// Which TPM: device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT.
    #[arg(long, value_name = "SELECTOR", default_value = "device:/dev/tpmrm0")]
    pub tpm: TpmSelector,
    /// Leave out the lock: by default the policy also covers PCR 15 at its value before the loader
    /// extends it after unsealing, so the key unseals once per boot, in the initramfs (docs/keys.md).
    #[arg(long, conflicts_with_all = ["lock_value", "policy_key"])]
    pub no_lock: bool,
    /// The value PCR 15 holds in the initramfs before the loader (hex; default all zeros, its
    /// value at power-on; give it only where something else measures into PCR 15 before the loader).
    #[arg(long, value_name = "HEX", conflicts_with = "policy_key")]
    pub lock_value: Option<String>,
    /// Also require a PIN to unseal (TPM2_PolicyAuthValue): asked on the terminal twice, or the
    /// first line of stdin; the loader asks for it on the console at each boot.
    #[arg(long)]
    pub pin: bool,
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
    /// A signed policy (from `tpm sign-policy`) for a key sealed under a policy key (repeatable).
    #[arg(long = "policy", value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// SEALED is a key wrapped for this TPM by `approve --tpm-key` (the `v1/nodes/NODE/tpm-key` file of
    /// zero-touch enrolment): import it first (TPM2_Import, as the loader does at boot), then unseal it.
    #[arg(long)]
    pub wrapped: bool,
    /// Which TPM: device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT.
    #[arg(long, value_name = "SELECTOR", default_value = "device:/dev/tpmrm0")]
    pub tpm: TpmSelector,
}

fn parse_bank(s: &str) -> Result<Bank, String> {
    Bank::parse(s).ok_or_else(|| format!("{s:?}: want sha256, sha1 or sha384"))
}

pub fn seal(args: SealArgs) -> anyhow::Result<ExitCode> {
    let key = read_key_file(&args.key).context("reading key file")?;
    let policy_key = match &args.policy_key {
        Some(p) => Some(read_policy_public_file(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let pcr_text = args.pcrs.as_deref().unwrap_or("7");
    let pcrs = parse_pcr_list(pcr_text).map_err(|e| anyhow::anyhow!("--pcrs {pcr_text}: {e}"))?;
    let bank = args.bank.unwrap_or(Bank::Sha256);
    if !args.force && fs::symlink_metadata(&args.output).is_ok() {
        bail!("{} exists (use --force to replace it)", args.output.display());
    }
    let lock = if args.no_lock { None } else { Some(lock_value(args.lock_value.as_deref(), bank)?) };
    let pin = if args.pin { Some(read_pin(true)?) } else { None };
    let mut tpm = Tpm::open(&args.tpm).context("opening the TPM")?;
    tpm.set_pin(pin.as_ref().map(|p| p.as_bytes())).context("--pin")?;
    let sealed = match (&policy_key, lock) {
        (Some(pk), _) => tpm.seal_authorized(&key, pk).context("sealing")?,
        (None, None) => tpm.seal(&key, bank, &pcrs).context("sealing")?,
        (None, Some(lock)) => {
            let mut read = pcrs.clone();
            read.push(LOCK_PCR);
            let values = tpm.pcr_read(bank, &read).context("reading the PCRs")?;
            if let Some((_, now)) = values.iter().find(|(i, _)| *i == LOCK_PCR) {
                note_lock(bank, now, &lock);
            }
            tpm.seal_values(&key, bank, with_lock(values, lock)).context("sealing")?
        }
    };
    write_file(&args.output, 0o600, sealed.to_text().as_bytes())?;
    let with = if sealed.needs_pin() { " with a PIN" } else { "" };
    match &policy_key {
        Some(pk) => println!(
            "key {} sealed under policy key {}{with} -> {}",
            key.id(),
            stateless_bundle::key::hex_encode(&pk.name()),
            args.output.display()
        ),
        None => {
            let list: Vec<String> = sealed.pcr_indices().iter().map(u8::to_string).collect();
            println!(
                "key {} sealed to PCR {} ({}){with} -> {}",
                key.id(),
                list.join(","),
                bank.name(),
                args.output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a PIN: on the terminal without echo (twice when `confirm`), or
/// the first line of stdin when it is not a terminal (scripts, tests).
fn read_pin(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let ask = |prompt: &str| -> anyhow::Result<Zeroizing<String>> {
        let saved = if tty { tcgetattr(&stdin).ok() } else { None };
        if tty {
            eprint!("{prompt}");
        }
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
        }
        let mut line = Zeroizing::new(String::new());
        let read = stdin.lock().read_line(&mut line);
        if let Some(t) = &saved {
            let _ = tcsetattr(&stdin, OptionalActions::Now, t);
            eprintln!();
        }
        read.context("reading the PIN")?;
        let pin = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
        if pin.is_empty() || pin.len() > MAX_PIN_LEN {
            bail!("a PIN is 1 to {MAX_PIN_LEN} bytes");
        }
        Ok(pin)
    };
    let pin = ask("PIN: ")?;
    if confirm && tty && *ask("PIN again: ")? != *pin {
        bail!("the two PINs differ");
    }
    Ok(pin)
}

/// The value of the lock PCR a policy covers: `--lock-value`, or the
/// PCR's value at power-on.
fn lock_value(given: Option<&str>, bank: Bank) -> anyhow::Result<Vec<u8>> {
    let Some(hex) = given else { return Ok(boot_value(bank)) };
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    let mut v = vec![0u8; bank.digest_len()];
    if hex.len() != 2 * bank.digest_len() || !stateless_bundle::key::hex_decode(hex, &mut v) {
        bail!("--lock-value: not a {} value ({} hex digits)", bank.name(), 2 * bank.digest_len());
    }
    Ok(v)
}

/// Says, on stderr, what the lock PCR holds now when that is not what the
/// policy covers: the values differ on purpose on a running system.
fn note_lock(bank: Bank, now: &[u8], lock: &[u8]) {
    if now == lock {
        return;
    }
    match lock_state(bank, now) {
        LockState::Closed => eprintln!(
            "note: PCR {LOCK_PCR} holds the loader's lock of this boot; the policy covers its value before the lock, as in the initramfs"
        ),
        LockState::Open | LockState::Other => eprintln!(
            "note: PCR {LOCK_PCR} ({}) holds {} now, not the value the policy covers ({}): if something measures into PCR {LOCK_PCR} before the loader, give that value with --lock-value, or --no-lock (docs/keys.md)",
            bank.name(),
            stateless_bundle::key::hex_encode(now),
            stateless_bundle::key::hex_encode(lock)
        ),
    }
}

/// Writes `data` to `path` with `mode` through a temporary file and a
/// rename, so that a reader never sees half a file.
fn write_file(path: &Path, mode: u32, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let wrapped = if args.wrapped {
        let text = read_limited(&args.sealed)?;
        Some(WrappedKey::parse(&text).with_context(|| format!("reading {}", args.sealed.display()))?)
    } else {
        None
    };
    let t = Instant::now();
    let mut tpm = Tpm::open(&args.tpm).context("opening the TPM")?;
    let sealed = match &wrapped {
        // The loader's boot path: import under this TPM's SRK, then unseal
        // the result like any sealed key.
        Some(w) => tpm.import(w).with_context(|| format!("importing {}", args.sealed.display()))?,
        None => read_sealed_file(&args.sealed).with_context(|| format!("reading {}", args.sealed.display()))?,
    };
    // A key sealed with a PIN: asked for (the terminal, or stdin's first line).
    let pin = if sealed.needs_pin() { Some(read_pin(false)?) } else { None };
    tpm.set_pin(pin.as_ref().map(|p| p.as_bytes())).context("the PIN")?;
    let mut policies = Vec::new();
    for p in &args.policies {
        let policy = read_signed_policy_file(p).with_context(|| format!("reading {}", p.display()))?;
        policies.push((p.display().to_string(), policy));
    }
    let key = match tpm.unseal_with(&sealed, &policies) {
        Ok(key) => key,
        // On the running system, after the loader: the other PCRs hold
        // the sealed values, and the key unseals again at the next boot.
        // On the running system PCR 15 may also hold later measurements
        // (systemd's machine id and file systems on a UKI boot): only the
        // initramfs before the loader has its pre-lock value.
        Err(TpmError::PcrMismatch { pcrs, bank }) if pcrs == [LOCK_PCR] => {
            println!(
                "key {}: not unsealed: PCR {LOCK_PCR} ({bank}) holds another value than the policy's here; the key unseals only where it holds that value (in the initramfs, before the loader); the other PCRs hold the sealed values ({} ms)",
                sealed.key_id,
                t.elapsed().as_millis()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e @ TpmError::Locked { .. }) => {
            println!(
                "key {}: not unsealed: {e}; the other PCRs hold the sealed values ({} ms)",
                sealed.key_id,
                t.elapsed().as_millis()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).with_context(|| format!("unsealing key {}", sealed.key_id.short())),
    };
    // Only the id, never the key.
    println!("key {} unseals ({} ms)", key.id(), t.elapsed().as_millis());
    Ok(ExitCode::SUCCESS)
}

/// Reads a wrapped-key file, at most one byte over the format's limit
/// (`WrappedKey::parse` refuses that with a clear message).
fn read_limited(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    const MAX: u64 = stateless_keys::tpm::import::MAX_WRAPPED_LEN as u64;
    let f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = Vec::new();
    f.take(MAX + 1).read_to_end(&mut text).with_context(|| format!("reading {}", path.display()))?;
    Ok(text)
}

/// `statelessctl tpm …`
#[derive(Debug, Subcommand)]
pub enum TpmCmd {
    /// Make a policy signing key (ECDSA P-256, mode 0600) and its public half for `key tpm-seal --policy-key`.
    NewPolicyKey {
        /// Where to write the policy signing key (keep it offline).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Where to write the public half (mode 0644); default: OUTPUT with the extension .pub.
        #[arg(long, value_name = "FILE")]
        pub_out: Option<PathBuf>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a PCR policy: keys sealed under the policy key unseal while these PCRs hold these values.
    SignPolicy(SignPolicyArgs),
    /// Publish signed policies on the server (v1/default/tpm-policies, or the node's), replacing those
    /// published there before; the loader fetches them and keeps them on the cache disk.
    PublishPolicy {
        /// The server's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Publish for this node only (v1/nodes/NODE/tpm-policies); default: for every node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Check that each policy is signed by this policy key (the public half, `.pub`).
        #[arg(long, value_name = "FILE")]
        policy_pub: Option<PathBuf>,
        /// Signed policies (from `tpm sign-policy`); none with --remove.
        #[arg(value_name = "POLICY", required_unless_present = "remove", conflicts_with = "remove")]
        policies: Vec<PathBuf>,
        /// Withdraw the published policies instead.
        #[arg(long)]
        remove: bool,
    },
}

/// Arguments of `statelessctl tpm sign-policy`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("values_from").required(true).args(["values", "current"])))]
pub struct SignPolicyArgs {
    /// The policy signing key (from `tpm new-policy-key`).
    #[arg(long, value_name = "FILE")]
    pub policy_key: PathBuf,
    /// The PCRs of the policy, e.g. 7 or 7,9.
    #[arg(long, value_name = "LIST")]
    pub pcrs: String,
    /// PCR values to sign, one `INDEX HEX` per line (`tpm2_pcrread` output works too).
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,
    /// Sign the values the TPM (--tpm) holds now.
    #[arg(long)]
    pub current: bool,
    /// PCR bank: sha256, sha1 or sha384.
    #[arg(long, default_value = "sha256", value_parser = parse_bank)]
    pub bank: Bank,
    /// Which TPM, with --current: device:/dev/tpmrm0 or swtpm:host=HOST,port=PORT.
    #[arg(long, value_name = "SELECTOR", default_value = "device:/dev/tpmrm0")]
    pub tpm: TpmSelector,
    /// Leave out the lock: by default the policy also covers PCR 15 at its value before the loader
    /// extends it after unsealing, so the key unseals once per boot, in the initramfs (docs/keys.md).
    #[arg(long, conflicts_with = "lock_value")]
    pub no_lock: bool,
    /// The value PCR 15 holds in the initramfs before the loader (hex; default all zeros, its
    /// value at power-on; give it only where something else measures into PCR 15 before the loader).
    #[arg(long, value_name = "HEX")]
    pub lock_value: Option<String>,
    /// Where to write the signed policy (mode 0644: it is not secret).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: TpmCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        TpmCmd::NewPolicyKey { output, pub_out, force } => {
            let pub_out = pub_out.unwrap_or_else(|| output.with_extension("pub"));
            if pub_out == output {
                bail!("the public half would overwrite {} (give --pub-out)", output.display());
            }
            // Check both names first, so that a refusal leaves no half pair.
            for path in [&output, &pub_out] {
                if !force && fs::symlink_metadata(path).is_ok() {
                    bail!("{} exists (use --force to replace it)", path.display());
                }
            }
            let key = PolicySigningKey::generate().context("generating a policy signing key")?;
            write_file(&output, 0o600, key.to_text().as_bytes())?;
            write_file(&pub_out, 0o644, key.public().to_text().as_bytes())?;
            println!(
                "policy key {} -> {} (keep offline), public {}",
                stateless_bundle::key::hex_encode(&key.public().name()),
                output.display(),
                pub_out.display()
            );
        }
        TpmCmd::SignPolicy(args) => return sign_policy(args),
        TpmCmd::PublishPolicy { data, node, policy_pub, policies, remove } => {
            publish_policy(&data, node.as_deref(), policy_pub.as_deref(), &policies, remove)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tpm publish-policy`: the signed policies, checked (each parses, is
/// signed by `policy_pub` when given, the list fits the loader's bounds),
/// written as one list atomically; or the list removed.
fn publish_policy(
    data: &Path,
    node: Option<&str>,
    policy_pub: Option<&Path>,
    files: &[PathBuf],
    remove: bool,
) -> anyhow::Result<()> {
    use stateless_keys::tpm::policy::{MAX_POLICY_LIST_LEN, parse_signed_policy_list};
    use stateless_keys::tpm::source::MAX_POLICY_FILES;
    let data =
        stateless_server::DataDir::open(data).with_context(|| format!("opening data directory {}", data.display()))?;
    let path = stateless_server::enrol::tpm_policies_file(&data, node).with_context(|| format!("node {node:?}"))?;
    if remove {
        match fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("nothing published at {}", path.display()),
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        return Ok(());
    }
    let public = match policy_pub {
        Some(p) => Some(read_policy_public_file(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let mut list: Vec<SignedPolicy> = Vec::new();
    for f in files {
        let policy = read_signed_policy_file(f).with_context(|| format!("reading {}", f.display()))?;
        if let Some(public) = &public {
            if policy.key_name != public.name() || !public.verifies(&policy.policy, &policy.signature) {
                bail!("{}: not signed by the policy key {}", f.display(), policy_pub.unwrap_or(f).display());
            }
        }
        // The same policy twice would only take a place of the loader's.
        if !list.contains(&policy) {
            list.push(policy);
        }
    }
    if list.len() > MAX_POLICY_FILES {
        bail!("{} policies: the loader reads at most {MAX_POLICY_FILES}", list.len());
    }
    let text: String = list.iter().map(SignedPolicy::to_text).collect();
    if text.len() > MAX_POLICY_LIST_LEN {
        bail!("{} bytes: the loader reads at most {MAX_POLICY_LIST_LEN}", text.len());
    }
    // What the loader will read back, checked before it is published.
    let back = parse_signed_policy_list(text.as_bytes()).context("the list does not read back")?;
    if back.len() != list.len() || back.iter().any(Result::is_err) {
        bail!("the list does not read back as the {} policies given", list.len());
    }
    let path = stateless_server::enrol::publish_policies(&data, node, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{} signed policies -> {}", list.len(), path.display());
    Ok(())
}

fn sign_policy(args: SignPolicyArgs) -> anyhow::Result<ExitCode> {
    let key =
        read_policy_signing_file(&args.policy_key).with_context(|| format!("reading {}", args.policy_key.display()))?;
    let pcrs = parse_pcr_list(&args.pcrs).map_err(|e| anyhow::anyhow!("--pcrs {}: {e}", args.pcrs))?;
    if !args.force && fs::symlink_metadata(&args.output).is_ok() {
        bail!("{} exists (use --force to replace it)", args.output.display());
    }
    let values = match &args.values {
        Some(path) => {
            let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let all = parse_pcr_values(&text, args.bank).with_context(|| format!("reading {}", path.display()))?;
            let mut out = Vec::new();
            // The lock PCR's value is not read from the file (below).
            for p in pcrs.iter().filter(|p| args.no_lock || **p != LOCK_PCR) {
                match all.iter().find(|(i, _)| i == p) {
                    Some(v) => out.push(v.clone()),
                    None => bail!("{}: no value for PCR {p}", path.display()),
                }
            }
            out
        }
        None => {
            let mut tpm = Tpm::open(&args.tpm).context("opening the TPM")?;
            tpm.pcr_read(args.bank, &pcrs).context("reading the PCRs")?
        }
    };
    let values = match (args.no_lock, &args.values) {
        (true, _) => values,
        (false, from_file) => {
            let lock = lock_value(args.lock_value.as_deref(), args.bank)?;
            if from_file.is_none() {
                let mut tpm = Tpm::open(&args.tpm).context("opening the TPM")?;
                let now = tpm.pcr_read(args.bank, &[LOCK_PCR]).context("reading the PCRs")?;
                if let Some((_, now)) = now.first() {
                    note_lock(args.bank, now, &lock);
                }
            }
            with_lock(values, lock)
        }
    };
    let signed = SignedPolicy::sign(&key, args.bank, values).context("signing")?;
    write_file(&args.output, 0o644, signed.to_text().as_bytes())?;
    let list: Vec<String> = signed.pcrs.iter().map(|(i, _)| i.to_string()).collect();
    println!(
        "policy {} for PCR {} ({}) signed -> {}",
        stateless_bundle::key::hex_encode(&signed.policy),
        list.join(","),
        args.bank.name(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses PCR values, one per line: `7 HEX`, `7: HEX`, `7=HEX` or
/// `tpm2_pcrread`'s `  7 : 0xHEX`. Blank lines, `#` comments and bank
/// headers (`sha256:`) are skipped.
fn parse_pcr_values(text: &str, bank: Bank) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.ends_with(':') {
            continue;
        }
        let Some(split) = line.find(|c: char| c == ':' || c == '=' || c.is_whitespace()) else {
            bail!("line {}: want INDEX HEX", n + 1);
        };
        let (idx, rest) = line.split_at(split);
        let hex = rest.trim_start_matches(|c: char| c == ':' || c == '=' || c.is_whitespace());
        let hex = hex.strip_prefix("0x").or_else(|| hex.strip_prefix("0X")).unwrap_or(hex);
        let idx: u8 = match idx.parse() {
            Ok(i) if i < PCR_COUNT => i,
            _ => bail!("line {}: {idx:?} is not a PCR number", n + 1),
        };
        let mut v = Zeroizing::new(vec![0u8; bank.digest_len()]);
        if hex.len() != 2 * bank.digest_len() || !stateless_bundle::key::hex_decode(hex, &mut v) {
            bail!("line {}: PCR {idx}: not a {} value ({} hex digits)", n + 1, bank.name(), 2 * bank.digest_len());
        }
        if out.iter().any(|(i, _)| *i == idx) {
            bail!("line {}: PCR {idx} given twice", n + 1);
        }
        out.push((idx, v.to_vec()));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_value_files() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let got = parse_pcr_values(&format!("# x\nsha256:\n  9 : 0x{b}\n7 {a}\n"), Bank::Sha256).unwrap();
        assert_eq!(got, vec![(7, vec![0xaa; 32]), (9, vec![0xbb; 32])]);
        assert_eq!(parse_pcr_values(&format!("7={a}"), Bank::Sha256).unwrap().len(), 1);
        for (bad, want) in [
            (format!("24 {a}"), "not a PCR number"),
            ("7 abcd".to_owned(), "not a sha256 value"),
            (format!("7 {a}\n7 {a}"), "given twice"),
            ("7".to_owned(), "want INDEX HEX"),
        ] {
            let err = parse_pcr_values(&bad, Bank::Sha256).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
