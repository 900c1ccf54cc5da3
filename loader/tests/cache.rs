#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
//! The last-known-good cache: slots, rotation, corruption, a full disk, and
//! finding and mounting the cache device.

#[path = "../../tests/support/prereq.rs"]
mod prereq;
mod support;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use stateless_bundle::{BundleReader, Key, Limits, PackOptions, Scope};
use stateless_loader::blockdev::{self, CacheSpec, FindError, Mounted};
use stateless_loader::cache::{Cache, CacheError, SlotMeta};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Incompressible bytes, so a bundle's size follows `len`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    support::noise::incompressible(len, seed | 1)
}

/// Packs an encrypted bundle of about `len` bytes of file data into `dir`
/// and returns it with the metadata the loader would store for it.
fn bundle(dir: &Path, generation: u64, len: usize) -> (PathBuf, SlotMeta) {
    bundle_sealed(dir, generation, len, &site_key())
}

/// [`bundle`], sealed for `key`.
fn bundle_sealed(dir: &Path, generation: u64, len: usize, key: &Key) -> (PathBuf, SlotMeta) {
    let tag = key.id().short();
    let src = dir.join(format!("src-{generation}-{tag}"));
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/data"), noise(len, generation)).unwrap();
    let path = dir.join(format!("gen{generation}-{tag}.bundle"));
    let opts = PackOptions {
        key: Some(key),
        generation,
        created: 1_700_000_000,
        expires: None,
        scope: Scope::Any,
        level: 1,
        threads: 0,
        deletions: Vec::new(),
        limits: Limits::default(),
    };
    let summary = stateless_bundle::pack(&src, fs::File::create(&path).unwrap(), &opts).unwrap();
    let meta = SlotMeta {
        generation,
        digest: summary.digest,
        fetched: 1_700_000_000 + generation as i64,
        server: "http://127.0.0.1:8080".into(),
        key_id: key.id().to_string(),
        size: fs::metadata(&path).unwrap().len(),
        highest_generation: generation,
    };
    (path, meta)
}

/// The usable slots' generations, and the warnings.
fn usable(cache: &Cache) -> (Vec<u64>, Vec<String>) {
    let mut gens = Vec::new();
    let mut warnings = Vec::new();
    for slot in cache.slots() {
        match slot {
            Ok((path, meta)) => {
                let digest = BundleReader::new(fs::File::open(&path).unwrap()).unwrap().raw_header().digest_hex();
                assert_eq!(digest, meta.digest);
                gens.push(meta.generation);
            }
            Err(w) => warnings.push(w.to_string()),
        }
    }
    (gens, warnings)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

const SLOT_FILES: [&str; 4] = ["current.bundle", "current.json", "previous.bundle", "previous.json"];

#[test]
fn store_rotates_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    fs::create_dir(&cache_dir).unwrap();
    let cache = Cache::new(&cache_dir);
    assert!(cache.slots().is_empty());
    assert_eq!(floor(&cache), (None, vec![]));

    let (b1, m1) = bundle(tmp.path(), 1, 1000);
    let (b2, m2) = bundle(tmp.path(), 2, 2000);
    let (b3, m3) = bundle(tmp.path(), 3, 3000);
    cache.store(&b1, &m1).unwrap();
    assert_eq!(usable(&cache), (vec![1], vec![]));
    assert_eq!(names(&cache_dir), ["current.bundle", "current.json"]);

    cache.store(&b2, &m2).unwrap();
    assert_eq!(usable(&cache), (vec![2, 1], vec![]));
    cache.store(&b3, &m3).unwrap();
    assert_eq!(usable(&cache), (vec![3, 2], vec![]));
    assert_eq!(names(&cache_dir), SLOT_FILES);

    // The bundle exactly as received, and the metadata as given.
    let slots = cache.slots();
    let (path, meta) = slots[0].as_ref().unwrap();
    assert_eq!(fs::read(path).unwrap(), fs::read(&b3).unwrap());
    assert_eq!(meta, &m3);
    let (path, meta) = slots[1].as_ref().unwrap();
    assert_eq!(fs::read(path).unwrap(), fs::read(&b2).unwrap());
    assert_eq!(meta, &m2);
    assert_eq!(floor(&cache), (Some((3, m3.digest.clone())), vec![]));

    // The JSON is readable by people and tools.
    let json: serde_json::Value = serde_json::from_slice(&fs::read(cache_dir.join("current.json")).unwrap()).unwrap();
    assert_eq!(json["generation"], 3);
    assert_eq!(json["digest"], m3.digest.as_str());
    assert_eq!(json["server"], "http://127.0.0.1:8080");
    assert_eq!(json["size"], m3.size);
    assert_eq!(json["highest_generation"], 3);
}

#[test]
fn storing_the_same_bundle_again_keeps_the_previous_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("c"));
    fs::create_dir(cache.dir()).unwrap();
    let (b1, m1) = bundle(tmp.path(), 1, 100);
    let (b2, m2) = bundle(tmp.path(), 2, 100);
    cache.store(&b1, &m1).unwrap();
    cache.store(&b2, &m2).unwrap();
    let refetched = SlotMeta { fetched: m2.fetched + 100, ..m2.clone() };
    cache.store(&b2, &refetched).unwrap();
    assert_eq!(usable(&cache), (vec![2, 1], vec![]));
    assert_eq!(cache.slots()[0].as_ref().unwrap().1.fetched, m2.fetched + 100);
}

#[test]
fn metadata_that_does_not_match_the_bundle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("c"));
    fs::create_dir(cache.dir()).unwrap();
    let (b1, m1) = bundle(tmp.path(), 1, 100);
    let wrong = SlotMeta { digest: "00".repeat(32), ..m1.clone() };
    let err = cache.store(&b1, &wrong).unwrap_err();
    assert!(matches!(err, CacheError::Mismatch { what: "digest", .. }), "{err:?}");
    let wrong = SlotMeta { size: m1.size + 1, ..m1 };
    assert!(matches!(cache.store(&b1, &wrong), Err(CacheError::Mismatch { what: "size", .. })));
    assert!(names(cache.dir()).is_empty());
}

/// Flips one bit of the header tag: the digest no longer matches the JSON.
fn flip_tag(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    bytes[300] ^= 1;
    fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_current_slot_falls_back_to_previous() {
    type Corrupt = fn(&Path);
    let cases: &[(&str, Corrupt, &str)] = &[
        ("digest", |d| flip_tag(&d.join("current.bundle")), "current.bundle: digest "),
        (
            "truncated",
            |d| {
                let f = fs::OpenOptions::new().write(true).open(d.join("current.bundle")).unwrap();
                f.set_len(100).unwrap();
            },
            "current.bundle: size is 100, current.json says ",
        ),
        ("bundle missing", |d| fs::remove_file(d.join("current.bundle")).unwrap(), "current.bundle: missing"),
        ("json missing", |d| fs::remove_file(d.join("current.json")).unwrap(), "current.json: missing"),
        ("json garbage", |d| fs::write(d.join("current.json"), "{not json").unwrap(), "current.json: unreadable: "),
        (
            "json wrong shape",
            |d| fs::write(d.join("current.json"), r#"{"generation": "two"}"#).unwrap(),
            "current.json: unreadable: ",
        ),
        ("json huge", |d| fs::write(d.join("current.json"), vec![b' '; 100_000]).unwrap(), "current.json: over "),
        (
            "not a bundle",
            |d| {
                let mut f = fs::OpenOptions::new().write(true).open(d.join("current.bundle")).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                f.write_all(b"GARBAGE!").unwrap();
            },
            "current.bundle: ",
        ),
    ];
    for (what, corrupt, warning) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::new(tmp.path().join("c"));
        fs::create_dir(cache.dir()).unwrap();
        let (b1, m1) = bundle(tmp.path(), 1, 500);
        let (b2, m2) = bundle(tmp.path(), 2, 500);
        cache.store(&b1, &m1).unwrap();
        cache.store(&b2, &m2).unwrap();
        corrupt(cache.dir());
        let (gens, warnings) = usable(&cache);
        assert_eq!(gens, [1], "{what}");
        assert_eq!(warnings.len(), 1, "{what}: {warnings:?}");
        assert!(warnings[0].starts_with(warning), "{what}: {warnings:?}");
        // The next store does not push the good previous slot out.
        let (b3, m3) = bundle(tmp.path(), 3, 500);
        cache.store(&b3, &m3).unwrap();
        assert_eq!(usable(&cache), (vec![3, 1], vec![]), "{what}");
    }
}

#[test]
fn both_slots_corrupt_gives_nothing_and_two_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("c"));
    fs::create_dir(cache.dir()).unwrap();
    let (b1, m1) = bundle(tmp.path(), 1, 500);
    let (b2, m2) = bundle(tmp.path(), 2, 500);
    cache.store(&b1, &m1).unwrap();
    cache.store(&b2, &m2).unwrap();
    flip_tag(&cache.dir().join("current.bundle"));
    fs::write(cache.dir().join("previous.json"), "").unwrap();
    let (gens, warnings) = usable(&cache);
    assert!(gens.is_empty());
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("current.bundle: digest"), "{warnings:?}");
    assert!(warnings[1].starts_with("previous.json: unreadable"), "{warnings:?}");
}

#[test]
fn power_cut_states_each_leave_a_usable_slot() {
    // Rebuild by hand each state a cut between two steps of `store` leaves
    // (see the table in cache.rs) and check what `slots` makes of it.
    let tmp = tempfile::tempdir().unwrap();
    let (b_p, m_p) = bundle(tmp.path(), 1, 300);
    let (b_c, m_c) = bundle(tmp.path(), 2, 300);
    let (b_n, m_n) = bundle(tmp.path(), 3, 300);
    let json = |m: &SlotMeta| serde_json::to_vec(m).unwrap();
    type Files<'a> = Vec<(&'a str, Vec<u8>)>;
    let states: Vec<(&str, Files, Vec<u64>)> = vec![
        (
            "temporaries written",
            vec![
                ("current.bundle", fs::read(&b_c).unwrap()),
                ("current.json", json(&m_c)),
                ("previous.bundle", fs::read(&b_p).unwrap()),
                ("previous.json", json(&m_p)),
                (".new.bundle", fs::read(&b_n).unwrap()[..100].to_vec()),
                (".prev.bundle", fs::read(&b_c).unwrap()),
            ],
            vec![2, 1],
        ),
        (
            "previous.bundle renamed",
            vec![
                ("current.bundle", fs::read(&b_c).unwrap()),
                ("current.json", json(&m_c)),
                ("previous.bundle", fs::read(&b_c).unwrap()),
                ("previous.json", json(&m_p)),
            ],
            vec![2],
        ),
        (
            "previous.json renamed",
            vec![
                ("current.bundle", fs::read(&b_c).unwrap()),
                ("current.json", json(&m_c)),
                ("previous.bundle", fs::read(&b_c).unwrap()),
                ("previous.json", json(&m_c)),
            ],
            vec![2, 2],
        ),
        (
            "current.bundle renamed",
            vec![
                ("current.bundle", fs::read(&b_n).unwrap()),
                ("current.json", json(&m_c)),
                ("previous.bundle", fs::read(&b_c).unwrap()),
                ("previous.json", json(&m_c)),
            ],
            vec![2],
        ),
    ];
    for (what, files, want) in states {
        let dir = tmp.path().join(what.replace(' ', "-"));
        fs::create_dir(&dir).unwrap();
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
        }
        let cache = Cache::new(&dir);
        assert_eq!(usable(&cache).0, want, "{what}");
        // The next store repairs the cache and removes the leftovers.
        cache.store(&b_n, &m_n).unwrap();
        assert_eq!(usable(&cache), (vec![3, 2], vec![]), "{what}");
        assert_eq!(names(&dir), SLOT_FILES, "{what}");
    }
}

/// A small tmpfs mounted for the length of a test.
struct TmpFs(PathBuf);

impl TmpFs {
    fn mount(dir: &Path, size: &str) -> Option<TmpFs> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        ok.is_ok_and(|s| s.success()).then(|| TmpFs(dir.to_owned()))
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn full_disk_leaves_the_old_slots_intact() {
    if !is_root() {
        prereq::missing("mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_guard) = TmpFs::mount(&tmp.path().join("small"), "64k") else {
        prereq::missing("cannot mount a tmpfs here");
        return;
    };
    let cache = Cache::new(&fs_guard.0);
    let (b1, m1) = bundle(tmp.path(), 1, 8 * 1024);
    let (b2, m2) = bundle(tmp.path(), 2, 8 * 1024);
    let (big, m_big) = bundle(tmp.path(), 3, 100 * 1024);
    cache.store(&b1, &m1).unwrap();
    cache.store(&b2, &m2).unwrap();
    let before: Vec<Vec<u8>> = SLOT_FILES.iter().map(|n| fs::read(cache.dir().join(n)).unwrap()).collect();

    let err = cache.store(&big, &m_big).unwrap_err();
    let CacheError::Write { source, .. } = &err else { panic!("{err:?}") };
    assert_eq!(source.raw_os_error(), Some(rustix::io::Errno::NOSPC.raw_os_error()), "{err:?}");
    assert!(err.to_string().starts_with("writing "), "{err}");

    assert_eq!(names(cache.dir()), SLOT_FILES, "temporary files removed");
    let after: Vec<Vec<u8>> = SLOT_FILES.iter().map(|n| fs::read(cache.dir().join(n)).unwrap()).collect();
    assert!(before == after, "slots changed");
    assert_eq!(usable(&cache), (vec![2, 1], vec![]));
    drop(fs_guard);
}

/// The site key the test bundles are sealed for.
fn site_key() -> Key {
    Key::from_bytes([7; 32])
}

/// The rollback floor as the loader computes it: each slot's header
/// authenticated with the site key.
fn floor(cache: &Cache) -> (Option<(u64, String)>, Vec<String>) {
    let key = site_key();
    cache.rollback_floor(&mut |raw| raw.authenticate(Some(&key)).map(|(h, _)| h).map_err(|e| e.to_string()))
}

/// A cache holding generations 10 (previous) and 11 (current).
fn cache_10_11(tmp: &Path) -> (Cache, SlotMeta) {
    let cache = Cache::new(tmp.join("c"));
    fs::create_dir(cache.dir()).unwrap();
    let (b10, m10) = bundle(tmp, 10, 100);
    let (b11, m11) = bundle(tmp, 11, 100);
    cache.store(&b10, &m10).unwrap();
    cache.store(&b11, &m11).unwrap();
    (cache, m11)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(path, serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn rollback_floor_comes_from_the_authenticated_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, m11) = cache_10_11(tmp.path());
    let want = Some((11, m11.digest.clone()));
    assert_eq!(floor(&cache), (want.clone(), vec![]));

    // A corrupt payload does not lose the floor: the header still
    // authenticates.
    let mut bytes = fs::read(cache.dir().join("current.bundle")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(cache.dir().join("current.bundle"), &bytes).unwrap();
    assert_eq!(floor(&cache), (want, vec![]));

    // A forged header (bit flipped in the generation) does not authenticate:
    // that slot is left out with a warning, the other still counts.
    let mut bytes = fs::read(cache.dir().join("current.bundle")).unwrap();
    let raw = stateless_bundle::header::RawHeader::parse(&bytes[..320]).unwrap();
    let at = (0..320).find(|&i| {
        let mut b = bytes[..320].to_vec();
        b[i] ^= 0x40;
        stateless_bundle::header::RawHeader::parse(&b)
            .is_ok_and(|r| r.unverified().generation != raw.unverified().generation)
    });
    let at = at.unwrap();
    bytes[at] ^= 0x40;
    fs::write(cache.dir().join("current.bundle"), &bytes).unwrap();
    let (got, warnings) = floor(&cache);
    assert_eq!(got.map(|(g, _)| g), Some(10));
    assert!(
        warnings.iter().any(|w| w.starts_with("current.bundle: ") && w.contains("not used for the rollback floor")),
        "{warnings:?}"
    );
}

#[test]
fn forged_metadata_is_no_state_not_a_refusal() {
    // (what, edit to current.json, floor wanted, warning wanted)
    type Edit = fn(&Path);
    let cases: &[(&str, Edit, Option<u64>, &str)] = &[
        (
            "lowered",
            |p| edit_json(p, |j| j["highest_generation"] = 1.into()),
            Some(11),
            "current.json says highest generation 1 below its own generation 11; current.json ignored",
        ),
        (
            "lowered with its generation",
            |p| {
                edit_json(p, |j| {
                    j["highest_generation"] = 1.into();
                    j["generation"] = 1.into();
                })
            },
            Some(11),
            "current.json says generation 1, its bundle's authenticated header says 11; current.json ignored",
        ),
        (
            "raised",
            |p| edit_json(p, |j| j["highest_generation"] = u64::MAX.into()),
            Some(11),
            "slot metadata claims highest generation 18446744073709551615, the cached bundles' authenticated headers say generation 11; the metadata is ignored",
        ),
        (
            "raised generation",
            |p| edit_json(p, |j| j["generation"] = 1000.into()),
            Some(11),
            "current.json says generation 1000, its bundle's authenticated header says 11; current.json ignored",
        ),
        ("garbage", |p| fs::write(p, "{not json").unwrap(), Some(11), "current.json: unreadable: "),
        ("empty", |p| fs::write(p, "").unwrap(), Some(11), "current.json: unreadable: "),
        (
            "missing",
            |p| fs::remove_file(p).unwrap(),
            Some(11),
            "slot metadata claims highest generation 10, the cached bundles' authenticated headers say generation 11",
        ),
    ];
    for (what, edit, want, warning) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let (cache, _) = cache_10_11(tmp.path());
        edit(&cache.dir().join("current.json"));
        let (got, warnings) = floor(&cache);
        assert_eq!(got.map(|(g, _)| g), *want, "{what}");
        assert!(warnings.iter().any(|w| w.starts_with(warning)), "{what}: {warnings:?}");
    }

    // Raised everywhere, with no bundle left: no state, never a refusal.
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _) = cache_10_11(tmp.path());
    for stem in ["current", "previous"] {
        edit_json(&cache.dir().join(format!("{stem}.json")), |j| j["highest_generation"] = 999.into());
        fs::remove_file(cache.dir().join(format!("{stem}.bundle"))).unwrap();
    }
    let (got, warnings) = floor(&cache);
    assert_eq!(got, None);
    assert!(
        warnings.iter().any(|w| w.contains("claims highest generation 999") && w.contains("say no generation")),
        "{warnings:?}"
    );
}

#[test]
fn a_bundle_sealed_for_another_key_does_not_raise_the_floor() {
    // Someone with the cache disk but not the site key packs generation
    // 1,000,000 under their own key and plants it with matching metadata.
    let tmp = tempfile::tempdir().unwrap();
    let (cache, m11) = cache_10_11(tmp.path());
    let (forged, meta) = bundle_sealed(tmp.path(), 1_000_000, 10, &Key::from_bytes([9; 32]));
    cache.store(&forged, &meta).unwrap();
    let (got, warnings) = floor(&cache);
    assert_eq!(got, Some((11, m11.digest)), "the genuine previous slot is the floor");
    assert!(warnings.iter().any(|w| w.starts_with("current.bundle: ")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("claims highest generation 1000000")), "{warnings:?}");
}

#[test]
fn stored_highest_generation_is_informational() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _) = cache_10_11(tmp.path());
    // Lower generations stored later (the loader's policy refuses them)
    // rotate 11 out of both slots: the floor is what the slots prove.
    let (b9, m9) = bundle(tmp.path(), 9, 100);
    let (b8, m8) = bundle(tmp.path(), 8, 100);
    cache.store(&b9, &m9).unwrap();
    cache.store(&b8, &m8).unwrap();
    assert_eq!(usable(&cache), (vec![8, 9], vec![]));
    assert_eq!(floor(&cache), (Some((9, m9.digest.clone())), vec![]));
    // The caller's floor is recorded as given.
    let (b12, m12) = bundle(tmp.path(), 12, 100);
    cache.store(&b12, &SlotMeta { highest_generation: 40, ..m12.clone() }).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fs::read(cache.dir().join("current.json")).unwrap()).unwrap();
    assert_eq!(json["highest_generation"], 40);
    cache.store(&b12, &SlotMeta { highest_generation: 3, ..m12 }).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&fs::read(cache.dir().join("current.json")).unwrap()).unwrap();
    assert_eq!(json["highest_generation"], 12, "never below the slot's own generation");
}

/// Runs `f` on a thread and fails the test if it takes more than 10 s (a
/// FIFO opened for reading blocks until a writer comes: forever).
fn within_10s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what}: hung"))
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// What can be planted in place of a slot file: (what, plant at `path`,
/// the reason the loader gives). `outside` is a directory off the cache.
type Plant = fn(&Path, &Path);
const PLANTS: &[(&str, Plant, &str)] = &[
    ("FIFO", |p, _| mkfifo(p), "not a regular file (a FIFO)"),
    (
        "symlink to a FIFO",
        |p, out| {
            mkfifo(&out.join("fifo"));
            std::os::unix::fs::symlink(out.join("fifo"), p).unwrap();
        },
        "not a regular file (a symbolic link)",
    ),
    (
        "symlink to a file outside",
        |p, out| {
            let target = out.join(p.file_name().unwrap());
            fs::copy(p, &target).unwrap();
            fs::remove_file(p).unwrap();
            std::os::unix::fs::symlink(&target, p).unwrap();
        },
        "not a regular file (a symbolic link)",
    ),
    ("directory", |p, _| fs::create_dir(p).unwrap(), "not a regular file (a directory)"),
];

#[test]
fn special_files_in_the_cache_are_refused_without_blocking() {
    for (what, plant, reason) in PLANTS {
        for file in ["current.json", "current.bundle"] {
            let tmp = tempfile::tempdir().unwrap();
            let (cache, m11) = cache_10_11(tmp.path());
            let outside = tmp.path().join("outside");
            fs::create_dir(&outside).unwrap();
            let path = cache.dir().join(file);
            if !what.starts_with("symlink to a file") {
                fs::remove_file(&path).unwrap();
            }
            plant(&path, &outside);
            let label = format!("{what} at {file}");
            let c = cache.clone();
            let (gens, warnings) = within_10s(&label, move || usable(&c));
            assert_eq!(gens, [10], "{label}");
            assert_eq!(warnings, [format!("{file}: {reason}")], "{label}");
            let c = cache.clone();
            let (got, warnings) = within_10s(&label, move || floor(&c));
            if file == "current.bundle" {
                assert_eq!(got.map(|(g, _)| g), Some(10), "{label}");
                let want = format!("{file}: {reason}; not used for the rollback floor");
                assert!(warnings.contains(&want), "{label}: {warnings:?}");
            } else {
                assert_eq!(got, Some((11, m11.digest.clone())), "{label}");
            }
            // A new store replaces the planted file (a directory cannot be
            // renamed over: the store fails and the good slot is kept), and
            // writes nothing through a link.
            let before = regular_files(&outside);
            let (b12, m12) = bundle(tmp.path(), 12, 100);
            let c = cache.clone();
            let stored = within_10s(&label, move || c.store(&b12, &m12).map_err(|e| e.to_string()));
            if *what == "directory" {
                assert!(stored.is_err(), "{label}");
                assert_eq!(usable(&cache).0, [10], "{label}");
            } else {
                stored.unwrap();
                assert_eq!(usable(&cache), (vec![12, 10], vec![]), "{label}");
            }
            assert_eq!(regular_files(&outside), before, "{label}");
        }
    }
}

/// The regular files in `dir` with their contents.
fn regular_files(dir: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name(), fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn temporary_names_planted_as_links_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _) = cache_10_11(tmp.path());
    let victim = tmp.path().join("victim");
    fs::write(&victim, "keep me").unwrap();
    for name in [".new.bundle", ".new.json", ".prev.bundle", ".prev.json"] {
        std::os::unix::fs::symlink(&victim, cache.dir().join(name)).unwrap();
    }
    let (b12, m12) = bundle(tmp.path(), 12, 100);
    cache.store(&b12, &m12).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(usable(&cache), (vec![12, 11], vec![]));
    assert_eq!(names(cache.dir()), SLOT_FILES);
}

#[test]
fn loader_with_a_fifo_in_the_cache_does_not_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, _) = cache_10_11(tmp.path());
    fs::remove_file(cache.dir().join("current.json")).unwrap();
    mkfifo(&cache.dir().join("current.json"));
    fs::remove_file(cache.dir().join("previous.bundle")).unwrap();
    mkfifo(&cache.dir().join("previous.bundle"));
    let key = tmp.path().join("site.key");
    stateless_keys::write_key_file(&key, &site_key(), false).unwrap();
    let sysroot = tmp.path().join("sysroot");
    fs::create_dir(&sysroot).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stateless-loader"));
    cmd.arg("--cmdline")
        .arg(format!(
            "rd.stateless.node=node42 rd.stateless.server=http://127.0.0.1:9/ rd.stateless.timeout=0 rd.stateless.key=file:{}",
            key.display()
        ))
        .args(["--sysroot".as_ref(), sysroot.as_os_str(), "--run-dir".as_ref(), tmp.path().join("run").as_os_str()])
        .arg("--cache-dir")
        .arg(cache.dir())
        .env("STATELESS_LOG_STDERR", "1");
    let out = within_10s("the loader", move || cmd.output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    // Both slots unusable: no bundle, and the console says why.
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(err.contains("current.json: not a regular file (a FIFO)"), "{err}");
    assert!(err.contains("previous.bundle: not a regular file (a FIFO)"), "{err}");
}

/// The loader end to end (nginx on 127.0.0.1): what the cache's JSON says
/// about generations neither unlocks a rollback nor locks out new bundles.
#[test]
fn loader_takes_the_rollback_floor_from_the_cached_bundles() {
    use stateless_bundle::Scope;
    let site = support::Site::new();
    let scope = || Scope::Node("node42".into());
    site.publish("v1/nodes/node42/bundle", 5, scope(), &[("etc/motd", b"gen5\n")], true);
    let nginx = support::Nginx::start(&site.www(), None, "");
    let node = support::Node::new();
    let cmd = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.timeout=3",
        nginx.port,
        site.key_file.display()
    );
    let (code, err, _) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    let json = node.dir.path().join("cache/current.json");

    // Lowered: the server now offers generation 4; the cache's JSON says 1.
    edit_json(&json, |j| {
        j["highest_generation"] = 1.into();
        j["generation"] = 1.into();
    });
    site.publish("v1/nodes/node42/bundle", 4, scope(), &[("etc/motd", b"gen4\n")], true);
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rollback refused: bundle generation 4 is older than generation 5"), "{err}");
    assert!(err.contains("current.json says generation 1, its bundle's authenticated header says 5"), "{err}");
    assert_eq!(status["source"], "cache-current");
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen5\n"));

    // Raised (no key needed to write it): generation 6 still applies.
    edit_json(&json, |j| {
        j["highest_generation"] = u64::MAX.into();
        j["generation"] = 5.into();
    });
    site.publish("v1/nodes/node42/bundle", 6, scope(), &[("etc/motd", b"gen6\n")], true);
    node.fresh_sysroot();
    let (code, err, status) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("slot metadata claims highest generation 18446744073709551615"), "{err}");
    assert_eq!(status["source"], "server");
    assert_eq!(status["generation"], 6);
    assert_eq!(node.read("etc/motd").as_deref(), Some("gen6\n"));

    // Garbage: no refusal, and the floor is still the cached bundle's.
    fs::write(&json, "\0\0garbage").unwrap();
    site.publish("v1/nodes/node42/bundle", 5, scope(), &[("etc/motd", b"gen5 again\n")], true);
    let (code, err, _) = node.boot(&cmd);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rollback refused: bundle generation 5 is older than generation 6"), "{err}");

    // A FIFO in place of current.json and of previous.bundle: no hang, and
    // generation 7 applies over the floor the current bundle still gives.
    fs::remove_file(&json).unwrap();
    mkfifo(&json);
    fs::remove_file(node.dir.path().join("cache/previous.bundle")).unwrap();
    mkfifo(&node.dir.path().join("cache/previous.bundle"));
    site.publish("v1/nodes/node42/bundle", 7, scope(), &[("etc/motd", b"gen7\n")], true);
    node.fresh_sysroot();
    let (code, err, status) = within_10s("the loader", move || node.boot(&cmd));
    assert_eq!(code, 0, "{err}");
    assert_eq!(status["generation"], 7);
    assert!(err.contains("previous.bundle: not a regular file (a FIFO); not used for the rollback floor"), "{err}");
}

// --- the cache device ---------------------------------------------------

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

/// An ext4 image file with a label and a known UUID.
fn ext4_image(path: &Path, label: &str, uuid: &str) -> bool {
    if !have("mkfs.ext4") {
        prereq::missing("mkfs.ext4 (e2fsprogs) is not installed");
        return false;
    }
    fs::File::create(path).unwrap().set_len(4 << 20).unwrap();
    let st = Command::new("mkfs.ext4").args(["-q", "-F", "-L", label, "-U", uuid]).arg(path).status().unwrap();
    assert!(st.success());
    true
}

const UUID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

#[test]
fn superblock_of_an_ext4_image() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("lkg.img");
    if !ext4_image(&img, "LKG", UUID) {
        return;
    }
    let info = stateless_keys::blockdev::probe(&img).unwrap().unwrap();
    assert_eq!(info.label, "LKG");
    assert_eq!(info.uuid.as_deref(), Some(UUID));
    let not_ext4 = tmp.path().join("zeros");
    fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
    assert_eq!(stateless_keys::blockdev::probe(&not_ext4).unwrap(), None);
    let short = tmp.path().join("short");
    fs::write(&short, b"tiny").unwrap();
    assert_eq!(stateless_keys::blockdev::probe(&short).unwrap(), None);
}

/// Adds a block device to a fake sysfs: `sys/devices/<bus>/block/<disk>`
/// (with `removable`), a partition directory below it when `part` is given,
/// and the `sys/class/block` links to them, the way the kernel lays it out.
fn fake_disk(sys: &Path, bus: &str, disk: &str, removable: bool, part: Option<(&str, &str)>) {
    let class = sys.join("class/block");
    fs::create_dir_all(&class).unwrap();
    let disk_dir = sys.join("devices").join(bus).join("block").join(disk);
    fs::create_dir_all(&disk_dir).unwrap();
    fs::write(disk_dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
    let _ = std::os::unix::fs::symlink(&disk_dir, class.join(disk));
    if let Some((name, partname)) = part {
        let part_dir = disk_dir.join(name);
        fs::create_dir_all(&part_dir).unwrap();
        fs::write(part_dir.join("uevent"), format!("DEVNAME={name}\nDEVTYPE=partition\nPARTNAME={partname}\n"))
            .unwrap();
        std::os::unix::fs::symlink(&part_dir, class.join(name)).unwrap();
    }
}

const VIRTIO: &str = "pci0000:00/0000:00:05.0/virtio3";
const USB: &str = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";

/// A fake `/dev` and `/sys`: `vda` (not ext4), `vdb1` (the ext4 image,
/// partition "stateless-cache"), `vdb2` (ext4 "OTHER"), all virtio disks.
fn fake_machine(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let dev = root.join("dev");
    let sys = root.join("sys");
    fake_disk(&sys, VIRTIO, "vda", false, None);
    fake_disk(&sys, "pci0000:00/0000:00:06.0/virtio4", "vdb", false, Some(("vdb1", "stateless-cache")));
    fake_disk(&sys, "pci0000:00/0000:00:06.0/virtio4", "vdb", false, Some(("vdb2", "data")));
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("vda"), vec![0u8; 8192]).unwrap();
    if !ext4_image(&dev.join("vdb1"), "LKG", UUID)
        || !ext4_image(&dev.join("vdb2"), "OTHER", "00000000-0000-0000-0000-0000000000aa")
    {
        return None;
    }
    Some((dev, sys))
}

fn finder(dev: &Path, sys: &Path) -> impl Fn(&str) -> Result<PathBuf, FindError> {
    let (dev, sys) = (dev.to_owned(), sys.to_owned());
    move |s: &str| blockdev::find_device(&s.parse::<CacheSpec>().unwrap(), &dev, &sys)
}

fn not_found(spec: &str) -> Result<PathBuf, FindError> {
    Err(FindError::NotFound { spec: spec.into() })
}

#[test]
fn device_found_by_scanning_sysfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((dev, sys)) = fake_machine(tmp.path()) else { return };
    let find = finder(&dev, &sys);
    assert_eq!(find("LABEL=LKG"), Ok(dev.join("vdb1")));
    assert_eq!(find("LABEL=OTHER"), Ok(dev.join("vdb2")));
    assert_eq!(find(&format!("UUID={}", UUID.to_uppercase())), Ok(dev.join("vdb1")));
    assert_eq!(find("PARTLABEL=stateless-cache"), Ok(dev.join("vdb1")));
    assert_eq!(find("LABEL=lkg"), not_found("LABEL=lkg"), "labels are case-sensitive");
    assert_eq!(find("LABEL=MISSING"), not_found("LABEL=MISSING"));
    assert_eq!(find("PARTLABEL=nope"), not_found("PARTLABEL=nope"));
    assert_eq!(find("/dev/vdb2"), Ok(dev.join("vdb2")));
    assert_eq!(find("/dev/vdz9"), not_found("/dev/vdz9"));
    assert_eq!(find("none"), not_found("none"));
}

#[test]
fn device_found_through_udev_links() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((dev, sys)) = fake_machine(tmp.path()) else { return };
    // udev names vdb2 "my cache": no superblock says so, the link counts.
    fs::create_dir_all(dev.join("disk/by-label")).unwrap();
    std::os::unix::fs::symlink("../../vdb2", dev.join("disk/by-label/my\\x20cache")).unwrap();
    let find = finder(&dev, &sys);
    let vdb2 = fs::canonicalize(dev.join("vdb2")).unwrap();
    assert_eq!(find("LABEL=my cache"), Ok(vdb2.clone()));
    // A link to the device the scan found too is one device, not two.
    fs::create_dir_all(dev.join("disk/by-partlabel")).unwrap();
    std::os::unix::fs::symlink("../../vdb1", dev.join("disk/by-partlabel/stateless-cache")).unwrap();
    assert_eq!(find("PARTLABEL=stateless-cache"), Ok(dev.join("vdb1")));
    // A link to another device than the scan's: two devices carry the
    // UUID, and which one udev linked is chance.
    fs::create_dir_all(dev.join("disk/by-uuid")).unwrap();
    std::os::unix::fs::symlink("../../vdb2", dev.join("disk/by-uuid").join(UUID)).unwrap();
    assert_eq!(
        find(&format!("UUID={UUID}")),
        Err(FindError::Ambiguous { spec: format!("UUID={UUID}"), devices: vec![dev.join("vdb1"), vdb2] })
    );
}

#[test]
fn a_label_on_two_devices_or_on_a_usb_stick_is_no_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((dev, sys)) = fake_machine(tmp.path()) else { return };
    // A USB stick labelled like the cache disk, and partitioned like it.
    fake_disk(&sys, USB, "sda", false, Some(("sda1", "stateless-cache")));
    if !ext4_image(&dev.join("sda1"), "LKG", "2c4e28ba-2fa1-11d2-883f-0016d3cca427") {
        return;
    }
    let find = finder(&dev, &sys);
    for spec in ["LABEL=LKG", "PARTLABEL=stateless-cache"] {
        let err = find(spec).unwrap_err();
        assert_eq!(err, FindError::Ambiguous { spec: spec.into(), devices: vec![dev.join("sda1"), dev.join("vdb1")] });
        let line = err.to_string();
        assert!(
            line.starts_with(&format!(
                "cache device {spec} is on 2 devices ({}, {}): refusing to guess",
                dev.join("sda1").display(),
                dev.join("vdb1").display()
            )),
            "{line}"
        );
    }
    // Alone, the stick is still refused: it is on USB.
    fs::remove_file(dev.join("vdb1")).unwrap();
    fs::write(dev.join("vdb1"), vec![0u8; 8192]).unwrap();
    let err = find("LABEL=LKG").unwrap_err();
    assert_eq!(err, FindError::Removable { spec: "LABEL=LKG".into(), device: dev.join("sda1"), why: "on a USB bus" });
    assert!(
        err.to_string().contains("not used as the cache unless rd.stateless.cache= names it by PARTUUID= or /dev/…"),
        "{err}"
    );
    // Named by path, the site has said which device it means.
    assert_eq!(find("/dev/sda1"), Ok(dev.join("sda1")));
    // A removable (not USB) card is refused the same way.
    fake_disk(&sys, "platform/mmc0", "mmcblk0", true, Some(("mmcblk0p1", "card")));
    ext4_image(&dev.join("mmcblk0p1"), "CARD", "3c4e28ba-2fa1-11d2-883f-0016d3cca427");
    assert_eq!(
        find("LABEL=CARD"),
        Err(FindError::Removable { spec: "LABEL=CARD".into(), device: dev.join("mmcblk0p1"), why: "removable" })
    );
    assert_eq!(find("/dev/mmcblk0p1"), Ok(dev.join("mmcblk0p1")));
}

/// A loop device over an image file, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Option<Loop> {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(img).output().ok()?;
        out.status.success().then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

fn mount_options(mount_point: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = mount_point.to_str().unwrap();
    mountinfo.lines().map(|l| l.split(' ').collect::<Vec<_>>()).find(|f| f[4] == target).map(|f| f[5].to_owned())
}

#[test]
fn cache_on_a_loop_device_is_found_mounted_and_unmounted() {
    if !is_root() {
        prereq::missing("loop devices need root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("cache.img");
    // Unique, so that scanning the real /sys finds this image and no other.
    let label = format!("LKG{:x}", std::process::id());
    if !ext4_image(&img, &label, "6f2c9e0a-1111-4222-8333-444455556666") {
        return;
    }
    let Some(lo) = Loop::attach(&img) else {
        prereq::missing("losetup does not work here");
        return;
    };
    let spec: CacheSpec = format!("LABEL={label}").parse().unwrap();
    let device = blockdev::find_device(&spec, Path::new("/dev"), Path::new("/sys")).unwrap();
    // (A loop device is neither removable nor on USB.)
    assert_eq!(fs::canonicalize(&device).unwrap(), fs::canonicalize(&lo.0).unwrap());

    let run = tmp.path().join("run");
    let mnt = run.join("cache");
    let (b1, m1) = bundle(tmp.path(), 1, 1000);
    {
        let mounted = Mounted::mount(&device, &mnt).unwrap();
        let opts = mount_options(&mnt).unwrap();
        for flag in ["rw", "nosuid", "nodev", "noexec", "nosymfollow"] {
            assert!(opts.split(',').any(|o| o == flag), "{flag} missing from {opts}");
        }
        Cache::new(mounted.path()).store(&b1, &m1).unwrap();
    }
    assert_eq!(mount_options(&mnt), None, "unmounted on drop");

    let mounted = Mounted::mount(&device, &mnt).unwrap();
    assert_eq!(usable(&Cache::new(mounted.path())), (vec![1], vec![]));
    mounted.unmount().unwrap();
    assert_eq!(mount_options(&mnt), None);
}

#[test]
fn loader_refuses_a_cache_label_on_two_devices() {
    if !is_root() {
        prereq::missing("loop devices need root");
        return;
    }
    // Two disks carry the cache's label (the second, say, a stick someone
    // plugged in): the loader uses neither, says which, and boots on.
    let tmp = tempfile::tempdir().unwrap();
    let label = format!("LKG2{:x}", std::process::id());
    let mut loops = Vec::new();
    for (i, uuid) in ["7f2c9e0a-1111-4222-8333-444455556666", "8f2c9e0a-1111-4222-8333-444455556666"].iter().enumerate()
    {
        let img = tmp.path().join(format!("cache{i}.img"));
        if !ext4_image(&img, &label, uuid) {
            return;
        }
        let Some(lo) = Loop::attach(&img) else {
            prereq::missing("losetup does not work here");
            return;
        };
        loops.push(lo);
    }
    let site = support::Site::new();
    site.publish("v1/nodes/node42/bundle", 3, stateless_bundle::Scope::Any, &[("etc/motd", b"hi\n")], true);
    let nginx = support::Nginx::start(&site.www(), None, "");
    let node = support::Node::new();
    let cmd = format!(
        "rd.stateless.server=http://127.0.0.1:{} rd.stateless.node=node42 rd.stateless.key=file:{} rd.stateless.cache=LABEL={label}",
        nginx.port,
        site.key_file.display()
    );
    let (code, err, status) = node.boot_with(&cmd, false);
    assert_eq!(code, 0, "{err}");
    let warnings = status["warnings"].to_string();
    let want = format!("cache device LABEL={label} is on 2 devices (");
    assert!(warnings.contains(&want) && warnings.contains("refusing to guess"), "{warnings}");
    for lo in &loops {
        let name = Path::new(&lo.0).file_name().unwrap().to_str().unwrap().to_owned();
        assert!(warnings.contains(&format!("/dev/{name}")), "{name}: {warnings}");
    }
    assert_eq!(mount_options(&node.dir.path().join("run/cache")), None, "nothing mounted");
}

// --- stacks (issue 14) -----------------------------------------------------

use stateless_loader::cache::{LayerEntry, StackMeta};

/// A layer entry for a test bundle, as the loader would record it.
fn entry(target: &str, m: &SlotMeta) -> LayerEntry {
    LayerEntry {
        target: target.into(),
        digest: m.digest.clone(),
        generation: m.generation,
        size: m.size,
        key_id: m.key_id.clone(),
    }
}

fn stack_meta(layers: Vec<LayerEntry>) -> StackMeta {
    StackMeta { layers, fetched: 1_700_000_000, server: "http://127.0.0.1:8080".into() }
}

/// The usable stack slots as (name, [generation of each layer]), and the
/// warnings.
fn usable_stacks(cache: &Cache) -> (Vec<(String, Vec<u64>)>, Vec<String>) {
    let mut ok = Vec::new();
    let mut warnings = Vec::new();
    for (name, slot) in cache.stack_slots() {
        match slot {
            Ok((meta, paths)) => {
                assert_eq!(meta.layers.len(), paths.len());
                ok.push((name.to_owned(), meta.layers.iter().map(|l| l.generation).collect()));
            }
            Err(w) => warnings.push(format!("{name}: {w}")),
        }
    }
    (ok, warnings)
}

#[test]
fn stacks_rotate_as_units_and_unused_blobs_go() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    fs::create_dir(&dir).unwrap();
    let cache = Cache::new(&dir);
    let (d1, md1) = bundle(tmp.path(), 1, 300);
    let (n1, mn1) = bundle(tmp.path(), 10, 300);
    let (n2, mn2) = bundle(tmp.path(), 11, 300);
    let (n3, mn3) = bundle(tmp.path(), 12, 300);
    let s1 = stack_meta(vec![entry("default", &md1), entry("node:n", &mn1)]);
    cache.store_stack(&[(d1.clone(), md1.digest.clone()), (n1, mn1.digest.clone())], &s1).unwrap();
    assert_eq!(usable_stacks(&cache), (vec![("current.stack.json".into(), vec![1, 10])], vec![]));
    // The second stack shares the default layer: only the node's blob is new.
    let s2 = stack_meta(vec![entry("default", &md1), entry("node:n", &mn2)]);
    cache.store_stack(&[(n2, mn2.digest.clone())], &s2).unwrap();
    assert_eq!(
        usable_stacks(&cache).0,
        [("current.stack.json".to_owned(), vec![1, 11]), ("previous.stack.json".to_owned(), vec![1, 10])]
    );
    assert_eq!(fs::read_dir(dir.join("blobs")).unwrap().count(), 3);
    // Storing the same stack again keeps the previous one.
    cache.store_stack(&[], &s2).unwrap();
    assert_eq!(usable_stacks(&cache).0.len(), 2);
    // A third: the first stack's node blob is no longer named, and goes.
    let s3 = stack_meta(vec![entry("default", &md1), entry("node:n", &mn3)]);
    cache.store_stack(&[(n3, mn3.digest.clone())], &s3).unwrap();
    assert_eq!(fs::read_dir(dir.join("blobs")).unwrap().count(), 3);
    assert!(!cache.blob_path(&mn1.digest).exists());
    // A layer the cache does not hold and that is not given is an error,
    // and changes nothing.
    let (x, mx) = bundle(tmp.path(), 20, 300);
    let s4 = stack_meta(vec![entry("default", &mx)]);
    assert!(cache.store_stack(&[], &s4).is_err());
    assert_eq!(usable_stacks(&cache).0[0].1, [1, 12]);
    drop(x);
    // A single bundle stored after stacks drops them.
    cache.store(&d1, &md1).unwrap();
    assert_eq!(usable_stacks(&cache).0, Vec::<(String, Vec<u64>)>::new());
    assert_eq!(fs::read_dir(dir.join("blobs")).unwrap().count(), 0);
}

#[test]
fn stack_power_cut_states_each_leave_a_whole_stack() {
    // Each state a cut between two steps of `store_stack` leaves, rebuilt
    // by hand: C the current stack, N the new one.
    let tmp = tempfile::tempdir().unwrap();
    let (d, md) = bundle(tmp.path(), 1, 300);
    let (c, mc) = bundle(tmp.path(), 2, 300);
    let (n, mn) = bundle(tmp.path(), 3, 300);
    let sc = serde_json::to_vec(&stack_meta(vec![entry("default", &md), entry("node:n", &mc)])).unwrap();
    let sn = serde_json::to_vec(&stack_meta(vec![entry("default", &md), entry("node:n", &mn)])).unwrap();
    let blob = |m: &SlotMeta, p: &Path| (format!("blobs/{}.bundle", m.digest), fs::read(p).unwrap());
    type Files = Vec<(String, Vec<u8>)>;
    let base: Files = vec![blob(&md, &d), blob(&mc, &c), ("current.stack.json".into(), sc.clone())];
    let states: Vec<(&str, Files, Vec<Vec<u64>>)> = vec![
        ("nothing", base.clone(), vec![vec![1, 2]]),
        (
            "a blob half written",
            [base.clone(), vec![(format!("blobs/.{}.tmp", mn.digest), fs::read(&n).unwrap()[..50].to_vec())]].concat(),
            vec![vec![1, 2]],
        ),
        (
            "blobs and the new manifest written",
            [base.clone(), vec![blob(&mn, &n), (".new.stack.json".into(), sn.clone())]].concat(),
            vec![vec![1, 2]],
        ),
        (
            "previous renamed",
            [
                base.clone(),
                vec![blob(&mn, &n), (".new.stack.json".into(), sn.clone()), ("previous.stack.json".into(), sc.clone())],
            ]
            .concat(),
            vec![vec![1, 2], vec![1, 2]],
        ),
        (
            "current renamed",
            vec![
                blob(&md, &d),
                blob(&mc, &c),
                blob(&mn, &n),
                ("current.stack.json".into(), sn.clone()),
                ("previous.stack.json".into(), sc.clone()),
            ],
            vec![vec![1, 3], vec![1, 2]],
        ),
    ];
    for (what, files, want) in states {
        let dir = tmp.path().join(what.replace(' ', "-"));
        fs::create_dir_all(dir.join("blobs")).unwrap();
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
        }
        let cache = Cache::new(&dir);
        let got: Vec<Vec<u64>> = usable_stacks(&cache).0.into_iter().map(|(_, g)| g).collect();
        assert_eq!(got, want, "{what}");
        // The next store repairs it and removes the leftovers.
        let (n4, mn4) = bundle(tmp.path(), 4, 300);
        let s4 = stack_meta(vec![entry("default", &md), entry("node:n", &mn4)]);
        cache.store_stack(&[(d.clone(), md.digest.clone()), (n4, mn4.digest.clone())], &s4).unwrap();
        let got: Vec<Vec<u64>> = usable_stacks(&cache).0.into_iter().map(|(_, g)| g).collect();
        assert_eq!(got[0], [1, 4], "{what}");
        assert!(!dir.join(".new.stack.json").exists() && !dir.join(".prev.stack.json").exists(), "{what}");
        let stray = fs::read_dir(dir.join("blobs"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"));
        assert_eq!(stray.count(), 0, "{what}");
    }
}

#[test]
fn a_stack_slot_with_a_missing_or_altered_blob_is_unusable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    fs::create_dir(&dir).unwrap();
    let cache = Cache::new(&dir);
    let (d, md) = bundle(tmp.path(), 1, 300);
    let (n, mn) = bundle(tmp.path(), 2, 300);
    let (n2, mn2) = bundle(tmp.path(), 3, 300);
    cache
        .store_stack(
            &[(d.clone(), md.digest.clone()), (n, mn.digest.clone())],
            &stack_meta(vec![entry("default", &md), entry("node:n", &mn)]),
        )
        .unwrap();
    cache
        .store_stack(&[(n2, mn2.digest.clone())], &stack_meta(vec![entry("default", &md), entry("node:n", &mn2)]))
        .unwrap();
    // The current stack's node blob replaced by another bundle of the same size.
    fs::copy(cache.blob_path(&mn.digest), cache.blob_path(&mn2.digest)).unwrap();
    let (ok, warnings) = usable_stacks(&cache);
    assert_eq!(ok, [("previous.stack.json".to_owned(), vec![1, 2])]);
    assert!(warnings[0].starts_with("current.stack.json: blobs/") && warnings[0].contains("digest"), "{warnings:?}");
    // A manifest naming a blob by something that is not a digest.
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("previous.stack.json")).unwrap()).unwrap();
    m["layers"][0]["digest"] = "../../etc/passwd".into();
    fs::write(dir.join("previous.stack.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let (ok, warnings) = usable_stacks(&cache);
    assert!(ok.is_empty());
    assert!(warnings[1].contains("is not a digest"), "{warnings:?}");
}

#[test]
fn a_full_disk_leaves_the_cached_stacks_intact() {
    if !is_root() {
        prereq::missing("mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_guard) = TmpFs::mount(&tmp.path().join("small"), "64k") else {
        prereq::missing("cannot mount a tmpfs here");
        return;
    };
    let cache = Cache::new(&fs_guard.0);
    let (d, md) = bundle(tmp.path(), 1, 8 * 1024);
    let (n, mn) = bundle(tmp.path(), 2, 8 * 1024);
    let (big, mbig) = bundle(tmp.path(), 3, 100 * 1024);
    let s1 = stack_meta(vec![entry("default", &md), entry("node:n", &mn)]);
    cache.store_stack(&[(d, md.digest.clone()), (n, mn.digest.clone())], &s1).unwrap();
    let before = fs::read(cache.dir().join("current.stack.json")).unwrap();
    let s2 = stack_meta(vec![entry("default", &md), entry("node:n", &mbig)]);
    let err = cache.store_stack(&[(big, mbig.digest.clone())], &s2).unwrap_err();
    let CacheError::Write { source, .. } = &err else { panic!("{err:?}") };
    assert_eq!(source.raw_os_error(), Some(rustix::io::Errno::NOSPC.raw_os_error()), "{err:?}");
    assert_eq!(fs::read(cache.dir().join("current.stack.json")).unwrap(), before);
    assert_eq!(usable_stacks(&cache), (vec![("current.stack.json".into(), vec![1, 2])], vec![]));
    let names: Vec<_> = fs::read_dir(cache.dir().join("blobs")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "the half-written blob is removed: {names:?}");
    drop(fs_guard);
}
