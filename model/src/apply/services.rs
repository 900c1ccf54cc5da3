//! Units: the symlinks `systemctl --root` would make, made without running
//! systemctl. Enable reads the unit's [Install] section (WantedBy=,
//! RequiredBy=, UpheldBy=, Alias=); disable removes links to the unit from
//! etc/systemd/system; mask links etc/systemd/system/UNIT to /dev/null.
//!
//! A plugin layer's units live in its own root, `opt/VENDOR/NAME/systemd/`,
//! where systemd does not look: each is linked into etc/systemd/system (what
//! `systemctl link` does), and is found there by enable, after the root's
//! own unit dirs, so a plugin can never shadow a unit of the base image.

use super::fsx::Root;
use super::{Action, ApplyError};
use crate::names;
use crate::{Model, UnitState};

/// Where systemd looks for unit files, in its order of precedence.
const UNIT_DIRS: &[&str] = &["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"];
const ETC: &str = "etc/systemd/system";
/// Link hops followed inside the root when a unit file is a symlink.
const MAX_HOPS: usize = 8;

enum Found {
    /// The unit file, as an absolute path inside the root.
    File {
        path: String,
        text: String,
    },
    Masked,
}

/// The unit directory inside a plugin's root.
pub(crate) const PLUGIN_UNIT_DIR: &str = "systemd";

/// The unit dirs of the plugin layers in the model (`opt/V/N/systemd`).
fn plugin_unit_dirs(m: &Model) -> Vec<String> {
    m.plugins()
        .values()
        .map(|p| p.value())
        .filter(|p| p.generation.is_some())
        .map(|p| format!("opt/{}/{}/{PLUGIN_UNIT_DIR}", p.vendor, p.name))
        .collect()
}

/// Finds `unit` (or its template) in the unit dirs, then in `extra` (the
/// plugins' unit dirs); links are resolved inside the root, never followed
/// by the kernel.
fn find(root: &Root, unit: &str, extra: &[String]) -> Result<Option<Found>, ApplyError> {
    let template = unit.split_once('@').and_then(|(stem, rest)| {
        let suffix = rest.rsplit_once('.')?.1;
        Some(format!("{stem}@.{suffix}"))
    });
    let dirs: Vec<&str> = UNIT_DIRS.iter().copied().chain(extra.iter().map(String::as_str)).collect();
    for name in std::iter::once(unit.to_owned()).chain(template) {
        for dir in &dirs {
            let mut path = format!("{dir}/{name}");
            for _ in 0..MAX_HOPS {
                let target = match root.readlink(&path) {
                    Ok(t) => t,
                    // lib -> usr/lib on merged-/usr systems: usr/lib is searched anyway.
                    Err(ApplyError::Symlink { .. } | ApplyError::NotDir { .. }) => break,
                    Err(e) => return Err(e),
                };
                match target {
                    Some(t) if t == "/dev/null" => return Ok(Some(Found::Masked)),
                    Some(t) => {
                        path = match t.strip_prefix('/') {
                            Some(abs) => abs.to_owned(),
                            None => {
                                let parent = path.rsplit_once('/').map_or("", |p| p.0);
                                format!("{parent}/{t}")
                            }
                        };
                        if path.split('/').any(|s| s == "..") {
                            return Err(ApplyError::Unit {
                                unit: unit.to_owned(),
                                why: format!("links to {t}, outside the unit dirs"),
                            });
                        }
                    }
                    None => {
                        let Some(bytes) = root.read(&path)? else { break };
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        return Ok(Some(Found::File { path: format!("/{path}"), text }));
                    }
                }
            }
        }
    }
    Ok(None)
}

#[derive(Default)]
struct Install {
    /// (directory suffix, target): `.wants`, `.requires`, `.upholds`.
    links: Vec<(&'static str, String)>,
    aliases: Vec<String>,
}

fn install(unit: &str, text: &str) -> Result<Install, ApplyError> {
    let mut out = Install::default();
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let kind = match key.trim() {
            "WantedBy" => Some(".wants"),
            "RequiredBy" => Some(".requires"),
            "UpheldBy" => Some(".upholds"),
            "Alias" => None,
            _ => continue,
        };
        let value = value.trim();
        if value.is_empty() {
            // An empty assignment resets the list, as in systemd.
            match kind {
                Some(k) => out.links.retain(|(d, _)| *d != k),
                None => out.aliases.clear(),
            }
            continue;
        }
        for name in value.split_whitespace() {
            if !names::unit_name_any(name) {
                return Err(ApplyError::Unit {
                    unit: unit.to_owned(),
                    why: format!("[Install] names {name:?}, which is not a unit name (specifiers are not expanded)"),
                });
            }
            match kind {
                Some(k) => out.links.push((k, name.to_owned())),
                None => out.aliases.push(name.to_owned()),
            }
        }
    }
    Ok(out)
}

/// Links each unit file of each plugin layer into etc/systemd/system,
/// unless the root already has a unit of that name there (a link to the
/// same file is left as it is).
fn link_plugin_units(root: &Root, dirs: &[String], actions: &mut Vec<Action>) -> Result<(), ApplyError> {
    for dir in dirs {
        for name in root.list(dir)? {
            if !names::unit_name_any(&name) || !matches!(root.kind(&format!("{dir}/{name}"))?, super::fsx::Kind::File) {
                continue;
            }
            let link = format!("{ETC}/{name}");
            let target = format!("/{dir}/{name}");
            match root.kind(&link)? {
                super::fsx::Kind::Missing => actions.push(Action::Symlink { path: link, target }),
                super::fsx::Kind::Symlink if root.readlink(&link)?.as_deref() == Some(target.as_str()) => {}
                _ => {
                    return Err(ApplyError::Unit {
                        unit: name,
                        why: format!("the plugin's {target} would replace {link}, which the root already has"),
                    });
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn plan(m: &Model, root: &Root, actions: &mut Vec<Action>) -> Result<(), ApplyError> {
    let extra = plugin_unit_dirs(m);
    link_plugin_units(root, &extra, actions)?;
    for (unit, state) in m.services() {
        let found = find(root, unit, &extra)?.ok_or_else(|| ApplyError::UnknownUnit { unit: unit.clone() })?;
        match (state.value(), found) {
            (UnitState::Enable, Found::Masked) => {
                return Err(ApplyError::Unit {
                    unit: unit.clone(),
                    why: "is masked in the root; cannot enable it".into(),
                });
            }
            (UnitState::Enable, Found::File { path, text }) => {
                let inst = install(unit, &text)?;
                if inst.links.is_empty() && inst.aliases.is_empty() {
                    return Err(ApplyError::Unit {
                        unit: unit.clone(),
                        why: "has no WantedBy=, RequiredBy=, UpheldBy= or Alias= in [Install]; nothing to enable"
                            .into(),
                    });
                }
                for (dir, target) in inst.links {
                    actions.push(Action::Symlink { path: format!("{ETC}/{target}{dir}/{unit}"), target: path.clone() });
                }
                for alias in inst.aliases {
                    actions.push(Action::Symlink { path: format!("{ETC}/{alias}"), target: path.clone() });
                }
            }
            (UnitState::Disable, found) => {
                if let Found::File { text, .. } = &found {
                    for alias in install(unit, text)?.aliases {
                        let p = format!("{ETC}/{alias}");
                        if root.readlink(&p)?.is_some() {
                            actions.push(Action::Remove { path: p });
                        }
                    }
                }
                for d in root.list(ETC)? {
                    if [".wants", ".requires", ".upholds"].iter().any(|s| d.ends_with(s)) {
                        let p = format!("{ETC}/{d}/{unit}");
                        if root.readlink(&p)?.is_some() {
                            actions.push(Action::Remove { path: p });
                        }
                    }
                }
            }
            (UnitState::Mask, found) => {
                let p = format!("{ETC}/{unit}");
                if matches!(found, Found::File { ref path, .. } if path == &format!("/{p}"))
                    && root.readlink(&p)?.is_none()
                {
                    return Err(ApplyError::Unit {
                        unit: unit.clone(),
                        why: format!("{p} is a unit file, not a link; cannot mask it"),
                    });
                }
                actions.push(Action::Symlink { path: p, target: "/dev/null".into() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section() {
        let text = "[Unit]\nWantedBy=bogus.target\n[Install]\nWantedBy=multi-user.target\nWantedBy=\nWantedBy=a.target b.target\nRequiredBy=c.target\nAlias=x.service\n# WantedBy=no.target\n";
        let i = install("u.service", text).unwrap();
        assert_eq!(
            i.links,
            vec![
                (".wants", "a.target".to_owned()),
                (".wants", "b.target".to_owned()),
                (".requires", "c.target".to_owned())
            ]
        );
        assert_eq!(i.aliases, vec!["x.service".to_owned()]);
        assert!(install("u.service", "[Install]\nWantedBy=%i.target\n").is_err());
        assert!(install("u.service", "[Install]\nWantedBy=../../x.target\n").is_err());
    }
}
