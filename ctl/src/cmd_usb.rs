//! `statelessctl key usb`: put site keys on a USB stick or a stick image
//! (vfat labelled `STATELESS`, keys at `/stateless/keys/<id>.key`), where the
//! loader's USB key source finds them.
//!
//! The file system is written by the standard tools, `mkfs.vfat`
//! (dosfstools) and `mmd`/`mcopy` (mtools), so that every system agrees the
//! stick is clean FAT and `fsck.vfat` accepts it. The key text goes
//! to `mcopy` through a pipe, never through a temporary file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use stateless_bundle::Key;
use stateless_keys::read_key_file;
use stateless_keys::usb::{self, FsKind};
use zeroize::Zeroizing;

/// Smallest image or device a FAT file system is made on.
const MIN_SIZE: u64 = 1 << 20;

/// Arguments of `statelessctl key usb`.
#[derive(Debug, Args)]
pub struct UsbArgs {
    /// Site key to put on the stick (repeatable: a stick may carry the old and the new key).
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    /// The USB device (a whole disk such as /dev/sdb, or a partition); never a mounted one.
    #[arg(long, value_name = "DEV", required_unless_present = "image", conflicts_with = "image")]
    pub device: Option<PathBuf>,
    /// An image file: created (vfat, --size) if missing, else the key is added to it.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// File system label the loader looks for (FAT: up to 11 upper-case letters, digits, '_', '-').
    #[arg(long, default_value = usb::DEFAULT_LABEL)]
    pub label: String,
    /// Size of a new image file, e.g. 16M.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = crate::cli::parse_size)]
    pub size: u64,
    /// Erase the device and make a new vfat file system on it (everything on it is lost).
    #[arg(long, conflicts_with = "image")]
    pub wipe: bool,
}

pub fn run(args: UsbArgs) -> anyhow::Result<ExitCode> {
    usb::check_fat_label(&args.label).map_err(anyhow::Error::msg)?;
    let keys =
        args.keys.iter().map(|p| read_key_file(p).context("reading key file")).collect::<anyhow::Result<Vec<_>>>()?;
    let (target, fresh) = match (&args.device, &args.image) {
        (Some(dev), _) => (dev.clone(), prepare_device(dev, &args.label, args.wipe)?),
        (None, Some(img)) => (img.clone(), prepare_image(img, &args.label, args.size)?),
        (None, None) => bail!("give --device or --image"),
    };
    if fresh {
        format(&target, &args.label, args.device.is_some())
            .with_context(|| format!("formatting {}", target.display()))?;
    }
    for key in &keys {
        let at = add_key(&target, key).with_context(|| format!("writing to {}", target.display()))?;
        println!("key {} -> {at} on {} (label {})", key.id(), target.display(), args.label);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a tool, with `input` on its standard input, and fails with its
/// last line of output.
fn tool(cmd: &mut Command, input: Option<&[u8]>) -> anyhow::Result<()> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {name} (apt-get install dosfstools mtools)"))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        bail!("{name}: {}", text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("failed").trim());
    }
    Ok(())
}

/// Makes a vfat file system labelled `label` over all of `target`.
fn format(target: &Path, label: &str, device: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new("mkfs.vfat");
    // -I: a whole disk without a partition table is what we want.
    cmd.args(if device { &["-I", "-n"][..] } else { &["-n"][..] }).arg(label).arg(target);
    tool(&mut cmd, None)
}

/// Copies `key` to `/stateless/keys/<id>.key`, creating the directories if
/// needed and replacing a file of the same name (the same key).
fn add_key(target: &Path, key: &Key) -> anyhow::Result<String> {
    let img = target.as_os_str();
    // -D s: skip directories that exist (mmd then exits 1; mcopy below
    // reports a real problem).
    let _ = tool(Command::new("mmd").arg("-i").arg(img).args(["-D", "s", "::/stateless", "::/stateless/keys"]), None);
    let at = format!("/{}/{}.key", usb::STICK_KEY_DIR, key.id());
    let text = Zeroizing::new(key.to_file_text());
    tool(Command::new("mcopy").arg("-i").arg(img).args(["-o", "-", &format!("::{at}")]), Some(text.as_bytes()))?;
    Ok(at)
}

/// Checks that `fs` on `path` is ours to add to.
fn check_existing(path: &Path, label: &str) -> anyhow::Result<bool> {
    match usb::probe(path).with_context(|| format!("reading {}", path.display()))? {
        Some((FsKind::Vfat, l)) if l.eq_ignore_ascii_case(label) => Ok(false),
        Some((kind, l)) => bail!("{} holds a {kind} file system labelled {l:?}, not vfat {label:?}", path.display()),
        None => bail!("{} holds no vfat file system labelled {label:?}", path.display()),
    }
}

/// Creates a new image file (mode 0600: it will hold a key) or checks an
/// existing one. Returns whether it needs formatting.
fn prepare_image(img: &Path, label: &str, size: u64) -> anyhow::Result<bool> {
    if fs::symlink_metadata(img).is_ok() {
        return check_existing(img, label);
    }
    if size < MIN_SIZE {
        bail!("--size {size}: an image must be at least 1M");
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(img)
        .with_context(|| format!("creating {}", img.display()))?;
    f.set_len(size)?;
    Ok(true)
}

/// Refuses what is not an unmounted block device. Returns whether it needs
/// formatting (only with `--wipe`).
fn prepare_device(dev: &Path, label: &str, wipe: bool) -> anyhow::Result<bool> {
    let meta = fs::metadata(dev).with_context(|| format!("opening {}", dev.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device (use --image for an image file)", dev.display());
    }
    let real = fs::canonicalize(dev)?;
    let real_s = real.to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    // The device itself, or one of its partitions (/dev/sdb1 of /dev/sdb).
    if let Some(line) = mounts.lines().find(|l| {
        l.split(' ')
            .next()
            .and_then(|d| fs::canonicalize(d).ok())
            .is_some_and(|d| d.to_string_lossy().starts_with(&real_s))
    }) {
        bail!(
            "{} is mounted ({}); unmount it first",
            dev.display(),
            line.split(' ').take(2).collect::<Vec<_>>().join(" on ")
        );
    }
    if wipe {
        if meta_size(&real)? < MIN_SIZE {
            bail!("{} is smaller than 1 MiB", dev.display());
        }
        return Ok(true);
    }
    check_existing(dev, label).map_err(|e| anyhow::anyhow!("{e:#}; --wipe makes a new one (erasing the device)"))
}

fn meta_size(dev: &Path) -> anyhow::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(dev)?;
    Ok(f.seek(SeekFrom::End(0))?)
}
