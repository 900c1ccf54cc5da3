//! Why the pipeline did not apply a bundle, as types.
//!
//! [`Refusal`] is why one source's bundle (a server URL, a cache slot) was
//! not applied; [`Failure`] is why nothing was applied at all. The
//! `Display` of each is the text the console and `status.json` show, and
//! [`Refusal::kind`] is the machine-readable word `status.json` records per
//! attempt (docs/cmdline.md, *status.json*), taken from the variant, never
//! from the text.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use stateless_bundle::extract::ExtractError;
use stateless_bundle::stream::StreamError;
use stateless_bundle::{HeaderError, OpenError, Scope, SignatureError, error_chain};

use crate::apply::ApplyError;
use crate::cache::SlotError;
use crate::fetch::{FetchError, RedirectRefusal};
use crate::keyladder::KeyError;
use crate::trust::TrustError;

/// Why a bundle from one source was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The bundle code refused it: not a bundle, failed authentication,
    /// broke a format rule or a limit.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The server's body length is not the header's.
    #[error("server sends {sent} bytes, the bundle header declares {declared}")]
    Length {
        /// Bytes the server announced.
        sent: u64,
        /// Bytes the header declares.
        declared: u64,
    },
    /// An unencrypted bundle while a key is configured.
    #[error(
        "bundle is not encrypted but a key is configured (downgrade refused; use rd.stateless.key=none for unencrypted sites)"
    )]
    Downgrade,
    /// An unencrypted bundle over plain HTTP without `rd.stateless.insecure`.
    #[error("refusing an unencrypted bundle over plain HTTP (use https, or rd.stateless.insecure)")]
    PlainHttp,
    /// No key source had the key the bundle needs.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Fleet trust refused it: no signature by a trusted publisher, or
    /// too old ([`crate::trust`]).
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The server's answer was refused before any bundle byte was read:
    /// a body over the size limit, a redirect the loader does not follow
    /// (one from https to plain http, say), https without any trust.
    #[error(transparent)]
    Server(FetchError),
    /// A cache slot's files cannot be used (missing, not a regular file,
    /// metadata that does not match the bundle).
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The bundle is for another node or group.
    #[error("bundle is for {scope}, this is node {node} (group {group})")]
    Scope {
        /// The bundle's scope.
        scope: Scope,
        /// This node (`?` when unknown).
        node: String,
        /// This node's group (`none`).
        group: String,
    },
    /// An older generation than the highest applied.
    #[error("rollback refused: bundle generation {got} is older than generation {applied} already applied")]
    Rollback {
        /// The bundle's generation.
        got: u64,
        /// The highest generation applied on this node.
        applied: u64,
    },
    /// `rd.stateless.rollback=tpm`: the layer's rollback floor in the TPM
    /// could not be read (no TPM, a TPM error, or with `tpm-strict` no
    /// room for its counter), so an older bundle could not be told apart.
    #[error("rollback state in the TPM cannot be read for {target} ({why}); refused (rd.stateless.rollback=tpm)")]
    RollbackState {
        /// The layer target (`node:node42`).
        target: String,
        /// Why, as one line.
        why: String,
    },
    /// The generation applied before, with other contents.
    #[error("generation {0} already applied with a different digest; refused")]
    Replay(u64),
    /// The bundle's expiry time has passed.
    #[error("bundle expired at {0}")]
    Expired(String),
    /// The time budget ran out while the bundle was being processed.
    #[error("time budget of {} s ran out while {} the bundle{}", budget.as_secs(), phase.doing(), phase.progress())]
    Budget {
        /// `rd.stateless.timeout`.
        budget: Duration,
        /// What was going on.
        phase: Phase,
    },
    /// The loader itself failed (a panic), caught at the pipeline boundary.
    #[error("internal error while processing the bundle ({0})")]
    Internal(String),
    /// The cache slot could not be opened.
    #[error("opening {}", path.display())]
    OpenSlot {
        /// The slot's bundle file.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The staging directory could not be made.
    #[error("creating a staging directory in {}", path.display())]
    Staging {
        /// The root.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// Moving the staged bundle into the root failed.
    #[error("applying to {}", path.display())]
    Apply {
        /// The root.
        path: PathBuf,
        /// The cause.
        #[source]
        err: ApplyError,
    },
    /// One layer of a stack was refused, which refuses the stack: names
    /// the layer (`layer group rack7`).
    #[error("layer {layer}")]
    Layer {
        /// The layer (`default`, `group rack7`, `plugin acme-agent`, `node node42`).
        layer: String,
        /// Why.
        #[source]
        source: Box<Refusal>,
    },
    /// The layer's `.stateless/layer.toml` or `model.toml` is not valid.
    #[error(transparent)]
    Meta(#[from] stateless_model::LoadError),
    /// The layer's `.stateless/` files could not be read or are not what
    /// their place in the stack needs (too large, a link, another kind).
    #[error("{0}")]
    Layout(String),
    /// A plugin layer ships a file outside its root.
    #[error("plugin {plugin}: {path} is outside its root /opt/{vendor}/{plugin}")]
    PluginFile {
        /// The plugin.
        plugin: String,
        /// Its vendor.
        vendor: String,
        /// The entry, relative to the root.
        path: String,
    },
    /// A plugin layer's model sets what a plugin may not.
    #[error(transparent)]
    PluginModel(#[from] stateless_model::layer::PluginModelError),
    /// An image layer could not be stored, verified or mounted.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The stack's merged model could not be applied to the root.
    #[error("applying the node model{}", layer.as_ref().map(|l| format!(" (the entry set by layer {l})")).unwrap_or_default())]
    Model {
        /// The layer that set the entry refused, when it is known.
        layer: Option<String>,
        /// The cause.
        #[source]
        err: stateless_model::ApplyError,
    },
}

/// What the loader was doing with a bundle when the budget ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Receiving it (and verifying and extracting what had arrived).
    Downloading {
        /// Bytes received.
        got: u64,
        /// Bytes announced, when known.
        total: Option<u64>,
    },
    /// All of it had arrived; verifying and extracting it.
    Extracting,
}

impl Phase {
    /// What was being done, for "… ran out while {doing} the bundle".
    pub fn doing(&self) -> &'static str {
        match self {
            Phase::Downloading { .. } => "downloading and extracting",
            Phase::Extracting => "verifying and extracting",
        }
    }

    /// How far the download got, as a suffix (empty once it was whole).
    pub fn progress(&self) -> String {
        match self {
            Phase::Downloading { got, total: Some(t) } => format!(" ({got} of {t} bytes received)"),
            Phase::Downloading { got, total: None } => format!(" ({got} bytes received)"),
            Phase::Extracting => String::new(),
        }
    }
}

impl Refusal {
    /// The refusal's kind for `status.json`: one of the words listed in
    /// docs/cmdline.md.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Open(e) => open_kind(e),
            Refusal::Length { .. } => "size",
            Refusal::Downgrade => "downgrade",
            Refusal::PlainHttp => "plain-http",
            Refusal::Key(_) => "key",
            Refusal::Trust(e) => trust_kind(e),
            Refusal::Slot(e) => slot_kind(e),
            Refusal::Server(e) => fetch_kind(e),
            Refusal::Scope { .. } => "scope",
            Refusal::Rollback { .. } | Refusal::Replay(_) => "rollback",
            Refusal::RollbackState { .. } => "rollback-state",
            Refusal::Expired(_) => "expired",
            Refusal::Budget { .. } => "budget",
            Refusal::Internal(_) => "internal",
            Refusal::OpenSlot { .. } | Refusal::Staging { .. } | Refusal::Apply { .. } => "local",
            Refusal::Layer { source, .. } => source.kind(),
            Refusal::Meta(_) | Refusal::Layout(_) => "layer",
            Refusal::PluginFile { .. } | Refusal::PluginModel(_) => "plugin",
            Refusal::Model { .. } => "model",
            Refusal::Image(e) => match e {
                crate::image::ImageError::Open(e) => open_kind(e),
                crate::image::ImageError::NoRoom { .. } => "limit",
                crate::image::ImageError::Io { .. } => "local",
                _ => "image",
            },
        }
    }
}

fn open_kind(e: &OpenError) -> &'static str {
    match e {
        OpenError::Header(h) => match h {
            HeaderError::KeyRequired { .. } | HeaderError::WrongKey { .. } => "key",
            HeaderError::BadTag | HeaderError::BadChecksum => "authentication",
            _ => "not-a-bundle",
        },
        OpenError::Stream(StreamError::Truncated { .. }) | OpenError::Truncated { .. } => "truncated",
        OpenError::Stream(_) => "authentication",
        OpenError::Signature(e) => signature_kind(e),
        OpenError::Limit { .. } | OpenError::Extract(ExtractError::TooManyEntries(_)) => "limit",
        // Writing into staging failed: the node's disk, not the bundle.
        OpenError::Extract(ExtractError::Io { .. }) => "local",
        // Only the watchdog cancels: the time budget ran out.
        OpenError::Extract(ExtractError::Cancelled) => "budget",
        OpenError::Extract(_) => "format",
        OpenError::Corrupt(_) | OpenError::TrailingData => "corrupt",
        OpenError::Io(_) => "read",
        _ => "other",
    }
}

/// The kind of a fleet-trust refusal.
fn trust_kind(e: &TrustError) -> &'static str {
    match e {
        TrustError::Signature(s) => signature_kind(s),
        TrustError::TooOld { .. } => "too-old",
        // Loading the publisher keys fails the run (Failure::Trust), not
        // a bundle; should one get here, it is the node's.
        TrustError::Cmdline(_) | TrustError::Embedded { .. } => "local",
    }
}

/// The kind of a publisher-signature refusal.
fn signature_kind(e: &SignatureError) -> &'static str {
    match e {
        SignatureError::Unsigned => "unsigned",
        SignatureError::WrongSigner { .. } | SignatureError::UntrustedSigner { .. } => "untrusted-signer",
        // A signature that does not verify, or a payload that is not the
        // one signed: the bundle was altered.
        SignatureError::BadSignature | SignatureError::PayloadDigest { .. } => "signature",
        _ => "signature",
    }
}

/// The kind of an unusable cache slot.
fn slot_kind(e: &SlotError) -> &'static str {
    match e {
        SlotError::Open { .. } => "local",
        SlotError::Header { source, .. } => open_kind(source),
        // Files that do not match each other: a power cut between two
        // renames, or tampering.
        SlotError::TooLarge { .. }
        | SlotError::Json { .. }
        | SlotError::Digest { .. }
        | SlotError::Size { .. }
        | SlotError::NotDigest { .. } => "corrupt",
    }
}

/// The kind of a failed transfer (`status.json`'s `outcomes`, with the
/// `failed` result).
pub fn fetch_kind(e: &FetchError) -> &'static str {
    match e {
        FetchError::Status(_) => "http-status",
        FetchError::TooLarge(_) => "size",
        FetchError::Redirect { why: RedirectRefusal::Downgrade, .. } => "redirect-downgrade",
        FetchError::Redirect { .. } | FetchError::TooManyRedirects { .. } => "redirect",
        FetchError::NoTrust => "no-trust",
        FetchError::Budget => "budget",
        FetchError::Io(_) | FetchError::Ca { .. } => "local",
        _ => "transfer",
    }
}

/// Why a cached bundle does not count for the rollback floor (see
/// [`crate::cache::Cache::rollback_floor`], which shows it in a warning).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FloorError {
    /// An unencrypted bundle has only a checksum: anyone who can write the
    /// cache could have written it.
    #[error("not encrypted, so not authenticated")]
    NotEncrypted,
    /// It was refused as a bundle would be (signature, key,
    /// authentication, another node's scope).
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Why the servers gave no bundle (the cache is tried next). Its `Display`
/// is complete, causes included: it is shown inside a [`Failure`] line or
/// before "applied cached generation …".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// Server URL templates need the node identity, and there is none.
    #[error("no node identity to fill in the server URLs")]
    NoIdentity,
    /// Nothing says where to look for servers.
    #[error("no server: no rd.stateless.server=, no rd.stateless.domain= and no search domain from DHCP")]
    NoDomain,
    /// The SRV lookup failed.
    #[error("DNS SRV {name}: {}", error_chain(err))]
    Dns {
        /// The name looked up.
        name: String,
        /// The cause (in the message: this error is shown inside others).
        err: crate::dns::DnsError,
    },
    /// The SRV answer names no usable target.
    #[error("DNS SRV {name}: {err}")]
    NoTargets {
        /// The name looked up.
        name: String,
        /// The cause.
        err: crate::srv::NoTargets,
    },
    /// No SRV target is a host name (each is warned about).
    #[error("DNS SRV {name}: no target is a host name")]
    NoHostTarget {
        /// The name looked up.
        name: String,
    },
    /// Every server URL failed to render.
    #[error("no server to try")]
    NoServer,
    /// Setting up HTTPS failed.
    #[error("setting up HTTPS: {}", error_chain(.0))]
    Tls(crate::fetch::FetchError),
    /// The servers' bundles were refused (each reason once).
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
    /// No server has a bundle for this node.
    #[error("no bundle for node {0} on any server")]
    NoBundle(String),
    /// The budget ran out in the middle of a round (the last server may
    /// have answered slowly); the last failure.
    #[error("{last}; gave up after {} s", budget.as_secs())]
    GaveUp {
        /// The last failure, `base: cause`.
        last: String,
        /// `rd.stateless.timeout`.
        budget: Duration,
    },
    /// The budget ran out between rounds: no server answered.
    #[error("{last}; server unreachable after {} s", budget.as_secs())]
    Unreachable {
        /// The last failure, `base: cause`.
        last: String,
        /// `rd.stateless.timeout`.
        budget: Duration,
    },
    /// The budget ran out while a server's bundle was being processed
    /// (as [`Refusal::Budget`], with the URL).
    #[error("time budget of {} s ran out while {} the bundle from {url}{}", budget.as_secs(), phase.doing(), phase.progress())]
    Budget {
        /// The bundle's URL.
        url: String,
        /// `rd.stateless.timeout`.
        budget: Duration,
        /// What was going on.
        phase: Phase,
    },
    /// Local media (`rd.stateless.server=media:LABEL`) could not be used.
    #[error("media {label}: {why}")]
    Media {
        /// The file system label.
        label: String,
        /// Not found, found twice, or not mountable.
        why: String,
    },
    /// A server said the cached bundle is current (not a failure: the
    /// cache is used).
    #[error("{0} says the cached bundle is current")]
    NotModified(String),
}

/// Why nothing was applied: the console line (before `; onfail=…`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The run directory could not be made.
    #[error("creating {}", path.display())]
    RunDir {
        /// The run directory.
        path: PathBuf,
        /// The cause.
        #[source]
        err: io::Error,
    },
    /// The publisher keys (`rd.stateless.pubkey=` or those embedded in
    /// the boot image) could not be read: a trust anchor that is not there
    /// must not quietly turn signature checks off.
    #[error("no bundle applied")]
    Trust(#[source] TrustError),
    /// The configured key file is missing or unreadable, so no bundle
    /// (from a server or the cache) could be opened.
    #[error("no bundle applied: {0}")]
    KeyFile(#[from] crate::keyladder::KeyFileUnusable),
    /// Neither the servers nor the cache gave a bundle.
    #[error("no bundle applied: {network}; {cache}")]
    Nothing {
        /// What the servers said.
        network: Box<NetworkError>,
        /// What the cache said (`no cache`, `cache empty`, `cache-current refused, …`).
        cache: String,
    },
    /// A panic escaped the pipeline's own boundaries.
    #[error("no bundle applied: internal error ({0})")]
    Internal(String),
    /// A verified stack failed while it was applied (a layer's files, or
    /// the model): what was applied before the failure stays.
    #[error("stack not applied in full: {0}")]
    Stack(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use stateless_bundle::SignerId;

    #[test]
    fn kinds_come_from_the_variant() {
        let io = || io::Error::other("x");
        let cases: Vec<(Refusal, &str)> = vec![
            (OpenError::Header(HeaderError::BadMagic).into(), "not-a-bundle"),
            (OpenError::Header(HeaderError::UnsupportedVersion(9)).into(), "not-a-bundle"),
            (OpenError::Header(HeaderError::BadTag).into(), "authentication"),
            (OpenError::Header(HeaderError::BadChecksum).into(), "authentication"),
            (OpenError::Stream(StreamError::Authentication { chunk: 3 }).into(), "authentication"),
            (OpenError::Stream(StreamError::Truncated { chunk: 3 }).into(), "truncated"),
            (OpenError::Truncated { expected: 10, got: 5 }.into(), "truncated"),
            (OpenError::Limit { what: "payload", value: 2, limit: 1 }.into(), "limit"),
            (OpenError::Extract(ExtractError::TooManyEntries(5)).into(), "limit"),
            (OpenError::Extract(ExtractError::Duplicate("etc/x".into())).into(), "format"),
            (OpenError::Extract(ExtractError::Io { context: "writing".into(), err: io() }).into(), "local"),
            (OpenError::Corrupt("x".into()).into(), "corrupt"),
            (OpenError::TrailingData.into(), "corrupt"),
            (OpenError::Io(io()).into(), "read"),
            (Refusal::Length { sent: 1, declared: 2 }, "size"),
            (Refusal::Downgrade, "downgrade"),
            (Refusal::PlainHttp, "plain-http"),
            (Refusal::Scope { scope: Scope::Any, node: "n".into(), group: "none".into() }, "scope"),
            (Refusal::Rollback { got: 1, applied: 2 }, "rollback"),
            (Refusal::Replay(2), "rollback"),
            (Refusal::RollbackState { target: "default".into(), why: "no TPM".into() }, "rollback-state"),
            (Refusal::Expired("2026-01-01T00:00:00Z".into()), "expired"),
            (Refusal::Budget { budget: Duration::from_secs(5), phase: Phase::Extracting }, "budget"),
            (Refusal::Internal("boom".into()), "internal"),
            (Refusal::Staging { path: "/sysroot".into(), err: io() }, "local"),
        ];
        for (refusal, kind) in cases {
            assert_eq!(refusal.kind(), kind, "{refusal}");
        }
    }

    /// The hooks of fleet trust, redirects and the cache's slots are typed
    /// too: each kind comes from the variant it wraps, the text from its
    /// `Display`, untouched.
    #[test]
    fn trust_redirect_and_slot_kinds_come_from_the_variant() {
        let io = |kind| io::Error::from(kind);
        let (a, b) = (SignerId([1; 8]), SignerId([2; 8]));
        let sig = |e: SignatureError| Refusal::Trust(TrustError::Signature(e));
        let redirect = |why| {
            Refusal::Server(FetchError::Redirect { from: "https://s/b".into(), location: "http://s/b".into(), why })
        };
        let slot_file = || "current.bundle".to_owned();
        let cases: Vec<(Refusal, &str)> = vec![
            (sig(SignatureError::Unsigned), "unsigned"),
            (sig(SignatureError::WrongSigner { found: a, expected: b }), "untrusted-signer"),
            (sig(SignatureError::UntrustedSigner { found: a, trusted: vec![b] }), "untrusted-signer"),
            (sig(SignatureError::BadSignature), "signature"),
            (sig(SignatureError::PayloadDigest { signer: a }), "signature"),
            // The payload check runs in the bundle code, during extraction.
            (OpenError::Signature(SignatureError::PayloadDigest { signer: a }).into(), "signature"),
            (OpenError::Signature(SignatureError::Unsigned).into(), "unsigned"),
            (
                TrustError::TooOld { created: 0, age: 9, limit: Duration::from_secs(1), word: "max-age" }.into(),
                "too-old",
            ),
            (redirect(RedirectRefusal::Downgrade), "redirect-downgrade"),
            (redirect(RedirectRefusal::NoHost), "redirect"),
            (redirect(RedirectRefusal::Credentials), "redirect"),
            (redirect(RedirectRefusal::Scheme("ftp".into())), "redirect"),
            (Refusal::Server(FetchError::TooManyRedirects { url: "https://s/b".into() }), "redirect"),
            (Refusal::Server(FetchError::NoTrust), "no-trust"),
            (Refusal::Server(FetchError::TooLarge(5)), "size"),
            (SlotError::Open { file: slot_file(), source: io(io::ErrorKind::NotFound) }.into(), "local"),
            (
                SlotError::Digest {
                    file: slot_file(),
                    json: "current.json".into(),
                    expected: "aa".into(),
                    found: "bb".into(),
                }
                .into(),
                "corrupt",
            ),
            (
                SlotError::Header { file: slot_file(), source: OpenError::Header(HeaderError::BadMagic) }.into(),
                "not-a-bundle",
            ),
        ];
        for (refusal, kind) in cases {
            assert_eq!(refusal.kind(), kind, "{refusal}");
            assert_eq!(refusal.to_string().lines().count(), 1, "{refusal}");
        }
        // The redirect's line is the transport's, whole.
        assert_eq!(
            redirect(RedirectRefusal::Downgrade).to_string(),
            "redirect from https://s/b to \"http://s/b\" refused: it would drop https for plain http"
        );
        // A slot that does not count for the rollback floor says why in
        // the words of the refusal.
        assert_eq!(FloorError::NotEncrypted.to_string(), "not encrypted, so not authenticated");
        assert_eq!(
            FloorError::from(sig(SignatureError::Unsigned)).to_string(),
            "bundle is not signed; a publisher signature is required"
        );
    }

    #[test]
    fn budget_lines() {
        let budget = Duration::from_secs(5);
        let cases = [
            (Phase::Extracting, "time budget of 5 s ran out while verifying and extracting the bundle"),
            (
                Phase::Downloading { got: 10, total: Some(20) },
                "time budget of 5 s ran out while downloading and extracting the bundle (10 of 20 bytes received)",
            ),
            (
                Phase::Downloading { got: 10, total: None },
                "time budget of 5 s ran out while downloading and extracting the bundle (10 bytes received)",
            ),
        ];
        for (phase, want) in cases {
            assert_eq!(Refusal::Budget { budget, phase: phase.clone() }.to_string(), want);
            let network = NetworkError::Budget { url: "https://s/b".into(), budget, phase: phase.clone() };
            let line = network.to_string();
            assert!(line.contains(" the bundle from https://s/b"), "{line}");
            assert!(!line.contains("unreachable"), "{line}");
        }
    }
}
