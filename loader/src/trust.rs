//! Fleet trust at boot: which publishers must have signed a bundle, how old
//! a bundle may be, and which key sources `rd.stateless.key=auto` may use.
//!
//! Everything here applies to every bundle the loader is about to apply,
//! from a server or from the cache alike (the cache is not a side door):
//!
//! - **Publishers.** When publisher keys are configured, a bundle must carry
//!   a valid signature by one of them ([`Trust::check_signature`] on the
//!   header as received, before any key is looked up, and
//!   [`Trust::require`] so that the payload is checked against the signed
//!   digest). The set comes from `rd.stateless.pubkey=` when given, else
//!   from the public key files embedded in the boot image
//!   ([`stateless_keys::PUBLISHER_DIR`], put there by `statelessctl key
//!   initramfs --pubkey`). A key that is named but cannot be read fails the
//!   boot: a trust anchor that is not there must not quietly turn signature
//!   checking off. With neither, signatures are not required (sites that
//!   have no publisher key yet keep working).
//! - **Freshness.** `rd.stateless.max-age=DURATION` refuses a bundle whose
//!   header `created` time is longer ago than that ([`Trust::check_age`]);
//!   `rd.stateless.max-age-offline=` sets another limit (or `none`) for
//!   bundles applied from the cache.
//! - **Key sources.** With `rd.stateless.key=auto`, a USB stick is consulted
//!   only on a node whose boot image holds no keys of its own
//!   ([`auto_excludes_usb`]), so a stick cannot outvote the node's key.
//!
//! `docs/security.md` says what each of these stops; `docs/cmdline.md` and
//! `docs/keys.md` describe the words and the rotation steps.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stateless_bundle::header::RawHeader;
use stateless_bundle::{Authenticated, Header, OpenError, PublicKey, SignatureError, SignerId};
use stateless_keys::KeyFileError;
use stateless_keys::publishers::{PubkeyArgError, PubkeySpec, describe_publishers, load_publishers, parse_pubkey_arg};

/// The trust words of the kernel command line, parsed (part of
/// [`crate::cmdline::Config`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustConfig {
    /// `pubkey=`: the publishers to trust instead of the embedded ones.
    pub pubkeys: Option<Vec<PubkeySpec>>,
    /// `max-age=`: the oldest bundle accepted, by its creation time.
    pub max_age: Option<Duration>,
    /// `max-age-offline=`: the limit for bundles from the cache; `None`
    /// means the same as `max_age`.
    pub max_age_offline: Option<OfflineAge>,
    /// The last `pubkey=` word was empty (reset to the embedded keys):
    /// said on the console when that leaves no publisher at all.
    pub pubkeys_cleared: bool,
}

/// The value of `rd.stateless.max-age-offline=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineAge {
    /// Cached bundles may be this old.
    Limit(Duration),
    /// `none`: cached bundles are not held to an age.
    Unlimited,
}

/// A malformed trust word (shown after the word itself, see
/// [`crate::cmdline::CmdlineError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustWordError {
    /// `pubkey=` is not a list of `file:PATH` and `ed25519:HEX`.
    #[error(transparent)]
    Pubkey(#[from] PubkeyArgError),
    /// `max-age=` or `max-age-offline=` is not a duration.
    #[error("not a duration like 36h, 7d or 2weeks")]
    NotDuration,
    /// An age under one second (zero included) would refuse every bundle:
    /// creation times are whole seconds.
    #[error("a maximum age under one second refuses every bundle")]
    Zero,
}

impl TrustConfig {
    /// Applies `rd.stateless.NAME=value` for a trust word (`value` is not
    /// empty); `Ok(false)` when `name` is not one.
    pub fn apply(&mut self, name: &str, value: &str) -> Result<bool, TrustWordError> {
        match name {
            "pubkey" => {
                self.pubkeys = Some(parse_pubkey_arg(value)?);
                self.pubkeys_cleared = false;
            }
            "max-age" => self.max_age = Some(parse_age(value)?),
            "max-age-offline" => {
                self.max_age_offline =
                    Some(if value == "none" { OfflineAge::Unlimited } else { OfflineAge::Limit(parse_age(value)?) })
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Puts a trust word back to its default (an empty value).
    pub fn reset(&mut self, name: &str) {
        let d = TrustConfig::default();
        match name {
            "pubkey" => {
                self.pubkeys = d.pubkeys;
                self.pubkeys_cleared = true;
            }
            "max-age" => self.max_age = d.max_age,
            "max-age-offline" => self.max_age_offline = d.max_age_offline,
            _ => {}
        }
    }
}

fn parse_age(value: &str) -> Result<Duration, TrustWordError> {
    let age = humantime::parse_duration(value).map_err(|_| TrustWordError::NotDuration)?;
    // `created` is in whole seconds, so 500ms would act as zero.
    if age.as_secs() == 0 {
        return Err(TrustWordError::Zero);
    }
    Ok(age)
}

/// Where the trusted publishers came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherSource {
    /// None configured: signatures are not required.
    None,
    /// `rd.stateless.pubkey=`.
    Cmdline,
    /// The public key files embedded in the boot image.
    Embedded(PathBuf),
}

/// Why a bundle is not trusted, or the trust settings could not be loaded.
/// `Display` is the console line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A key named by `rd.stateless.pubkey=` could not be read.
    #[error("reading the publisher keys of rd.stateless.pubkey=")]
    Cmdline(#[source] KeyFileError),
    /// The embedded publisher keys could not be read.
    #[error("reading the publisher keys embedded in {}", dir.display())]
    Embedded {
        /// The directory.
        dir: PathBuf,
        /// The error.
        #[source]
        err: KeyFileError,
    },
    /// The bundle is not signed by a trusted publisher.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The bundle was created longer ago than the site allows.
    #[error("bundle created {} is {} old, over rd.stateless.{word}={}", rfc3339(*created), fmt_secs(*age), humantime::format_duration(*limit))]
    TooOld {
        /// The header's creation time, Unix seconds.
        created: i64,
        /// Its age in seconds.
        age: u64,
        /// The limit.
        limit: Duration,
        /// The word that set it (`max-age` or `max-age-offline`).
        word: &'static str,
    },
}

/// The trust settings of one run, loaded from the command line and the
/// boot image.
#[derive(Debug, Clone)]
pub struct Trust {
    publishers: Vec<PublicKey>,
    source: PublisherSource,
    /// See [`Trust::warning`].
    cleared_to_nothing: bool,
    max_age: Option<Duration>,
    max_age_offline: Option<OfflineAge>,
}

impl Default for Trust {
    /// Nothing required: no publishers, no age limit.
    fn default() -> Trust {
        Trust {
            publishers: Vec::new(),
            source: PublisherSource::None,
            cleared_to_nothing: false,
            max_age: None,
            max_age_offline: None,
        }
    }
}

impl Trust {
    /// Loads the publishers: `rd.stateless.pubkey=` when given (it replaces
    /// the embedded ones, as every word overrides a default), else every
    /// `*.pub` in `publisher_dir`.
    pub fn load(cfg: &TrustConfig, publisher_dir: &Path) -> Result<Trust, TrustError> {
        let (publishers, source) = match &cfg.pubkeys {
            Some(specs) => (load_publishers(specs).map_err(TrustError::Cmdline)?, PublisherSource::Cmdline),
            None => {
                let keys = stateless_keys::read_public_key_dir(publisher_dir)
                    .map_err(|err| TrustError::Embedded { dir: publisher_dir.to_owned(), err })?;
                let source = if keys.is_empty() {
                    PublisherSource::None
                } else {
                    PublisherSource::Embedded(publisher_dir.into())
                };
                (keys, source)
            }
        };
        let cleared_to_nothing = cfg.pubkeys_cleared && source == PublisherSource::None;
        Ok(Trust { publishers, source, cleared_to_nothing, max_age: cfg.max_age, max_age_offline: cfg.max_age_offline })
    }

    /// A warning for the console and `status.json` when an empty
    /// `rd.stateless.pubkey=` left no publisher at all: signature checks
    /// are then off, and that must never happen silently (a word appended
    /// at the boot prompt can do it).
    pub fn warning(&self) -> Option<String> {
        self.cleared_to_nothing.then(|| {
            "rd.stateless.pubkey= is empty and the boot image embeds no publisher key: bundle signatures are not checked"
                .to_owned()
        })
    }

    /// True when bundles must be signed.
    pub fn signatures_required(&self) -> bool {
        !self.publishers.is_empty()
    }

    /// One line for the log: which publishers, from where, and the ages.
    pub fn describe(&self) -> String {
        let publishers = match &self.source {
            PublisherSource::None => "signatures not required (no publisher key configured)".to_owned(),
            PublisherSource::Cmdline => {
                format!("publishers {} (rd.stateless.pubkey=)", describe_publishers(&self.publishers))
            }
            PublisherSource::Embedded(dir) => {
                format!("publishers {} (embedded in {})", describe_publishers(&self.publishers), dir.display())
            }
        };
        let age = |a: Option<Duration>| a.map_or("none".to_owned(), |d| humantime::format_duration(d).to_string());
        let offline = match self.max_age_offline {
            None => "as max-age".to_owned(),
            Some(OfflineAge::Unlimited) => "none".to_owned(),
            Some(OfflineAge::Limit(d)) => age(Some(d)),
        };
        format!("{publishers}; max-age {}, max-age-offline {offline}", age(self.max_age))
    }

    /// Checks the publisher signature over the header as received, before
    /// any key is looked up (an unsigned or foreign bundle must not make the
    /// loader unseal the TPM or wait for a stick). `Ok(None)` when
    /// signatures are not required.
    pub fn check_signature(&self, raw: &RawHeader) -> Result<Option<SignerId>, TrustError> {
        if !self.signatures_required() {
            return Ok(None);
        }
        Ok(Some(raw.verify_signature_by_any(&self.publishers)?))
    }

    /// Makes extraction refuse a payload that is not the one the publisher
    /// signed (the signature covers its SHA-256). A no-op when signatures
    /// are not required.
    pub fn require<R: std::io::Read + Send>(&self, bundle: Authenticated<R>) -> Result<Authenticated<R>, OpenError> {
        if !self.signatures_required() {
            return Ok(bundle);
        }
        bundle.require_signature_by_any(&self.publishers)
    }

    /// Refuses an authenticated header created longer ago than the limit
    /// for its source. A clock before [`crate::pipeline::SANE_CLOCK_FLOOR`]
    /// is unset (no RTC): the age is then not checked, with a warning, as
    /// expiry is not. A creation time in the future counts as age zero.
    pub fn check_age(&self, header: &Header, from_cache: bool) -> Result<(), TrustError> {
        let (limit, word) = match (from_cache, self.max_age_offline) {
            (true, Some(OfflineAge::Unlimited)) => return Ok(()),
            (true, Some(OfflineAge::Limit(d))) => (d, "max-age-offline"),
            _ => match self.max_age {
                Some(d) => (d, "max-age"),
                None => return Ok(()),
            },
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let sane = u64::try_from(crate::pipeline::SANE_CLOCK_FLOOR).unwrap_or(u64::MAX);
        if now < sane {
            log::warn!("clock is not set; rd.stateless.{word}= not checked");
            return Ok(());
        }
        let created = u64::try_from(header.created).unwrap_or(0);
        let age = now.saturating_sub(created);
        if age > limit.as_secs() {
            return Err(TrustError::TooOld { created: header.created, age, limit, word });
        }
        Ok(())
    }
}

fn rfc3339(t: i64) -> String {
    let secs = u64::try_from(t).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// An age for the console: whole minutes when over an hour (seconds are
/// noise there).
fn fmt_secs(age: u64) -> String {
    let shown = if age >= 3600 { age - age % 60 } else { age };
    humantime::format_duration(Duration::from_secs(shown)).to_string()
}

/// With `rd.stateless.key=auto`, why a USB stick is not consulted: the boot
/// image holds keys (`*.key` in `key_dir`) or TPM-sealed keys (`*.sealed`
/// in `sealed_dir`), so this node has a key of its own and a stick must not
/// outvote it. `None` for a node provisioned by stick only. Presence of the
/// files decides, not whether they can be read: a node does not turn into a
/// stick node because its sealed key stopped unsealing.
pub fn auto_excludes_usb(key_dir: &Path, sealed_dir: &Path) -> Option<String> {
    let has = |dir: &Path, ext: &str| {
        std::fs::read_dir(dir)
            .is_ok_and(|entries| entries.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == ext)))
    };
    let what = match (has(key_dir, "key"), has(sealed_dir, "sealed")) {
        (true, true) => "keys and TPM-sealed keys",
        (true, false) => "keys",
        (false, true) => "TPM-sealed keys",
        (false, false) => return None,
    };
    Some(format!(
        "not consulted: the boot image holds {what} (rd.stateless.key=usb, or a list naming usb, allows a stick)"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_and_reset() {
        let mut cfg = TrustConfig::default();
        assert_eq!(cfg.apply("max-age", "36h"), Ok(true));
        assert_eq!(cfg.max_age, Some(Duration::from_secs(36 * 3600)));
        assert_eq!(cfg.apply("max-age", "7d"), Ok(true));
        assert_eq!(cfg.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(cfg.apply("max-age-offline", "none"), Ok(true));
        assert_eq!(cfg.max_age_offline, Some(OfflineAge::Unlimited));
        assert_eq!(cfg.apply("max-age-offline", "30days"), Ok(true));
        assert_eq!(cfg.max_age_offline, Some(OfflineAge::Limit(Duration::from_secs(30 * 86_400))));
        assert_eq!(cfg.apply("max-age", "1s"), Ok(true));
        for (name, value, want) in [
            ("max-age", "soon", TrustWordError::NotDuration),
            ("max-age", "7", TrustWordError::NotDuration),
            ("max-age", "-1d", TrustWordError::NotDuration),
            ("max-age", "0s", TrustWordError::Zero),
            ("max-age", "500ms", TrustWordError::Zero),
            ("max-age", "1ns", TrustWordError::Zero),
            ("max-age-offline", "999ms 999us", TrustWordError::Zero),
            ("max-age-offline", "0d", TrustWordError::Zero),
            ("max-age-offline", "never", TrustWordError::NotDuration),
            ("pubkey", "/etc/p.pub", TrustWordError::Pubkey(parse_pubkey_arg("/etc/p.pub").unwrap_err())),
        ] {
            let err = cfg.apply(name, value).unwrap_err();
            assert_eq!(err, want, "{name}={value}");
            assert_eq!(err.to_string().lines().count(), 1);
        }
        assert_eq!(cfg.apply("key", "tpm"), Ok(false));
        cfg.reset("max-age");
        cfg.reset("max-age-offline");
        assert_eq!(cfg, TrustConfig::default());
    }

    fn header(created: i64) -> Header {
        Header {
            cipher: stateless_bundle::Cipher::None,
            key_id: stateless_bundle::KeyId::default(),
            salt: [0; 32],
            generation: 1,
            created,
            expires: None,
            kind: stateless_bundle::PayloadKind::TarZstd,
            payload_len: 0,
            expanded_len: 0,
            entry_count: 0,
            scope: stateless_bundle::Scope::Any,
            payload_sha256: [0; 32],
            signature: None,
        }
    }

    #[test]
    fn age_limits_by_source() {
        let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
        let day = Duration::from_secs(86_400);
        let trust = |max_age, offline| Trust { max_age, max_age_offline: offline, ..Trust::default() };
        let week_old = header(now - 7 * 86_400);
        // (trust, from cache, accepted)
        let cases = [
            (trust(None, None), false, true),
            (trust(Some(day * 8), None), false, true),
            (trust(Some(day * 2), None), false, false),
            (trust(Some(day * 2), None), true, false),
            (trust(Some(day * 2), Some(OfflineAge::Limit(day * 30))), true, true),
            (trust(Some(day * 2), Some(OfflineAge::Limit(day * 30))), false, false),
            (trust(Some(day * 2), Some(OfflineAge::Unlimited)), true, true),
            (trust(None, Some(OfflineAge::Limit(day))), true, false),
            (trust(None, Some(OfflineAge::Limit(day))), false, true),
        ];
        for (i, (t, cache, ok)) in cases.iter().enumerate() {
            let got = t.check_age(&week_old, *cache);
            assert_eq!(got.is_ok(), *ok, "case {i}: {got:?}");
        }
        let err = trust(Some(day * 2), None).check_age(&week_old, false).unwrap_err().to_string();
        assert!(err.starts_with("bundle created ") && err.contains(" is 7days"), "{err}");
        assert!(err.ends_with("over rd.stateless.max-age=2days"), "{err}");
        // Created in the future (a publisher's clock ahead): age zero.
        assert!(trust(Some(day), None).check_age(&header(now + 3600), false).is_ok());
    }

    /// A cheap deterministic sweep over command lines built from the trust
    /// and key-list tokens: whatever the mix, parsing ends in a config or
    /// a one-line error, never a panic.
    #[test]
    fn token_soup_of_trust_words_never_panics() {
        let hex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let inline = format!("ed25519:{hex}");
        let tokens = [
            "rd.stateless.key=",
            "rd.stateless.pubkey=",
            "rd.stateless.max-age=",
            "rd.stateless.max-age-offline=",
            "tpm",
            "usb",
            "usb:",
            "file:/k",
            ",",
            "none",
            "auto",
            "7d",
            "0",
            "99999999999999999999y",
            "1s",
            " ",
            "\"",
            "é",
            &inline,
            "file:",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut line = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for i in 0..(x % 10) {
                line.push_str(tokens[((x >> (i * 5 + 4)) % tokens.len() as u64) as usize]);
            }
            if let Err(e) = crate::cmdline::Config::from_cmdline(&line) {
                assert_eq!(e.to_string().lines().count(), 1, "{line:?}: {e}");
            }
        }
    }

    #[test]
    fn auto_excludes_usb_when_the_image_has_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, sealed) = (dir.path().join("keys"), dir.path().join("tpm"));
        assert_eq!(auto_excludes_usb(&keys, &sealed), None);
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&sealed).unwrap();
        std::fs::write(keys.join("README"), "").unwrap();
        assert_eq!(auto_excludes_usb(&keys, &sealed), None);
        std::fs::write(sealed.join("node42.sealed"), "").unwrap();
        assert!(auto_excludes_usb(&keys, &sealed).unwrap().contains("holds TPM-sealed keys"));
        std::fs::write(keys.join("site.key"), "junk").unwrap();
        assert!(auto_excludes_usb(&keys, &sealed).unwrap().contains("holds keys and TPM-sealed keys"));
    }

    /// An empty `pubkey=` that leaves no publisher says so; one that falls
    /// back to embedded keys, or no word at all, does not.
    #[test]
    fn an_empty_pubkey_word_that_turns_signatures_off_is_a_warning() {
        let empty = tempfile::tempdir().unwrap();
        let embedded = tempfile::tempdir().unwrap();
        let key = stateless_bundle::SigningKey::from_seed(&[7; 32]).public_key();
        stateless_keys::write_public_key_file(&embedded.path().join("p.pub"), &key, false).unwrap();
        let mut cfg = TrustConfig::default();
        let inline = format!("ed25519:{}", stateless_bundle::key::hex_encode(&key.to_bytes()));
        cfg.apply("pubkey", &inline).unwrap();
        cfg.reset("pubkey");
        let off = Trust::load(&cfg, empty.path()).unwrap();
        assert!(!off.signatures_required());
        let w = off.warning().unwrap();
        assert!(w.contains("signatures are not checked") && w.lines().count() == 1, "{w}");
        assert_eq!(Trust::load(&cfg, embedded.path()).unwrap().warning(), None);
        cfg.apply("pubkey", &inline).unwrap();
        assert_eq!(Trust::load(&cfg, empty.path()).unwrap().warning(), None);
        assert_eq!(Trust::load(&TrustConfig::default(), empty.path()).unwrap().warning(), None);
    }
}
