//! Edits of one key in an existing file, keeping every other line as it
//! is: `Key value` (sshd_config: only the global part before the first
//! `Match`, commented defaults untouched), `key=value`, and ini sections.

use std::collections::BTreeMap;

use super::fsx::{Perm, Root};
use super::{Action, ApplyError};
use crate::{EditFormat, EditOp, Model};

/// Files known to be `Key value` even when they hold only comments.
const SPACE_FILES: &[&str] = &["sshd_config", "ssh_config"];

type Ops<'a> = Vec<(Option<&'a str>, &'a str, &'a EditOp)>;

pub(crate) fn plan(m: &Model, root: &Root, actions: &mut Vec<Action>) -> Result<(), ApplyError> {
    let mut per_file: BTreeMap<&str, Ops<'_>> = BTreeMap::new();
    for (k, op) in m.edits() {
        per_file.entry(k.file.as_str()).or_default().push((k.section.as_deref(), k.key.as_str(), op.value()));
    }
    for (file, ops) in per_file {
        let rel = file.trim_start_matches('/');
        let bad = |why| ApplyError::Edit { path: rel.to_owned(), why };
        let bytes = root.read(rel)?.ok_or_else(|| bad("does not exist; edits change existing files only"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("is not UTF-8"))?;
        let format = match m.edit_formats().get(file) {
            Some(f) => *f.value(),
            None if ops.iter().any(|o| o.0.is_some()) => EditFormat::Ini,
            None => infer(file, &text).ok_or_else(|| bad("cannot infer its format; set format"))?,
        };
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        check(&lines, format).map_err(|(line, why)| ApplyError::Parse { path: rel.to_owned(), line, why })?;
        for (section, key, op) in ops {
            edit(&mut lines, format, section, key, op);
        }
        let mut out = lines.join("\n");
        out.push('\n');
        actions.push(Action::Write { path: rel.to_owned(), bytes: out.into_bytes(), perm: Perm::CONFIG });
    }
    Ok(())
}

fn is_comment(l: &str) -> bool {
    let t = l.trim_start();
    t.is_empty() || t.starts_with('#') || t.starts_with(';')
}

fn infer(file: &str, text: &str) -> Option<EditFormat> {
    let base = file.rsplit('/').next().unwrap_or(file);
    if SPACE_FILES.contains(&base) {
        return Some(EditFormat::Space);
    }
    let first = text.lines().find(|l| !is_comment(l))?.trim();
    if first.starts_with('[') {
        Some(EditFormat::Ini)
    } else if first.split_whitespace().next().is_some_and(|w| w.contains('=')) || first.contains(" = ") {
        Some(EditFormat::Equals)
    } else {
        Some(EditFormat::Space)
    }
}

/// Refuses files whose lines do not fit the format, rather than guessing.
fn check(lines: &[String], format: EditFormat) -> Result<(), (usize, &'static str)> {
    for (i, l) in lines.iter().enumerate() {
        if is_comment(l) {
            continue;
        }
        let t = l.trim();
        let ok = match format {
            EditFormat::Space => true,
            EditFormat::Equals => t.contains('='),
            EditFormat::Ini => (t.starts_with('[') && t.ends_with(']')) || t.contains('='),
        };
        if !ok {
            return Err((i + 1, "not a key=value line"));
        }
    }
    Ok(())
}

/// The key of a line in `format`, if it is a setting.
fn key_of(l: &str, format: EditFormat) -> Option<&str> {
    if is_comment(l) {
        return None;
    }
    let t = l.trim();
    match format {
        EditFormat::Space => t.split(|c: char| c.is_whitespace() || c == '=').next(),
        EditFormat::Equals | EditFormat::Ini => t.split_once('=').map(|(k, _)| k.trim()),
    }
}

fn same_key(a: &str, b: &str, format: EditFormat) -> bool {
    // sshd and ssh keywords are case-insensitive.
    match format {
        EditFormat::Space => a.eq_ignore_ascii_case(b),
        _ => a == b,
    }
}

/// The range of lines an edit may touch: for Space the global part (up
/// to the first `Match`/`Host` block), for ini the section's body (or the
/// part before the first section), for Equals everything.
fn scope(lines: &[String], format: EditFormat, section: Option<&str>) -> Option<(usize, usize)> {
    match format {
        EditFormat::Equals => Some((0, lines.len())),
        EditFormat::Space => {
            let end = lines
                .iter()
                .position(|l| {
                    let w = l.split_whitespace().next().unwrap_or("");
                    !is_comment(l) && (w.eq_ignore_ascii_case("match") || w.eq_ignore_ascii_case("host"))
                })
                .unwrap_or(lines.len());
            Some((0, end))
        }
        EditFormat::Ini => {
            let start = match section {
                None => 0,
                Some(s) => lines.iter().position(|l| ini_header(l) == Some(s))? + 1,
            };
            let end = lines
                .iter()
                .enumerate()
                .skip(start)
                .find(|(_, l)| ini_header(l).is_some())
                .map_or(lines.len(), |(i, _)| i);
            Some((start, end))
        }
    }
}

fn ini_header(l: &str) -> Option<&str> {
    let t = l.trim();
    t.strip_prefix('[')?.strip_suffix(']').map(str::trim)
}

fn render(format: EditFormat, key: &str, value: &str) -> String {
    match format {
        EditFormat::Space => format!("{key} {value}"),
        EditFormat::Equals | EditFormat::Ini => format!("{key}={value}"),
    }
}

fn edit(lines: &mut Vec<String>, format: EditFormat, section: Option<&str>, key: &str, op: &EditOp) {
    let Some((start, end)) = scope(lines, format, section) else {
        // A missing ini section: add it at the end.
        if let (EditOp::Set(v), Some(s)) = (op, section) {
            if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                lines.push(String::new());
            }
            lines.push(format!("[{s}]"));
            lines.push(render(format, key, v));
        }
        return;
    };
    let hits: Vec<usize> = (start..end)
        .filter(|&i| lines.get(i).and_then(|l| key_of(l, format)).is_some_and(|k| same_key(k, key, format)))
        .collect();
    match op {
        EditOp::Set(v) => match hits.first() {
            Some(&i) => {
                if let Some(l) = lines.get_mut(i) {
                    *l = render(format, key, v);
                }
            }
            None => {
                // After the last setting of the scope, so that a Match
                // block or the next section stays after it.
                let mut at = end;
                while at > start && lines.get(at - 1).is_some_and(|l| l.trim().is_empty()) {
                    at -= 1;
                }
                if format == EditFormat::Space && end < lines.len() {
                    at = end;
                }
                lines.insert(at, render(format, key, v));
            }
        },
        EditOp::Unset => {
            for i in hits.into_iter().rev() {
                lines.remove(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, format: EditFormat, section: Option<&str>, key: &str, op: EditOp) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        edit(&mut lines, format, section, key, &op);
        lines.join("\n") + "\n"
    }

    #[test]
    fn edits_table() {
        use EditFormat::*;
        let sshd = "#PermitRootLogin prohibit-password\nPermitRootLogin yes\nPasswordAuthentication yes\n\nMatch User bob\n    PermitRootLogin yes\n    PasswordAuthentication no\n";
        let set = |v: &str| EditOp::Set(v.into());
        type Case<'a> = (&'a str, EditFormat, Option<&'a str>, &'a str, EditOp, &'a str);
        let cases: &[Case<'_>] = &[
            (
                sshd,
                Space,
                None,
                "PermitRootLogin",
                set("no"),
                "#PermitRootLogin prohibit-password\nPermitRootLogin no\nPasswordAuthentication yes\n\nMatch User bob\n    PermitRootLogin yes\n    PasswordAuthentication no\n",
            ),
            (
                sshd,
                Space,
                None,
                "passwordauthentication",
                EditOp::Unset,
                "#PermitRootLogin prohibit-password\nPermitRootLogin yes\n\nMatch User bob\n    PermitRootLogin yes\n    PasswordAuthentication no\n",
            ),
            (
                sshd,
                Space,
                None,
                "X11Forwarding",
                set("no"),
                "#PermitRootLogin prohibit-password\nPermitRootLogin yes\nPasswordAuthentication yes\n\nX11Forwarding no\nMatch User bob\n    PermitRootLogin yes\n    PasswordAuthentication no\n",
            ),
            ("#a=1\nb = 2\n", Equals, None, "b", set("3"), "#a=1\nb=3\n"),
            ("#a=1\nb = 2\n", Equals, None, "a", set("9"), "#a=1\nb = 2\na=9\n"),
            ("x=1\n[s]\nk=1\n\n[t]\nk=2\n", Ini, Some("t"), "k", set("5"), "x=1\n[s]\nk=1\n\n[t]\nk=5\n"),
            ("x=1\n[s]\nk=1\n\n[t]\nk=2\n", Ini, Some("s"), "j", set("5"), "x=1\n[s]\nk=1\nj=5\n\n[t]\nk=2\n"),
            ("x=1\n[s]\nk=1\n", Ini, Some("new"), "k", set("5"), "x=1\n[s]\nk=1\n\n[new]\nk=5\n"),
            ("x=1\n[s]\nk=1\n", Ini, Some("s"), "k", EditOp::Unset, "x=1\n[s]\n"),
            ("x=1\n[s]\nk=1\n", Ini, None, "x", set("2"), "x=2\n[s]\nk=1\n"),
        ];
        for (i, (text, f, sec, key, op, want)) in cases.iter().enumerate() {
            assert_eq!(run(text, *f, *sec, key, op.clone()), *want, "case {i}");
        }
    }

    #[test]
    fn odd_lines_never_panic() {
        let odd = ["", "[", "]", "[]", "=", " = ", "Match", "match all", "[s", "\t", "k", "k=", "=v", "#[s]"];
        for f in [EditFormat::Space, EditFormat::Equals, EditFormat::Ini] {
            for a in odd {
                for b in odd {
                    let text = format!("{a}\n{b}\n{a}");
                    for (sec, op) in
                        [(None, EditOp::Unset), (Some("s"), EditOp::Set("1".into())), (None, EditOp::Set("2".into()))]
                    {
                        let _ = run(&text, f, sec, "k", op);
                    }
                    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
                    let _ = check(&lines, f);
                    let _ = infer("/etc/x", &text);
                }
            }
        }
    }

    #[test]
    fn format_inference_and_checks() {
        assert_eq!(infer("/etc/ssh/sshd_config", "# only comments\n"), Some(EditFormat::Space));
        assert_eq!(infer("/etc/x.conf", "# c\na=1\n"), Some(EditFormat::Equals));
        assert_eq!(infer("/etc/x.conf", "a = 1\n"), Some(EditFormat::Equals));
        assert_eq!(infer("/etc/x.ini", "[s]\na=1\n"), Some(EditFormat::Ini));
        assert_eq!(infer("/etc/x", "Port 22\n"), Some(EditFormat::Space));
        assert_eq!(infer("/etc/x", "# nothing\n"), None);
        let lines = |t: &str| t.lines().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(check(&lines("a=1\nbogus\n"), EditFormat::Equals), Err((2, "not a key=value line")));
        assert!(check(&lines("[s]\na=1\n"), EditFormat::Ini).is_ok());
    }
}
