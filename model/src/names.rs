//! The rules every name, id, path and port in the model obeys.
//!
//! Each check returns the [`Invalid`] rule it breaks; the caller adds the
//! file and line.

/// A rule of the model that an entry breaks. `Display` is the console line
/// after `file:line: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// Not a portable POSIX user or group name.
    #[error("{kind} name {name:?} is not a portable name ([a-z_][a-z0-9_-]*, at most 32 characters)")]
    AccountName {
        /// "user" or "group".
        kind: &'static str,
        /// The name as written.
        name: String,
    },
    /// A uid or gid outside the allowed range.
    #[error("{kind} {id} of {name:?} is outside 1..=2147483647 or is 65534/65535 (nobody)")]
    Id {
        /// "uid" or "gid".
        kind: &'static str,
        /// The account.
        name: String,
        /// The id as written.
        id: i64,
    },
    /// The same user or group twice in one layer.
    #[error("{kind} {name:?} appears twice in this layer")]
    Duplicate {
        /// What kind of entry.
        kind: &'static str,
        /// Its key.
        name: String,
    },
    /// A user with neither a password hash nor `locked = true`, or both.
    #[error("user {0:?} needs exactly one of password_hash or locked = true")]
    Password(String),
    /// A password hash that would break /etc/shadow.
    #[error("password_hash of {0:?} is empty or contains ':' or whitespace")]
    PasswordHash(String),
    /// A shell or home that is not an absolute, normalised path.
    #[error("{field} of {name:?} must be an absolute, normalised path without ':' ({value:?})")]
    AccountPath {
        /// "home" or "shell".
        field: &'static str,
        /// The account.
        name: String,
        /// The path as written.
        value: String,
    },
    /// A GECOS comment with ':' or a control character.
    #[error("comment of {0:?} contains ':' or a control character")]
    Comment(String),
    /// An SSH key that spans lines or is not "type base64 [comment]".
    #[error("ssh_authorized_keys of {0:?}: a key is empty, spans lines or is not \"TYPE KEY [COMMENT]\"")]
    SshKey(String),
    /// Not a systemd unit name.
    #[error("{0:?} is not a unit name (NAME.SUFFIX with a systemd suffix, no '/', an instance for templates)")]
    Unit(String),
    /// A unit in two of enable/disable/mask of one layer.
    #[error("unit {0:?} is in more than one of enable, disable, mask")]
    UnitTwice(String),
    /// Not a kernel module name.
    #[error("{0:?} is not a kernel module name ([A-Za-z0-9_-], at most 55 characters)")]
    Module(String),
    /// A module both loaded and blacklisted in one layer.
    #[error("module {0:?} is both loaded and blacklisted")]
    ModuleTwice(String),
    /// Module options with a newline or control character.
    #[error("options of module {0:?} contain a control character")]
    ModuleOptions(String),
    /// Not a sysctl key.
    #[error("{0:?} is not a sysctl key (segments of [A-Za-z0-9_-:*] separated by '.' or '/', no '..')")]
    SysctlKey(String),
    /// A sysctl value with a newline or control character.
    #[error("value of sysctl {0:?} is empty or contains a control character")]
    SysctlValue(String),
    /// Not "tcp/PORT" or "udp/LOW-HIGH" with ports 1-65535.
    #[error("{0:?} is not PROTO/PORT or PROTO/LOW-HIGH (tcp or udp, ports 1-65535)")]
    Port(String),
    /// An edit whose file is not an absolute, normalised path.
    #[error("edit file {0:?} must be an absolute, normalised path without '..'")]
    EditFile(String),
    /// An edit key that could not be written back unambiguously.
    #[error("edit of {file}: key {key:?} is empty or contains whitespace, '=', '#', '[' or a control character")]
    EditKey {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// An edit value with a newline or control character.
    #[error("edit of {file}: value of {key:?} contains a control character")]
    EditValue {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// An unknown format, or a section without the ini format.
    #[error("edit of {file}: {why}")]
    EditFormat {
        /// The file.
        file: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The same key set, unset or both twice in one layer.
    #[error("edit of {file}: key {key:?} is set or unset twice in this layer")]
    EditTwice {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// An edit that neither sets nor unsets anything.
    #[error("edit of {0}: nothing to set or unset")]
    EditEmpty(String),
    /// Not a hostname (RFC 1123).
    #[error("{0:?} is not a hostname (labels of [A-Za-z0-9-], 1-63 characters, at most 253 in all)")]
    Hostname(String),
    /// A plugin field that is not a plain token.
    #[error("plugin {field} {value:?} is not [A-Za-z0-9._+~-], 1-64 characters, starting with a letter or digit")]
    Plugin {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
}

pub(crate) fn account_name(name: &str) -> bool {
    let b = name.as_bytes();
    let Some((&first, rest)) = b.split_first() else {
        return false;
    };
    b.len() <= 32
        && (first.is_ascii_lowercase() || first == b'_')
        && rest.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Root (0) belongs to the base image; 65534/65535 are nobody and the
/// historic 16-bit -1; above 2^31-1 some tools treat ids as negative.
pub(crate) fn id_ok(id: i64) -> bool {
    (1..=2_147_483_647).contains(&id) && id != 65534 && id != 65535
}

/// Absolute, no empty, `.` or `..` segments, no trailing slash, not `/`.
pub(crate) fn normalised_abs(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && !path.contains(|c: char| c.is_control())
        && rest.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

pub(crate) fn no_control(s: &str) -> bool {
    !s.contains(|c: char| c.is_control())
}

const UNIT_SUFFIXES: &[&str] =
    &["service", "socket", "device", "mount", "automount", "swap", "target", "path", "timer", "slice", "scope"];

/// A unit name that can be enabled: a template needs an instance.
pub(crate) fn unit_name(name: &str) -> bool {
    unit_name_any(name) && !name.contains("@.")
}

/// Any unit name, templates included (targets named in [Install]).
pub(crate) fn unit_name_any(name: &str) -> bool {
    let Some((stem, suffix)) = name.rsplit_once('.') else {
        return false;
    };
    name.len() <= 255
        && UNIT_SUFFIXES.contains(&suffix)
        && !stem.is_empty()
        && !stem.starts_with('@')
        && stem.matches('@').count() <= 1
        && stem.bytes().all(|c| c.is_ascii_alphanumeric() || b":-_.\\@".contains(&c))
}

pub(crate) fn module_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 55 && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

pub(crate) fn sysctl_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && key
            .split(['.', '/'])
            .all(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-:*".contains(&c)))
}

pub(crate) fn hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

pub(crate) fn plugin_token(s: &str) -> bool {
    s.len() <= 64
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"._+~-".contains(&c))
}

pub(crate) fn edit_key(key: &str) -> bool {
    !key.is_empty() && !key.chars().any(|c| c.is_whitespace() || c.is_control() || "=#[;".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        type Check = fn(&str) -> bool;
        let table: &[(Check, &str, bool)] = &[
            (account_name, "alice", true),
            (account_name, "_svc-1", true),
            (account_name, "", false),
            (account_name, "Alice", false),
            (account_name, "1alice", false),
            (account_name, "al:ice", false),
            (account_name, "a/b", false),
            (account_name, &"a".repeat(33), false),
            (normalised_abs, "/etc/ssh/sshd_config", true),
            (normalised_abs, "/", false),
            (normalised_abs, "etc/x", false),
            (normalised_abs, "/etc/../shadow", false),
            (normalised_abs, "/etc//x", false),
            (normalised_abs, "/etc/./x", false),
            (normalised_abs, "/etc/x/", false),
            (unit_name, "sshd.service", true),
            (unit_name, "getty@tty1.service", true),
            (unit_name, "getty@.service", false),
            (unit_name, "foo", false),
            (unit_name, "foo.conf", false),
            (unit_name, "../foo.service", false),
            (unit_name, "a/b.service", false),
            (unit_name, ".service", false),
            (module_name, "dummy", true),
            (module_name, "nf_conntrack", true),
            (module_name, "a b", false),
            (module_name, "../x", false),
            (sysctl_key, "net.ipv4.ip_forward", true),
            (sysctl_key, "net/ipv4/conf/eth0.100/forwarding", true),
            (sysctl_key, "net..x", false),
            (sysctl_key, "../x", false),
            (sysctl_key, ".net", false),
            (sysctl_key, "a b", false),
            (hostname, "node42.example.org", true),
            (hostname, "node42", true),
            (hostname, "-node", false),
            (hostname, "a..b", false),
            (hostname, "a_b", false),
            (plugin_token, "1.2.3", true),
            (plugin_token, "acme-agent", true),
            (plugin_token, "", false),
            (plugin_token, "../x", false),
            (edit_key, "PermitRootLogin", true),
            (edit_key, "a b", false),
            (edit_key, "a=b", false),
            (edit_key, "#a", false),
        ];
        for (i, (check, input, want)) in table.iter().enumerate() {
            assert_eq!(check(input), *want, "row {i}: {input:?}");
        }
    }

    #[test]
    fn id_range() {
        for (id, want) in [
            (0, false),
            (1, true),
            (2001, true),
            (65534, false),
            (65535, false),
            (65536, true),
            (2_147_483_647, true),
            (2_147_483_648, false),
            (-1, false),
        ] {
            assert_eq!(id_ok(id), want, "{id}");
        }
    }
}
