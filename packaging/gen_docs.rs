//! Man pages and shell completions from a program's clap definition, for
//! `scripts/package`. Each of statelessctl, stateless-loader and
//! stateless-node includes this file (`#[path]`) only when built with its
//! `gen-docs` feature, which no normal build turns on. Such a build, run
//! with `STATELESS_GEN_DOCS=DIR`, writes
//!
//! - `DIR/man/NAME.SECTION`, and one page per subcommand
//!   (`statelessctl-bundle-pack.1`), as `man statelessctl-bundle` expects;
//! - `DIR/completions/bash/NAME`, `zsh/_NAME`, `fish/NAME.fish` when asked;
//!
//! and exits instead of running. The pages are dated from
//! `SOURCE_DATE_EPOCH` (the last commit's time in `scripts/package`), so two
//! builds give the same bytes.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use clap_complete::Shell;

/// When `STATELESS_GEN_DOCS` names a directory: writes the pages (in
/// `section`) and, with `completions`, the bash, zsh and fish completions,
/// then returns the exit code to end with. None when not asked.
pub fn generate_if_asked(cmd: clap::Command, section: &'static str, completions: bool) -> Option<ExitCode> {
    let dir = std::env::var_os("STATELESS_GEN_DOCS")?;
    match generate(cmd, section, completions, Path::new(&dir)) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("gen-docs: {err:#}");
            Some(ExitCode::FAILURE)
        }
    }
}

fn generate(mut cmd: clap::Command, section: &'static str, completions: bool, dir: &Path) -> anyhow::Result<()> {
    // build() fills in what clap derives lazily: each subcommand's display
    // name ("statelessctl-bundle-pack"), bin name and the global flags.
    cmd.build();
    let name = cmd.get_name().to_owned();
    let man = dir.join("man");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    let date = source_date()?;
    man_pages(&cmd, section, &date, &man)?;
    if completions {
        for (shell, sub, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let d = dir.join("completions").join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
            let path = d.join(file);
            fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// One page for `cmd` and one for every visible subcommand, recursively.
fn man_pages(cmd: &clap::Command, section: &'static str, date: &str, dir: &Path) -> anyhow::Result<()> {
    let title = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_owned();
    let page = clap_mangen::Man::new(cmd.clone())
        .title(title.clone())
        .section(section)
        .date(date.to_owned())
        .source(format!("stateless {}", env!("CARGO_PKG_VERSION")))
        .manual("Stateless Loader");
    let mut out = Vec::new();
    page.render(&mut out).with_context(|| format!("rendering the page of {title}"))?;
    let path = dir.join(format!("{title}.{section}"));
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        man_pages(sub, section, date, dir)?;
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` as YYYY-MM-DD, or "" (no date) when it is unset.
fn source_date() -> anyhow::Result<String> {
    let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") else { return Ok(String::new()) };
    let secs: u64 = epoch.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number"))?;
    let when = UNIX_EPOCH + Duration::from_secs(secs);
    let stamp = humantime::format_rfc3339_seconds(when).to_string();
    Ok(stamp.get(..10).unwrap_or_default().to_owned())
}
