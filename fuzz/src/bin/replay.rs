//! Runs fuzz targets over files without libFuzzer, so that a stable
//! toolchain (CI) exercises the same code as `cargo fuzz`:
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --bin replay -- TARGET PATH...
//! cargo run --release --manifest-path fuzz/Cargo.toml --bin replay -- all fuzz/corpus
//! ```
//!
//! TARGET is a target name; each PATH is a file or a directory whose files
//! are replayed. With `all`, each PATH is a corpus root holding one directory
//! per target (as `seed_corpora` and `cargo fuzz` make). Exits 1 if any
//! input panics, naming it; a crash artifact from `cargo fuzz` replays the
//! same way.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use stateless_fuzz::TARGETS;

fn files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut out: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        out.sort();
        out
    } else {
        vec![path.to_path_buf()]
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((target, paths)) = args.split_first().filter(|(_, p)| !p.is_empty()) else {
        eprintln!(
            "usage: replay TARGET|all PATH...\ntargets: {}",
            TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(" ")
        );
        return ExitCode::from(2);
    };
    let mut jobs: Vec<(&str, fn(&[u8]), PathBuf)> = Vec::new();
    for path in paths {
        for (name, f) in TARGETS {
            if target == "all" {
                let dir = Path::new(path).join(name);
                if dir.is_dir() {
                    jobs.extend(files(&dir).into_iter().map(|p| (*name, *f, p)));
                }
            } else if target == name {
                jobs.extend(files(Path::new(path)).into_iter().map(|p| (*name, *f, p)));
            }
        }
    }
    if target != "all" && !TARGETS.iter().any(|(n, _)| n == target) {
        eprintln!("replay: unknown target {target}");
        return ExitCode::from(2);
    }
    let start = Instant::now();
    let mut failed = 0;
    for (name, f, path) in &jobs {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("replay: {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        if std::panic::catch_unwind(|| f(&data)).is_err() {
            eprintln!("replay: {name} panicked on {}", path.display());
            failed += 1;
        }
    }
    eprintln!("replay: {} inputs, {failed} failed, {:.1?}", jobs.len(), start.elapsed());
    if jobs.is_empty() {
        eprintln!("replay: no inputs found");
        return ExitCode::from(2);
    }
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
