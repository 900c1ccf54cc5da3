//! Fuzz target `model_toml` and its seeds: a layer's `model.toml`, which
//! `site check` reads from the admin's tree and a node will read from each
//! layer of its stack (issue 14).

use stateless_model::Model;

/// `Model::load` over the input as text. Beyond not panicking: a refusal
/// is one line (the console shows it as it is), and an accepted model
/// merges with itself into the same model (a later layer that repeats
/// every key changes nothing).
pub fn model_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Model::load("model.toml", "fuzz", text) {
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "a refusal of more than one line: {line:?}");
        }
        Ok(m) => {
            let twice = Model::merge([m.clone(), m.clone()]);
            assert_eq!(twice, m, "merging a model with itself changed it");
        }
    }
}

/// Seeds for `model_toml`: a model using every section, and near misses.
pub fn model_toml_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let full = r#"hostname = "node42.example.org"
[[users]]
name = "alice"
uid = 2001
groups = ["wheel", "ops"]
password_hash = "$6$salt$hash"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3Nza alice@example.org"]
[[users]]
name = "bob"
uid = 2002
locked = true
[[groups]]
name = "ops"
gid = 3000
members = ["alice"]
[services]
enable = ["acme-agent.service", "getty@tty2.service"]
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
[[edits]]
file = "/etc/app.ini"
format = "ini"
section = "main"
set = { threads = "4" }
[[plugins]]
name = "acme-agent"
vendor = "acme"
version = "1.2.3"
"#;
    vec![
        ("full", full.as_bytes().to_vec()),
        ("empty", Vec::new()),
        ("unknown_key", b"hostnam = \"x\"\n".to_vec()),
        ("uid_zero", b"[[users]]\nname = \"r\"\nuid = 0\n".to_vec()),
        ("bad_port", b"[firewall]\nallow = [\"tcp/0\", \"sctp/1\", \"tcp/9-1\"]\n".to_vec()),
        ("edit_dotdot", b"[[edits]]\nfile = \"/etc/../shadow\"\nset = { a = \"b\" }\n".to_vec()),
        ("unit_slash", b"[services]\nenable = [\"../x.service\"]\n".to_vec()),
    ]
}
