//! The parts of the model that are whole files the model owns: hostname,
//! sysctl.d, modules-load.d, modprobe.d, the nftables include, plugins.json,
//! and model.json (what the model set and which layer set it). A part the
//! model does not set writes no file.

use std::fmt::Write as _;

use super::{Action, ApplyError, Perm};
use crate::{Model, ModuleState, Proto};

pub(crate) const HEADER: &str =
    "# Written by stateless-loader from the node model; changes are lost at the next boot.\n";

fn write(actions: &mut Vec<Action>, path: &str, text: String) {
    actions.push(Action::Write { path: path.to_owned(), bytes: text.into_bytes(), perm: Perm::CONFIG });
}

pub(crate) fn plan(m: &Model, actions: &mut Vec<Action>) -> Result<(), ApplyError> {
    if let Some(h) = m.hostname() {
        write(actions, "etc/hostname", format!("{}\n", h.value()));
    }

    if !m.sysctl().is_empty() {
        let mut t = HEADER.to_owned();
        for (k, v) in m.sysctl() {
            let _ = writeln!(t, "{k} = {}", v.value());
        }
        write(actions, "etc/sysctl.d/90-stateless.conf", t);
    }

    let load: Vec<&String> =
        m.modules().iter().filter(|(_, s)| *s.value() == ModuleState::Load).map(|(n, _)| n).collect();
    if !load.is_empty() {
        let mut t = HEADER.to_owned();
        for n in load {
            let _ = writeln!(t, "{n}");
        }
        write(actions, "etc/modules-load.d/stateless.conf", t);
    }
    let black: Vec<&String> =
        m.modules().iter().filter(|(_, s)| *s.value() == ModuleState::Blacklist).map(|(n, _)| n).collect();
    if !black.is_empty() || !m.module_options().is_empty() {
        let mut t = HEADER.to_owned();
        for (n, o) in m.module_options() {
            let _ = writeln!(t, "options {n} {}", o.value());
        }
        for n in black {
            // `blacklist` only stops alias-based autoloading; `install
            // /bin/false` also stops explicit and dependency loads.
            let _ = writeln!(t, "blacklist {n}\ninstall {n} /bin/false");
        }
        write(actions, "etc/modprobe.d/stateless.conf", t);
    }

    if !m.firewall().is_empty() {
        write(actions, "etc/nftables.d/stateless.nft", nft(m));
    }

    if !m.plugins().is_empty() {
        let records: Vec<serde_json::Value> = m
            .plugins()
            .values()
            .map(|p| {
                let p = p.value();
                let mut r = serde_json::json!({
                    "name": p.name,
                    "vendor": p.vendor,
                    "version": p.version,
                    "state": "installed",
                });
                if let (Some(g), Some(o)) = (p.generation, r.as_object_mut()) {
                    o.insert("generation".into(), g.into());
                }
                r
            })
            .collect();
        // `{:#}` of a Value is its pretty JSON; it cannot fail.
        let t = format!("{:#}\n", serde_json::json!({ "plugins": records }));
        write(actions, "etc/stateless/plugins.json", t);
    }

    if !m.is_empty() {
        let t = format!("{:#}\n", record(m));
        write(actions, RECORD, t);
    }
    Ok(())
}

/// Where [`record`] is written in the root.
pub(crate) const RECORD: &str = "etc/stateless/model.json";

/// What the model set and which layer set it, for `statelessctl model
/// show`: `{"entries": [{"part", "key", "value", "layer"}]}`. Values are
/// summaries: a user's uid, never its password hash or keys.
pub(crate) fn record(m: &Model) -> serde_json::Value {
    use crate::{EditOp, UnitState};
    let mut entries = Vec::new();
    let mut push = |part: &str, key: String, value: String, layer: &str| {
        entries.push(serde_json::json!({ "part": part, "key": key, "value": value, "layer": layer }));
    };
    if let Some(h) = m.hostname() {
        push("hostname", "hostname".into(), h.value().clone(), h.layer());
    }
    for (n, u) in m.users() {
        push("users", n.clone(), format!("uid {}", u.value().uid), u.layer());
    }
    for (n, g) in m.groups() {
        push("groups", n.clone(), format!("gid {}", g.value().gid), g.layer());
    }
    for (n, s) in m.services() {
        let v = match s.value() {
            UnitState::Enable => "enable",
            UnitState::Disable => "disable",
            UnitState::Mask => "mask",
        };
        push("services", n.clone(), v.into(), s.layer());
    }
    for (k, v) in m.sysctl() {
        push("sysctl", k.clone(), v.value().clone(), v.layer());
    }
    for (n, s) in m.modules() {
        let v = match s.value() {
            ModuleState::Load => "load",
            ModuleState::Blacklist => "blacklist",
        };
        push("modules", n.clone(), v.into(), s.layer());
    }
    for (n, o) in m.module_options() {
        push("module-options", n.clone(), o.value().clone(), o.layer());
    }
    for (r, e) in m.firewall() {
        let proto = if r.proto == Proto::Tcp { "tcp" } else { "udp" };
        let port = if r.low == r.high { r.low.to_string() } else { format!("{}-{}", r.low, r.high) };
        push("firewall", format!("{proto}/{port}"), "allow".into(), e.layer());
    }
    for (k, e) in m.edits() {
        let key = match &k.section {
            Some(s) => format!("{} [{s}] {}", k.file, k.key),
            None => format!("{} {}", k.file, k.key),
        };
        let v = match e.value() {
            EditOp::Set(v) => format!("set {v}"),
            EditOp::Unset => "unset".to_owned(),
        };
        push("edits", key, v, e.layer());
    }
    for (n, p) in m.plugins() {
        let p2 = p.value();
        push("plugins", n.clone(), format!("{} {}", p2.vendor, p2.version), p.layer());
    }
    serde_json::json!({ "entries": entries })
}

/// The table drops what it does not accept: in nftables an `accept` in
/// one base chain does not stop another base chain from dropping, so a
/// table that only accepted would change nothing.
fn nft(m: &Model) -> String {
    let mut t = HEADER.to_owned();
    // Declare-then-delete makes loading the file twice (a reload) replace
    // the table instead of failing or duplicating rules.
    t.push_str("table inet stateless\ndelete table inet stateless\n\n");
    t.push_str("table inet stateless {\n\tchain input {\n");
    t.push_str("\t\ttype filter hook input priority filter; policy drop;\n");
    t.push_str("\t\tct state established,related accept\n\t\tct state invalid drop\n");
    t.push_str("\t\tiif lo accept\n");
    // ICMPv6 carries neighbour discovery: without it IPv6 stops working.
    // By number (1 ICMP, 58 ICMPv6): nft resolves protocol names through
    // /etc/protocols, which a minimal base image may not have, and a name
    // it cannot resolve fails the whole file.
    t.push_str("\t\tmeta l4proto { 1, 58 } accept # icmp, ipv6-icmp\n");
    for (proto, name) in [(Proto::Tcp, "tcp"), (Proto::Udp, "udp")] {
        let ports: Vec<String> = m
            .firewall()
            .keys()
            .filter(|r| r.proto == proto)
            .map(|r| if r.low == r.high { r.low.to_string() } else { format!("{}-{}", r.low, r.high) })
            .collect();
        if !ports.is_empty() {
            let _ = writeln!(t, "\t\t{name} dport {{ {} }} accept", ports.join(", "));
        }
    }
    t.push_str("\t}\n}\n");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_names_the_layer_of_every_entry_and_no_secret() {
        let base = Model::load(
            "d",
            "default",
            "[[users]]\nname = \"alice\"\nuid = 2001\npassword_hash = \"$6$secret\"\nssh_authorized_keys = [\"ssh-ed25519 AAAAkey a@b\"]\n[modules]\nload = [\"dummy\"]\n[firewall]\nallow = [\"tcp/8000-8080\"]\n",
        )
        .unwrap();
        let node = Model::load(
            "n",
            "node:n1",
            "hostname = \"n1\"\n[[edits]]\nfile = \"/etc/ssh/sshd_config\"\nset = { PermitRootLogin = \"no\" }\n",
        )
        .unwrap();
        let m = Model::merge([base, node]);
        let r = record(&m);
        let text = r.to_string();
        assert!(!text.contains("secret") && !text.contains("AAAAkey"), "{text}");
        let entries = r["entries"].as_array().unwrap();
        let find = |part: &str| entries.iter().find(|e| e["part"] == part).unwrap();
        assert_eq!(find("users")["value"], "uid 2001");
        assert_eq!(find("users")["layer"], "default");
        assert_eq!(find("hostname")["layer"], "node:n1");
        assert_eq!(find("firewall")["key"], "tcp/8000-8080");
        assert_eq!(find("edits")["key"], "/etc/ssh/sshd_config PermitRootLogin");
        assert_eq!(find("edits")["value"], "set no");
        assert_eq!(find("modules")["value"], "load");

        let mut actions = Vec::new();
        plan(&Model::default(), &mut actions).unwrap();
        assert!(actions.is_empty(), "an empty model writes no record");
    }
}
