#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
//! The last-known-good cache: slots, rotation, corruption, a full disk, and
//! finding and mounting the cache device.

#[path = "../../tests/support/noise.rs"]
mod noise;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use stateless_bundle::{BundleReader, Key, Limits, PackOptions, Scope};
use stateless_loader::blockdev::{self, CacheSpec, Mounted};
use stateless_loader::cache::{Cache, CacheError, SlotMeta};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Incompressible bytes, so a bundle's size follows `len`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    noise::incompressible(len, seed | 1)
}

/// Packs an encrypted bundle of about `len` bytes of file data into `dir`
/// and returns it with the metadata the loader would store for it.
fn bundle(dir: &Path, generation: u64, len: usize) -> (PathBuf, SlotMeta) {
    let src = dir.join(format!("src-{generation}"));
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/data"), noise(len, generation)).unwrap();
    let key = Key::from_bytes([7; 32]);
    let path = dir.join(format!("gen{generation}.bundle"));
    let opts = PackOptions {
        key: Some(&key),
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
            Err(w) => warnings.push(w),
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
    assert_eq!(cache.highest_generation(), None);

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
    assert_eq!(cache.highest_generation(), Some((3, m3.digest.clone())));

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
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs_guard) = TmpFs::mount(&tmp.path().join("small"), "64k") else {
        eprintln!("skipped: cannot mount a tmpfs here");
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

#[test]
fn highest_generation_survives_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("c"));
    fs::create_dir(cache.dir()).unwrap();
    let (b10, m10) = bundle(tmp.path(), 10, 100);
    let (b11, m11) = bundle(tmp.path(), 11, 100);
    cache.store(&b10, &m10).unwrap();
    cache.store(&b11, &m11).unwrap();
    assert_eq!(cache.highest_generation(), Some((11, m11.digest.clone())));

    // A corrupt bundle does not make the cache forget its generation.
    flip_tag(&cache.dir().join("current.bundle"));
    assert_eq!(cache.highest_generation(), Some((11, m11.digest.clone())));

    // Lower generations stored later (the policy refuses them, but the cache
    // must not rely on it) rotate 11 out of both slots; the memory stays.
    let (b9, m9) = bundle(tmp.path(), 9, 100);
    let (b8, m8) = bundle(tmp.path(), 8, 100);
    cache.store(&b9, &m9).unwrap();
    cache.store(&b8, &m8).unwrap();
    assert_eq!(usable(&cache), (vec![8, 9], vec![]));
    let highest = cache.highest_generation().unwrap();
    assert_eq!(highest.0, 11);
    assert_eq!(highest.1, "", "the bundle of generation 11 is no longer cached");
    let json: serde_json::Value = serde_json::from_slice(&fs::read(cache.dir().join("current.json")).unwrap()).unwrap();
    assert_eq!(json["highest_generation"], 11);
}

// --- the cache device ---------------------------------------------------

fn have(tool: &str) -> bool {
    Command::new(tool).arg("-V").output().is_ok()
}

/// An ext4 image file with a label and a known UUID.
fn ext4_image(path: &Path, label: &str, uuid: &str) -> bool {
    if !have("mkfs.ext4") {
        eprintln!("skipped: mkfs.ext4 (e2fsprogs) is not installed");
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
    let info = blockdev::read_ext4_superblock(&img).unwrap().unwrap();
    assert_eq!(info.label, "LKG");
    assert_eq!(info.uuid, UUID);
    let not_ext4 = tmp.path().join("zeros");
    fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
    assert_eq!(blockdev::read_ext4_superblock(&not_ext4).unwrap(), None);
    let short = tmp.path().join("short");
    fs::write(&short, b"tiny").unwrap();
    assert_eq!(blockdev::read_ext4_superblock(&short).unwrap(), None);
}

/// A fake `/dev` and `/sys`: `vda` (not ext4), `vdb1` (the ext4 image,
/// partition "stateless-cache"), `vdb2` (ext4 "OTHER").
fn fake_machine(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let dev = root.join("dev");
    let sys = root.join("sys");
    for name in ["vda", "vdb1", "vdb2"] {
        fs::create_dir_all(sys.join("class/block").join(name)).unwrap();
    }
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("vda"), vec![0u8; 8192]).unwrap();
    fs::write(
        sys.join("class/block/vdb1/uevent"),
        "MAJOR=252\nMINOR=17\nDEVNAME=vdb1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=stateless-cache\n",
    )
    .unwrap();
    fs::write(sys.join("class/block/vdb2/uevent"), "DEVNAME=vdb2\nPARTNAME=data\n").unwrap();
    if !ext4_image(&dev.join("vdb1"), "LKG", UUID)
        || !ext4_image(&dev.join("vdb2"), "OTHER", "00000000-0000-0000-0000-0000000000aa")
    {
        return None;
    }
    Some((dev, sys))
}

#[test]
fn device_found_by_scanning_sysfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((dev, sys)) = fake_machine(tmp.path()) else { return };
    let find = |s: &str| blockdev::find_device(&s.parse::<CacheSpec>().unwrap(), &dev, &sys);
    assert_eq!(find("LABEL=LKG"), Some(dev.join("vdb1")));
    assert_eq!(find("LABEL=OTHER"), Some(dev.join("vdb2")));
    assert_eq!(find(&format!("UUID={}", UUID.to_uppercase())), Some(dev.join("vdb1")));
    assert_eq!(find("PARTLABEL=stateless-cache"), Some(dev.join("vdb1")));
    assert_eq!(find("LABEL=lkg"), None, "labels are case-sensitive");
    assert_eq!(find("LABEL=MISSING"), None);
    assert_eq!(find("PARTLABEL=nope"), None);
    assert_eq!(find("/dev/vdb2"), Some(dev.join("vdb2")));
    assert_eq!(find("/dev/vdz9"), None);
    assert_eq!(find("none"), None);
}

#[test]
fn device_found_through_udev_links() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((dev, sys)) = fake_machine(tmp.path()) else { return };
    // udev says the label is on vdb2, whatever the superblocks say: the link
    // wins when it exists.
    for (by, name) in [("by-label", "my\\x20cache"), ("by-uuid", UUID), ("by-partlabel", "stateless-cache")] {
        fs::create_dir_all(dev.join("disk").join(by)).unwrap();
        std::os::unix::fs::symlink("../../vdb2", dev.join("disk").join(by).join(name)).unwrap();
    }
    let find = |s: &str| blockdev::find_device(&s.parse::<CacheSpec>().unwrap(), &dev, &sys);
    let vdb2 = fs::canonicalize(dev.join("vdb2")).unwrap();
    assert_eq!(find("LABEL=my cache"), Some(vdb2.clone()));
    assert_eq!(find(&format!("UUID={UUID}")), Some(vdb2.clone()));
    assert_eq!(find("PARTLABEL=stateless-cache"), Some(vdb2));
    // A label udev does not know is still found by scanning.
    assert_eq!(find("LABEL=LKG"), Some(dev.join("vdb1")));
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
        eprintln!("skipped: loop devices need root");
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
        eprintln!("skipped: losetup does not work here");
        return;
    };
    let spec: CacheSpec = format!("LABEL={label}").parse().unwrap();
    let device = blockdev::find_device(&spec, Path::new("/dev"), Path::new("/sys")).unwrap();
    assert_eq!(fs::canonicalize(&device).unwrap(), fs::canonicalize(&lo.0).unwrap());

    let run = tmp.path().join("run");
    let mnt = run.join("cache");
    let (b1, m1) = bundle(tmp.path(), 1, 1000);
    {
        let mounted = Mounted::mount(&device, &mnt).unwrap();
        let opts = mount_options(&mnt).unwrap();
        for flag in ["rw", "nosuid", "nodev", "noexec"] {
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
