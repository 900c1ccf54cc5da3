//! `statelessctl bundle …`

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use stateless_bundle::{
    BundleReader, Cipher, Header, Key, Limits, OpenOptions, PackOptions, PayloadKind, PublicKey, RelPath, Scope,
    SignerId, sha_hex,
};
use stateless_keys::{read_key_file, read_public_key_file, read_signing_key_file};

/// Limits on what a bundle may hold (defaults in docs/bundle-format.md).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest payload, e.g. 512M (default 512 MiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::parse_size)]
    pub max_payload: Option<u64>,
    /// Largest decompressed tar, e.g. 2G (default 2 GiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::parse_size)]
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
        /// What the payload is: a tar stream extracted into the root, or an
        /// EROFS image mounted as an overlay lower layer (needs mkfs.erofs).
        #[arg(long = "as", value_enum, default_value_t = PayloadArg::Tar)]
        as_kind: PayloadArg,
        /// Compression inside an image (--as image only).
        #[arg(long, value_enum)]
        compress: Option<crate::erofs::ImageCompress>,
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
        /// Write the output as a directory tree (the default; an image
        /// bundle's image is unpacked into it).
        #[arg(long, conflicts_with = "as_image")]
        as_dir: bool,
        /// Write an image bundle's EROFS image to OUTPUT as a file instead.
        #[arg(long)]
        as_image: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// `bundle pack --as`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadArg {
    /// A zstd-compressed tar stream (payload kind 0).
    Tar,
    /// An EROFS image (payload kind 1).
    Image,
}

/// The publisher whose signature a bundle must carry.
#[derive(Debug, Clone, Args)]
pub struct PubkeyArg {
    /// Require a valid signature by this publisher public key, and a payload
    /// matching the signed digest (without it, a signature is not checked).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub pubkey: Option<PathBuf>,
}

pub fn run(cmd: BundleCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCmd::Pack {
            dir,
            output,
            key,
            unencrypted: _,
            sign,
            generation,
            scope,
            expires,
            level,
            threads,
            deletions,
            as_kind,
            compress,
            force,
            limits,
        } => {
            if compress.is_some() && as_kind != PayloadArg::Image {
                bail!("--compress applies to --as image only (a tar bundle is compressed with zstd: --level)");
            }
            let key = key.map(|k| read_key_file(&k).context("reading key file")).transpose()?;
            let signer = sign.map(|s| read_signing_key_file(&s).context("reading signing key file")).transpose()?;
            let scope = Scope::parse(&scope).with_context(|| format!("parsing --scope {scope}"))?;
            let expires =
                expires.map(|e| parse_time(&e).with_context(|| format!("parsing --expires {e}"))).transpose()?;
            let deletions = deletions
                .iter()
                .map(|d| {
                    RelPath::parse(d.trim_start_matches('/').as_bytes(), 4096)
                        .map_err(|e| anyhow::anyhow!("--delete {d}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !dir.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            if output.exists() && !force {
                bail!("{} exists (use --force to replace it)", output.display());
            }
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
            let opts = PackOptions {
                key: key.as_ref(),
                generation,
                created: now(),
                expires,
                scope,
                level,
                threads: if threads > 1 { threads } else { 0 },
                deletions,
                limits: limits_from(&limits),
            };
            // Write beside the output and rename, so a failed pack never
            // leaves a half-written bundle under the final name.
            let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let mut tmp = tempfile::Builder::new()
                .prefix(".statelessctl-pack")
                .tempfile_in(parent)
                .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
            let (header, digest) = if as_kind == PayloadArg::Image {
                let image = tempfile::Builder::new()
                    .prefix(".statelessctl-erofs")
                    .tempfile_in(parent)
                    .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
                let compress = compress.unwrap_or(crate::erofs::ImageCompress::Lz4);
                let mut opts = opts;
                let deletions = std::mem::take(&mut opts.deletions);
                crate::erofs::make_image(&dir, &deletions, compress, image.path())
                    .with_context(|| format!("making the image of {}", dir.display()))?;
                let s = match &signer {
                    Some(s) => stateless_bundle::pack_image_signed(image.path(), tmp.as_file_mut(), &opts, s),
                    None => stateless_bundle::pack_image(image.path(), tmp.as_file_mut(), &opts),
                }
                .with_context(|| format!("packing the image of {}", dir.display()))?;
                (s.header, s.digest)
            } else {
                let s = match &signer {
                    Some(s) => stateless_bundle::pack_signed(&dir, tmp.as_file_mut(), &opts, s),
                    None => stateless_bundle::pack(&dir, tmp.as_file_mut(), &opts),
                }
                .with_context(|| format!("packing {}", dir.display()))?;
                (s.header, s.digest)
            };
            // 0644, not the temporary file's 0600: a bundle is published by
            // copying it into a web server's document root, where nginx
            // (another user) must read it. An encrypted bundle is protected
            // by its key; an unencrypted one is served to anyone anyway.
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("setting the mode of {}", output.display()))?;
            tmp.as_file().sync_all().context("syncing bundle")?;
            tmp.persist(&output).with_context(|| format!("writing {}", output.display()))?;
            let h = &header;
            let contents = match h.kind {
                PayloadKind::ErofsImage => format!("an EROFS image of {} bytes", h.expanded_len),
                _ => format!("{} entries", h.entry_count),
            };
            println!(
                "{}: generation {}, {}, scope {}, {}, {} bytes ({} expanded), digest {}, {}",
                output.display(),
                h.generation,
                match h.cipher {
                    Cipher::None => "unencrypted".to_owned(),
                    _ => format!("key {}", h.key_id),
                },
                h.scope,
                contents,
                h.payload_len + stateless_bundle::header::HEADER_LEN as u64,
                h.expanded_len,
                short(&digest),
                describe_signature(h, true),
            );
        }
        BundleCmd::Inspect { file, json } => inspect(&file, json)?,
        BundleCmd::Verify { file, key, pubkey, limits } => {
            let checked = pubkey.pubkey.is_some();
            match open(&file, key.as_deref(), &pubkey, &limits_from(&limits), Sink::Verify, false)? {
                Opened::Tree(summary) => println!(
                    "{}: OK, generation {}, {}, {} entries ({} files, {} deletions), digest {}, {}",
                    file.display(),
                    summary.header.generation,
                    describe_cipher(&summary.header),
                    summary.extract.entries,
                    summary.extract.files,
                    summary.extract.whiteouts,
                    short(&summary.digest),
                    describe_signature(&summary.header, checked),
                ),
                Opened::Image(summary) => println!(
                    "{}: OK, generation {}, {}, an EROFS image of {} bytes, digest {}, {}",
                    file.display(),
                    summary.header.generation,
                    describe_cipher(&summary.header),
                    summary.image_len,
                    short(&summary.digest),
                    describe_signature(&summary.header, checked),
                ),
            }
        }
        BundleCmd::Open { file, key, output, pubkey, no_same_owner, as_dir: _, as_image, limits } => {
            if output.symlink_metadata().is_ok() {
                bail!("{} exists; open writes a new {}", output.display(), if as_image { "file" } else { "directory" });
            }
            let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let limits = limits_from(&limits);
            if as_image {
                // The image goes beside the output and is renamed only once
                // all of it authenticated.
                let mut tmp = tempfile::Builder::new()
                    .prefix(".statelessctl-open")
                    .tempfile_in(parent)
                    .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
                let Opened::Image(summary) =
                    open(&file, key.as_deref(), &pubkey, &limits, Sink::Image(tmp.as_file_mut()), false)?
                else {
                    bail!("{}: not an image bundle (--as-image needs one; open it as a directory)", file.display());
                };
                tmp.persist(&output).with_context(|| format!("writing {}", output.display()))?;
                println!(
                    "{}: generation {}, EROFS image of {} bytes -> {}",
                    file.display(),
                    summary.header.generation,
                    summary.image_len,
                    output.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            // Extract beside the output and rename only once everything
            // authenticated; the temporary directory vanishes on error.
            let staging = tempfile::Builder::new()
                .prefix(".statelessctl-open")
                .tempdir_in(parent)
                .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
            let owners = !no_same_owner && rustix::process::geteuid().is_root();
            let image_path = staging.path().join("image");
            let tree = staging.path().join("tree");
            let mut image_file = None;
            let opened = {
                let sink = match reader_kind(&file)? {
                    PayloadKind::ErofsImage => Sink::Image(image_file.insert(
                        File::create_new(&image_path).with_context(|| format!("creating {}", image_path.display()))?,
                    )),
                    _ => {
                        std::fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
                        Sink::Tree(&tree)
                    }
                };
                open(&file, key.as_deref(), &pubkey, &limits, sink, owners)?
            };
            if let Opened::Image(_) = &opened {
                // Only an image that authenticated as a whole gets here.
                crate::erofs::image_to_dir(&image_path, &tree)
                    .with_context(|| format!("{}: unpacking the image", file.display()))?;
            }
            if let Err(e) = std::fs::rename(&tree, &output) {
                return Err(e).with_context(|| format!("moving the extracted tree to {}", output.display()));
            }
            match opened {
                Opened::Tree(summary) => println!(
                    "{}: generation {}, {} files, {} dirs, {} links, {} deletions -> {}",
                    file.display(),
                    summary.header.generation,
                    summary.extract.files,
                    summary.extract.dirs,
                    summary.extract.symlinks + summary.extract.hardlinks,
                    summary.extract.whiteouts,
                    output.display()
                ),
                Opened::Image(summary) => println!(
                    "{}: generation {}, EROFS image of {} bytes unpacked -> {}",
                    file.display(),
                    summary.header.generation,
                    summary.image_len,
                    output.display()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where [`open`] puts the payload.
enum Sink<'a> {
    /// Check everything, write nothing.
    Verify,
    /// Extract a tar payload into this (empty) directory.
    Tree(&'a Path),
    /// Write an image payload to this file.
    Image(&'a mut File),
}

/// What [`open`] found.
enum Opened {
    Tree(stateless_bundle::OpenSummary),
    Image(stateless_bundle::ImageSummary),
}

/// The payload kind a bundle's header claims (not yet authenticated: only
/// to choose where [`open`] writes, which checks it again).
fn reader_kind(file: &Path) -> anyhow::Result<PayloadKind> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Ok(BundleReader::new(f).with_context(|| format!("{}", file.display()))?.raw_header().unverified().kind)
}

/// Reads, authenticates and streams the bundle into `sink`. With a public
/// key, the signature is checked before the payload is read and the payload
/// digest before this returns `Ok`.
fn open(
    file: &Path,
    key: Option<&Path>,
    pubkey: &PubkeyArg,
    limits: &Limits,
    sink: Sink<'_>,
    owners: bool,
) -> anyhow::Result<Opened> {
    let key: Option<Key> = key.map(|k| read_key_file(k).context("reading key file")).transpose()?;
    let publisher: Option<PublicKey> =
        pubkey.pubkey.as_deref().map(|p| read_public_key_file(p).context("reading public key file")).transpose()?;
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    // No BufReader: the decryptor reads whole 64 KiB chunks, and one for
    // unencrypted payloads sits inside the bundle reader; another would copy
    // every byte once more.
    let reader = BundleReader::new(f).with_context(|| format!("{}", file.display()))?;
    if reader.raw_header().cipher() == Cipher::None && key.is_some() {
        log::warn!("{} is not encrypted; the key is not used", file.display());
    }
    let mut bundle = reader.authenticate(key.as_ref(), limits).with_context(|| format!("{}", file.display()))?;
    if let Some(p) = &publisher {
        bundle = bundle.require_signature(p).with_context(|| format!("{}", file.display()))?;
    }
    let ctx = || format!("{}", file.display());
    match (bundle.header().kind, sink) {
        (PayloadKind::ErofsImage, Sink::Image(f)) => {
            let summary = bundle.write_image(std::io::BufWriter::new(&mut *f)).with_context(ctx)?;
            f.sync_all().context("syncing the image")?;
            Ok(Opened::Image(summary))
        }
        (PayloadKind::ErofsImage, Sink::Verify) => {
            Ok(Opened::Image(bundle.write_image(std::io::sink()).with_context(ctx)?))
        }
        (PayloadKind::ErofsImage, Sink::Tree(_)) => {
            bail!("{}: the header changed between two reads", file.display())
        }
        (_, Sink::Image(_)) => {
            bail!("{}: a {} bundle, not an image", file.display(), bundle.header().kind.name())
        }
        (_, Sink::Tree(dest)) => Ok(Opened::Tree(
            bundle.extract(OpenOptions { dest: Some(dest), owners, threaded: true }).with_context(ctx)?,
        )),
        (_, Sink::Verify) => {
            Ok(Opened::Tree(bundle.extract(OpenOptions { dest: None, owners, threaded: true }).with_context(ctx)?))
        }
    }
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = BundleReader::new(f).with_context(|| format!("{}", file.display()))?;
    let raw = reader.raw_header();
    let h = raw.unverified();
    // Unencrypted headers carry a checksum anyone can check; encrypted ones
    // need the key.
    let checked = match h.cipher {
        Cipher::None => Some(raw.authenticate(None).is_ok()),
        _ => None,
    };
    let view = InspectView {
        format_version: stateless_bundle::header::FORMAT_VERSION,
        cipher: h.cipher.name(),
        payload_kind: h.kind.name(),
        key_id: (h.cipher != Cipher::None).then(|| h.key_id.to_string()),
        generation: h.generation,
        created: fmt_time(h.created),
        expires: h.expires.map(fmt_time),
        scope: h.scope.to_string(),
        payload_bytes: h.payload_len,
        expanded_bytes: h.expanded_len,
        entries: h.entry_count,
        payload_sha256: sha_hex(&h.payload_sha256),
        digest: raw.digest_hex(),
        signed: h.signature.is_some(),
        signer: raw.signer().map(|s| s.to_string()),
        file_bytes: len,
        header_authenticated: checked,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view).context("serialising")?);
        return Ok(());
    }
    println!("bundle:          {}", file.display());
    println!("format:          version {}", view.format_version);
    println!("cipher:          {}", view.cipher);
    println!("payload kind:    {}", view.payload_kind);
    println!("key id:          {}", view.key_id.as_deref().unwrap_or("none (unencrypted)"));
    println!("generation:      {}", view.generation);
    println!("created:         {}", view.created);
    println!("expires:         {}", view.expires.as_deref().unwrap_or("never"));
    println!("scope:           {}", view.scope);
    println!(
        "payload:         {} bytes ({} bytes expanded, {} entries)",
        view.payload_bytes, view.expanded_bytes, view.entries
    );
    println!("payload sha256:  {}", view.payload_sha256);
    println!("digest:          {}", view.digest);
    println!(
        "signature:       {}",
        match &view.signer {
            Some(s) => format!("signed by {s} (not checked here: bundle verify --pubkey)"),
            None => "unsigned".to_owned(),
        }
    );
    println!(
        "header:          {}",
        match checked {
            Some(true) => "checksum OK (unencrypted: not proof of origin)",
            Some(false) => "CHECKSUM MISMATCH (corrupt)",
            None => "not authenticated (needs the key: bundle verify)",
        }
    );
    let expected = h.payload_len + stateless_bundle::header::HEADER_LEN as u64;
    if len != expected {
        println!("warning:         file is {len} bytes, header declares {expected}");
    }
    Ok(())
}

#[derive(Serialize)]
struct InspectView {
    format_version: u16,
    cipher: &'static str,
    /// `tar+zstd` or `erofs-image`.
    payload_kind: &'static str,
    key_id: Option<String>,
    generation: u64,
    created: String,
    expires: Option<String>,
    scope: String,
    payload_bytes: u64,
    expanded_bytes: u64,
    entries: u32,
    payload_sha256: String,
    digest: String,
    signed: bool,
    /// The publisher's signer id (hex), `null` when unsigned. Not checked.
    signer: Option<String>,
    file_bytes: u64,
    /// `null` when the header needs the key to be authenticated.
    header_authenticated: Option<bool>,
}

fn describe_cipher(h: &Header) -> String {
    match h.cipher {
        Cipher::None => "unencrypted".into(),
        c => format!("{} key {}", c.name(), h.key_id.short()),
    }
}

/// `signed by publisher ID`, noting when the signature was not checked, or
/// `unsigned`.
fn describe_signature(h: &Header, checked: bool) -> String {
    match &h.signature {
        Some(s) if checked => format!("signed by publisher {}", SignerId(s.signer)),
        Some(s) => format!("signed by publisher {} (not checked)", SignerId(s.signer)),
        None => "unsigned".into(),
    }
}

fn limits_from(a: &LimitArgs) -> Limits {
    let d = Limits::default();
    Limits {
        max_payload: a.max_payload.unwrap_or(d.max_payload),
        max_expanded: a.max_expanded.unwrap_or(d.max_expanded),
        max_entries: a.max_entries.unwrap_or(d.max_entries),
        max_path: a.max_path.unwrap_or(d.max_path),
    }
}

fn short(digest: &str) -> String {
    digest.get(..16).unwrap_or(digest).to_owned()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn parse_time(s: &str) -> anyhow::Result<i64> {
    let t = humantime::parse_rfc3339(s).map_err(|e| anyhow::anyhow!("{e} (expected e.g. 2027-01-01T00:00:00Z)"))?;
    let secs = t.duration_since(UNIX_EPOCH).context("time before 1970")?.as_secs();
    Ok(i64::try_from(secs)?)
}

/// First second of the year 10000: humantime cannot format it (its Display
/// fails, and `to_string` then panics), and a header may say anything.
const YEAR_10000: u64 = 253_402_300_800;

fn fmt_time(t: i64) -> String {
    match u64::try_from(t) {
        Ok(s) if s < YEAR_10000 => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string(),
        Ok(_) => format!("{t} (after the year 9999)"),
        Err(_) => format!("{t} (before 1970)"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_header_time_formats_without_panicking() {
        for t in [i64::MIN, -1, 0, 1_700_000_000, 253_402_300_799, 253_402_300_800, 1 << 62, i64::MAX] {
            assert!(!super::fmt_time(t).is_empty());
        }
        assert_eq!(super::fmt_time(0), "1970-01-01T00:00:00Z");
        assert!(super::fmt_time(i64::MAX).contains("after the year 9999"));
    }
}
