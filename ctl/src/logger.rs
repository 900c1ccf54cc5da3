//! A minimal stderr logger: warnings always, info and debug with `-v`.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            // Not eprintln!: a log line to a closed stderr must not end a
            // running server.
            let _ = writeln!(std::io::stderr(), "statelessctl: {level}{}", r.args());
        }
    }

    fn flush(&self) {}
}

pub fn init(verbose: u8) {
    static LOGGER: Stderr = Stderr;
    // A second logger cannot be installed; the first one stays, which is fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    });
}
