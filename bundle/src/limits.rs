//! Limits on untrusted sizes, with documented defaults.

/// Bounds applied to every bundle read (and checked when packing, so that a
/// bundle made with the defaults is always accepted with the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload (compressed, encrypted) in bytes. Default 512 MiB.
    pub max_payload: u64,
    /// Largest decompressed tar stream in bytes. Default 2 GiB.
    pub max_expanded: u64,
    /// Most tar entries, and (counted apart) most parent directories that
    /// entry paths imply without listing them. Default 100,000.
    pub max_entries: u32,
    /// Longest entry path or link target in bytes. Default 4096 (PATH_MAX).
    pub max_path: usize,
}

/// Most bytes of names in one bundle: the last component of every entry's
/// path, and of every directory its paths imply, each counted once. The
/// loader keeps every name of the tree while it applies it, so this bounds
/// that memory (100,000 names of 255 bytes took 60 MiB). 8 MiB is 100,000
/// names of 83 bytes on average.
pub const MAX_NAME_BYTES: u64 = 8 << 20;

/// Longest single path component, as on Linux filesystems.
pub const MAX_COMPONENT: usize = 255;

/// The decoder refuses zstd frames whose window exceeds 2^23 bytes (8 MiB),
/// which bounds decompression memory whatever the bundle says. Levels 1–19
/// without long-distance matching stay within it.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_payload: 512 << 20, max_expanded: 2 << 30, max_entries: 100_000, max_path: 4096 }
    }
}
