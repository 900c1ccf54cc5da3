//! RFC 2782 target ordering: the order in which to try the targets of an
//! SRV answer.
//!
//! Records are taken in ascending priority. Within one priority the RFC's
//! weighted random selection is applied literally: zero-weight records are
//! put first, a number is drawn uniformly from `0..=sum_of_weights`, and the
//! first record whose running weight sum reaches it is tried next; repeat
//! with the rest. Two consequences of the literal algorithm, kept on purpose
//! so the loader behaves as every RFC 2782 client does:
//!
//! - a zero-weight record has a small chance (`1 / (sum + 1)`) of being
//!   first when the others have weight, and is otherwise tried last;
//! - when every weight in a priority is zero, the records keep the order of
//!   the answer (DNS servers usually rotate it).
//!
//! A target of `.` means "service decidedly not available at this domain":
//! such records are dropped, and when nothing else is left the result is
//! [`NoTargets::NotAvailable`]. The random source is injected
//! ([`RandomSource`]) so tests are deterministic; production draws from
//! [`SplitMix64`] through the same trait.
//!
//! A target comes from the network: before it goes into a URL it must be a
//! host name (RFC 952/1123 letters, digits and hyphens, labels of 1 to 63,
//! at most 253 in all), and the URL is built from parts
//! ([`SrvRecord::base_url`]), never by pasting text, so a target cannot
//! carry a path, a port or user information into the URL.

use std::fmt;

use url::{Host, Url};

/// One SRV resource record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Relative share among records of the same priority.
    pub weight: u16,
    /// TCP port of the service on the target.
    pub port: u16,
    /// Host name of the target, as in the answer (may end with `.`).
    pub target: String,
}

impl SrvRecord {
    /// The target without its trailing root dot, for URLs and TLS names.
    pub fn host(&self) -> &str {
        self.target.strip_suffix('.').unwrap_or(&self.target)
    }

    /// True for the target `.` (no service).
    fn is_root(&self) -> bool {
        self.host().is_empty()
    }

    /// The base URL `scheme://target:port` for this record, built from
    /// parts; refused when the target is not a host name.
    pub fn base_url(&self, scheme: &str) -> Result<Url, BadTarget> {
        let host = self.host();
        let bad = || BadTarget { target: self.target.escape_default().to_string() };
        if !is_host_name(host) {
            return Err(bad());
        }
        let mut url = Url::parse(&format!("{scheme}://srv-target.invalid/")).map_err(|_| bad())?;
        url.set_host(Some(host)).map_err(|_| bad())?;
        // The URL parser reads names like `1.2.3.4` or `0x7f.1` as
        // addresses: only a name that stayed the same name is accepted.
        match url.host() {
            Some(Host::Domain(d)) if d.eq_ignore_ascii_case(host) => {}
            _ => return Err(bad()),
        }
        url.set_port(Some(self.port)).map_err(|()| bad())?;
        Ok(url)
    }
}

/// An SRV target that is not a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SRV target {target:?} is not a host name; record ignored")]
pub struct BadTarget {
    /// The target, with unprintable bytes escaped.
    pub target: String,
}

/// Whether `name` (without a trailing dot) is a host name: labels of 1 to
/// 63 letters, digits and hyphens, not starting or ending with a hyphen,
/// at most 253 characters in all.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for SrvRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} (priority {}, weight {})", self.host(), self.port, self.priority, self.weight)
    }
}

/// Uniform random numbers for the weighted choice.
pub trait RandomSource {
    /// A number drawn uniformly from `0..=max`. A value above `max` is
    /// treated as `max`.
    fn uniform_inclusive(&mut self, max: u64) -> u64;
}

impl<F: FnMut(u64) -> u64> RandomSource for F {
    fn uniform_inclusive(&mut self, max: u64) -> u64 {
        self(max)
    }
}

/// SplitMix64, a small seeded generator (not for secrets). Seed it from
/// `getrandom` at boot so that a rack of blades booting together spreads
/// over the targets; seed it with a constant in tests.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl RandomSource for SplitMix64 {
    fn uniform_inclusive(&mut self, max: u64) -> u64 {
        // Multiply-shift maps 64 random bits onto 0..=max; the bias is at
        // most (max + 1) / 2^64, far below anything a weight can express.
        let span = u128::from(max) + 1;
        let scaled = (u128::from(self.next_u64()) * span) >> 64;
        u64::try_from(scaled).unwrap_or(max)
    }
}

/// Why an SRV answer gives nothing to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoTargets {
    /// The answer held no records.
    #[error("no SRV records")]
    NoRecords,
    /// The only target is `.`: the domain says the service is not offered.
    #[error("SRV target \".\": service decidedly not available")]
    NotAvailable,
}

/// Returns `records` in the order to try them (RFC 2782).
pub fn order(records: Vec<SrvRecord>, rng: &mut impl RandomSource) -> Result<Vec<SrvRecord>, NoTargets> {
    if records.is_empty() {
        return Err(NoTargets::NoRecords);
    }
    let mut records: Vec<SrvRecord> = records.into_iter().filter(|r| !r.is_root()).collect();
    if records.is_empty() {
        return Err(NoTargets::NotAvailable);
    }
    // Stable: the answer's order is kept within a priority, and zero
    // weights go first as the RFC asks.
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.into_iter().peekable();
    while let Some(first) = rest.next() {
        let priority = first.priority;
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|r| r.priority == priority) {
            group.push(next);
        }
        order_weighted(group, rng, &mut out);
    }
    Ok(out)
}

/// Appends one priority's records to `out` by repeated weighted choice.
fn order_weighted(mut group: Vec<SrvRecord>, rng: &mut impl RandomSource, out: &mut Vec<SrvRecord>) {
    while !group.is_empty() {
        let sum: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
        let pick = rng.uniform_inclusive(sum).min(sum);
        let mut running = 0u64;
        let index = group
            .iter()
            .position(|r| {
                running += u64::from(r.weight);
                running >= pick
            })
            .unwrap_or(0);
        out.push(group.remove(index));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord { priority, weight, port: 8443, target: target.to_owned() }
    }

    fn targets(v: &[SrvRecord]) -> Vec<&str> {
        v.iter().map(|r| r.target.as_str()).collect()
    }

    #[test]
    fn deterministic_table() {
        // (records, random values to return in turn, expected order)
        type Case = (Vec<SrvRecord>, Vec<u64>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![rec(10, 0, "a.")], vec![0], vec!["a."]),
            // Priority first, regardless of weight and answer order.
            (vec![rec(20, 100, "c"), rec(10, 1, "a"), rec(15, 0, "b")], vec![0, 0, 0], vec!["a", "b", "c"]),
            // Draw 0 picks the first (a zero-weight record when present).
            (vec![rec(1, 10, "w10"), rec(1, 0, "w0"), rec(1, 30, "w30")], vec![0, 0, 0], vec!["w0", "w10", "w30"]),
            // Draw 1..=10 picks w10, 11..=40 picks w30; then w0 is last.
            (vec![rec(1, 10, "w10"), rec(1, 0, "w0"), rec(1, 30, "w30")], vec![11, 1, 0], vec!["w30", "w10", "w0"]),
            (vec![rec(1, 10, "w10"), rec(1, 0, "w0"), rec(1, 30, "w30")], vec![10, 30, 0], vec!["w10", "w30", "w0"]),
            // Out-of-range draws are clamped to the sum: the last record.
            (vec![rec(1, 1, "a"), rec(1, 1, "b")], vec![u64::MAX, u64::MAX], vec!["b", "a"]),
            // All zero weights keep the answer's order.
            (vec![rec(5, 0, "x"), rec(5, 0, "y"), rec(5, 0, "z")], vec![0, 0, 0], vec!["x", "y", "z"]),
            // A `.` among real targets is dropped.
            (vec![rec(1, 0, "."), rec(2, 0, "real.")], vec![0], vec!["real."]),
            // Two priorities, each weighted on its own.
            (
                vec![rec(2, 5, "p2a"), rec(1, 5, "p1a"), rec(2, 5, "p2b"), rec(1, 5, "p1b")],
                vec![6, 0, 10, 0],
                vec!["p1b", "p1a", "p2b", "p2a"],
            ),
        ];
        for (records, draws, want) in cases {
            let mut draws = draws.into_iter();
            let mut rng = |_max: u64| draws.next().unwrap();
            let got = order(records.clone(), &mut rng).unwrap();
            assert_eq!(targets(&got), want, "records {records:?}");
            assert!(draws.next().is_none(), "one draw per record: {records:?}");
        }
    }

    #[test]
    fn draws_span_the_weight_sum() {
        let mut seen = Vec::new();
        let mut rng = |max: u64| {
            seen.push(max);
            0
        };
        order(vec![rec(1, 10, "a"), rec(1, 0, "b"), rec(1, 30, "c"), rec(2, 7, "d")], &mut rng).unwrap();
        assert_eq!(seen, [40, 40, 30, 7]);
    }

    #[test]
    fn no_targets_table() {
        let cases: &[(Vec<SrvRecord>, NoTargets)] = &[
            (vec![], NoTargets::NoRecords),
            (vec![rec(0, 0, ".")], NoTargets::NotAvailable),
            (vec![rec(0, 0, "")], NoTargets::NotAvailable),
            (vec![rec(0, 0, "."), rec(1, 5, ".")], NoTargets::NotAvailable),
        ];
        for (records, want) in cases {
            assert_eq!(order(records.clone(), &mut SplitMix64::new(1)), Err(*want), "{records:?}");
        }
    }

    #[test]
    fn keeps_every_record_once() {
        let mut rng = SplitMix64::new(7);
        for n in [1usize, 2, 3, 10, 100] {
            let records: Vec<SrvRecord> =
                (0..n).map(|i| rec((i % 3) as u16, (i * 7 % 5) as u16, &format!("t{i}"))).collect();
            let got = order(records.clone(), &mut rng).unwrap();
            let mut a = targets(&got);
            let mut b = targets(&records);
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "n={n}");
            assert!(got.windows(2).all(|w| w[0].priority <= w[1].priority), "n={n}");
        }
    }

    #[test]
    fn weighted_distribution_is_roughly_right() {
        // Weights 0, 10, 30: first pick is w0 with 1/41, w10 with 10/41,
        // w30 with 30/41 (the RFC draws from 0..=sum).
        const DRAWS: u32 = 41_000;
        let records = vec![rec(1, 0, "w0"), rec(1, 10, "w10"), rec(1, 30, "w30")];
        let mut rng = SplitMix64::new(0x5eed);
        let mut firsts = [0u32; 3];
        for _ in 0..DRAWS {
            let got = order(records.clone(), &mut rng).unwrap();
            let i = records.iter().position(|r| r == &got[0]).unwrap();
            firsts[i] += 1;
        }
        for (count, want) in firsts.iter().zip([1_000u32, 10_000, 30_000]) {
            let tolerance = want / 10 + 100;
            assert!(count.abs_diff(want) < tolerance, "first picks {firsts:?}, want about [1000, 10000, 30000]");
        }
    }

    #[test]
    fn splitmix_uniform_bounds() {
        let mut rng = SplitMix64::new(42);
        for max in [0u64, 1, 2, 65_535, u64::MAX] {
            for _ in 0..1000 {
                assert!(rng.uniform_inclusive(max) <= max);
            }
        }
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[rng.uniform_inclusive(3) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
    }

    #[test]
    fn targets_must_be_host_names() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert_eq!(long_name.len(), 254);
        let bad = [
            "evil.example/x",
            "evil.example\\047path",
            "a\\.b.example",
            "evil.example:1/",
            "user@evil.example",
            "evil example",
            "evil.example?q",
            "evil.example#f",
            "-lead.example",
            "trail-.example",
            "a..b",
            "*.example",
            "_srv.example",
            "xn--caf-dma.example\\195",
            "1.2.3.4",
            "0x7f.1",
            "caf\u{e9}.example",
            long_label.as_str(),
            long_name.as_str(),
        ];
        for target in bad {
            let r = SrvRecord { priority: 1, weight: 1, port: 8443, target: target.to_owned() };
            assert!(r.base_url("https").is_err(), "{target:?} accepted");
        }
        let ok = [
            ("cfg.lab.example.", "https://cfg.lab.example:8443/"),
            ("CFG.Lab.Example", "https://cfg.lab.example:8443/"),
            ("a-1.b2", "https://a-1.b2:8443/"),
            ("localhost", "https://localhost:8443/"),
        ];
        for (target, want) in ok {
            let r = SrvRecord { priority: 1, weight: 1, port: 8443, target: target.to_owned() };
            assert_eq!(r.base_url("https").unwrap().as_str(), want, "{target}");
        }
        let r = SrvRecord { priority: 1, weight: 1, port: 80, target: "cfg.example".into() };
        // The URL leaves out a port that is the scheme's default: the same port.
        assert_eq!(r.base_url("http").unwrap().port_or_known_default(), Some(80));
        let r = SrvRecord { priority: 1, weight: 1, port: 8080, target: "cfg.example".into() };
        assert_eq!(r.base_url("http").unwrap().as_str(), "http://cfg.example:8080/");
        let max = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        assert!(is_host_name(&max));
    }

    #[test]
    fn host_and_display() {
        assert_eq!(rec(1, 2, "cfg.example.").host(), "cfg.example");
        assert_eq!(rec(1, 2, "cfg.example").host(), "cfg.example");
        assert_eq!(rec(1, 2, "cfg.example.").to_string(), "cfg.example:8443 (priority 1, weight 2)");
    }
}
