//! Entry path rules: what a tar entry may be called and where a link may point.
//!
//! Entry paths are relative to the root being written. Refused always:
//! absolute paths, `..` components, NUL bytes, over-long paths or components.
//! `.` and empty components are dropped, so `./etc//motd` is `etc/motd`.
//! Relative symlink targets are resolved against the link's directory and
//! must stay inside the root; absolute targets are allowed because they are
//! interpreted against the root the bundle is applied to (e.g.
//! `etc/localtime -> /usr/share/zoneinfo/UTC`), and extraction never follows
//! links.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::limits::MAX_COMPONENT;

/// Prefix of an OCI-style whiteout: `dir/.wh.NAME` deletes `dir/NAME`.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// An opaque-directory marker: `dir/.wh..wh..opq` deletes everything the
/// base image has in `dir`.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path starts with `/`.
    #[error("absolute path refused")]
    Absolute,
    /// The path has a `..` component.
    #[error("path escapes the root (contains ..)")]
    DotDot,
    /// The path names the root or nothing.
    #[error("empty path")]
    Empty,
    /// The path has a NUL byte.
    #[error("path contains a NUL byte")]
    Nul,
    /// The path is longer than the limit.
    #[error("path longer than {0} bytes")]
    TooLong(usize),
    /// A component is longer than 255 bytes.
    #[error("path component longer than 255 bytes")]
    ComponentTooLong,
    /// A relative symlink target climbs out of the root.
    #[error("symlink target escapes the root")]
    LinkEscapes,
    /// A whiteout name does not name anything.
    #[error("malformed whiteout name")]
    BadWhiteout,
}

/// A validated, normalised relative path (`a/b/c`, no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Validates and normalises an entry path.
    pub fn parse(raw: &[u8], max_path: usize) -> Result<RelPath, PathError> {
        if raw.contains(&0) {
            return Err(PathError::Nul);
        }
        if raw.len() > max_path {
            return Err(PathError::TooLong(max_path));
        }
        if raw.first() == Some(&b'/') {
            return Err(PathError::Absolute);
        }
        let mut out = Vec::with_capacity(raw.len());
        for comp in raw.split(|&c| c == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => return Err(PathError::DotDot),
                c if c.len() > MAX_COMPONENT => return Err(PathError::ComponentTooLong),
                c => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(c);
                }
            }
        }
        if out.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(RelPath(out))
    }

    /// The path bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a `Path`.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The parent directory, or `None` for a top-level name.
    pub fn parent(&self) -> Option<RelPath> {
        let i = self.0.iter().rposition(|&c| c == b'/')?;
        Some(RelPath(self.0.get(..i)?.to_vec()))
    }

    /// Every proper ancestor, shortest first.
    pub fn ancestors(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().enumerate().filter(|(_, c)| **c == b'/').filter_map(|(i, _)| self.0.get(..i))
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&c| c == b'/') {
            Some(i) => self.0.get(i + 1..).unwrap_or_default(),
            None => &self.0,
        }
    }

    /// How many components deep the path is (`a` is 1).
    pub fn depth(&self) -> usize {
        1 + self.0.iter().filter(|&&c| c == b'/').count()
    }

    /// What a whiteout entry at this path deletes. A path with a `.wh.`
    /// component above its last one is malformed too: that directory would
    /// be a whiteout that is not an empty regular file (and an opaque
    /// marker or whiteout under it would never be seen as one).
    pub fn whiteout(&self) -> Option<Result<Whiteout, PathError>> {
        let name = self.file_name();
        let mut above = self.0.split(|&c| c == b'/');
        above.next_back();
        if above.any(|c| c.starts_with(WHITEOUT_PREFIX)) {
            return Some(Err(PathError::BadWhiteout));
        }
        if name == OPAQUE_MARKER {
            return Some(Ok(Whiteout::Opaque(self.parent())));
        }
        let target = name.strip_prefix(WHITEOUT_PREFIX)?;
        if target.is_empty() || target == b"." || target == b".." || target.starts_with(WHITEOUT_PREFIX) {
            return Some(Err(PathError::BadWhiteout));
        }
        let mut path = self.parent().map(|p| p.0).unwrap_or_default();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(target);
        Some(Ok(Whiteout::Path(RelPath(path))))
    }

    /// The whiteout entry that deletes this path.
    pub fn whiteout_entry(&self) -> RelPath {
        let mut path = self.parent().map(|p| p.0).unwrap_or_default();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(WHITEOUT_PREFIX);
        path.extend_from_slice(self.file_name());
        RelPath(path)
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// What a whiteout entry deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout {
    /// One path (and everything under it).
    Path(RelPath),
    /// Everything the base image has in this directory (`None`: the root).
    Opaque(Option<RelPath>),
}

/// Checks that a symlink at `link` pointing to `target` stays in the root.
pub fn check_symlink_target(link: &RelPath, target: &[u8], max_path: usize) -> Result<(), PathError> {
    if target.is_empty() {
        return Err(PathError::Empty);
    }
    if target.contains(&0) {
        return Err(PathError::Nul);
    }
    if target.len() > max_path {
        return Err(PathError::TooLong(max_path));
    }
    if target.first() == Some(&b'/') {
        return Ok(());
    }
    // Depth of the directory holding the link; each `..` climbs one level.
    let mut depth = link.depth() - 1;
    for comp in target.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => depth = depth.checked_sub(1).ok_or(PathError::LinkEscapes)?,
            c if c.len() > MAX_COMPONENT => return Err(PathError::ComponentTooLong),
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<String, PathError> {
        RelPath::parse(s.as_bytes(), 4096).map(|p| p.to_string())
    }

    #[test]
    fn entry_paths() {
        let table: &[(&str, Result<&str, PathError>)] = &[
            ("etc/motd", Ok("etc/motd")),
            ("./etc//motd", Ok("etc/motd")),
            ("etc/", Ok("etc")),
            ("/etc/passwd", Err(PathError::Absolute)),
            ("../x", Err(PathError::DotDot)),
            ("a/../../x", Err(PathError::DotDot)),
            ("a/..", Err(PathError::DotDot)),
            ("./", Err(PathError::Empty)),
            ("", Err(PathError::Empty)),
            ("a\0b", Err(PathError::Nul)),
        ];
        for (input, want) in table {
            assert_eq!(p(input), want.map(str::to_owned), "{input:?}");
        }
        assert_eq!(p(&"a/".repeat(3000)), Err(PathError::TooLong(4096)));
        assert_eq!(p(&"a".repeat(256)), Err(PathError::ComponentTooLong));
    }

    #[test]
    fn symlink_targets() {
        let link = RelPath::parse(b"etc/ssl/cert.pem", 4096).unwrap();
        let table: &[(&str, bool)] = &[
            ("/usr/share/ca.pem", true),
            ("certs/ca.pem", true),
            ("../../usr/ca.pem", true),
            ("../../../etc/shadow", false),
            ("../../usr/../../x", false),
            ("./././x", true),
        ];
        for (target, ok) in table {
            assert_eq!(check_symlink_target(&link, target.as_bytes(), 4096).is_ok(), *ok, "{target}");
        }
        let top = RelPath::parse(b"x", 4096).unwrap();
        assert_eq!(check_symlink_target(&top, b"..", 4096), Err(PathError::LinkEscapes));
        assert_eq!(check_symlink_target(&top, b"", 4096), Err(PathError::Empty));
    }

    #[test]
    fn whiteouts() {
        let w = |s: &str| RelPath::parse(s.as_bytes(), 4096).unwrap().whiteout();
        assert_eq!(w("etc/.wh.motd"), Some(Ok(Whiteout::Path(RelPath(b"etc/motd".to_vec())))));
        assert_eq!(w(".wh.opt"), Some(Ok(Whiteout::Path(RelPath(b"opt".to_vec())))));
        assert_eq!(w("etc/.wh..wh..opq"), Some(Ok(Whiteout::Opaque(Some(RelPath(b"etc".to_vec()))))));
        assert_eq!(w("etc/.wh."), Some(Err(PathError::BadWhiteout)));
        assert_eq!(w("etc/.wh.."), Some(Err(PathError::BadWhiteout)));
        // A whiteout or opaque marker as a parent directory.
        assert_eq!(w("etc/.wh.sub/x"), Some(Err(PathError::BadWhiteout)));
        assert_eq!(w(".wh..wh..opq/x/y"), Some(Err(PathError::BadWhiteout)));
        assert_eq!(w("etc/.wh.sub/.wh.x"), Some(Err(PathError::BadWhiteout)));
        assert_eq!(w("etc/.whx/y"), None);
        assert_eq!(w("etc/motd"), None);
        let motd = RelPath::parse(b"etc/motd", 4096).unwrap();
        assert_eq!(motd.whiteout_entry().to_string(), "etc/.wh.motd");
        assert_eq!(motd.ancestors().collect::<Vec<_>>(), vec![b"etc".as_slice()]);
    }
}
