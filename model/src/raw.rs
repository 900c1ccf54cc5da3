//! The unverified model: the shape of `model.toml`, nothing more.
//!
//! Unknown keys are errors (`deny_unknown_fields`), so a typo such as
//! `[[user]]` or `uid_number` is reported with its line instead of being
//! silently ignored. Entries keep their byte spans so that validation
//! errors can name the line too.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::names::Invalid;

/// Why a `model.toml` could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Not valid TOML, or not the model's shape (unknown key, wrong type).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// The file as the caller named it.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        column: usize,
        /// The parser's message, on one line.
        message: String,
    },
    /// Well-formed, but an entry breaks a rule of the model.
    #[error("{file}:{line}: {problem}")]
    Invalid {
        /// The file as the caller named it.
        file: String,
        /// 1-based line of the entry that breaks the rule.
        line: usize,
        /// Which rule.
        #[source]
        problem: Invalid,
    },
}

impl LoadError {
    /// The rule an `Invalid` error breaks (for tests and status reports).
    pub fn problem(&self) -> Option<&Invalid> {
        match self {
            LoadError::Invalid { problem, .. } => Some(problem),
            LoadError::Syntax { .. } => None,
        }
    }
}

/// A parsed but unchecked `model.toml`. Only [`RawModel::validate`] turns it
/// into a [`crate::Model`].
#[derive(Debug)]
pub struct RawModel {
    pub(crate) file: String,
    pub(crate) line_starts: Vec<usize>,
    pub(crate) doc: RawDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDoc {
    pub hostname: Option<Spanned<String>>,
    #[serde(default)]
    pub users: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub groups: Vec<Spanned<RawGroup>>,
    pub services: Option<Spanned<RawServices>>,
    #[serde(default)]
    pub sysctl: BTreeMap<String, Spanned<Scalar>>,
    pub modules: Option<Spanned<RawModules>>,
    pub firewall: Option<Spanned<RawFirewall>>,
    #[serde(default)]
    pub edits: Vec<Spanned<RawEdit>>,
    #[serde(default)]
    pub plugins: Vec<Spanned<RawPlugin>>,
}

/// A sysctl value: `"1"` and `1` both mean 1.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUser {
    pub name: String,
    pub uid: i64,
    pub gid: Option<i64>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub comment: Option<String>,
    pub shell: Option<String>,
    pub home: Option<String>,
    pub password_hash: Option<String>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub name: String,
    pub gid: i64,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServices {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub disable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModules {
    #[serde(default)]
    pub load: Vec<String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub blacklist: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFirewall {
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEdit {
    pub file: String,
    pub format: Option<String>,
    pub section: Option<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugin {
    pub name: String,
    pub vendor: String,
    pub version: String,
}

impl RawModel {
    /// Parses `text` (the contents of `file`, which is used in messages only).
    pub fn parse(file: &str, text: &str) -> Result<RawModel, LoadError> {
        let line_starts = line_starts(text);
        match toml::from_str::<RawDoc>(text) {
            Ok(doc) => Ok(RawModel { file: file.to_owned(), line_starts, doc }),
            Err(e) => {
                let offset = e.span().map(|s| s.start).unwrap_or(0);
                let (line, column) = position(text, &line_starts, offset);
                Err(LoadError::Syntax { file: file.to_owned(), line, column, message: one_line(e.message()) })
            }
        }
    }

    /// The 1-based line of a byte offset.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    pub(crate) fn invalid(&self, span: std::ops::Range<usize>, problem: Invalid) -> LoadError {
        LoadError::Invalid { file: self.file.clone(), line: self.line_of(span.start), problem }
    }
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect()
}

fn position(text: &str, line_starts: &[usize], offset: usize) -> (usize, usize) {
    let line = line_starts.partition_point(|&s| s <= offset).max(1);
    let start = line_starts.get(line - 1).copied().unwrap_or(0);
    let column = text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

/// Console lines are one line: the parser's message may span several.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let cases: &[(&str, usize)] = &[
            ("hostnam = \"x\"\n", 1),
            ("hostname = \"a\"\n[[users]]\nname = \"alice\"\nuid = 2001\nlocked = true\nuid_number = 3\n", 6),
            ("[services]\nenable = []\nrestart = [\"a.service\"]\n", 3),
            ("[[user]]\nname = \"x\"\n", 1),
            ("[[edits]]\nfile = \"/etc/x\"\nsett = { a = \"b\" }\n", 3),
            ("[firewall]\nallow = [22]\n", 2),
        ];
        for (text, line) in cases {
            match RawModel::parse("m.toml", text) {
                Err(LoadError::Syntax { line: l, file, .. }) => {
                    assert_eq!((l, file.as_str()), (*line, "m.toml"), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn syntax_error_is_one_line() {
        let err = RawModel::parse("m.toml", "a = = \n").map(|_| ()).unwrap_err();
        let s = err.to_string();
        assert!(s.starts_with("m.toml:1:"), "{s}");
        assert!(!s.contains('\n'), "{s}");
    }
}
