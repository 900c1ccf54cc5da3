//! The capability probe: what this node can do, read once per boot from
//! `/sys` and `/proc` below the loader's host root (so tests fake them
//! with a directory), written to `status.json` as `capabilities` and sent
//! with the boot report.
//!
//! Every fact is best effort: a file that is missing or does not parse
//! leaves its field empty (`null`), it never fails the boot. Each file read
//! is bounded ([`MAX_FILE`]), as is the number of entries listed
//! ([`MAX_ENTRIES`]).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Most bytes read from one /sys or /proc file.
const MAX_FILE: u64 = 64 * 1024;
/// Most directory entries looked at (interfaces, block devices, banks).
const MAX_ENTRIES: usize = 256;

/// What the probe found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Capabilities {
    /// The loader's version.
    pub loader_version: &'static str,
    /// The running kernel's release (`uname -r`).
    pub kernel: Option<String>,
    /// CPUs online.
    pub cpus: Option<u32>,
    /// Memory in bytes (`MemTotal`).
    pub memory_bytes: Option<u64>,
    /// Whether the kernel has overlayfs (built in or loaded).
    pub overlayfs: bool,
    /// The TPM.
    pub tpm: Tpm,
    /// Block devices on a USB bus (whole disks), e.g. `sdb`.
    pub usb_storage: Vec<String>,
    /// The cache disk.
    pub cache: CacheDisk,
    /// Network interfaces but `lo`, sorted by name.
    pub interfaces: Vec<Interface>,
}

/// The TPM, from `/sys/class/tpm/tpm0`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Tpm {
    /// Whether a TPM device exists.
    pub present: bool,
    /// `2.0` or `1.2`, when the kernel says.
    pub version: Option<String>,
    /// PCR banks the kernel exposes (`sha1`, `sha256`, ...), sorted.
    pub pcr_banks: Vec<String>,
}

/// The cache disk, as the report code found it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CacheDisk {
    /// Whether a cache (device or directory) was found and could be used.
    pub found: bool,
    /// The device or directory.
    pub device: Option<String>,
    /// Bytes free on it.
    pub free_bytes: Option<u64>,
    /// Its size in bytes.
    pub total_bytes: Option<u64>,
}

impl CacheDisk {
    /// The facts of a cache mounted (or standing in) at `dir`.
    pub fn at(device: &str, dir: &Path) -> CacheDisk {
        let st = rustix::fs::statvfs(dir).ok();
        CacheDisk {
            found: true,
            device: Some(device.to_owned()),
            free_bytes: st.as_ref().map(|s| s.f_bavail.saturating_mul(s.f_frsize)),
            total_bytes: st.as_ref().map(|s| s.f_blocks.saturating_mul(s.f_frsize)),
        }
    }
}

/// One network interface.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// `operstate`: `up`, `down`, `unknown`, ...
    pub state: Option<String>,
    /// Whether it has a link (carrier), when the kernel says.
    pub carrier: Option<bool>,
    /// Its hardware address.
    pub mac: Option<String>,
}

/// Reads a small file, trimmed; `None` when missing or not text.
fn read(path: &Path) -> Option<String> {
    let mut s = String::new();
    fs::File::open(path).ok()?.take(MAX_FILE).read_to_string(&mut s).ok()?;
    Some(s.trim().to_owned())
}

/// Entry names of a directory, sorted, at most [`MAX_ENTRIES`].
fn names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<String> = rd.flatten().take(MAX_ENTRIES).filter_map(|e| e.file_name().into_string().ok()).collect();
    v.sort();
    v
}

/// Probes the host below `host_root`; `cache` is what the caller found.
pub fn probe(host_root: &Path, cache: CacheDisk) -> Capabilities {
    let sys = host_root.join("sys");
    let proc = host_root.join("proc");
    Capabilities {
        loader_version: env!("CARGO_PKG_VERSION"),
        kernel: read(&proc.join("sys/kernel/osrelease")).filter(|s| !s.is_empty()),
        cpus: read(&sys.join("devices/system/cpu/online"))
            .and_then(|s| count_cpus(&s))
            .or_else(|| cpuinfo_count(&proc.join("cpuinfo"))),
        memory_bytes: read(&proc.join("meminfo")).and_then(|m| mem_total(&m)),
        overlayfs: read(&proc.join("filesystems")).is_some_and(|f| has_fs(&f, "overlay"))
            || sys.join("module/overlay").is_dir(),
        tpm: tpm(&sys.join("class/tpm")),
        usb_storage: usb_disks(&sys.join("class/block")),
        cache,
        interfaces: interfaces(&sys.join("class/net")),
    }
}

/// Counts a CPU list such as `0-3,6,8-9`.
fn count_cpus(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

fn cpuinfo_count(path: &Path) -> Option<u32> {
    let text = read(path)?;
    let n = text.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count();
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// `MemTotal:  16318412 kB` in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// Whether `/proc/filesystems` lists `name` (`nodev\toverlay`).
fn has_fs(list: &str, name: &str) -> bool {
    list.lines().any(|l| l.split_whitespace().last() == Some(name))
}

fn tpm(class: &Path) -> Tpm {
    let Some(dev) = names(class).into_iter().find(|n| n.starts_with("tpm") && !n.starts_with("tpmrm")) else {
        return Tpm::default();
    };
    let dir = class.join(dev);
    let version = match read(&dir.join("tpm_version_major")).as_deref() {
        Some("2") => Some("2.0".to_owned()),
        Some("1") => Some("1.2".to_owned()),
        Some(other) if !other.is_empty() => Some(other.to_owned()),
        _ => None,
    };
    // Kernels since 5.12 expose each bank as `pcr-<algorithm>/`.
    let pcr_banks = names(&dir).into_iter().filter_map(|n| n.strip_prefix("pcr-").map(str::to_owned)).collect();
    Tpm { present: true, version, pcr_banks }
}

/// Whole disks whose device path runs through a USB bus.
fn usb_disks(class: &Path) -> Vec<String> {
    names(class)
        .into_iter()
        .filter(|n| !class.join(n).join("partition").exists())
        .filter(|n| fs::read_link(class.join(n)).is_ok_and(|l: PathBuf| l.to_string_lossy().contains("/usb")))
        .collect()
}

fn interfaces(class: &Path) -> Vec<Interface> {
    names(class)
        .into_iter()
        .filter(|n| n != "lo")
        .map(|name| {
            let dir = class.join(&name);
            Interface {
                state: read(&dir.join("operstate")),
                // Reading `carrier` of a down interface fails (EINVAL): unknown.
                carrier: read(&dir.join("carrier")).and_then(|c| match c.as_str() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }),
                mac: read(&dir.join("address")).filter(|a| !a.is_empty()),
                name,
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn a_faked_host_is_read() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "proc/sys/kernel/osrelease", "6.1.0-28-amd64\n");
        put(r, "sys/devices/system/cpu/online", "0-3,6\n");
        put(r, "proc/meminfo", "MemTotal:        2048 kB\nMemFree: 1 kB\n");
        put(r, "proc/filesystems", "nodev\tsysfs\n\text4\nnodev\toverlay\n");
        put(r, "sys/class/tpm/tpm0/tpm_version_major", "2\n");
        fs::create_dir_all(r.join("sys/class/tpm/tpm0/pcr-sha256")).unwrap();
        fs::create_dir_all(r.join("sys/class/tpm/tpm0/pcr-sha1")).unwrap();
        fs::create_dir_all(r.join("sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/block/sdb")).unwrap();
        fs::create_dir_all(r.join("sys/devices/pci0000:00/ata1/block/sda")).unwrap();
        fs::create_dir_all(r.join("sys/class/block")).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/0000:00:14.0/usb1/1-1/block/sdb",
            r.join("sys/class/block/sdb"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../devices/pci0000:00/ata1/block/sda", r.join("sys/class/block/sda")).unwrap();
        put(r, "sys/class/net/lo/operstate", "unknown\n");
        put(r, "sys/class/net/eth0/operstate", "up\n");
        put(r, "sys/class/net/eth0/carrier", "1\n");
        put(r, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        put(r, "sys/class/net/eth1/operstate", "down\n");
        let c = probe(r, CacheDisk::at("LABEL=cache", r));
        assert_eq!(c.kernel.as_deref(), Some("6.1.0-28-amd64"));
        assert_eq!(c.cpus, Some(5));
        assert_eq!(c.memory_bytes, Some(2048 * 1024));
        assert!(c.overlayfs);
        assert_eq!(
            c.tpm,
            Tpm { present: true, version: Some("2.0".into()), pcr_banks: vec!["sha1".into(), "sha256".into()] }
        );
        assert_eq!(c.usb_storage, ["sdb"]);
        assert!(c.cache.found && c.cache.free_bytes.is_some());
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[0].name, "eth0");
        assert_eq!(c.interfaces[0].carrier, Some(true));
        assert_eq!(c.interfaces[1].carrier, None);
        assert_eq!(c.loader_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn an_empty_host_gives_empty_facts() {
        let t = tempfile::tempdir().unwrap();
        let c = probe(t.path(), CacheDisk::default());
        assert_eq!(c, Capabilities { loader_version: env!("CARGO_PKG_VERSION"), ..Capabilities::default() });
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-7"), Some(8));
        assert_eq!(count_cpus("0-1,4-5,9"), Some(5));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus("x"), None);
        assert_eq!(mem_total("MemTotal: 10 kB"), Some(10240));
        assert!(!has_fs("nodev\toverlayfoo", "overlay"));
    }
}
