//! Who is this node? The identity picks the node's bundle on the server and
//! fills the `${...}` variables of URL templates.
//!
//! The node identity is, in order: `rd.stateless.node=`; else the SMBIOS
//! system UUID (`/sys/class/dmi/id/product_uuid`) unless it is a placeholder
//! (all zeros, all F, the well-known `03000200-0400-0500-0006-000700080009`,
//! or text such as `Not Settable`); else the MAC address of `BOOTIF=`; else
//! the MAC address of the first physical NIC, in kernel (ifindex) order. A
//! NIC is physical when `/sys/class/net/NAME/device` exists; `lo`, bridges,
//! bonds, VLANs, veths and tun devices have none.
//!
//! Every path is read below a root directory that the caller passes (`/` on
//! a real machine, a temporary directory holding fake sysfs files in tests).
//! Values are normalised: UUIDs and MACs lower case, MACs colon separated.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::template::{Values, Var};

/// Sysfs and procfs attributes are at most a page; read no more than this.
const MAX_ATTR_LEN: u64 = 4096;

/// SMBIOS UUIDs that firmware vendors ship on every board; they identify
/// nothing.
const PLACEHOLDER_UUIDS: &[&str] = &[
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
];

/// SMBIOS serial numbers that firmware vendors ship unfilled (compared
/// case-insensitively).
const PLACEHOLDER_SERIALS: &[&str] = &[
    "not specified",
    "not settable",
    "not applicable",
    "not available",
    "not present",
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "chassis serial number",
    "none",
    "n/a",
    "123456789",
];

/// Host names that say nothing about the machine.
const PLACEHOLDER_HOSTNAMES: &[&str] = &["(none)", "localhost", "localhost.localdomain"];

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MacError {
    /// Not six two-digit hex groups separated by `:` or `-`.
    #[error("not a MAC address (want aa:bb:cc:dd:ee:ff or 01-aa-bb-cc-dd-ee-ff)")]
    Malformed,
    /// A PXELINUX `BOOTIF=` whose hardware type is not 01 (Ethernet).
    #[error("hardware type {0} is not Ethernet (01)")]
    NotEthernet(String),
}

impl MacAddr {
    /// Parses the PXELINUX `BOOTIF=` form `01-aa-bb-cc-dd-ee-ff` (the
    /// leading `01` is the ARP hardware type, Ethernet); a plain MAC
    /// address is accepted too, as dracut does.
    pub fn from_bootif(s: &str) -> Result<MacAddr, MacError> {
        let s = s.trim();
        // Like dracut: six groups are a plain MAC, more carry a type first.
        if s.contains(':') || s.split('-').count() == 6 {
            return s.parse();
        }
        match s.split_once('-') {
            Some(("01", rest)) => rest.parse(),
            Some((hw, rest)) if hw.len() == 2 && !rest.is_empty() => Err(MacError::NotEthernet(hw.to_owned())),
            _ => Err(MacError::Malformed),
        }
    }

    /// True for `00:00:00:00:00:00`, which some virtual devices report.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    /// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (any case).
    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut groups = s.split(sep);
        for byte in &mut out {
            let group = groups.next().ok_or(MacError::Malformed)?;
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacError::Malformed);
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| MacError::Malformed)?;
        }
        if groups.next().is_some() {
            return Err(MacError::Malformed);
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// Where the node identity came from (reported in the status file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSource {
    /// `rd.stateless.node=`.
    CommandLine,
    /// The SMBIOS system UUID.
    SmbiosUuid,
    /// The MAC address of `BOOTIF=`.
    BootIf,
    /// The MAC address of the first physical NIC.
    Nic {
        /// The interface name, e.g. `enp1s0`.
        name: String,
    },
}

impl fmt::Display for NodeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeSource::CommandLine => f.write_str("rd.stateless.node"),
            NodeSource::SmbiosUuid => f.write_str("SMBIOS UUID"),
            NodeSource::BootIf => f.write_str("BOOTIF"),
            NodeSource::Nic { name } => write!(f, "MAC of {name}"),
        }
    }
}

/// The node's identity and the other template values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node identity (`${node}`).
    pub node: String,
    /// Where [`Identity::node`] came from.
    pub source: NodeSource,
    /// The SMBIOS system UUID, lower case (`${uuid}`).
    pub uuid: Option<String>,
    /// The boot NIC's MAC: `BOOTIF=`, else the first physical NIC (`${mac}`).
    pub mac: Option<String>,
    /// The kernel host name, unless a placeholder (`${hostname}`).
    pub hostname: Option<String>,
    /// The SMBIOS system serial number (`${serial}`).
    pub serial: Option<String>,
}

impl Values for Identity {
    fn value(&self, var: Var) -> Option<&str> {
        match var {
            Var::Node => Some(&self.node),
            Var::Uuid => self.uuid.as_deref(),
            Var::Mac => self.mac.as_deref(),
            Var::Hostname => self.hostname.as_deref(),
            Var::Serial => self.serial.as_deref(),
        }
    }
}

/// No source gave a node identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no node identity: no rd.stateless.node=, {uuid}, no BOOTIF=, no physical NIC with a MAC in {}/sys/class/net",
    root.display()
)]
#[non_exhaustive]
pub struct IdentityError {
    /// What became of the SMBIOS UUID.
    pub uuid: UuidStatus,
    /// The root directory that was searched.
    pub root: PathBuf,
}

/// What became of the SMBIOS UUID, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UuidStatus {
    /// A usable UUID (lower case).
    Usable(String),
    /// The file is absent or unreadable (no DMI, not root).
    Missing,
    /// The firmware reports a placeholder or malformed value.
    Placeholder(String),
}

impl fmt::Display for UuidStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UuidStatus::Usable(u) => write!(f, "SMBIOS UUID {u}"),
            UuidStatus::Missing => f.write_str("no SMBIOS UUID"),
            UuidStatus::Placeholder(v) => write!(f, "placeholder SMBIOS UUID {v:?}"),
        }
    }
}

/// Works out the node identity and template values below `root` (`/` on a
/// real machine). `node` is `rd.stateless.node=`, `bootif` is `BOOTIF=`.
pub fn discover(root: &Path, node: Option<&str>, bootif: Option<MacAddr>) -> Result<Identity, IdentityError> {
    let uuid = smbios_uuid(root);
    let nic = if bootif.is_none() { first_physical_nic(root) } else { None };
    let mac = bootif.or(nic.as_ref().map(|(_, mac)| *mac)).map(|m| m.to_string());
    let (node, source) = match (node, &uuid, bootif, &nic) {
        (Some(n), ..) => (n.to_owned(), NodeSource::CommandLine),
        (None, UuidStatus::Usable(u), ..) => (u.clone(), NodeSource::SmbiosUuid),
        (None, _, Some(b), _) => (b.to_string(), NodeSource::BootIf),
        (None, _, None, Some((name, m))) => (m.to_string(), NodeSource::Nic { name: name.clone() }),
        (None, _, None, None) => return Err(IdentityError { uuid, root: root.to_owned() }),
    };
    Ok(Identity {
        node,
        source,
        uuid: match uuid {
            UuidStatus::Usable(u) => Some(u),
            UuidStatus::Missing | UuidStatus::Placeholder(_) => None,
        },
        mac,
        hostname: hostname(root),
        serial: smbios_serial(root),
    })
}

/// Reads and checks the SMBIOS system UUID below `root`.
pub fn smbios_uuid(root: &Path) -> UuidStatus {
    match read_attr(&root.join("sys/class/dmi/id/product_uuid")) {
        None => UuidStatus::Missing,
        Some(raw) => match normalise_uuid(&raw) {
            Some(u) => UuidStatus::Usable(u),
            None => UuidStatus::Placeholder(raw.trim().to_owned()),
        },
    }
}

/// The lower-case form of a 8-4-4-4-12 hex UUID, or `None` for anything
/// else and for placeholders.
pub fn normalise_uuid(raw: &str) -> Option<String> {
    let u = raw.trim().to_ascii_lowercase();
    let shape_ok = u.len() == 36
        && u.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    (shape_ok && !PLACEHOLDER_UUIDS.contains(&u.as_str())).then_some(u)
}

/// Reads the SMBIOS system serial number below `root`, unless a placeholder.
pub fn smbios_serial(root: &Path) -> Option<String> {
    read_attr(&root.join("sys/class/dmi/id/product_serial")).and_then(|s| usable_serial(&s))
}

/// A trimmed serial number, or `None` for an empty or placeholder one.
pub fn usable_serial(raw: &str) -> Option<String> {
    let s = raw.trim();
    let lower = s.to_ascii_lowercase();
    let placeholder = s.is_empty()
        || PLACEHOLDER_SERIALS.contains(&lower.as_str())
        || s.bytes().all(|b| b == b'0' || b == b' ')
        || s.chars().any(char::is_control);
    (!placeholder).then(|| s.to_owned())
}

/// Reads the kernel host name below `root`, unless a placeholder such as
/// the `(none)` an initramfs starts with.
pub fn hostname(root: &Path) -> Option<String> {
    let raw = read_attr(&root.join("proc/sys/kernel/hostname"))?;
    let h = raw.trim();
    let placeholder = h.is_empty() || PLACEHOLDER_HOSTNAMES.contains(&h) || h.chars().any(char::is_control);
    (!placeholder).then(|| h.to_owned())
}

/// The first physical NIC (lowest ifindex, then name) with a usable MAC.
pub fn first_physical_nic(root: &Path) -> Option<(String, MacAddr)> {
    let dir = root.join("sys/class/net");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(err) => {
            log::debug!("reading {}: {err}", dir.display());
            return None;
        }
    };
    let mut nics = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else { continue };
        let path = entry.path();
        // Virtual interfaces (lo, bridges, bonds, VLANs, veth, tun) have no
        // backing device.
        if name == "lo" || fs::symlink_metadata(path.join("device")).is_err() {
            continue;
        }
        let Some(mac) = read_attr(&path.join("address")).and_then(|a| a.trim().parse::<MacAddr>().ok()) else {
            continue;
        };
        if mac.is_zero() {
            continue;
        }
        let ifindex = read_attr(&path.join("ifindex")).and_then(|i| i.trim().parse::<u32>().ok()).unwrap_or(u32::MAX);
        nics.push((ifindex, name, mac));
    }
    nics.into_iter().min().map(|(_, name, mac)| (name, mac))
}

/// Reads a small text attribute; `None` when absent or unreadable.
fn read_attr(path: &Path) -> Option<String> {
    let mut buf = Vec::new();
    let read = fs::File::open(path).and_then(|f| f.take(MAX_ATTR_LEN).read_to_end(&mut buf));
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        Err(err) => {
            log::debug!("reading {}: {err}", path.display());
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A fake machine: files below a temporary root.
    struct Fake(tempfile::TempDir);

    impl Fake {
        fn new() -> Fake {
            Fake(tempfile::tempdir().unwrap())
        }
        fn file(&self, rel: &str, contents: &str) -> &Fake {
            let p = self.0.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, contents).unwrap();
            self
        }
        /// A NIC; `physical` adds the `device` link.
        fn nic(&self, name: &str, ifindex: u32, mac: &str, physical: bool) -> &Fake {
            self.file(&format!("sys/class/net/{name}/address"), &format!("{mac}\n"));
            self.file(&format!("sys/class/net/{name}/ifindex"), &format!("{ifindex}\n"));
            if physical {
                let dev = self.0.path().join(format!("sys/devices/pci0000:00/{name}"));
                fs::create_dir_all(&dev).unwrap();
                std::os::unix::fs::symlink(&dev, self.0.path().join(format!("sys/class/net/{name}/device"))).unwrap();
            }
            self
        }
        fn root(&self) -> &Path {
            self.0.path()
        }
    }

    const UUID: &str = "4C4C4544-0042-3510-8052-B4C04F4E4D32";
    const UUID_LOWER: &str = "4c4c4544-0042-3510-8052-b4c04f4e4d32";

    #[test]
    fn mac_parse_table() {
        let ok: &[(&str, [u8; 6])] = &[
            ("52:54:00:12:34:56", [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            ("AA-BB-CC-DD-EE-FF", [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]),
            ("aa:BB:cc:dd:ee:0f", [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f]),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<MacAddr>(), Ok(MacAddr(*want)), "{s}");
        }
        let bad = [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54-00:12:34:56",
            "52:54:00:12:34:5g",
            "+5:54:00:12:34:56",
            "525400123456",
            "80:00:02:08:fe:80:00:00:00:00:00:00:00:00:00:00:00:00:00:00",
        ];
        for s in bad {
            assert_eq!(s.parse::<MacAddr>(), Err(MacError::Malformed), "{s:?}");
        }
    }

    #[test]
    fn bootif_table() {
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let cases: &[(&str, Result<MacAddr, MacError>)] = &[
            ("01-52-54-00-12-34-56", Ok(mac)),
            ("01-52-54-00-12-34-56\n", Ok(mac)),
            ("52:54:00:12:34:56", Ok(mac)),
            ("52-54-00-12-34-56", Ok(mac)),
            ("20-52-54-00-12-34-56", Err(MacError::NotEthernet("20".into()))),
            ("01-52-54-00-12-34", Ok(MacAddr([1, 0x52, 0x54, 0, 0x12, 0x34]))),
            ("01-52-54-00-12", Err(MacError::Malformed)),
            ("01-52-54-00-12-34-56-78", Err(MacError::Malformed)),
            ("01", Err(MacError::Malformed)),
            ("", Err(MacError::Malformed)),
            ("01-", Err(MacError::Malformed)),
        ];
        for (s, want) in cases {
            assert_eq!(&MacAddr::from_bootif(s), want, "{s:?}");
        }
        assert_eq!(mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(format!("{mac:?}"), "MacAddr(52:54:00:12:34:56)");
    }

    #[test]
    fn uuid_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (UUID, Some(UUID_LOWER)),
            ("4c4c4544-0042-3510-8052-b4c04f4e4d32\n", Some(UUID_LOWER)),
            ("00000000-0000-0000-0000-000000000000", None),
            ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", None),
            ("03000200-0400-0500-0006-000700080009", None),
            ("Not Settable", None),
            ("Not Present", None),
            ("", None),
            ("4c4c4544004235108052b4c04f4e4d32", None),
            ("4c4c4544-0042-3510-8052-b4c04f4e4d3", None),
            ("4c4c4544-0042-3510-8052-b4c04f4e4d3z", None),
            ("4c4c4544+0042-3510-8052-b4c04f4e4d32", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_uuid(raw).as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn serial_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("CZ1234567X\n", Some("CZ1234567X")),
            ("  VMware-56 4d  \n", Some("VMware-56 4d")),
            ("", None),
            ("\n", None),
            ("Not Specified", None),
            ("To Be Filled By O.E.M.", None),
            ("Default string", None),
            ("SYSTEM SERIAL NUMBER", None),
            ("0", None),
            ("0000 0000", None),
            ("ab\u{1}c", None),
        ];
        for (raw, want) in cases {
            assert_eq!(usable_serial(raw).as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn hostname_table() {
        let cases: &[(Option<&str>, Option<&str>)] = &[
            (None, None),
            (Some("(none)\n"), None),
            (Some("localhost\n"), None),
            (Some("\n"), None),
            (Some("blade07\n"), Some("blade07")),
            (Some("blade07.rack2.example"), Some("blade07.rack2.example")),
        ];
        for (raw, want) in cases {
            let fake = Fake::new();
            if let Some(raw) = raw {
                fake.file("proc/sys/kernel/hostname", raw);
            }
            assert_eq!(hostname(fake.root()).as_deref(), *want, "{raw:?}");
        }
    }

    #[test]
    fn first_nic_skips_virtual_and_orders_by_ifindex() {
        let fake = Fake::new();
        fake.nic("lo", 1, "00:00:00:00:00:00", false)
            .nic("br0", 2, "02:00:00:00:00:01", false)
            .nic("enp3s0", 5, "52:54:00:00:00:05", true)
            .nic("enp1s0", 3, "52:54:00:00:00:03", true)
            .nic("dummy0", 4, "00:00:00:00:00:00", true)
            .nic("ib0", 2, "80:00:02:08:fe:80:00:00:00:00:00:00:00:00:00:00:00:00:00:00", true);
        let (name, mac) = first_physical_nic(fake.root()).unwrap();
        assert_eq!((name.as_str(), mac.to_string().as_str()), ("enp1s0", "52:54:00:00:00:03"));
    }

    #[test]
    fn first_nic_none_table() {
        assert_eq!(first_physical_nic(Fake::new().root()), None, "no sys/class/net");
        let fake = Fake::new();
        fake.nic("lo", 1, "00:00:00:00:00:00", false).nic("virbr0", 2, "52:54:00:aa:bb:cc", false);
        assert_eq!(first_physical_nic(fake.root()), None, "only virtual NICs");
    }

    #[test]
    fn discover_order_table() {
        let bootif = MacAddr([2, 0, 0, 0, 0, 0xbf]);
        // (product_uuid, BOOTIF, has a NIC, rd.stateless.node) -> (node, source)
        type Case = (Option<&'static str>, Option<MacAddr>, bool, Option<&'static str>, &'static str, NodeSource);
        let nic = NodeSource::Nic { name: "eth0".into() };
        let cases: Vec<Case> = vec![
            (Some(UUID), Some(bootif), true, Some("n1"), "n1", NodeSource::CommandLine),
            (Some(UUID), Some(bootif), true, None, UUID_LOWER, NodeSource::SmbiosUuid),
            (Some("Not Settable"), Some(bootif), true, None, "02:00:00:00:00:bf", NodeSource::BootIf),
            (None, Some(bootif), true, None, "02:00:00:00:00:bf", NodeSource::BootIf),
            (Some("00000000-0000-0000-0000-000000000000"), None, true, None, "52:54:00:00:00:01", nic.clone()),
            (None, None, true, None, "52:54:00:00:00:01", nic.clone()),
            (None, None, false, Some("n2"), "n2", NodeSource::CommandLine),
        ];
        for (uuid, bootif, has_nic, node, want_node, want_source) in cases {
            let fake = Fake::new();
            if let Some(u) = uuid {
                fake.file("sys/class/dmi/id/product_uuid", &format!("{u}\n"));
            }
            if has_nic {
                fake.nic("eth0", 2, "52:54:00:00:00:01", true);
            }
            let id = discover(fake.root(), node, bootif).unwrap();
            assert_eq!((id.node.as_str(), &id.source), (want_node, &want_source), "{uuid:?} {bootif:?} {node:?}");
            let want_mac = bootif.map(|b| b.to_string()).or(has_nic.then(|| "52:54:00:00:00:01".to_owned()));
            assert_eq!(id.mac, want_mac);
        }
    }

    #[test]
    fn discover_fills_template_values() {
        let fake = Fake::new();
        fake.file("sys/class/dmi/id/product_uuid", UUID)
            .file("sys/class/dmi/id/product_serial", "SN42\n")
            .file("proc/sys/kernel/hostname", "blade07\n")
            .nic("eth0", 2, "52:54:00:00:00:01", true);
        let id = discover(fake.root(), None, None).unwrap();
        let want: &[(Var, Option<&str>)] = &[
            (Var::Node, Some(UUID_LOWER)),
            (Var::Uuid, Some(UUID_LOWER)),
            (Var::Mac, Some("52:54:00:00:00:01")),
            (Var::Hostname, Some("blade07")),
            (Var::Serial, Some("SN42")),
        ];
        for (var, value) in want {
            assert_eq!(id.value(*var), *value, "{var}");
        }
    }

    #[test]
    fn discover_nothing_is_a_readable_error() {
        let fake = Fake::new();
        fake.file("sys/class/dmi/id/product_uuid", "Not Settable\n");
        let err = discover(fake.root(), None, None).unwrap_err();
        assert_eq!(err.uuid, UuidStatus::Placeholder("Not Settable".into()));
        let msg = err.to_string();
        assert!(msg.starts_with("no node identity: no rd.stateless.node=, placeholder SMBIOS UUID"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }
}
