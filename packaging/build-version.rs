//! Build script shared by statelessctl, stateless-loader and stateless-node
//! (each names it with `build = "../packaging/build-version.rs"`): sets
//! `STATELESS_VERSION` to "VERSION (commit HASH)" for `--version` and the
//! loader's debug console line.
//!
//! The commit is `$STATELESS_GIT_COMMIT` when set (a build from a source
//! tarball whose maker knew it), else `git rev-parse` of the checkout, else
//! "unknown" (no git, or not a checkout). It is re-read when HEAD or the
//! branch it points to moves, so a binary never names a commit it was not
//! built from; the price is that every commit relinks these three binaries.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=STATELESS_GIT_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    let commit = match std::env::var("STATELESS_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            watch_git(&dir);
            git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=STATELESS_VERSION={version} (commit {commit})");
}

/// One line of `git -C DIR ARGS...`, or None when git is missing or fails.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!line.is_empty()).then_some(line)
}

/// Reruns this script when HEAD, the branch it names or the packed refs
/// change (in a worktree HEAD is private and refs are shared: `--git-path`
/// knows which is where).
fn watch_git(dir: &str) {
    let mut paths = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        paths.push(branch);
    }
    for p in paths {
        if let Some(abs) = git(dir, &["rev-parse", "--path-format=absolute", "--git-path", &p]) {
            if Path::new(&abs).exists() {
                println!("cargo:rerun-if-changed={abs}");
            }
        }
    }
    // Without any watched file cargo would rerun on every change in the
    // package; this file is the script's own input either way.
    println!("cargo:rerun-if-changed=../packaging/build-version.rs");
}
