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

//!
//! # Stacks (layered bundles)
//!
//! A stack of layers (docs/site.md, "How the loader applies a stack") is
//! kept as one unit, next to the single-bundle slots:
//!
//! ```text
//! blobs/<digest>.bundle   each layer bundle as received (still encrypted)
//! current.stack.json      StackMeta: the layers (target, digest, generation, size, key id) in stack order
//! previous.stack.json     the stack before it
//! ```
//!
//! [`Cache::store_stack`] writes the new blobs (temporary name, fsync,
//! rename, fsync of `blobs/`), then the manifest (`.new.stack.json`,
//! fsync), links the current manifest to `.prev.stack.json` and renames it
//! to `previous.stack.json`, renames the new one to `current.stack.json`,
//! fsyncs the directory, and only then removes the blobs no manifest
//! names. Each manifest is a single file, so every rename switches whole
//! stacks: a power cut leaves the old or the new stack current, with every
//! blob it names present; a full disk fails while blobs are written, with
//! both manifests untouched. A stack slot is usable only when every blob it
//! names is there with the size and header digest it gives.
//!
//! The loader boots a cached stack before the single-bundle slots (storing
//! a single bundle removes the stack manifests, so they are never older
//! than it), and the rollback floor of each layer target comes from the
//! authenticated headers of that target's blobs ([`Cache::stack_floors`]).

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
    /// A stack manifest names a blob by something that is not a digest.
    #[error("{file}: names a layer {digest:?} that is not a digest")]
    NotDigest {
        /// The manifest.
        file: String,
        /// What it says (at most 80 characters of it).
        digest: String,
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
            return result;
        }
        // A single bundle applied: the cached stacks are older than it, and
        // an offline boot must not go back to them.
        for name in STACK_SLOTS {
            remove_quietly(&self.path(name));
        }
        self.collect_blobs();
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

/// Removes `path` if it is there; other errors are a debug line (a file
/// left behind is harmless: the next store tries again).
fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cache: removing {}: {e}", path.display()),
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

// ---------------------------------------------------------------------------
// Stacks (issue 14): the layers that were applied together, as one unit.

/// The stack slots' manifests, newest first.
pub const STACK_SLOTS: [&str; 2] = ["current.stack.json", "previous.stack.json"];
/// The new manifest while it is written.
const NEW_STACK: &str = ".new.stack.json";
/// A link to the current manifest while it becomes the previous one.
const PREV_STACK: &str = ".prev.stack.json";
/// The directory of layer bundles, named by digest.
pub const BLOBS: &str = "blobs";

/// One layer of a cached stack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerEntry {
    /// `default`, `group:NAME`, `plugin:NAME` or `node:ID`.
    pub target: String,
    /// The layer bundle's digest: its file is `blobs/<digest>.bundle`.
    pub digest: String,
    /// Its generation (informational: the floor is taken from the
    /// authenticated headers).
    pub generation: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The id of the key it is sealed for.
    pub key_id: String,
}

/// A stack slot's manifest (`current.stack.json`): the layers in stack
/// order, applied together on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StackMeta {
    /// The layers, in stack order.
    pub layers: Vec<LayerEntry>,
    /// When the stack was applied, Unix seconds (initramfs clock).
    pub fetched: i64,
    /// The server (or media) it came from.
    pub server: String,
}

/// A usable stack slot: its manifest and, per layer, the blob's path.
pub type StackSlot = Result<(StackMeta, Vec<PathBuf>), SlotError>;

/// A digest as written in a manifest: 64 lower-case hex digits, so that it
/// is safe as a file name.
fn is_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cache {
    /// The file of the layer bundle with this digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join(BLOBS).join(format!("{digest}.bundle"))
    }

    /// The stack slots present, newest first, each with its name
    /// (`current.stack.json`): usable (every blob there, with the size and
    /// digest the manifest gives), or why not.
    pub fn stack_slots(&self) -> Vec<(&'static str, StackSlot)> {
        STACK_SLOTS
            .iter()
            .filter(|name| self.path(name).symlink_metadata().is_ok())
            .map(|name| (*name, self.read_stack(name)))
            .collect()
    }

    fn read_stack_meta(&self, name: &str) -> Result<StackMeta, SlotError> {
        let mut text = Vec::new();
        open_regular(&self.path(name))
            .and_then(|f| f.take(MAX_JSON + 1).read_to_end(&mut text))
            .map_err(|source| SlotError::Open { file: name.to_owned(), source })?;
        if text.len() as u64 > MAX_JSON {
            return Err(SlotError::TooLarge { file: name.to_owned() });
        }
        let meta: StackMeta =
            serde_json::from_slice(&text).map_err(|source| SlotError::Json { file: name.to_owned(), source })?;
        if let Some(bad) = meta.layers.iter().find(|l| !is_digest(&l.digest)) {
            return Err(SlotError::NotDigest { file: name.to_owned(), digest: bad.digest.chars().take(80).collect() });
        }
        Ok(meta)
    }

    fn read_stack(&self, name: &str) -> StackSlot {
        let meta = self.read_stack_meta(name)?;
        let mut paths = Vec::new();
        for l in &meta.layers {
            let path = self.blob_path(&l.digest);
            let file = format!("{BLOBS}/{}.bundle", l.digest);
            let open = |source| SlotError::Open { file: file.clone(), source };
            let mut bundle = open_regular(&path).map_err(open)?;
            let size = bundle.metadata().map_err(open)?.len();
            if size != l.size {
                return Err(SlotError::Size { file, json: name.to_owned(), expected: l.size, found: size });
            }
            let digest = match BundleReader::new(&mut bundle) {
                Ok(r) => r.raw_header().digest_hex(),
                Err(source) => return Err(SlotError::Header { file, source }),
            };
            if digest != l.digest {
                return Err(SlotError::Digest {
                    file,
                    json: name.to_owned(),
                    expected: l.digest.clone(),
                    found: digest,
                });
            }
            paths.push(path);
        }
        Ok((meta, paths))
    }

    /// Stores a stack that applied as the current stack slot, the old
    /// current one becoming the previous one. `new_blobs` are the layer
    /// bundles not yet in the cache (file, digest); every other layer of
    /// `meta` must already have its blob (a layer the server answered 304
    /// for). Steps, and what a power cut leaves:
    ///
    /// 1. each new blob is written to `blobs/.<digest>.tmp`, fsynced and
    ///    renamed to `blobs/<digest>.bundle`, and the directory is fsynced
    ///    (a full disk fails here, the manifests untouched);
    /// 2. the manifest is written to `.new.stack.json` and fsynced;
    /// 3. when the current manifest is usable and names other layers, it is
    ///    hard-linked to `.prev.stack.json`, renamed to
    ///    `previous.stack.json`;
    /// 4. `.new.stack.json` is renamed to `current.stack.json` and the
    ///    directory fsynced;
    /// 5. blobs no manifest names are removed.
    ///
    /// A manifest is one file, so each rename switches a whole stack: a
    /// cut leaves the old current stack or the new one current, never a
    /// mix of layers, and no blob a manifest names is removed before that
    /// manifest is gone (step 5 runs last).
    pub fn store_stack(&self, new_blobs: &[(PathBuf, String)], meta: &StackMeta) -> Result<(), CacheError> {
        let result = self.write_stack(new_blobs, meta);
        remove_quietly(&self.path(NEW_STACK));
        remove_quietly(&self.path(PREV_STACK));
        if result.is_ok() {
            self.collect_blobs();
        }
        result
    }

    fn write_stack(&self, new_blobs: &[(PathBuf, String)], meta: &StackMeta) -> Result<(), CacheError> {
        let werr = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Write { op, path, source }
        };
        remove_quietly(&self.path(NEW_STACK));
        remove_quietly(&self.path(PREV_STACK));
        let blobs = self.path(BLOBS);
        match fs::create_dir(&blobs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(werr("creating", &blobs)(e)),
        }
        for (src_path, digest) in new_blobs {
            let Some(entry) = meta.layers.iter().find(|l| &l.digest == digest) else { continue };
            if !is_digest(digest) {
                return Err(CacheError::Mismatch {
                    path: src_path.clone(),
                    what: "digest",
                    expected: "64 hex digits".into(),
                    found: digest.clone(),
                });
            }
            let dest = self.blob_path(digest);
            if open_regular(&dest).and_then(|f| f.metadata()).is_ok_and(|m| m.len() == entry.size) {
                continue;
            }
            let mut src =
                open_regular(src_path).map_err(|source| CacheError::Read { path: src_path.clone(), source })?;
            let check = SlotMeta {
                generation: entry.generation,
                digest: digest.clone(),
                fetched: 0,
                server: String::new(),
                key_id: String::new(),
                size: entry.size,
                highest_generation: 0,
            };
            check_bundle(&mut src, src_path, &check)?;
            let tmp = blobs.join(format!(".{digest}.tmp"));
            remove_quietly(&tmp);
            let written = (|| {
                let mut out = create(&tmp).map_err(werr("creating", &tmp))?;
                src.seek(SeekFrom::Start(0)).map_err(|source| CacheError::Read { path: src_path.clone(), source })?;
                let copied = io::copy(&mut (&mut src).take(entry.size), &mut out).map_err(werr("writing", &tmp))?;
                if copied != entry.size {
                    return Err(CacheError::Mismatch {
                        path: src_path.clone(),
                        what: "size",
                        expected: entry.size.to_string(),
                        found: copied.to_string(),
                    });
                }
                out.sync_all().map_err(werr("syncing", &tmp))?;
                fs::rename(&tmp, &dest).map_err(werr("renaming", &dest))
            })();
            if written.is_err() {
                remove_quietly(&tmp);
            }
            written?;
        }
        File::open(&blobs).and_then(|d| d.sync_all()).map_err(werr("syncing", &blobs))?;
        for l in &meta.layers {
            let p = self.blob_path(&l.digest);
            if !open_regular(&p).and_then(|f| f.metadata()).is_ok_and(|m| m.len() == l.size) {
                return Err(CacheError::Mismatch {
                    path: p,
                    what: "blob",
                    expected: format!("{} bytes", l.size),
                    found: "missing or another size".into(),
                });
            }
        }
        let tmp = self.path(NEW_STACK);
        let mut json = serde_json::to_vec_pretty(meta).map_err(|e| werr("encoding", &tmp)(io::Error::other(e)))?;
        json.push(b'\n');
        let mut out = create(&tmp).map_err(werr("creating", &tmp))?;
        out.write_all(&json).map_err(werr("writing", &tmp))?;
        out.sync_all().map_err(werr("syncing", &tmp))?;
        drop(out);
        let [current, previous] = STACK_SLOTS;
        match self.read_stack(current) {
            Ok((old, _)) if old.layers != meta.layers => {
                link_or_copy(&self.path(current), &self.path(PREV_STACK))
                    .map_err(werr("linking", &self.path(PREV_STACK)))?;
                fs::rename(self.path(PREV_STACK), self.path(previous))
                    .map_err(werr("renaming", &self.path(previous)))?;
            }
            Ok(_) => log::debug!("cache: the current stack slot already holds these layers"),
            Err(w) => log::debug!("cache: not keeping the current stack slot as previous: {w}"),
        }
        fs::rename(&tmp, self.path(current)).map_err(werr("renaming", &self.path(current)))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(werr("syncing", &self.dir))?;
        log::debug!("cache: stored a stack of {} layers", meta.layers.len());
        Ok(())
    }

    /// Removes blobs (and stray temporary files) that no stack manifest
    /// names. A manifest that cannot be read keeps nothing: its stack is
    /// unusable anyway.
    fn collect_blobs(&self) {
        let keep: Vec<String> = STACK_SLOTS
            .iter()
            .filter_map(|n| self.read_stack_meta(n).ok())
            .flat_map(|m| m.layers.into_iter().map(|l| format!("{}.bundle", l.digest)))
            .collect();
        let Ok(entries) = fs::read_dir(self.path(BLOBS)) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                log::debug!("cache: removing the unused blob {name}");
                remove_quietly(&e.path());
            }
        }
    }

    /// The rollback floor of each layer target: the highest generation
    /// among the cached stacks' blobs of that target whose headers
    /// `authenticate` accepts (called with the target), with its digest.
    /// Warnings name each blob that does not authenticate.
    pub fn stack_floors<E: fmt::Display>(
        &self,
        authenticate: &mut dyn FnMut(&str, &RawHeader) -> Result<Header, E>,
    ) -> (std::collections::BTreeMap<String, (u64, String)>, Vec<String>) {
        let mut floors = std::collections::BTreeMap::<String, (u64, String)>::new();
        let mut warnings = Vec::new();
        for name in STACK_SLOTS {
            let meta = match self.read_stack_meta(name) {
                Ok(m) => m,
                Err(e) if e.is_missing() => continue,
                Err(e) => {
                    warnings.push(format!("{e}; not used for the rollback floor"));
                    continue;
                }
            };
            for l in meta.layers {
                let file = format!("{BLOBS}/{}.bundle", l.digest);
                let raw = match open_regular(&self.blob_path(&l.digest)) {
                    Ok(f) => BundleReader::new(f).map(|r| r.raw_header().clone()).map_err(|e| e.to_string()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => Err(describe(&e)),
                };
                match raw.and_then(|raw| {
                    authenticate(&l.target, &raw).map(|h| (h.generation, raw.digest_hex())).map_err(|e| e.to_string())
                }) {
                    Ok((generation, digest)) => {
                        let slot = floors.entry(l.target.clone()).or_insert((generation, digest.clone()));
                        if generation > slot.0 {
                            *slot = (generation, digest);
                        }
                    }
                    Err(e) => warnings.push(format!("{file} ({}): {e}; not used for the rollback floor", l.target)),
                }
            }
        }
        (floors, warnings)
    }
}
