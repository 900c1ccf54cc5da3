//! Users and groups: edits to etc/passwd, etc/group, etc/shadow and
//! etc/gshadow that keep every entry of the base image, plus homes and
//! ~/.ssh/authorized_keys.
//!
//! A model entry that matches an existing entry by name and id updates it;
//! one that shares only the name or only the id with another entry is a
//! clash, refused with both entries named.

use super::fsx::{Kind, Perm, Root};
use super::{Action, ApplyError};
use crate::Model;

/// A colon-separated database, line by line; lines the model does not
/// touch are written back byte for byte.
struct Db {
    path: &'static str,
    lines: Vec<String>,
}

impl Db {
    fn read(root: &Root, path: &'static str, required: bool) -> Result<Option<Db>, ApplyError> {
        let Some(bytes) = root.read(path)? else {
            return if required { Err(ApplyError::Missing { path: path.to_owned() }) } else { Ok(None) };
        };
        let text = String::from_utf8(bytes).map_err(|_| ApplyError::Parse {
            path: path.to_owned(),
            line: 1,
            why: "not UTF-8",
        })?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        Ok(Some(Db { path, lines }))
    }

    /// (name, id) of each entry; comments and blank lines are skipped.
    fn entries(&self) -> impl Iterator<Item = (usize, &str, Option<u32>)> {
        self.lines.iter().enumerate().filter_map(|(i, l)| {
            if l.trim().is_empty() || l.starts_with('#') {
                return None;
            }
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1).and_then(|s| s.parse().ok());
            Some((i, name, id))
        })
    }

    fn find_name(&self, name: &str) -> Option<(usize, Option<u32>)> {
        self.entries().find(|e| e.1 == name).map(|e| (e.0, e.2))
    }

    fn find_id(&self, id: u32) -> Option<&str> {
        self.entries().find(|e| e.2 == Some(id)).map(|e| e.1)
    }

    fn field_mut(&mut self, line: usize, idx: usize, f: impl FnOnce(&str) -> String) {
        if let Some(l) = self.lines.get_mut(line) {
            let mut fields: Vec<String> = l.split(':').map(str::to_owned).collect();
            while fields.len() <= idx {
                fields.push(String::new());
            }
            if let Some(v) = fields.get_mut(idx) {
                *v = f(v);
            }
            *l = fields.join(":");
        }
    }

    fn action(self, perm: Perm) -> Action {
        let mut text = self.lines.join("\n");
        text.push('\n');
        Action::Write { path: self.path.to_owned(), bytes: text.into_bytes(), perm }
    }
}

fn add_member(list: &str, user: &str) -> String {
    if list.split(',').any(|m| m == user) {
        list.to_owned()
    } else if list.is_empty() {
        user.to_owned()
    } else {
        format!("{list},{user}")
    }
}

struct Dbs {
    group: Db,
    gshadow: Option<Db>,
}

impl Dbs {
    /// Ensures group `name` with `gid`; returns nothing new if it exists.
    fn ensure_group(&mut self, name: &str, gid: u32) -> Result<(), ApplyError> {
        let clash = |theirs: String| ApplyError::Clash {
            path: "etc/group".into(),
            ours: format!("group {name} (gid {gid})"),
            theirs,
        };
        match self.group.find_name(name) {
            Some((_, Some(g))) if g == gid => return Ok(()),
            Some((_, g)) => {
                return Err(clash(format!("group {name} (gid {})", g.map_or("?".into(), |g| g.to_string()))));
            }
            None => {}
        }
        if let Some(other) = self.group.find_id(gid) {
            return Err(clash(format!("group {other} (gid {gid})")));
        }
        self.group.lines.push(format!("{name}:x:{gid}:"));
        if let Some(gs) = &mut self.gshadow {
            if gs.find_name(name).is_none() {
                gs.lines.push(format!("{name}:!::"));
            }
        }
        Ok(())
    }

    fn add_to_group(&mut self, group: &str, user: &str) -> bool {
        let Some((line, _)) = self.group.find_name(group) else {
            return false;
        };
        self.group.field_mut(line, 3, |m| add_member(m, user));
        if let Some(gs) = &mut self.gshadow {
            if let Some((l, _)) = gs.find_name(group) {
                gs.field_mut(l, 3, |m| add_member(m, user));
            }
        }
        true
    }
}

pub(crate) fn plan(m: &Model, root: &Root, actions: &mut Vec<Action>) -> Result<(), ApplyError> {
    if m.users().is_empty() && m.groups().is_empty() {
        return Ok(());
    }
    // Read all four before deciding anything, so a symlink planted at any
    // of them refuses the whole model.
    let mut passwd = Db::read(root, "etc/passwd", !m.users().is_empty())?;
    let mut shadow = Db::read(root, "etc/shadow", !m.users().is_empty())?;
    let group = Db::read(root, "etc/group", true)?.ok_or_else(|| ApplyError::Missing { path: "etc/group".into() })?;
    let gshadow = Db::read(root, "etc/gshadow", false)?;
    let mut dbs = Dbs { group, gshadow };

    for g in m.groups().values() {
        let g = g.value();
        dbs.ensure_group(&g.name, g.gid)?;
    }

    let mut homes = Vec::new();
    if let (Some(pw), Some(sh)) = (&mut passwd, &mut shadow) {
        for u in m.users().values() {
            let u = u.value();
            let clash = |theirs: String| ApplyError::Clash {
                path: "etc/passwd".into(),
                ours: format!("user {} (uid {})", u.name, u.uid),
                theirs,
            };
            let existing = match pw.find_name(&u.name) {
                Some((line, Some(uid))) if uid == u.uid => Some(line),
                Some((_, uid)) => {
                    return Err(clash(format!("user {} (uid {})", u.name, uid.map_or("?".into(), |i| i.to_string()))));
                }
                None => {
                    if let Some(other) = pw.find_id(u.uid) {
                        return Err(clash(format!("user {other} (uid {})", u.uid)));
                    }
                    None
                }
            };
            let gid = match u.gid {
                Some(gid) => {
                    if dbs.group.find_id(gid).is_none() {
                        return Err(ApplyError::UnknownGroup { user: u.name.clone(), group: format!("gid {gid}") });
                    }
                    gid
                }
                None => match dbs.group.find_name(&u.name) {
                    Some((_, Some(gid))) => gid,
                    _ => {
                        dbs.ensure_group(&u.name, u.uid)?;
                        u.uid
                    }
                },
            };
            let gecos = match (existing, &u.comment) {
                (_, Some(c)) => c.clone(),
                (Some(line), None) => pw.lines.get(line).and_then(|l| l.split(':').nth(4)).unwrap_or("").to_owned(),
                (None, None) => String::new(),
            };
            let entry = format!("{}:x:{}:{gid}:{gecos}:{}:{}", u.name, u.uid, u.home, u.shell);
            match existing.and_then(|l| pw.lines.get_mut(l)) {
                Some(l) => *l = entry,
                None => pw.lines.push(entry),
            }
            match sh.find_name(&u.name) {
                Some((line, _)) => sh.field_mut(line, 1, |_| u.password.clone()),
                None => sh.lines.push(format!("{}:{}::0:99999:7:::", u.name, u.password)),
            }
            for g in &u.groups {
                if !dbs.add_to_group(g, &u.name) {
                    return Err(ApplyError::UnknownGroup { user: u.name.clone(), group: g.clone() });
                }
            }
            homes.push((u, gid));
        }
    }
    for g in m.groups().values() {
        let g = g.value();
        for member in &g.members {
            dbs.add_to_group(&g.name, member);
        }
    }

    let secret = Perm { mode: 0o000, uid: 0, gid: 0, keep_existing: true };
    if let Some(pw) = passwd {
        actions.push(pw.action(Perm::CONFIG));
    }
    if let Some(sh) = shadow {
        actions.push(sh.action(secret));
    }
    actions.push(dbs.group.action(Perm::CONFIG));
    if let Some(gs) = dbs.gshadow {
        actions.push(gs.action(secret));
    }

    for (u, gid) in homes {
        let home = u.home.trim_start_matches('/').to_owned();
        let owned = |mode| Perm { mode, uid: u.uid, gid, keep_existing: false };
        // An existing home is left as it is (owner and mode included);
        // a symlink there is refused by the apply's preflight.
        let kind = root.kind(&home)?;
        if kind == Kind::Symlink {
            return Err(ApplyError::Symlink { path: home });
        }
        if kind == Kind::Missing {
            actions.push(Action::Mkdir { path: home.clone(), perm: owned(0o700) });
        }
        if !u.ssh_authorized_keys.is_empty() {
            actions.push(Action::Mkdir { path: format!("{home}/.ssh"), perm: owned(0o700) });
            let mut keys = u.ssh_authorized_keys.join("\n");
            keys.push('\n');
            actions.push(Action::Write {
                path: format!("{home}/.ssh/authorized_keys"),
                bytes: keys.into_bytes(),
                perm: owned(0o600),
            });
        }
    }
    Ok(())
}
