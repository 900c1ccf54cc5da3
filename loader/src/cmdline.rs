//! The kernel command line: splitting it as the kernel does, and reading the
//! `rd.stateless.*` words (plus `BOOTIF=`) into a typed [`Config`].
//!
//! Splitting follows the kernel's `next_arg()` (lib/cmdline.c): words are
//! separated by unquoted white space; a double quote toggles quoting and may
//! start anywhere in a word; the first `=` splits key from value; one pair of
//! quotes around the whole word or around the value is removed, other quote
//! characters stay. The whole line is read, including words after `--`, as
//! dracut's `getarg` and systemd do.
//!
//! Rules for the words (documented for users in `docs/cmdline.md`):
//!
//! - A later word overrides an earlier one, including `rd.stateless.server=`:
//!   a list is given with commas in one word, so a word appended at the boot
//!   prompt replaces the configured servers rather than adding to them.
//! - An empty value (`rd.stateless.server=`) resets the word to its default,
//!   cancelling an earlier one.
//! - Unknown `rd.stateless.*` words (and `stateless.*` words that lack the
//!   `rd.`) become warnings in [`Config::warnings`], with a suggestion when
//!   one is close; a malformed `BOOTIF=` is a warning too (it is not ours).
//! - A malformed value of a known word is an error naming the word, even if
//!   a later word would override it: a typo must not pass silently, least of
//!   all in `pin=` or `key=`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::MacAddr;
use crate::template::{Template, TemplateError, Var};

/// The prefix of the loader's words.
pub const PREFIX: &str = "rd.stateless.";

/// Default total network budget.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest accepted `rd.stateless.timeout=`, one day.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Default SRV service name, prepended to the domain.
pub const DEFAULT_SRV: &str = "_stateless._tcp";

/// Default port of `rd.stateless.dns=`.
pub const DNS_PORT: u16 = 53;

/// Longest accepted `rd.stateless.node=` or `rd.stateless.group=`.
pub const MAX_NAME_LEN: usize = 128;

/// Every `rd.stateless.*` word (without the prefix) and its syntax, for
/// messages, suggestions and the documentation test.
pub const WORDS: &[(&str, &str)] = &[
    ("server", "rd.stateless.server=URL[,URL...]"),
    ("domain", "rd.stateless.domain=DOMAIN"),
    ("srv", "rd.stateless.srv=_SERVICE._PROTO"),
    ("dns", "rd.stateless.dns=IP[:PORT]"),
    ("node", "rd.stateless.node=NAME"),
    ("group", "rd.stateless.group=NAME[,NAME...]"),
    ("key", "rd.stateless.key=auto|file:/PATH|usb|usb:LABEL|tpm|none"),
    ("cache", "rd.stateless.cache=LABEL=...|UUID=...|PARTLABEL=...|PARTUUID=...|/dev/...|none"),
    ("timeout", "rd.stateless.timeout=SECONDS"),
    ("onfail", "rd.stateless.onfail=emergency|continue|reboot|poweroff"),
    ("ca", "rd.stateless.ca=/PATH"),
    ("pin", "rd.stateless.pin=sha256:HASH[,sha256:HASH...]"),
    ("insecure", "rd.stateless.insecure[=0|1]"),
    ("debug", "rd.stateless.debug[=0|1]"),
    ("overlay", "rd.stateless.overlay=0|1"),
    ("tpm", "rd.stateless.tpm=device:/PATH|swtpm:host=HOST,port=PORT"),
    ("rollback", "rd.stateless.rollback=cache|tpm|tpm-strict"),
    // Fleet trust (issue 13), parsed by crate::trust.
    ("pubkey", "rd.stateless.pubkey=file:/PATH|ed25519:HEX[,...]"),
    ("max-age", "rd.stateless.max-age=DURATION"),
    ("max-age-offline", "rd.stateless.max-age-offline=DURATION|none"),
];

/// One word of a kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The text before the first `=` (the whole word when there is none).
    pub key: &'a str,
    /// The text after the first `=`, quotes removed; `None` for a bare word.
    pub value: Option<&'a str>,
}

impl fmt::Display for Param<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(self.key),
        }
    }
}

/// White space as the kernel's `isspace()` sees it in ASCII.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Splits a command line into words as the kernel does.
pub fn split(cmdline: &str) -> Vec<Param<'_>> {
    let mut params = Vec::new();
    let mut rest = cmdline.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
    while !rest.is_empty() {
        let (param, next) = next_arg(rest);
        if !param.key.is_empty() || param.value.is_some() {
            params.push(param);
        }
        rest = next;
    }
    params
}

/// One step of the kernel's `next_arg()`: the first word of `args` (which
/// starts with a non-space) and the text after it, spaces skipped.
fn next_arg(args: &str) -> (Param<'_>, &str) {
    let bytes = args.as_bytes();
    let quoted = bytes.first() == Some(&b'"');
    let start = usize::from(quoted);
    let mut in_quote = quoted;
    // Like the kernel, an `=` right at the start does not split.
    let mut equals = None;
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if is_space(b) && !in_quote {
            end = i;
            break;
        }
        if equals.is_none() && b == b'=' && i > start {
            equals = Some(i);
        }
        if b == b'"' {
            in_quote = !in_quote;
        }
    }
    let ends_with_quote = end > start && bytes.get(end - 1) == Some(&b'"');
    let param = match equals {
        None => {
            let stop = if quoted && ends_with_quote { end - 1 } else { end };
            Param { key: args.get(start..stop).unwrap_or_default(), value: None }
        }
        Some(eq) => {
            let mut value_start = eq + 1;
            let value_quoted = bytes.get(value_start) == Some(&b'"');
            if value_quoted {
                value_start += 1;
            }
            let stop = if (value_quoted || quoted) && ends_with_quote { end - 1 } else { end };
            Param {
                key: args.get(start..eq).unwrap_or_default(),
                value: Some(args.get(value_start..stop.max(value_start)).unwrap_or_default()),
            }
        }
    };
    // Every byte at and after `end` is either the end or a space (ASCII).
    let rest = args.get(end..).unwrap_or_default();
    (param, rest.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8)))
}

/// Which key to decrypt the bundle with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyChoice {
    /// Embedded in the boot image, then a USB stick, then the TPM.
    #[default]
    Auto,
    /// A key file in the initramfs.
    File(PathBuf),
    /// A USB stick with a filesystem labelled `label` (default `STATELESS`).
    Usb {
        /// The filesystem label, `None` for the default.
        label: Option<String>,
    },
    /// The key sealed in the TPM.
    Tpm,
    /// No key: only unencrypted bundles are accepted.
    None,
    /// Exactly these sources (each `File`, `Usb` or `Tpm`), in this order:
    /// `rd.stateless.key=tpm,usb:KEYS`.
    List(Vec<KeyChoice>),
}

/// Which device holds the last-known-good cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheDevice {
    /// No cache.
    #[default]
    None,
    /// The filesystem with this label.
    Label(String),
    /// The filesystem with this UUID.
    Uuid(String),
    /// The GPT partition with this name.
    PartLabel(String),
    /// The GPT partition with this unique GUID.
    PartUuid(String),
    /// A device node, `/dev/...`.
    Path(PathBuf),
}

/// Where the rollback floor is kept (`rollback=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rollback {
    /// In the cache disk's bundles only (no cache, no floor).
    #[default]
    Cache,
    /// Also in TPM NV counters, one per layer target: a TPM that cannot
    /// be read refuses network bundles; a target without room for its
    /// counter is checked against the cache only, with a warning.
    Tpm,
    /// As `Tpm`, and a target without room for its counter is refused.
    TpmStrict,
}

impl Rollback {
    /// The word as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Rollback::Cache => "cache",
            Rollback::Tpm => "tpm",
            Rollback::TpmStrict => "tpm-strict",
        }
    }
}

/// What the boot does when no bundle could be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFail {
    /// Stop in the emergency shell.
    #[default]
    Emergency,
    /// Boot the root as it is, without a bundle.
    Continue,
    /// Reboot (and try again).
    Reboot,
    /// Power off.
    Poweroff,
}

impl OnFail {
    /// The word as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFail::Emergency => "emergency",
            OnFail::Continue => "continue",
            OnFail::Reboot => "reboot",
            OnFail::Poweroff => "poweroff",
        }
    }
}

impl fmt::Display for OnFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server key pin: the SHA-256 of the server certificate's
/// SubjectPublicKeyInfo (DER), as curl's `--pinnedpubkey`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin(pub [u8; 32]);

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// The loader's configuration from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `server=`: base URLs (templates), tried in order; empty means DNS SRV.
    pub servers: Vec<Template>,
    /// `server=media:LABEL`: the stack comes from the file system with
    /// this label (local media), not from the network.
    pub media: Option<String>,
    /// `domain=`: the SRV domain, lower case, no trailing dot.
    pub domain: Option<String>,
    /// `srv=`: the SRV service name, default [`DEFAULT_SRV`].
    pub srv: String,
    /// `dns=`: resolver override.
    pub dns: Option<SocketAddr>,
    /// `node=`: the node identity override.
    pub node: Option<String>,
    /// `group=`: the node's groups, in stack order (a comma list; the
    /// node's own layer, when it lists groups, wins over it).
    pub groups: Vec<String>,
    /// `key=`.
    pub key: KeyChoice,
    /// `tpm=`: which TPM unseals TPM-sealed keys.
    pub tpm: stateless_keys::tpm::TpmSelector,
    /// `rollback=`: where the rollback floor is kept.
    pub rollback: Rollback,
    /// `cache=`.
    pub cache: CacheDevice,
    /// `timeout=`: total network budget.
    pub timeout: Duration,
    /// `onfail=`.
    pub onfail: OnFail,
    /// `ca=`: CA certificate file in the initramfs.
    pub ca: Option<PathBuf>,
    /// `pin=`: accepted server key pins (any one matches).
    pub pins: Vec<Pin>,
    /// `insecure`: allow plain http (labs without TLS).
    pub insecure: bool,
    /// `debug`: debug records in the kernel log.
    pub debug: bool,
    /// `overlay=`: `None` = overlay only when the root is read-only,
    /// `Some(true)` = always, `Some(false)` = never.
    pub overlay: Option<bool>,
    /// `BOOTIF=`: the MAC address of the NIC the firmware booted from.
    pub bootif: Option<MacAddr>,
    /// `pubkey=`, `max-age=`, `max-age-offline=` ([`crate::trust`]).
    pub trust: crate::trust::TrustConfig,
    /// Words that were ignored, and why (log them as warnings).
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            servers: Vec::new(),
            media: None,
            domain: None,
            srv: DEFAULT_SRV.to_owned(),
            dns: None,
            node: None,
            groups: Vec::new(),
            key: KeyChoice::default(),
            tpm: stateless_keys::tpm::TpmSelector::default(),
            rollback: Rollback::default(),
            cache: CacheDevice::default(),
            timeout: DEFAULT_TIMEOUT,
            onfail: OnFail::default(),
            ca: None,
            pins: Vec::new(),
            insecure: false,
            debug: false,
            overlay: None,
            bootif: None,
            trust: crate::trust::TrustConfig::default(),
            warnings: Vec::new(),
        }
    }
}

/// A malformed `rd.stateless.*` word. The message is complete on its own
/// (`rd.stateless.timeout=abc: not a number of seconds`), so it has no
/// separate `source()`; it is meant to be one console line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{word}: {reason}")]
pub struct CmdlineError {
    /// The word as written (after quote removal).
    pub word: String,
    /// What is wrong with it.
    pub reason: Reason,
}

/// What is wrong with a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// A word that takes a value was given without `=`.
    #[error("needs a value ({syntax})")]
    MissingValue {
        /// The word's syntax.
        syntax: &'static str,
    },
    /// `timeout=` is not a whole number.
    #[error("not a number of seconds")]
    NotSeconds,
    /// `timeout=` is above [`MAX_TIMEOUT_SECS`].
    #[error("more than {MAX_TIMEOUT_SECS} seconds")]
    TooManySeconds,
    /// A flag with a value other than 0/1, yes/no, true/false, on/off.
    #[error("not 0 or 1")]
    NotBool,
    /// A value outside a fixed set.
    #[error("not one of {choices}")]
    NotOneOf {
        /// The accepted values.
        choices: &'static str,
    },
    /// A `server=` entry that is not an http(s) URL.
    #[error("{url:?} is not an http:// or https:// URL with a host")]
    NotHttpUrl {
        /// The entry.
        url: String,
    },
    /// A `server=` entry with a character outside ASCII.
    #[error("{url:?} is not ASCII: write an internationalised host name in its xn-- form")]
    NotAsciiUrl {
        /// The entry.
        url: String,
    },
    /// A `server=` entry with a bad `${...}`.
    #[error("{url:?}: {err}")]
    Template {
        /// The entry.
        url: String,
        /// The template error.
        err: TemplateError,
    },
    /// `server=` with commas only.
    #[error("no URL in the list")]
    EmptyList,
    /// `domain=` or `srv=` is not a DNS name.
    #[error("not a DNS name: {0}")]
    NotDnsName(&'static str),
    /// `dns=` is not `IP[:PORT]`.
    #[error("not an IP address with an optional port (1.2.3.4, 1.2.3.4:5353, fd00::1, [fd00::1]:5353)")]
    NotSocketAddr,
    /// `node=` or `group=` has characters that are unsafe in a URL path.
    #[error("not a name of 1 to {MAX_NAME_LEN} letters, digits, '.', '_', ':' or '-' (and not . or ..)")]
    NotName,
    /// `server=media:` with a label that is not one.
    #[error("media:LABEL needs a label of 1 to 64 printable ASCII characters, without commas or spaces")]
    MediaLabel,
    /// `group=` names a group twice.
    #[error("group {0} is listed twice")]
    GroupTwice(String),
    /// A path that must be absolute is not.
    #[error("not an absolute path")]
    NotAbsolute,
    /// `cache=LABEL=` and the like with nothing after the `=`.
    #[error("{0} needs a value")]
    EmptyCacheName(&'static str),
    /// A malformed trust word ([`crate::trust`]).
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustWordError),
    /// A `key=` list with an entry that is not a single source.
    #[error("a list takes only file:/PATH, usb, usb:LABEL and tpm, in the order to try them")]
    KeyList,
    /// A `key=` list naming one source twice.
    #[error("{0} is listed twice; each source is tried once, in the order given")]
    KeyListRepeat(String),
    /// A `pin=` entry without `sha256:`.
    #[error("{pin:?} does not start with sha256:")]
    PinAlgorithm {
        /// The entry.
        pin: String,
    },
    /// A `pin=` entry whose hash is not 64 hex digits or 32 bytes of base64.
    #[error("{pin:?} is not a SHA-256 in hex (64 digits) or base64")]
    PinHash {
        /// The entry.
        pin: String,
    },
}

impl Config {
    /// Reads the configuration from a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Result<Config, CmdlineError> {
        let mut cfg = Config::default();
        for param in split(cmdline) {
            if param.key == "BOOTIF" {
                cfg.bootif = match param.value.map(MacAddr::from_bootif) {
                    Some(Ok(mac)) => Some(mac),
                    Some(Err(err)) => {
                        cfg.warnings.push(format!("{param}: {err}; ignored"));
                        None
                    }
                    None => None,
                };
            } else if let Some(name) = param.key.strip_prefix(PREFIX) {
                match cfg.apply(name, param.value) {
                    Ok(true) => {}
                    Ok(false) => cfg.warnings.push(unknown_word(&param, name)),
                    Err(reason) => return Err(CmdlineError { word: param.to_string(), reason }),
                }
            } else if let Some(name) = param.key.strip_prefix("stateless.") {
                let hint = if known(name) { format!("; did you mean {PREFIX}{name}?") } else { String::new() };
                cfg.warnings.push(format!("{param}: not a loader word (they start with {PREFIX}){hint}"));
            }
        }
        // Not an error (a site may mean it), but it must not pass unseen.
        for t in &cfg.servers {
            for var in t.host_vars() {
                cfg.warnings
                    .push(format!("{PREFIX}server={t}: {var} in the host part lets whoever sets it choose the server"));
            }
        }
        Ok(cfg)
    }

    /// Applies one `rd.stateless.NAME[=value]`; `Ok(false)` for an unknown
    /// name.
    fn apply(&mut self, name: &str, value: Option<&str>) -> Result<bool, Reason> {
        let syntax = WORDS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
        let Some(syntax) = syntax else { return Ok(false) };
        // Flags may be bare; everything else needs `=`.
        let value = match (name, value) {
            ("insecure" | "debug", v) => v.unwrap_or("1"),
            (_, Some(v)) => v,
            (_, None) => return Err(Reason::MissingValue { syntax }),
        };
        if value.is_empty() {
            self.reset(name);
            return Ok(true);
        }
        match name {
            "server" => match value.strip_prefix("media:") {
                Some(label) => {
                    self.media = Some(parse_media_label(label)?);
                    self.servers = Vec::new();
                }
                None => {
                    self.servers = parse_servers(value)?;
                    self.media = None;
                }
            },
            "domain" => self.domain = Some(parse_dns_name(value)?),
            "srv" => self.srv = parse_dns_name(value)?,
            "dns" => self.dns = Some(parse_socket_addr(value)?),
            "node" => self.node = Some(parse_name(value)?),
            "group" => self.groups = parse_groups(value)?,
            "key" => self.key = parse_key(value)?,
            "tpm" => self.tpm = parse_tpm(value)?,
            "rollback" => self.rollback = parse_rollback(value)?,
            "cache" => self.cache = parse_cache(value)?,
            "timeout" => self.timeout = parse_timeout(value)?,
            "onfail" => self.onfail = parse_onfail(value)?,
            "ca" => self.ca = Some(parse_abs_path(value)?),
            "pin" => self.pins = parse_pins(value)?,
            "insecure" => self.insecure = parse_bool(value)?,
            "debug" => self.debug = parse_bool(value)?,
            "overlay" => self.overlay = Some(parse_bool(value)?),
            "pubkey" | "max-age" | "max-age-offline" => return Ok(self.trust.apply(name, value)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Puts one word back to its default.
    fn reset(&mut self, name: &str) {
        let d = Config::default();
        match name {
            "server" => {
                self.servers = d.servers;
                self.media = d.media;
            }
            "domain" => self.domain = d.domain,
            "srv" => self.srv = d.srv,
            "dns" => self.dns = d.dns,
            "node" => self.node = d.node,
            "group" => self.groups = d.groups,
            "key" => self.key = d.key,
            "tpm" => self.tpm = d.tpm,
            "rollback" => self.rollback = d.rollback,
            "cache" => self.cache = d.cache,
            "timeout" => self.timeout = d.timeout,
            "onfail" => self.onfail = d.onfail,
            "ca" => self.ca = d.ca,
            "pin" => self.pins = d.pins,
            "insecure" => self.insecure = d.insecure,
            "debug" => self.debug = d.debug,
            "overlay" => self.overlay = d.overlay,
            "pubkey" | "max-age" | "max-age-offline" => self.trust.reset(name),
            _ => {}
        }
    }
}

/// True when `name` is a known word (without the prefix).
fn known(name: &str) -> bool {
    WORDS.iter().any(|(n, _)| *n == name)
}

/// The warning for an unknown `rd.stateless.NAME`, with the closest known
/// word when there is one.
fn unknown_word(param: &Param<'_>, name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let best = WORDS.iter().map(|(n, _)| (strsim::levenshtein(&lower, n), *n)).min();
    // Close enough to be a typo: one edit, or one per three letters.
    match best {
        Some((d, n)) if d <= (n.len() / 3).max(1) => {
            format!("{param}: unknown word, ignored; did you mean {PREFIX}{n}?")
        }
        _ => format!("{param}: unknown word, ignored"),
    }
}

fn parse_bool(v: &str) -> Result<bool, Reason> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "off" => Ok(false),
        _ => Err(Reason::NotBool),
    }
}

fn parse_servers(v: &str) -> Result<Vec<Template>, Reason> {
    let mut out = Vec::new();
    // A trailing or doubled comma is a harmless typo.
    for url in v.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let t = Template::parse(url).map_err(|err| Reason::Template { url: url.to_owned(), err })?;
        // The loader's URL parser knows ASCII host names only
        // (loader/Cargo.toml, idna_adapter): say so rather than "not a URL".
        if !url.is_ascii() {
            return Err(Reason::NotAsciiUrl { url: url.to_owned() });
        }
        if !is_http_url_template(&t) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Reason::NotHttpUrl { url: url.to_owned() });
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err(Reason::EmptyList);
    }
    Ok(out)
}

/// Whether `t`, with its variables filled in, is an http or https URL (any
/// case: the scheme is judged as the URL parser reads it, as the fetch
/// will) with a host written out (`https:///x` is refused, although the
/// URL standard would read it as host `x`).
fn is_http_url_template(t: &Template) -> bool {
    let sample: Vec<(Var, &str)> = Var::ALL.iter().map(|v| (*v, "x")).collect();
    let Ok(rendered) = t.render(&sample[..]) else { return false };
    let authority = rendered.split_once("://").map(|(_, rest)| rest.split(['/', '\\', '?', '#']).next());
    crate::fetch::parse_url(&rendered).is_ok() && authority.flatten().is_some_and(|a| !a.is_empty())
}

/// A DNS name (letters, digits, `-`, `_`; labels of 1-63; at most 253),
/// returned lower case without a trailing dot.
fn parse_dns_name(v: &str) -> Result<String, Reason> {
    let name = v.strip_suffix('.').unwrap_or(v).to_ascii_lowercase();
    if name.is_empty() {
        return Err(Reason::NotDnsName("empty"));
    }
    if name.len() > 253 {
        return Err(Reason::NotDnsName("longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(Reason::NotDnsName("empty label"));
        }
        if label.len() > 63 {
            return Err(Reason::NotDnsName("label longer than 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Reason::NotDnsName("only letters, digits, '-' and '_' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Reason::NotDnsName("label starts or ends with '-'"));
        }
    }
    Ok(name)
}

fn parse_socket_addr(v: &str) -> Result<SocketAddr, Reason> {
    let addr = if let Ok(sa) = v.parse::<SocketAddr>() {
        sa
    } else {
        let bare = v.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(v);
        SocketAddr::new(bare.parse::<IpAddr>().map_err(|_| Reason::NotSocketAddr)?, DNS_PORT)
    };
    if addr.port() == 0 {
        return Err(Reason::NotSocketAddr);
    }
    Ok(addr)
}

/// A media label: 1 to 64 printable ASCII characters, no comma.
fn parse_media_label(v: &str) -> Result<String, Reason> {
    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if ok { Ok(v.to_owned()) } else { Err(Reason::MediaLabel) }
}

/// A comma list of group names, in stack order; a name listed twice is
/// an error (its layer would apply twice).
fn parse_groups(v: &str) -> Result<Vec<String>, Reason> {
    let mut out: Vec<String> = Vec::new();
    for g in v.split(',') {
        if g.is_empty() {
            return Err(Reason::NotName);
        }
        let g = parse_name(g)?;
        if out.contains(&g) {
            return Err(Reason::GroupTwice(g));
        }
        out.push(g);
    }
    Ok(out)
}

/// A node or group name: safe as one URL path segment and one file name.
fn parse_name(v: &str) -> Result<String, Reason> {
    let ok = v.len() <= MAX_NAME_LEN
        && v != "."
        && v != ".."
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok { Ok(v.to_owned()) } else { Err(Reason::NotName) }
}

fn parse_abs_path(v: &str) -> Result<PathBuf, Reason> {
    if v.starts_with('/') { Ok(PathBuf::from(v)) } else { Err(Reason::NotAbsolute) }
}

fn parse_key(v: &str) -> Result<KeyChoice, Reason> {
    const CHOICES: &str = "auto, file:/PATH, usb, usb:LABEL, tpm, none";
    // A list pins the sources a site allows, in order (issue 13).
    if v.contains(',') {
        let items = v.split(',').map(parse_key).collect::<Result<Vec<_>, _>>()?;
        if items.iter().any(|k| matches!(k, KeyChoice::Auto | KeyChoice::None | KeyChoice::List(_))) {
            return Err(Reason::KeyList);
        }
        let names: Vec<&str> = v.split(',').collect();
        if let Some((i, dup)) = items.iter().enumerate().find(|(i, k)| items.iter().take(*i).any(|e| e == *k)) {
            return Err(Reason::KeyListRepeat(names.get(i).map_or_else(|| format!("{dup:?}"), |n| (*n).to_owned())));
        }
        return Ok(KeyChoice::List(items));
    }
    match v {
        "auto" => Ok(KeyChoice::Auto),
        "usb" => Ok(KeyChoice::Usb { label: None }),
        "tpm" => Ok(KeyChoice::Tpm),
        "none" => Ok(KeyChoice::None),
        _ => {
            if let Some(path) = v.strip_prefix("file:") {
                Ok(KeyChoice::File(parse_abs_path(path)?))
            } else if let Some(label) = v.strip_prefix("usb:").filter(|l| !l.is_empty()) {
                Ok(KeyChoice::Usb { label: Some(label.to_owned()) })
            } else {
                Err(Reason::NotOneOf { choices: CHOICES })
            }
        }
    }
}

fn parse_tpm(v: &str) -> Result<stateless_keys::tpm::TpmSelector, Reason> {
    v.parse().map_err(|_| Reason::NotOneOf { choices: "device:/PATH, swtpm:host=HOST,port=PORT" })
}

fn parse_cache(v: &str) -> Result<CacheDevice, Reason> {
    const CHOICES: &str = "LABEL=..., UUID=..., PARTLABEL=..., PARTUUID=..., /dev/..., none";
    type Make = fn(String) -> CacheDevice;
    let tagged: [(&'static str, Make); 4] = [
        ("LABEL", CacheDevice::Label),
        ("UUID", CacheDevice::Uuid),
        ("PARTLABEL", CacheDevice::PartLabel),
        ("PARTUUID", CacheDevice::PartUuid),
    ];
    if v == "none" {
        return Ok(CacheDevice::None);
    }
    if let Some(dev) = v.strip_prefix("/dev/") {
        return if dev.is_empty() { Err(Reason::EmptyCacheName("/dev/")) } else { Ok(CacheDevice::Path(v.into())) };
    }
    let (tag, name) = v.split_once('=').ok_or(Reason::NotOneOf { choices: CHOICES })?;
    let (tag, make) = tagged.into_iter().find(|(t, _)| *t == tag).ok_or(Reason::NotOneOf { choices: CHOICES })?;
    if name.is_empty() {
        return Err(Reason::EmptyCacheName(tag));
    }
    Ok(make(name.to_owned()))
}

fn parse_timeout(v: &str) -> Result<Duration, Reason> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::NotSeconds);
    }
    // All digits: the only parse failure left is overflow.
    let secs = v.parse::<u64>().map_err(|_| Reason::TooManySeconds)?;
    if secs > MAX_TIMEOUT_SECS {
        return Err(Reason::TooManySeconds);
    }
    Ok(Duration::from_secs(secs))
}

fn parse_rollback(v: &str) -> Result<Rollback, Reason> {
    [Rollback::Cache, Rollback::Tpm, Rollback::TpmStrict]
        .into_iter()
        .find(|r| r.as_str() == v)
        .ok_or(Reason::NotOneOf { choices: "cache, tpm, tpm-strict" })
}

fn parse_onfail(v: &str) -> Result<OnFail, Reason> {
    [OnFail::Emergency, OnFail::Continue, OnFail::Reboot, OnFail::Poweroff]
        .into_iter()
        .find(|o| o.as_str() == v)
        .ok_or(Reason::NotOneOf { choices: "emergency, continue, reboot, poweroff" })
}

fn parse_pins(v: &str) -> Result<Vec<Pin>, Reason> {
    let mut out = Vec::new();
    for pin in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let hash = pin.strip_prefix("sha256:").ok_or_else(|| Reason::PinAlgorithm { pin: pin.to_owned() })?;
        let bytes = decode_hex32(hash).or_else(|| decode_base64_32(hash));
        out.push(Pin(bytes.ok_or_else(|| Reason::PinHash { pin: pin.to_owned() })?));
    }
    if out.is_empty() {
        return Err(Reason::EmptyList);
    }
    Ok(out)
}

/// 64 hex digits (any case) to 32 bytes.
fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    stateless_bundle::key::hex_decode(s, &mut out).then_some(out)
}

/// Base64 (standard or URL-safe alphabet, padding optional, canonical) of
/// exactly 32 bytes to those bytes.
fn decode_base64_32(s: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    use base64::alphabet::{STANDARD, URL_SAFE};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let mut out = [0u8; 32];
    [GeneralPurpose::new(&STANDARD, config), GeneralPurpose::new(&URL_SAFE, config)]
        .iter()
        .any(|engine| matches!(engine.decode_slice(s, &mut out), Ok(32)))
        .then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn p<'a>(key: &'a str, value: Option<&'a str>) -> Param<'a> {
        Param { key, value }
    }

    #[test]
    fn split_table() {
        let cases: &[(&str, &[Param<'_>])] = &[
            ("", &[]),
            ("   \t\n", &[]),
            ("quiet", &[p("quiet", None)]),
            ("  ro  quiet\n", &[p("ro", None), p("quiet", None)]),
            ("root=/dev/sda1 ro", &[p("root", Some("/dev/sda1")), p("ro", None)]),
            ("a=b=c", &[p("a", Some("b=c"))]),
            ("a=", &[p("a", Some(""))]),
            ("=a", &[p("=a", None)]),
            ("=a=b", &[p("=a", Some("b"))]),
            (r#"a="b c" d"#, &[p("a", Some("b c")), p("d", None)]),
            (r#""a=b c" d"#, &[p("a", Some("b c")), p("d", None)]),
            (r#""quoted word""#, &[p("quoted word", None)]),
            (r#"a=b"c d"e f"#, &[p("a", Some(r#"b"c d"e"#)), p("f", None)]),
            (r#"a="b"#, &[p("a", Some("b"))]),
            (r#"a=""#, &[p("a", Some(""))]),
            (r#"a="""#, &[p("a", Some(""))]),
            (r#"a="unterminated x y"#, &[p("a", Some("unterminated x y"))]),
            ("\"", &[]),
            ("x -- init args", &[p("x", None), p("--", None), p("init", None), p("args", None)]),
            ("é=ü ñ", &[p("é", Some("ü")), p("ñ", None)]),
            ("a=b\tc=d\x0be\x0cf", &[p("a", Some("b")), p("c", Some("d")), p("e", None), p("f", None)]),
        ];
        for (line, want) in cases {
            assert_eq!(split(line), *want, "cmdline {line:?}");
        }
    }

    #[test]
    fn split_never_panics_on_odd_input() {
        let alphabet = ["a", "=", "\"", " ", "é", "\t", ""];
        // Every string of up to four pieces from the alphabet.
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            let params = split(&s);
            assert!(params.len() <= s.len(), "{s:?}");
            if s.chars().count() < 4 {
                stack.extend(alphabet.iter().filter(|a| !a.is_empty()).map(|a| format!("{s}{a}")));
            }
        }
    }

    #[test]
    fn defaults() {
        let cfg = Config::from_cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet").unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.srv, "_stateless._tcp");
        assert_eq!(cfg.timeout, Duration::from_secs(30));
        assert_eq!((cfg.key, cfg.cache, cfg.onfail), (KeyChoice::Auto, CacheDevice::None, OnFail::Emergency));
    }

    /// Parses `cmdline`.
    fn parse(cmdline: &str) -> Result<Config, CmdlineError> {
        Config::from_cmdline(cmdline)
    }

    /// The console line of the error `cmdline` gives (`None`: it parses).
    fn error_line(cmdline: &str) -> Option<String> {
        parse(cmdline).err().map(|e| e.to_string())
    }

    #[test]
    fn words_table() {
        type Check = fn(&Config) -> bool;
        let pin_hex = "sha256:".to_owned() + &"ab".repeat(32);
        let cases: Vec<(String, Check)> = vec![
            ("rd.stateless.server=https://cfg.example".into(), |c| {
                c.servers.iter().map(Template::as_str).eq(["https://cfg.example"])
            }),
            ("rd.stateless.server=https://a/${node},http://b:8080/x,".into(), |c| {
                c.servers.iter().map(Template::as_str).eq(["https://a/${node}", "http://b:8080/x"])
            }),
            ("rd.stateless.server=\"https://a, https://b\"".into(), |c| c.servers.len() == 2),
            ("rd.stateless.server=HTTPS://a,HTTP://b:8080/x,hTtP://c".into(), |c| c.servers.len() == 3),
            ("rd.stateless.server=HTTPS://A/".into(), |c| c.servers.len() == 1),
            ("rd.stateless.domain=Lab.Example.".into(), |c| c.domain.as_deref() == Some("lab.example")),
            ("rd.stateless.srv=_cfg._tcp".into(), |c| c.srv == "_cfg._tcp"),
            ("rd.stateless.dns=10.0.2.3".into(), |c| c.dns == Some("10.0.2.3:53".parse().unwrap())),
            ("rd.stateless.dns=10.0.2.3:5353".into(), |c| c.dns == Some("10.0.2.3:5353".parse().unwrap())),
            ("rd.stateless.dns=fd00::3".into(), |c| c.dns == Some("[fd00::3]:53".parse().unwrap())),
            ("rd.stateless.dns=[fd00::3]".into(), |c| c.dns == Some("[fd00::3]:53".parse().unwrap())),
            ("rd.stateless.dns=[fd00::3]:5353".into(), |c| c.dns == Some("[fd00::3]:5353".parse().unwrap())),
            ("rd.stateless.node=blade-07".into(), |c| c.node.as_deref() == Some("blade-07")),
            ("rd.stateless.node=52:54:00:12:34:56".into(), |c| c.node.as_deref() == Some("52:54:00:12:34:56")),
            ("rd.stateless.group=hpc_rack.2".into(), |c| c.groups == ["hpc_rack.2"]),
            ("rd.stateless.group=rack7,gpu".into(), |c| c.groups == ["rack7", "gpu"]),
            ("rd.stateless.server=media:SITE-2026".into(), |c| {
                c.media.as_deref() == Some("SITE-2026") && c.servers.is_empty()
            }),
            ("rd.stateless.server=media:A rd.stateless.server=http://x".into(), |c| {
                c.media.is_none() && c.servers.len() == 1
            }),
            ("rd.stateless.key=auto".into(), |c| c.key == KeyChoice::Auto),
            ("rd.stateless.key=file:/etc/stateless/site.key".into(), |c| {
                c.key == KeyChoice::File("/etc/stateless/site.key".into())
            }),
            ("rd.stateless.key=usb".into(), |c| c.key == KeyChoice::Usb { label: None }),
            ("rd.stateless.key=\"usb:KEYS 2\"".into(), |c| c.key == KeyChoice::Usb { label: Some("KEYS 2".into()) }),
            ("rd.stateless.key=tpm".into(), |c| c.key == KeyChoice::Tpm),
            ("rd.stateless.key=none".into(), |c| c.key == KeyChoice::None),
            ("rd.stateless.tpm=swtpm:host=127.0.0.1,port=2321".into(), |c| {
                c.tpm.to_string() == "swtpm:host=127.0.0.1,port=2321"
            }),
            ("rd.stateless.tpm=device:/dev/tpmrm1".into(), |c| c.tpm.to_string() == "device:/dev/tpmrm1"),
            ("rd.stateless.cache=LABEL=slcache".into(), |c| c.cache == CacheDevice::Label("slcache".into())),
            ("\"rd.stateless.cache=LABEL=my cache\"".into(), |c| c.cache == CacheDevice::Label("my cache".into())),
            ("rd.stateless.cache=UUID=1234-ABCD".into(), |c| c.cache == CacheDevice::Uuid("1234-ABCD".into())),
            ("rd.stateless.cache=PARTLABEL=cache".into(), |c| c.cache == CacheDevice::PartLabel("cache".into())),
            ("rd.stateless.cache=PARTUUID=0f-1".into(), |c| c.cache == CacheDevice::PartUuid("0f-1".into())),
            ("rd.stateless.cache=/dev/vdb1".into(), |c| c.cache == CacheDevice::Path("/dev/vdb1".into())),
            ("rd.stateless.cache=none".into(), |c| c.cache == CacheDevice::None),
            ("rd.stateless.timeout=0".into(), |c| c.timeout == Duration::ZERO),
            ("rd.stateless.timeout=90".into(), |c| c.timeout == Duration::from_secs(90)),
            ("rd.stateless.timeout=86400".into(), |c| c.timeout == Duration::from_secs(86_400)),
            ("rd.stateless.onfail=continue".into(), |c| c.onfail == OnFail::Continue),
            ("rd.stateless.onfail=reboot".into(), |c| c.onfail == OnFail::Reboot),
            ("rd.stateless.onfail=poweroff".into(), |c| c.onfail == OnFail::Poweroff),
            ("rd.stateless.onfail=emergency".into(), |c| c.onfail == OnFail::Emergency),
            ("rd.stateless.ca=/etc/stateless/ca.pem".into(), |c| c.ca == Some("/etc/stateless/ca.pem".into())),
            (format!("rd.stateless.pin={pin_hex}"), |c| c.pins == [Pin([0xab; 32])]),
            (format!("rd.stateless.pin={}", pin_hex.to_uppercase().replace("SHA256", "sha256")), |c| {
                c.pins == [Pin([0xab; 32])]
            }),
            (format!("rd.stateless.pin={pin_hex},sha256:{}", "A".repeat(43) + "="), |c| {
                c.pins == [Pin([0xab; 32]), Pin([0; 32])]
            }),
            ("rd.stateless.insecure".into(), |c| c.insecure),
            ("rd.stateless.insecure=1".into(), |c| c.insecure),
            ("rd.stateless.insecure=0".into(), |c| !c.insecure),
            ("rd.stateless.debug".into(), |c| c.debug),
            ("rd.stateless.debug=yes".into(), |c| c.debug),
            ("rd.stateless.rollback=tpm".into(), |c| c.rollback == Rollback::Tpm),
            ("rd.stateless.rollback=tpm-strict".into(), |c| c.rollback == Rollback::TpmStrict),
            ("rd.stateless.rollback=cache".into(), |c| c.rollback == Rollback::Cache),
            ("rd.stateless.overlay=1".into(), |c| c.overlay == Some(true)),
            ("rd.stateless.overlay=0".into(), |c| c.overlay == Some(false)),
            ("BOOTIF=01-52-54-00-12-34-56".into(), |c| {
                c.bootif.map(|m| m.to_string()).as_deref() == Some("52:54:00:12:34:56")
            }),
        ];
        for (line, check) in cases {
            let cfg = parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(check(&cfg), "{line}: {cfg:#?}");
            assert!(cfg.warnings.is_empty(), "{line}: {:?}", cfg.warnings);
        }
    }

    #[test]
    fn errors_table() {
        let cases: &[(&str, &str)] = &[
            ("rd.stateless.timeout=abc", "rd.stateless.timeout=abc: not a number of seconds"),
            ("rd.stateless.timeout=-1", "rd.stateless.timeout=-1: not a number of seconds"),
            ("rd.stateless.timeout=30s", "rd.stateless.timeout=30s: not a number of seconds"),
            ("rd.stateless.timeout=86401", "rd.stateless.timeout=86401: more than 86400 seconds"),
            (
                "rd.stateless.timeout=99999999999999999999999",
                "rd.stateless.timeout=99999999999999999999999: more than 86400 seconds",
            ),
            ("rd.stateless.timeout", "rd.stateless.timeout: needs a value (rd.stateless.timeout=SECONDS)"),
            ("rd.stateless.server", "rd.stateless.server: needs a value (rd.stateless.server=URL[,URL...])"),
            (
                "rd.stateless.server=https://bücher.example/",
                "rd.stateless.server=https://bücher.example/: \"https://bücher.example/\" is not ASCII: write an internationalised host name in its xn-- form",
            ),
            (
                "rd.stateless.server=cfg.example",
                "rd.stateless.server=cfg.example: \"cfg.example\" is not an http:// or https:// URL with a host",
            ),
            (
                "rd.stateless.server=ftp://x/",
                "rd.stateless.server=ftp://x/: \"ftp://x/\" is not an http:// or https:// URL with a host",
            ),
            (
                "rd.stateless.server=FTP://x/",
                "rd.stateless.server=FTP://x/: \"FTP://x/\" is not an http:// or https:// URL with a host",
            ),
            (
                "rd.stateless.server=HTTPS://",
                "rd.stateless.server=HTTPS://: \"HTTPS://\" is not an http:// or https:// URL with a host",
            ),
            (
                "rd.stateless.server=https:///x",
                "rd.stateless.server=https:///x: \"https:///x\" is not an http:// or https:// URL with a host",
            ),
            (
                "\"rd.stateless.server=https://a b/\"",
                "rd.stateless.server=https://a b/: \"https://a b/\" is not an http:// or https:// URL with a host",
            ),
            (
                "rd.stateless.server=https://x/${nod}",
                "rd.stateless.server=https://x/${nod}: \"https://x/${nod}\": unknown variable ${nod} (known: ${node}, ${uuid}, ${mac}, ${hostname}, ${serial})",
            ),
            (
                "rd.stateless.server=https://x/${node",
                "rd.stateless.server=https://x/${node: \"https://x/${node\": unterminated ${ at byte 10",
            ),
            ("rd.stateless.server=,", "rd.stateless.server=,: no URL in the list"),
            ("rd.stateless.domain=a..b", "rd.stateless.domain=a..b: not a DNS name: empty label"),
            (
                "\"rd.stateless.domain=a b\"",
                "rd.stateless.domain=a b: not a DNS name: only letters, digits, '-' and '_' are allowed",
            ),
            ("rd.stateless.domain=-a.b", "rd.stateless.domain=-a.b: not a DNS name: label starts or ends with '-'"),
            (
                "rd.stateless.srv=_x/._tcp",
                "rd.stateless.srv=_x/._tcp: not a DNS name: only letters, digits, '-' and '_' are allowed",
            ),
            (
                "rd.stateless.dns=dns.example",
                "rd.stateless.dns=dns.example: not an IP address with an optional port (1.2.3.4, 1.2.3.4:5353, fd00::1, [fd00::1]:5353)",
            ),
            (
                "rd.stateless.dns=1.2.3.4:0",
                "rd.stateless.dns=1.2.3.4:0: not an IP address with an optional port (1.2.3.4, 1.2.3.4:5353, fd00::1, [fd00::1]:5353)",
            ),
            (
                "rd.stateless.dns=1.2.3.4:99999",
                "rd.stateless.dns=1.2.3.4:99999: not an IP address with an optional port (1.2.3.4, 1.2.3.4:5353, fd00::1, [fd00::1]:5353)",
            ),
            (
                "rd.stateless.node=..",
                "rd.stateless.node=..: not a name of 1 to 128 letters, digits, '.', '_', ':' or '-' (and not . or ..)",
            ),
            (
                "rd.stateless.node=a/b",
                "rd.stateless.node=a/b: not a name of 1 to 128 letters, digits, '.', '_', ':' or '-' (and not . or ..)",
            ),
            ("rd.stateless.group=a,b,a", "rd.stateless.group=a,b,a: group a is listed twice"),
            (
                "rd.stateless.server=media:",
                "rd.stateless.server=media:: media:LABEL needs a label of 1 to 64 printable ASCII characters, without commas or spaces",
            ),
            (
                "rd.stateless.server=media:A,B",
                "rd.stateless.server=media:A,B: media:LABEL needs a label of 1 to 64 printable ASCII characters, without commas or spaces",
            ),
            (
                "rd.stateless.group=a,,b",
                "rd.stateless.group=a,,b: not a name of 1 to 128 letters, digits, '.', '_', ':' or '-' (and not . or ..)",
            ),
            (
                "rd.stateless.group=a%2f",
                "rd.stateless.group=a%2f: not a name of 1 to 128 letters, digits, '.', '_', ':' or '-' (and not . or ..)",
            ),
            ("rd.stateless.key=usb:", "rd.stateless.key=usb:: not one of auto, file:/PATH, usb, usb:LABEL, tpm, none"),
            (
                "rd.stateless.tpm=/dev/tpm0",
                "rd.stateless.tpm=/dev/tpm0: not one of device:/PATH, swtpm:host=HOST,port=PORT",
            ),
            ("rd.stateless.key=file:site.key", "rd.stateless.key=file:site.key: not an absolute path"),
            ("rd.stateless.key=AUTO", "rd.stateless.key=AUTO: not one of auto, file:/PATH, usb, usb:LABEL, tpm, none"),
            ("rd.stateless.cache=LABEL=", "rd.stateless.cache=LABEL=: LABEL needs a value"),
            ("rd.stateless.cache=/dev/", "rd.stateless.cache=/dev/: /dev/ needs a value"),
            (
                "rd.stateless.cache=label=x",
                "rd.stateless.cache=label=x: not one of LABEL=..., UUID=..., PARTLABEL=..., PARTUUID=..., /dev/..., none",
            ),
            (
                "rd.stateless.cache=sdb1",
                "rd.stateless.cache=sdb1: not one of LABEL=..., UUID=..., PARTLABEL=..., PARTUUID=..., /dev/..., none",
            ),
            (
                "rd.stateless.onfail=shell",
                "rd.stateless.onfail=shell: not one of emergency, continue, reboot, poweroff",
            ),
            ("rd.stateless.ca=ca.pem", "rd.stateless.ca=ca.pem: not an absolute path"),
            ("rd.stateless.pin=abc", "rd.stateless.pin=abc: \"abc\" does not start with sha256:"),
            (
                "rd.stateless.pin=sha256:abc",
                "rd.stateless.pin=sha256:abc: \"sha256:abc\" is not a SHA-256 in hex (64 digits) or base64",
            ),
            ("rd.stateless.insecure=maybe", "rd.stateless.insecure=maybe: not 0 or 1"),
            ("rd.stateless.overlay", "rd.stateless.overlay: needs a value (rd.stateless.overlay=0|1)"),
            ("rd.stateless.overlay=2", "rd.stateless.overlay=2: not 0 or 1"),
            ("rd.stateless.rollback=nv", "rd.stateless.rollback=nv: not one of cache, tpm, tpm-strict"),
            // A malformed word is an error even when a later one would override it.
            ("rd.stateless.timeout=x rd.stateless.timeout=5", "rd.stateless.timeout=x: not a number of seconds"),
        ];
        for (line, want) in cases {
            assert_eq!(error_line(line).as_deref(), Some(*want), "cmdline {line:?}");
        }
    }

    #[test]
    fn later_word_overrides_and_empty_resets() {
        type Check = fn(&Config) -> bool;
        let cases: &[(&str, Check)] = &[
            ("rd.stateless.server=https://a rd.stateless.server=https://b", |c| {
                c.servers.iter().map(Template::as_str).eq(["https://b"])
            }),
            ("rd.stateless.server=https://a rd.stateless.server=", |c| c.servers.is_empty()),
            ("rd.stateless.timeout=5 rd.stateless.timeout=7", |c| c.timeout == Duration::from_secs(7)),
            ("rd.stateless.timeout=5 rd.stateless.timeout=", |c| c.timeout == DEFAULT_TIMEOUT),
            ("rd.stateless.srv=_x._udp rd.stateless.srv=", |c| c.srv == DEFAULT_SRV),
            ("rd.stateless.insecure rd.stateless.insecure=0", |c| !c.insecure),
            ("rd.stateless.insecure rd.stateless.insecure=", |c| !c.insecure),
            ("rd.stateless.onfail=reboot rd.stateless.onfail=poweroff", |c| c.onfail == OnFail::Poweroff),
            ("rd.stateless.key=tpm rd.stateless.key=", |c| c.key == KeyChoice::Auto),
            ("rd.stateless.overlay=1 rd.stateless.overlay=", |c| c.overlay.is_none()),
            ("rd.stateless.rollback=tpm rd.stateless.rollback=", |c| c.rollback == Rollback::Cache),
            ("BOOTIF=01-00-00-00-00-00-01 BOOTIF=01-00-00-00-00-00-02", |c| {
                c.bootif == Some(MacAddr([0, 0, 0, 0, 0, 2]))
            }),
        ];
        for (line, check) in cases {
            let cfg = parse(line).unwrap();
            assert!(check(&cfg), "{line}: {cfg:#?}");
        }
    }

    #[test]
    fn warnings_table() {
        let cases: &[(&str, &[&str])] = &[
            (
                "rd.stateless.servr=https://a",
                &["rd.stateless.servr=https://a: unknown word, ignored; did you mean rd.stateless.server?"],
            ),
            (
                "rd.stateless.Timeout=5",
                &["rd.stateless.Timeout=5: unknown word, ignored; did you mean rd.stateless.timeout?"],
            ),
            ("rd.stateless.frobnicate", &["rd.stateless.frobnicate: unknown word, ignored"]),
            (
                "rd.stateless.server=https://${hostname}.cfg.example/,https://cfg.example/${hostname}",
                &[
                    "rd.stateless.server=https://${hostname}.cfg.example/: ${hostname} in the host part lets whoever sets it choose the server",
                ],
            ),
            ("rd.stateless.", &["rd.stateless.: unknown word, ignored"]),
            (
                "stateless.server=https://a",
                &[
                    "stateless.server=https://a: not a loader word (they start with rd.stateless.); did you mean rd.stateless.server?",
                ],
            ),
            ("stateless.foo", &["stateless.foo: not a loader word (they start with rd.stateless.)"]),
            (
                "BOOTIF=20-80-00-02-08-fe-80-00-00-00-00-00-00-00-00-00-00-00-00-00-00",
                &[
                    "BOOTIF=20-80-00-02-08-fe-80-00-00-00-00-00-00-00-00-00-00-00-00-00-00: hardware type 20 is not Ethernet (01); ignored",
                ],
            ),
            (
                "BOOTIF=junk",
                &["BOOTIF=junk: not a MAC address (want aa:bb:cc:dd:ee:ff or 01-aa-bb-cc-dd-ee-ff); ignored"],
            ),
            (
                "rd.stateless.x rd.stateless.y=1",
                &["rd.stateless.x: unknown word, ignored", "rd.stateless.y=1: unknown word, ignored"],
            ),
            ("rd.statelessness=1 rd.neednet=1 ip=dhcp", &[]),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).unwrap().warnings, *want, "cmdline {line:?}");
        }
    }

    #[test]
    fn pin_encodings() {
        // SHA-256 of the empty string in hex and in both base64 alphabets.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let b64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let want = decode_hex32(hex).unwrap();
        assert_eq!(decode_base64_32(b64), Some(want));
        assert_eq!(decode_base64_32(b64.trim_end_matches('=')), Some(want));
        assert_eq!(decode_base64_32(&b64.replace('+', "-").replace('/', "_")), Some(want));
        assert_eq!(Pin(want).to_string(), format!("sha256:{hex}"));
        let bad_b64 = [
            "",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU==",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF=",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSu*U=",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFUA",
        ];
        for s in bad_b64 {
            assert_eq!(decode_base64_32(s), None, "{s:?}");
        }
        let bad_hex = [&hex[1..], "+3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "é"];
        for s in bad_hex {
            assert_eq!(decode_hex32(s), None, "{s:?}");
        }
    }

    #[test]
    fn trust_words_and_key_lists() {
        use crate::trust::OfflineAge;
        let hex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let cfg = parse(&format!(
            "rd.stateless.key=tpm,usb:KEYS,file:/k.key rd.stateless.pubkey=file:/p/a.pub,ed25519:{hex} \
             rd.stateless.max-age=2d rd.stateless.max-age-offline=none"
        ))
        .unwrap();
        assert_eq!(
            cfg.key,
            KeyChoice::List(vec![
                KeyChoice::Tpm,
                KeyChoice::Usb { label: Some("KEYS".into()) },
                KeyChoice::File("/k.key".into())
            ])
        );
        assert_eq!(cfg.trust.pubkeys.as_ref().map(Vec::len), Some(2));
        assert_eq!(cfg.trust.max_age, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(cfg.trust.max_age_offline, Some(OfflineAge::Unlimited));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        // A malformed word is an error even when a later empty one resets it.
        let reset = error_line(
            "rd.stateless.max-age=2d rd.stateless.max-age= rd.stateless.pubkey=ed25519:00 rd.stateless.pubkey=",
        );
        assert_eq!(
            reset.as_deref(),
            Some(
                "rd.stateless.pubkey=ed25519:00: publisher key entry 1: ed25519: wants the 64 hex digits of a publisher public key"
            )
        );
        let reset = parse(&format!(
            "rd.stateless.max-age=2d rd.stateless.max-age= rd.stateless.pubkey=ed25519:{hex} rd.stateless.pubkey="
        ))
        .unwrap();
        assert_eq!(reset.trust, crate::trust::TrustConfig { pubkeys_cleared: true, ..Default::default() });
        let cases: &[(&str, &str)] = &[
            (
                "rd.stateless.key=auto,usb",
                "rd.stateless.key=auto,usb: a list takes only file:/PATH, usb, usb:LABEL and tpm, in the order to try them",
            ),
            (
                "rd.stateless.key=tpm,none",
                "rd.stateless.key=tpm,none: a list takes only file:/PATH, usb, usb:LABEL and tpm, in the order to try them",
            ),
            ("rd.stateless.key=tpm,", "rd.stateless.key=tpm,: not one of auto, file:/PATH, usb, usb:LABEL, tpm, none"),
            (
                "rd.stateless.key=tpm,usb:KEYS,tpm",
                "rd.stateless.key=tpm,usb:KEYS,tpm: tpm is listed twice; each source is tried once, in the order given",
            ),
            ("rd.stateless.key=tpm,file:k", "rd.stateless.key=tpm,file:k: not an absolute path"),
            ("rd.stateless.max-age=7", "rd.stateless.max-age=7: not a duration like 36h, 7d or 2weeks"),
            ("rd.stateless.max-age=0d", "rd.stateless.max-age=0d: a maximum age under one second refuses every bundle"),
            ("rd.stateless.max-age", "rd.stateless.max-age: needs a value (rd.stateless.max-age=DURATION)"),
            (
                "rd.stateless.max-age-offline=never",
                "rd.stateless.max-age-offline=never: not a duration like 36h, 7d or 2weeks",
            ),
            (
                "rd.stateless.pubkey=/p.pub",
                "rd.stateless.pubkey=/p.pub: publisher key entry 1 \"/p.pub\": expected file:PATH or ed25519:HEX",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(error_line(line).as_deref(), Some(*want), "cmdline {line:?}");
        }
        // A typo of the new words is caught like any other.
        assert_eq!(
            parse("rd.stateless.maxage=2d").unwrap().warnings,
            ["rd.stateless.maxage=2d: unknown word, ignored; did you mean rd.stateless.max-age?"]
        );
    }

    #[test]
    fn docs_describe_every_word() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cmdline.md")).unwrap();
        for (name, syntax) in WORDS {
            assert!(doc.contains(&format!("`{PREFIX}{name}")), "docs/cmdline.md lacks {PREFIX}{name}");
            assert!(doc.contains(syntax), "docs/cmdline.md lacks the syntax {syntax}");
        }
        for flag in [
            "--cmdline",
            "--cmdline-file",
            "--sysroot",
            "--run-dir",
            "--cache-dir",
            "--key-dir",
            "--sealed-dir",
            "--usb-device",
            "--publisher-dir",
        ] {
            assert!(doc.contains(flag), "docs/cmdline.md lacks {flag}");
        }
    }
}
