//! The trusted model: only [`RawModel::validate`] builds one from input,
//! and [`Model::merge`] combines layers.
//!
//! Every entry is an [`Entry`]: its value and the layer that set it, so
//! that a `model show` can say where each setting came from.

use std::collections::{BTreeMap, BTreeSet};

use crate::names::{self, Invalid};
use crate::raw::{LoadError, RawModel};

/// A value and the layer that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    value: T,
    layer: String,
}

impl<T> Entry<T> {
    /// The value.
    pub fn value(&self) -> &T {
        &self.value
    }
    /// The name of the layer that set it (as given to `validate`).
    pub fn layer(&self) -> &str {
        &self.layer
    }
}

/// A user account, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id; `None`: the group named like the user (created
    /// with gid = uid when the root has none).
    pub gid: Option<u32>,
    /// Supplementary groups (by name).
    pub groups: Vec<String>,
    /// GECOS field.
    pub comment: Option<String>,
    /// Login shell.
    pub shell: String,
    /// Home directory (absolute).
    pub home: String,
    /// The shadow password field: a hash, or `*` when locked.
    pub password: String,
    /// Lines of ~/.ssh/authorized_keys; empty: the file is left alone.
    pub ssh_authorized_keys: Vec<String>,
}

/// A group, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Members added to the group (existing members are kept).
    pub members: Vec<String>,
}

/// What to do with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// Create its [Install] symlinks.
    Enable,
    /// Remove its symlinks from /etc/systemd/system.
    Disable,
    /// Link it to /dev/null.
    Mask,
}

/// What to do with a kernel module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// Listed in modules-load.d.
    Load,
    /// Blacklisted in modprobe.d.
    Blacklist,
}

/// A transport protocol of a firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// An allowed port or port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRule {
    /// Protocol.
    pub proto: Proto,
    /// First port (1-65535).
    pub low: u16,
    /// Last port, `>= low`.
    pub high: u16,
}

/// The firewall: ports accepted on input (everything else is dropped).
pub type Firewall = BTreeMap<PortRule, Entry<()>>;

/// How an edited file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditFormat {
    /// `Key value` (sshd_config): only the part before the first `Match`.
    Space,
    /// `key=value` (spaces around `=` kept as found).
    Equals,
    /// `[section]` then `key=value`.
    Ini,
}

/// One key of one edited file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EditKey {
    /// Absolute path in the root.
    pub file: String,
    /// The ini section; `None`: the global part.
    pub section: Option<String>,
    /// The key.
    pub key: String,
}

/// What to do with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditOp {
    /// Replace the first occurrence (or add the key).
    Set(String),
    /// Remove every occurrence.
    Unset,
}

/// A plugin record for /etc/stateless/plugins.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// Name.
    pub name: String,
    /// Vendor.
    pub vendor: String,
    /// Version.
    pub version: String,
    /// The generation of the plugin's layer bundle, when the record comes
    /// from a plugin layer the loader applied ([`Model::add_plugin_layer`]);
    /// `None` for a `[[plugins]]` record written in a model.toml.
    pub generation: Option<u64>,
}

/// The checked node model of one layer, or of a merged stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub(crate) hostname: Option<Entry<String>>,
    pub(crate) users: BTreeMap<String, Entry<User>>,
    pub(crate) groups: BTreeMap<String, Entry<Group>>,
    pub(crate) services: BTreeMap<String, Entry<UnitState>>,
    pub(crate) sysctl: BTreeMap<String, Entry<String>>,
    pub(crate) modules: BTreeMap<String, Entry<ModuleState>>,
    pub(crate) module_options: BTreeMap<String, Entry<String>>,
    pub(crate) firewall: Firewall,
    pub(crate) edits: BTreeMap<EditKey, Entry<EditOp>>,
    pub(crate) edit_formats: BTreeMap<String, Entry<EditFormat>>,
    pub(crate) plugins: BTreeMap<String, Entry<Plugin>>,
}

impl Model {
    /// Parses and validates one layer's `model.toml`.
    pub fn load(file: &str, layer: &str, text: &str) -> Result<Model, LoadError> {
        RawModel::parse(file, text)?.validate(layer)
    }

    /// Combines layers, earliest first: a later layer wins per key (users
    /// and groups by name, units, sysctl keys, modules, module options,
    /// edits per file/section/key, edit formats per file, plugins by name,
    /// the hostname). Firewall rules are a union.
    pub fn merge(layers: impl IntoIterator<Item = Model>) -> Model {
        let mut out = Model::default();
        for l in layers {
            if l.hostname.is_some() {
                out.hostname = l.hostname;
            }
            out.users.extend(l.users);
            out.groups.extend(l.groups);
            out.services.extend(l.services);
            out.sysctl.extend(l.sysctl);
            out.modules.extend(l.modules);
            out.module_options.extend(l.module_options);
            for (k, v) in l.firewall {
                // The first layer that opened a port keeps the credit.
                out.firewall.entry(k).or_insert(v);
            }
            out.edits.extend(l.edits);
            out.edit_formats.extend(l.edit_formats);
            out.plugins.extend(l.plugins);
        }
        out
    }

    /// Records a plugin layer that is part of the stack, with its bundle's
    /// generation, as the layer `layer` (the plugin's own layer name):
    /// `/etc/stateless/plugins.json` then lists it. A record of the same
    /// name from a model.toml is replaced.
    pub fn add_plugin_layer(&mut self, layer: &str, meta: &crate::layer::LayerMeta, generation: u64) {
        if let (Some(name), Some(vendor), Some(version)) = (&meta.name, &meta.vendor, &meta.version) {
            let value = Plugin {
                name: name.clone(),
                vendor: vendor.clone(),
                version: version.clone(),
                generation: Some(generation),
            };
            self.plugins.insert(name.clone(), Entry { value, layer: layer.to_owned() });
        }
    }

    /// True when the model sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == Model::default()
    }

    /// The hostname, if any layer set one.
    pub fn hostname(&self) -> Option<&Entry<String>> {
        self.hostname.as_ref()
    }
    /// Users by name.
    pub fn users(&self) -> &BTreeMap<String, Entry<User>> {
        &self.users
    }
    /// Groups by name.
    pub fn groups(&self) -> &BTreeMap<String, Entry<Group>> {
        &self.groups
    }
    /// Units and what to do with them.
    pub fn services(&self) -> &BTreeMap<String, Entry<UnitState>> {
        &self.services
    }
    /// Sysctl settings.
    pub fn sysctl(&self) -> &BTreeMap<String, Entry<String>> {
        &self.sysctl
    }
    /// Modules loaded or blacklisted.
    pub fn modules(&self) -> &BTreeMap<String, Entry<ModuleState>> {
        &self.modules
    }
    /// Module options.
    pub fn module_options(&self) -> &BTreeMap<String, Entry<String>> {
        &self.module_options
    }
    /// Allowed ports.
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }
    /// Edits per file, section and key.
    pub fn edits(&self) -> &BTreeMap<EditKey, Entry<EditOp>> {
        &self.edits
    }
    /// Explicit edit formats per file.
    pub fn edit_formats(&self) -> &BTreeMap<String, Entry<EditFormat>> {
        &self.edit_formats
    }
    /// Plugin records by name.
    pub fn plugins(&self) -> &BTreeMap<String, Entry<Plugin>> {
        &self.plugins
    }
}

fn entry<T>(layer: &str, value: T) -> Entry<T> {
    Entry { value, layer: layer.to_owned() }
}

impl RawModel {
    /// Checks every entry against the rules in docs/site.md; `layer` names
    /// this layer in the merged model's provenance (e.g. `group:rack7`).
    pub fn validate(self, layer: &str) -> Result<Model, LoadError> {
        let doc = &self.doc;
        let mut m = Model::default();

        if let Some(h) = &doc.hostname {
            if !names::hostname(h.get_ref()) {
                return Err(self.invalid(h.span(), Invalid::Hostname(h.get_ref().clone())));
            }
            m.hostname = Some(entry(layer, h.get_ref().clone()));
        }

        for g in &doc.groups {
            let span = g.span();
            let g = g.get_ref();
            let bad = |p| self.invalid(span.clone(), p);
            account(&g.name, "group").map_err(bad)?;
            let gid = id(g.gid, "gid", &g.name).map_err(bad)?;
            for member in &g.members {
                account(member, "user").map_err(bad)?;
            }
            let value = Group { name: g.name.clone(), gid, members: g.members.clone() };
            if m.groups.insert(g.name.clone(), entry(layer, value)).is_some() {
                return Err(bad(Invalid::Duplicate { kind: "group", name: g.name.clone() }));
            }
        }

        for u in &doc.users {
            let span = u.span();
            let u = u.get_ref();
            let bad = |p| self.invalid(span.clone(), p);
            let user = check_user(u).map_err(bad)?;
            if m.users.insert(u.name.clone(), entry(layer, user)).is_some() {
                return Err(bad(Invalid::Duplicate { kind: "user", name: u.name.clone() }));
            }
        }

        if let Some(s) = &doc.services {
            let span = s.span();
            let s = s.get_ref();
            let lists = [(&s.enable, UnitState::Enable), (&s.disable, UnitState::Disable), (&s.mask, UnitState::Mask)];
            for (list, state) in lists {
                for unit in list {
                    if !names::unit_name(unit) {
                        return Err(self.invalid(span.clone(), Invalid::Unit(unit.clone())));
                    }
                    if m.services.insert(unit.clone(), entry(layer, state)).is_some() {
                        return Err(self.invalid(span.clone(), Invalid::UnitTwice(unit.clone())));
                    }
                }
            }
        }

        for (key, value) in &doc.sysctl {
            let span = value.span();
            if !names::sysctl_key(key) {
                return Err(self.invalid(span, Invalid::SysctlKey(key.clone())));
            }
            let v = value.get_ref().text();
            let v = v.trim();
            if v.is_empty() || !names::no_control(v) {
                return Err(self.invalid(span, Invalid::SysctlValue(key.clone())));
            }
            m.sysctl.insert(key.clone(), entry(layer, v.to_owned()));
        }

        if let Some(md) = &doc.modules {
            let span = md.span();
            let md = md.get_ref();
            let bad = |p| self.invalid(span.clone(), p);
            for (list, state) in [(&md.load, ModuleState::Load), (&md.blacklist, ModuleState::Blacklist)] {
                for name in list {
                    if !names::module_name(name) {
                        return Err(bad(Invalid::Module(name.clone())));
                    }
                    if m.modules.insert(name.clone(), entry(layer, state)).is_some() {
                        return Err(bad(Invalid::ModuleTwice(name.clone())));
                    }
                }
            }
            for (name, opts) in &md.options {
                if !names::module_name(name) {
                    return Err(bad(Invalid::Module(name.clone())));
                }
                if !names::no_control(opts) {
                    return Err(bad(Invalid::ModuleOptions(name.clone())));
                }
                m.module_options.insert(name.clone(), entry(layer, opts.trim().to_owned()));
            }
        }

        if let Some(fw) = &doc.firewall {
            for rule in &fw.get_ref().allow {
                let r = port_rule(rule).ok_or_else(|| self.invalid(fw.span(), Invalid::Port(rule.clone())))?;
                m.firewall.insert(r, entry(layer, ()));
            }
        }

        for e in &doc.edits {
            let span = e.span();
            let e = e.get_ref();
            let bad = |p| self.invalid(span.clone(), p);
            check_edit(e, &mut m, layer).map_err(bad)?;
        }

        for p in &doc.plugins {
            let span = p.span();
            let p = p.get_ref();
            let bad = |i| self.invalid(span.clone(), i);
            for (field, value) in [("name", &p.name), ("vendor", &p.vendor), ("version", &p.version)] {
                if !names::plugin_token(value) {
                    return Err(bad(Invalid::Plugin { field, value: value.clone() }));
                }
            }
            let value =
                Plugin { name: p.name.clone(), vendor: p.vendor.clone(), version: p.version.clone(), generation: None };
            if m.plugins.insert(p.name.clone(), entry(layer, value)).is_some() {
                return Err(bad(Invalid::Duplicate { kind: "plugin", name: p.name.clone() }));
            }
        }
        Ok(m)
    }
}

fn account(name: &str, kind: &'static str) -> Result<(), Invalid> {
    if names::account_name(name) { Ok(()) } else { Err(Invalid::AccountName { kind, name: name.to_owned() }) }
}

fn id(id: i64, kind: &'static str, name: &str) -> Result<u32, Invalid> {
    let bad = || Invalid::Id { kind, name: name.to_owned(), id };
    if !names::id_ok(id) {
        return Err(bad());
    }
    u32::try_from(id).map_err(|_| bad())
}

fn check_user(u: &crate::raw::RawUser) -> Result<User, Invalid> {
    account(&u.name, "user")?;
    let uid = id(u.uid, "uid", &u.name)?;
    let gid = u.gid.map(|g| id(g, "gid", &u.name)).transpose()?;
    for g in &u.groups {
        account(g, "group")?;
    }
    let path = |field, value: &str| {
        if names::normalised_abs(value) && !value.contains(':') {
            Ok(value.to_owned())
        } else {
            Err(Invalid::AccountPath { field, name: u.name.clone(), value: value.to_owned() })
        }
    };
    let shell = path("shell", u.shell.as_deref().unwrap_or("/bin/bash"))?;
    let home = path("home", &u.home.clone().unwrap_or(format!("/home/{}", u.name)))?;
    if let Some(c) = &u.comment {
        if c.contains(':') || !names::no_control(c) {
            return Err(Invalid::Comment(u.name.clone()));
        }
    }
    let password = match (&u.password_hash, u.locked) {
        (Some(h), false) => {
            if h.is_empty() || h.contains(':') || h.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(Invalid::PasswordHash(u.name.clone()));
            }
            h.clone()
        }
        // `*` rather than `!`: no password can match, yet OpenSSH still
        // accepts key logins (it treats a leading `!` as a locked account).
        (None, true) => "*".to_owned(),
        _ => return Err(Invalid::Password(u.name.clone())),
    };
    for k in &u.ssh_authorized_keys {
        let fields = k.split_whitespace().count();
        if k.contains(['\n', '\r', '\0']) || fields < 2 {
            return Err(Invalid::SshKey(u.name.clone()));
        }
    }
    Ok(User {
        name: u.name.clone(),
        uid,
        gid,
        groups: u.groups.clone(),
        comment: u.comment.clone(),
        shell,
        home,
        password,
        ssh_authorized_keys: u.ssh_authorized_keys.iter().map(|k| k.trim().to_owned()).collect(),
    })
}

pub(crate) fn port_rule(s: &str) -> Option<PortRule> {
    let (proto, ports) = s.split_once('/')?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    let port = |p: &str| -> Option<u16> {
        // Digits only: `parse` would accept a leading `+`.
        if p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        p.parse::<u16>().ok().filter(|&n| n != 0)
    };
    let (low, high) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    (low <= high).then_some(PortRule { proto, low, high })
}

fn check_edit(e: &crate::raw::RawEdit, m: &mut Model, layer: &str) -> Result<(), Invalid> {
    let file = &e.file;
    if !names::normalised_abs(file) {
        return Err(Invalid::EditFile(file.clone()));
    }
    let format = match e.format.as_deref() {
        None => None,
        Some("space") => Some(EditFormat::Space),
        Some("equals") => Some(EditFormat::Equals),
        Some("ini") => Some(EditFormat::Ini),
        Some(_) => {
            return Err(Invalid::EditFormat {
                file: file.clone(),
                why: "format is one of \"space\", \"equals\", \"ini\"",
            });
        }
    };
    let format = match (format, &e.section) {
        (Some(EditFormat::Space | EditFormat::Equals), Some(_)) => {
            return Err(Invalid::EditFormat { file: file.clone(), why: "section needs format = \"ini\"" });
        }
        (None, Some(_)) => Some(EditFormat::Ini),
        (f, _) => f,
    };
    if let Some(s) = &e.section {
        if s.is_empty() || s.contains([']', '[']) || !names::no_control(s) {
            return Err(Invalid::EditFormat {
                file: file.clone(),
                why: "section is empty or contains '[', ']' or a control character",
            });
        }
    }
    if e.set.is_empty() && e.unset.is_empty() {
        return Err(Invalid::EditEmpty(file.clone()));
    }
    let ops = e.set.iter().map(|(k, v)| (k, EditOp::Set(v.clone()))).chain(e.unset.iter().map(|k| (k, EditOp::Unset)));
    let mut seen = BTreeSet::new();
    for (key, op) in ops {
        if !names::edit_key(key) {
            return Err(Invalid::EditKey { file: file.clone(), key: key.clone() });
        }
        if let EditOp::Set(v) = &op {
            if !names::no_control(v) {
                return Err(Invalid::EditValue { file: file.clone(), key: key.clone() });
            }
        }
        let k = EditKey { file: file.clone(), section: e.section.clone(), key: key.clone() };
        if !seen.insert(k.clone()) || m.edits.insert(k, entry(layer, op)).is_some() {
            return Err(Invalid::EditTwice { file: file.clone(), key: key.clone() });
        }
    }
    if let Some(f) = format {
        let prev = m.edit_formats.insert(file.clone(), entry(layer, f));
        if prev.is_some_and(|p| p.value != f) {
            return Err(Invalid::EditFormat {
                file: file.clone(),
                why: "two different formats for one file in this layer",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
hostname = "node42.example.org"
[[users]]
name = "alice"
uid = 2001
groups = ["wheel"]
shell = "/bin/bash"
password_hash = "$6$salt$hash"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza alice@example.org"]
[[groups]]
name = "ops"
gid = 3000
members = ["alice"]
[services]
enable = ["acme-agent.service"]
disable = ["cups.service"]
mask = ["debug-shell.service"]
[sysctl]
"net.ipv4.ip_forward" = "1"
"vm.swappiness" = 10
[modules]
load = ["dummy"]
options = { dummy = "numdummies=2" }
blacklist = ["pcspkr"]
[firewall]
allow = ["tcp/22", "udp/123", "tcp/8000-8080"]
[[edits]]
file = "/etc/ssh/sshd_config"
set = { PermitRootLogin = "no" }
unset = ["PasswordAuthentication"]
[[plugins]]
name = "acme-agent"
vendor = "acme"
version = "1.2.3"
"#;

    fn load(text: &str) -> Result<Model, LoadError> {
        Model::load("m.toml", "default", text)
    }

    #[test]
    fn full_example_validates() {
        let m = load(FULL).unwrap();
        assert_eq!(m.hostname().unwrap().value(), "node42.example.org");
        let alice = m.users()["alice"].value();
        assert_eq!((alice.uid, alice.home.as_str()), (2001, "/home/alice"));
        assert_eq!(m.services()["debug-shell.service"].value(), &UnitState::Mask);
        assert_eq!(m.firewall().len(), 3);
        assert_eq!(m.modules()["pcspkr"].value(), &ModuleState::Blacklist);
        assert_eq!(m.users()["alice"].layer(), "default");
        assert_eq!(m.sysctl()["vm.swappiness"].value(), "10");
    }

    #[test]
    fn bad_entries_name_rule_and_line() {
        let user = |extra: &str| format!("\n[[users]]\nname = \"alice\"\nuid = 2001\n{extra}\n");
        type Case = (String, usize, fn(&Invalid) -> bool);
        let cases: Vec<Case> = vec![
            (user("locked = true\nhome = \"/home/../etc\""), 2, |p| matches!(p, Invalid::AccountPath { .. })),
            (user(""), 2, |p| matches!(p, Invalid::Password(_))),
            (user("locked = true\npassword_hash = \"x\""), 2, |p| matches!(p, Invalid::Password(_))),
            (user("password_hash = \"a:b\""), 2, |p| matches!(p, Invalid::PasswordHash(_))),
            (user("locked = true\nssh_authorized_keys = [\"ssh-ed25519 A\\nB\"]"), 2, |p| {
                matches!(p, Invalid::SshKey(_))
            }),
            ("[[users]]\nname = \"root\"\nuid = 0\nlocked = true\n".into(), 1, |p| matches!(p, Invalid::Id { .. })),
            ("[[users]]\nname = \"Bad\"\nuid = 5\nlocked = true\n".into(), 1, |p| {
                matches!(p, Invalid::AccountName { .. })
            }),
            ("[[groups]]\nname = \"g\"\ngid = 4294967296\n".into(), 1, |p| matches!(p, Invalid::Id { .. })),
            ("[[groups]]\nname = \"g\"\ngid = 7\n[[groups]]\nname = \"g\"\ngid = 8\n".into(), 4, |p| {
                matches!(p, Invalid::Duplicate { .. })
            }),
            ("[services]\nenable = [\"../x.service\"]\n".into(), 1, |p| matches!(p, Invalid::Unit(_))),
            ("[services]\nenable = [\"sshd\"]\n".into(), 1, |p| matches!(p, Invalid::Unit(_))),
            ("[services]\nenable = [\"a.service\"]\nmask = [\"a.service\"]\n".into(), 1, |p| {
                matches!(p, Invalid::UnitTwice(_))
            }),
            ("[modules]\nload = [\"a/b\"]\n".into(), 1, |p| matches!(p, Invalid::Module(_))),
            ("[modules]\nload = [\"a\"]\nblacklist = [\"a\"]\n".into(), 1, |p| matches!(p, Invalid::ModuleTwice(_))),
            ("[sysctl]\n\"net..x\" = \"1\"\n".into(), 2, |p| matches!(p, Invalid::SysctlKey(_))),
            ("[sysctl]\n\"a.b\" = \"1\\n2\"\n".into(), 2, |p| matches!(p, Invalid::SysctlValue(_))),
            ("[firewall]\nallow = [\"tcp/0\"]\n".into(), 1, |p| matches!(p, Invalid::Port(_))),
            ("[firewall]\nallow = [\"sctp/1\"]\n".into(), 1, |p| matches!(p, Invalid::Port(_))),
            ("[firewall]\nallow = [\"tcp/90-80\"]\n".into(), 1, |p| matches!(p, Invalid::Port(_))),
            ("[firewall]\nallow = [\"tcp/65536\"]\n".into(), 1, |p| matches!(p, Invalid::Port(_))),
            ("[[edits]]\nfile = \"etc/x\"\nunset = [\"a\"]\n".into(), 1, |p| matches!(p, Invalid::EditFile(_))),
            ("[[edits]]\nfile = \"/etc/../shadow\"\nunset = [\"a\"]\n".into(), 1, |p| {
                matches!(p, Invalid::EditFile(_))
            }),
            ("[[edits]]\nfile = \"/etc/x\"\n".into(), 1, |p| matches!(p, Invalid::EditEmpty(_))),
            ("[[edits]]\nfile = \"/etc/x\"\nset = { \"a b\" = \"1\" }\n".into(), 1, |p| {
                matches!(p, Invalid::EditKey { .. })
            }),
            ("[[edits]]\nfile = \"/etc/x\"\nset = { a = \"1\\n2\" }\n".into(), 1, |p| {
                matches!(p, Invalid::EditValue { .. })
            }),
            ("[[edits]]\nfile = \"/etc/x\"\nset = { a = \"1\" }\nunset = [\"a\"]\n".into(), 1, |p| {
                matches!(p, Invalid::EditTwice { .. })
            }),
            ("[[edits]]\nfile = \"/etc/x\"\nformat = \"space\"\nsection = \"s\"\nunset = [\"a\"]\n".into(), 1, |p| {
                matches!(p, Invalid::EditFormat { .. })
            }),
            ("[[edits]]\nfile = \"/etc/x\"\nformat = \"yaml\"\nunset = [\"a\"]\n".into(), 1, |p| {
                matches!(p, Invalid::EditFormat { .. })
            }),
            ("hostname = \"a_b\"\n".into(), 1, |p| matches!(p, Invalid::Hostname(_))),
            ("[[plugins]]\nname = \"../x\"\nvendor = \"v\"\nversion = \"1\"\n".into(), 1, |p| {
                matches!(p, Invalid::Plugin { .. })
            }),
        ];
        for (text, line, want) in cases {
            let err = load(&text).unwrap_err();
            match &err {
                LoadError::Invalid { line: l, problem, .. } => {
                    assert!(want(problem), "{text}: {err}");
                    assert_eq!(*l, line, "{text}: {err}");
                }
                other => panic!("{text}: {other}"),
            }
            assert!(err.to_string().starts_with("m.toml:"), "{err}");
        }
    }

    #[test]
    fn merge_later_layer_wins_per_key() {
        let base = Model::load(
            "default/model.toml",
            "default",
            r#"
hostname = "base"
[[users]]
name = "alice"
uid = 2001
locked = true
[[users]]
name = "bob"
uid = 2002
locked = true
[services]
enable = ["a.service", "b.service"]
[sysctl]
"x.y" = "1"
"x.z" = "1"
[modules]
load = ["dummy", "pcspkr"]
[firewall]
allow = ["tcp/22"]
[[edits]]
file = "/etc/ssh/sshd_config"
set = { PermitRootLogin = "yes", X11Forwarding = "no" }
"#,
        )
        .unwrap();
        let node = Model::load(
            "nodes/n1/model.toml",
            "node:n1",
            r#"
hostname = "n1"
[[users]]
name = "alice"
uid = 2001
password_hash = "$6$x"
[services]
mask = ["a.service"]
[sysctl]
"x.y" = "0"
[modules]
blacklist = ["pcspkr"]
[firewall]
allow = ["tcp/22", "udp/53"]
[[edits]]
file = "/etc/ssh/sshd_config"
unset = ["PermitRootLogin"]
"#,
        )
        .unwrap();
        let m = Model::merge([base, node]);
        assert_eq!(m.hostname().unwrap().value(), "n1");
        assert_eq!(m.users()["alice"].value().password, "$6$x");
        assert_eq!(m.users()["alice"].layer(), "node:n1");
        assert_eq!(m.users()["bob"].layer(), "default");
        assert_eq!(m.services()["a.service"].value(), &UnitState::Mask);
        assert_eq!(m.services()["b.service"].value(), &UnitState::Enable);
        assert_eq!(m.sysctl()["x.y"].value(), "0");
        assert_eq!(m.sysctl()["x.z"].layer(), "default");
        assert_eq!(m.modules()["pcspkr"].value(), &ModuleState::Blacklist);
        assert_eq!(m.modules()["dummy"].value(), &ModuleState::Load);
        assert_eq!(m.firewall().len(), 2);
        let key = |k: &str| EditKey { file: "/etc/ssh/sshd_config".into(), section: None, key: k.into() };
        assert_eq!(m.edits()[&key("PermitRootLogin")].value(), &EditOp::Unset);
        assert_eq!(m.edits()[&key("X11Forwarding")].value(), &EditOp::Set("no".into()));
        assert!(Model::merge([]).is_empty());
    }

    /// Every one-byte change of a full model parses and validates or is
    /// refused with a one-line error; none panics.
    #[test]
    fn mutations_never_panic() {
        let bytes = FULL.as_bytes();
        for i in 0..bytes.len() {
            for c in [b'"', b'[', b']', b'=', b'\n', b'x', b'0', b'/', b'.', b'-', b'@', b' '] {
                let mut m = bytes.to_vec();
                m[i] = c;
                let Ok(text) = String::from_utf8(m) else { continue };
                if let Err(e) = load(&text) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
                let cut = &bytes[..i];
                if let Ok(text) = std::str::from_utf8(cut) {
                    let _ = load(text);
                }
            }
        }
    }

    #[test]
    fn port_rules() {
        for (s, want) in [
            ("tcp/22", Some((Proto::Tcp, 22, 22))),
            ("udp/1-65535", Some((Proto::Udp, 1, 65535))),
            ("tcp/+22", None),
            ("tcp/", None),
            ("tcp/22-", None),
            ("TCP/22", None),
            ("22", None),
        ] {
            assert_eq!(port_rule(s).map(|r| (r.proto, r.low, r.high)), want, "{s}");
        }
    }
}
