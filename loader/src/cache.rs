//! The last-known-good cache: the last two bundles that applied, kept on a
//! local disk so that a node boots its configuration when the server is
//! down.
//!
//! A cache is a directory (the mounted cache device, see
//! [`crate::blockdev`], or `--cache-dir`) holding two slots:
//!
//! ```text
//! current.bundle   current.json     the last bundle that applied
//! previous.bundle  previous.json    the one before it
//! ```
//!
//! A `.bundle` is the bundle exactly as received (still encrypted: the cache
//! disk holds no plaintext and no key). A `.json` is its [`SlotMeta`]. A slot
//! is used only when both files are there, the size matches and the digest in
//! the JSON is the digest in the bundle's header; otherwise it is skipped
//! with a warning and the other slot is still used. The bundle is verified
//! again in full (key, tag, every chunk) before it is applied, like a
//! download.
//!
//! # Writing, and what a power cut leaves
//!
//! [`Cache::store`] runs only after a bundle applied. With C the current
//! slot, P the previous one and N the new bundle, it does:
//!
//! 1. write N to `.new.bundle` and its metadata to `.new.json`, `fsync` both
//!    (a full disk fails here: the temporary files are removed and C and P
//!    are untouched);
//! 2. when C is usable and is not N: hard-link `current.*` to `.prev.*`, then
//!    rename `.prev.bundle` to `previous.bundle` and `.prev.json` to
//!    `previous.json`;
//! 3. rename `.new.bundle` to `current.bundle`, then `.new.json` to
//!    `current.json`;
//! 4. `fsync` the directory.
//!
//! Each rename is atomic, and on ext4 (ordered metadata journal) the renames
//! reach the disk in the order they were made, so a power cut leaves one of
//! these states:
//!
//! | cut after | current slot | previous slot | boots from |
//! |---|---|---|---|
//! | nothing / step 1 / the links | C | P | C (stray `.new.*`, `.prev.*` are ignored and removed by the next store) |
//! | `previous.bundle` renamed | C | C's bundle with P's JSON: digest mismatch, skipped | C |
//! | `previous.json` renamed | C | C | C |
//! | `current.bundle` renamed | N's bundle with C's JSON: digest mismatch, skipped | C | C |
//! | `current.json` renamed | N | C | N |
//!
//! Every state has a usable slot holding C or N, and the temporary files were
//! fsynced before any rename made them visible, so a slot never names a
//! half-written bundle. The hard links are what make this work: moving a
//! pair of files by renaming them one at a time would pass through a state
//! where neither slot is a matching pair. The cache file system must support
//! hard links (ext4 does); where it does not, the files are copied instead.
//!
//! # Rollback memory
//!
//! The rollback floor (the generation below which a server's bundle is
//! refused) is derived at boot from the cached bundles themselves:
//! [`Cache::rollback_floor`] reads each slot's bundle header and has the
//! caller authenticate it with the site key (the loader's key ladder; a
//! header sealed for this node cannot be forged or altered without that
//! key). The floor is the highest generation among the headers that
//! authenticate, with that bundle's digest.
//!
//! The `.json` files are not trusted for it: anyone who can write the cache
//! disk can write them. Each still carries `highest_generation`, the floor
//! the loader had when it stored the slot, for people and tools; when it
//! disagrees with the authenticated headers (a lowered, raised or garbage
//! file), the loader says so in a warning and uses the headers. Someone who
//! can write the disk can still delete or corrupt the bundles: then there is
//! no floor (no state), never a floor higher than a genuine bundle's.
//! Unencrypted bundles authenticate nothing (their tag is a checksum), so
//! with `rd.stateless.key=none` the cache holds no rollback state.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use stateless_bundle::header::{Header, RawHeader};
use stateless_bundle::{BundleReader, OpenError};
use stateless_keys::blockdev::{describe_open_error as describe, open_regular};

/// Largest metadata file read; a real one is a few hundred bytes.
const MAX_JSON: u64 = 64 * 1024;

/// File stems of the two slots, newest first.
const SLOTS: [&str; 2] = ["current", "previous"];
/// The new bundle and its metadata while they are written.
const NEW_BUNDLE: &str = ".new.bundle";
const NEW_JSON: &str = ".new.json";
/// Links to the current slot while it becomes the previous one.
const PREV_BUNDLE: &str = ".prev.bundle";
const PREV_JSON: &str = ".prev.json";

/// What the cache knows about a stored bundle (the slot's `.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotMeta {
    /// The bundle's generation.
    pub generation: u64,
    /// The bundle's digest (hex of the header tag).
    pub digest: String,
    /// When it was fetched, Unix seconds (the initramfs clock, which may be
    /// unset).
    pub fetched: i64,
    /// The URL it was fetched from.
    pub server: String,
    /// The id of the key it is sealed for (hex; all zeros when unencrypted).
    pub key_id: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The rollback floor when this slot was stored (at least
    /// `generation`). Informational: the floor is taken from the bundles'
    /// authenticated headers ([`Cache::rollback_floor`]), and a file that
    /// disagrees with them is reported.
    pub highest_generation: u64,
}

/// One slot: the bundle's path and metadata, or why it cannot be used.
pub type Slot = Result<(PathBuf, SlotMeta), SlotError>;

/// Why a slot cannot be used. The Display is the warning, naming the slot's
/// file: `current.json: unreadable: …`, `current.bundle: not a regular file
/// (a FIFO)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// The file is missing, not a regular file, or unreadable.
    #[error("{file}: {}", describe(source))]
    Open {
        /// The slot's file (`current.json`).
        file: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The metadata file is larger than any real one.
    #[error("{file}: over {MAX_JSON} bytes")]
    TooLarge {
        /// The slot's file.
        file: String,
    },
    /// The metadata file is not the JSON of a [`SlotMeta`].
    #[error("{file}: unreadable: {source}")]
    Json {
        /// The slot's file.
        file: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The bundle has no readable header.
    #[error("{file}: {source}")]
    Header {
        /// The slot's file.
        file: String,
        /// The cause.
        #[source]
        source: OpenError,
    },
    /// The bundle's digest is not the one its metadata names (a power cut
    /// between two renames leaves this; so does tampering).
    #[error("{file}: digest {} does not match {json} ({})", short(found), short(expected))]
    Digest {
        /// The bundle file.
        file: String,
        /// The metadata file.
        json: String,
        /// The digest in the metadata.
        expected: String,
        /// The bundle's digest.
        found: String,
    },
    /// The bundle's size is not the one its metadata gives.
    #[error("{file}: size is {found}, {json} says {expected}")]
    Size {
        /// The bundle file.
        file: String,
        /// The metadata file.
        json: String,
        /// The size in the metadata.
        expected: u64,
        /// The bundle's size.
        found: u64,
    },
}

impl SlotError {
    /// The file does not exist (a slot with neither file is simply empty).
    fn is_missing(&self) -> bool {
        matches!(self, SlotError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Why [`Cache::store`] failed. Whatever the error, the slots that were
/// there before are intact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The bundle to store could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The bundle to store has no readable header.
    #[error("reading the header of {}", path.display())]
    Header {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        #[source]
        source: OpenError,
    },
    /// The bundle does not match the metadata given for it.
    #[error("{}: {what} is {found}, the metadata says {expected}", path.display())]
    Mismatch {
        /// The bundle.
        path: PathBuf,
        /// Which field ("size", "digest").
        what: &'static str,
        /// The value in the metadata.
        expected: String,
        /// The bundle's value.
        found: String,
    },
    /// Writing the cache failed (a full disk, an I/O error).
    #[error("{op} {}", path.display())]
    Write {
        /// What was being done.
        op: &'static str,
        /// The file in the cache.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir`, which must exist.
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Stores `bundle` as the current slot, the old current slot becoming the
    /// previous one. See the module documentation for the steps and what a
    /// power cut leaves. The stored `highest_generation` is the higher of
    /// `meta`'s and `meta.generation`.
    pub fn store(&self, bundle: &Path, meta: &SlotMeta) -> Result<(), CacheError> {
        let mut src = open_regular(bundle).map_err(|source| CacheError::Read { path: bundle.to_owned(), source })?;
        check_bundle(&mut src, bundle, meta)?;
        let mut meta = meta.clone();
        meta.highest_generation = meta.highest_generation.max(meta.generation);

        self.remove_temps();
        let result = self.write_new(&mut src, bundle, &meta).and_then(|()| self.rotate(&meta));
        if result.is_err() {
            self.remove_temps();
        }
        result
    }

    /// Step 1: the new bundle and its metadata, written and fsynced under
    /// temporary names.
    fn write_new(&self, src: &mut File, bundle: &Path, meta: &SlotMeta) -> Result<(), CacheError> {
        let tmp = self.path(NEW_BUNDLE);
        let werr = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Write { op, path, source }
        };
        let mut out = create(&tmp).map_err(werr("creating", &tmp))?;
        src.seek(SeekFrom::Start(0)).map_err(|source| CacheError::Read { path: bundle.to_owned(), source })?;
        let copied = io::copy(&mut src.take(meta.size), &mut out).map_err(werr("writing", &tmp))?;
        if copied != meta.size {
            return Err(CacheError::Mismatch {
                path: bundle.to_owned(),
                what: "size",
                expected: meta.size.to_string(),
                found: copied.to_string(),
            });
        }
        out.sync_all().map_err(werr("syncing", &tmp))?;

        let tmp = self.path(NEW_JSON);
        let mut json = serde_json::to_vec_pretty(meta).map_err(|e| werr("encoding", &tmp)(io::Error::other(e)))?;
        json.push(b'\n');
        let mut out = create(&tmp).map_err(werr("creating", &tmp))?;
        out.write_all(&json).map_err(werr("writing", &tmp))?;
        out.sync_all().map_err(werr("syncing", &tmp))
    }

    /// Steps 2 to 4: current becomes previous, the new files become current.
    fn rotate(&self, meta: &SlotMeta) -> Result<(), CacheError> {
        let rename = |from: &str, to: &str| {
            fs::rename(self.path(from), self.path(to)).map_err(|source| CacheError::Write {
                op: "renaming",
                path: self.path(to),
                source,
            })
        };
        // A corrupt current slot would push out a good previous one, and
        // storing the same bundle again would leave two copies of it.
        match self.read_slot("current") {
            Ok((_, current)) if current.digest != meta.digest => {
                for (from, to) in [("current.bundle", PREV_BUNDLE), ("current.json", PREV_JSON)] {
                    link_or_copy(&self.path(from), &self.path(to)).map_err(|source| CacheError::Write {
                        op: "linking",
                        path: self.path(to),
                        source,
                    })?;
                }
                rename(PREV_BUNDLE, "previous.bundle")?;
                rename(PREV_JSON, "previous.json")?;
            }
            Ok(_) => log::debug!("cache: current slot already holds {}", short(&meta.digest)),
            Err(w) => log::debug!("cache: not keeping the current slot as previous: {w}"),
        }
        rename(NEW_BUNDLE, "current.bundle")?;
        rename(NEW_JSON, "current.json")?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|source| CacheError::Write {
            op: "syncing",
            path: self.dir.clone(),
            source,
        })?;
        log::debug!("cache: stored generation {} ({})", meta.generation, short(&meta.digest));
        Ok(())
    }

    /// Removes temporary files left by an earlier store.
    fn remove_temps(&self) {
        for name in [NEW_BUNDLE, NEW_JSON, PREV_BUNDLE, PREV_JSON] {
            match fs::remove_file(self.path(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cache: removing {name}: {e}"),
            }
        }
    }

    /// The current slot, then the previous one. A slot with neither file is
    /// left out; one that cannot be used is an `Err` with the reason. The
    /// caller logs the warnings.
    pub fn slots(&self) -> Vec<Slot> {
        SLOTS
            .iter()
            .filter(|stem| {
                self.path(&format!("{stem}.bundle")).symlink_metadata().is_ok()
                    || self.path(&format!("{stem}.json")).symlink_metadata().is_ok()
            })
            .map(|stem| self.read_slot(stem))
            .collect()
    }

    /// Reads and checks one slot.
    fn read_slot(&self, stem: &str) -> Slot {
        let json = format!("{stem}.json");
        let file = format!("{stem}.bundle");
        let meta = read_meta(&self.path(&json), &json)?;
        let path = self.path(&file);
        let open = |source| SlotError::Open { file: file.clone(), source };
        let mut bundle = open_regular(&path).map_err(open)?;
        let size = bundle.metadata().map_err(open)?.len();
        if size != meta.size {
            return Err(SlotError::Size { file, json, expected: meta.size, found: size });
        }
        let digest = match BundleReader::new(&mut bundle) {
            Ok(r) => r.raw_header().digest_hex(),
            Err(source) => return Err(SlotError::Header { file, source }),
        };
        if digest != meta.digest {
            return Err(SlotError::Digest { file, json, expected: meta.digest, found: digest });
        }
        Ok((path, meta))
    }

    /// The rollback floor: the highest generation among the slots' bundles
    /// whose headers `authenticate` accepts, with that bundle's digest
    /// (`None` when no header authenticates: no rollback state). A slot's
    /// header is read whatever its `.json` says, so a garbage or missing
    /// JSON file does not lose the floor.
    ///
    /// The second value holds the warnings for the console: each bundle
    /// that is there but does not authenticate, and metadata that disagrees
    /// with the authenticated headers (a `.json` whose `generation` is not
    /// its bundle's, or whose `highest_generation` is not the floor: a
    /// lowered, raised or garbage file). Such metadata is not used.
    pub fn rollback_floor<E: fmt::Display>(
        &self,
        authenticate: &mut dyn FnMut(&RawHeader) -> Result<Header, E>,
    ) -> (Option<(u64, String)>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut floor: Option<(u64, String)> = None;
        let mut trusted: [Option<u64>; SLOTS.len()] = [None; SLOTS.len()];
        for (stem, slot_gen) in SLOTS.iter().zip(trusted.iter_mut()) {
            let name = format!("{stem}.bundle");
            let raw = match open_regular(&self.path(&name)) {
                Ok(file) => BundleReader::new(file).map(|r| r.raw_header().clone()).map_err(|e| e.to_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => Err(describe(&e)),
            };
            match raw
                .and_then(|raw| authenticate(&raw).map(|h| (h.generation, raw.digest_hex())).map_err(|e| e.to_string()))
            {
                Ok((generation, digest)) => {
                    *slot_gen = Some(generation);
                    if floor.as_ref().is_none_or(|(g, _)| generation > *g) {
                        floor = Some((generation, digest));
                    }
                }
                Err(e) => warnings.push(format!("{name}: {e}; not used for the rollback floor")),
            }
        }
        let have = floor.as_ref().map(|(g, _)| *g);
        let mut claimed: Option<u64> = None;
        for (stem, slot_gen) in SLOTS.iter().zip(trusted) {
            let name = format!("{stem}.json");
            let meta = match read_meta(&self.path(&name), &name) {
                Ok(m) => m,
                Err(e) if e.is_missing() => continue,
                Err(e) => {
                    warnings.push(format!("{e}; rollback floor taken from the bundles"));
                    continue;
                }
            };
            if let Some(g) = slot_gen.filter(|g| *g != meta.generation) {
                warnings.push(format!(
                    "{name} says generation {}, its bundle's authenticated header says {g}; {name} ignored",
                    meta.generation
                ));
                continue;
            }
            if meta.highest_generation < meta.generation {
                // `store` never writes this: the file was edited.
                warnings.push(format!(
                    "{name} says highest generation {} below its own generation {}; {name} ignored",
                    meta.highest_generation, meta.generation
                ));
                continue;
            }
            claimed = claimed.max(Some(meta.highest_generation));
        }
        if let Some(c) = claimed.filter(|c| Some(*c) != have) {
            let from = have.map_or("no generation".to_owned(), |g| format!("generation {g}"));
            warnings.push(format!(
                "slot metadata claims highest generation {c}, the cached bundles' authenticated headers say {from}; the metadata is ignored"
            ));
        }
        (floor, warnings)
    }
}

/// Checks `file`'s size and header digest against `meta`.
fn check_bundle(file: &mut File, path: &Path, meta: &SlotMeta) -> Result<(), CacheError> {
    let size = file.metadata().map_err(|source| CacheError::Read { path: path.to_owned(), source })?.len();
    if size != meta.size {
        return Err(CacheError::Mismatch {
            path: path.to_owned(),
            what: "size",
            expected: meta.size.to_string(),
            found: size.to_string(),
        });
    }
    let digest = BundleReader::new(&mut *file)
        .map_err(|source| CacheError::Header { path: path.to_owned(), source })?
        .raw_header()
        .digest_hex();
    if digest != meta.digest {
        return Err(CacheError::Mismatch {
            path: path.to_owned(),
            what: "digest",
            expected: meta.digest.clone(),
            found: digest,
        });
    }
    Ok(())
}

/// Reads a slot's metadata file `path`, called `file` in messages.
fn read_meta(path: &Path, file: &str) -> Result<SlotMeta, SlotError> {
    let mut text = Vec::new();
    open_regular(path)
        .and_then(|f| f.take(MAX_JSON + 1).read_to_end(&mut text))
        .map_err(|source| SlotError::Open { file: file.to_owned(), source })?;
    if text.len() as u64 > MAX_JSON {
        return Err(SlotError::TooLarge { file: file.to_owned() });
    }
    serde_json::from_slice(&text).map_err(|source| SlotError::Json { file: file.to_owned(), source })
}

/// The first 8 hex digits of a digest, for messages.
fn short(digest: &str) -> String {
    format!("{}…", digest.get(..8).unwrap_or(digest))
}

/// Creates a new private file: exclusive (`O_EXCL`: a file, link or FIFO
/// already there is an error, never opened or followed) and `O_NOFOLLOW`.
fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Hard-links `from` to `to`; copies (and fsyncs) on a file system without
/// hard links.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        // vfat says EPERM.
        Err(e) if [Errno::PERM, Errno::OPNOTSUPP].iter().any(|n| e.raw_os_error() == Some(n.raw_os_error())) => {
            log::debug!("cache: {}: no hard links ({e}); copying", to.display());
            let mut src = open_regular(from)?;
            let mut dst = create(to)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()
        }
        Err(e) => Err(e),
    }
}
