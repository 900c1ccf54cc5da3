//! Records on stderr, prefixed with the program name: warnings always,
//! info and debug with `-v`/`-vv`.

use std::io::Write as _;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let tag = if r.level() <= Level::Warn { "warning: " } else { "" };
        // Not eprintln!: a log line to a closed stderr must not end the
        // command with a panic.
        let _ = writeln!(std::io::stderr(), "stateless-node: {tag}{}", r.args());
    }

    fn flush(&self) {}
}

pub fn init(verbose: u8) {
    static LOGGER: Stderr = Stderr;
    // Only the first logger installed stays; main installs one, once.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(
        [LevelFilter::Warn, LevelFilter::Info].get(usize::from(verbose)).copied().unwrap_or(LevelFilter::Debug),
    );
}
