//! Packing a tree into a bundle and reading one back: the glue between the
//! header, the STREAM payload, zstd and tar.
//!
//! Reading is split in three steps so that a caller can decide between them:
//! [`BundleReader::new`] reads the header bytes; [`BundleReader::authenticate`]
//! checks the tag (with the key the header names) and the declared sizes
//! against the limits; [`Authenticated::extract`] streams the payload into a
//! staging directory (or nowhere, to verify). Only when `extract` returns `Ok`
//! has every chunk authenticated; a caller must treat what was written before
//! an error as garbage and throw it away. A caller that requires a publisher
//! signature calls [`Authenticated::require_signature`] between the last two
//! steps: the signature is checked before any payload byte is read, and the
//! payload's SHA-256 at the end, before `extract` returns `Ok`.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use crate::archive::{TreeError, TreeSummary, write_tree};
use crate::decode::{decode_parallel, decoder_count};
use crate::extract::{ExtractError, ExtractOptions, ExtractSummary, extract};
use crate::frame::{FRAME_SIZE, FrameWriter};
use crate::header::{Cipher, HEADER_LEN, Header, HeaderError, PayloadKind, RawHeader, SALT_LEN, Scope};
use crate::io::{CountWriter, HashWriter, LimitExceeded, LimitReader, read_full};
use crate::key::{Key, KeyId, hex_encode};
use crate::limits::{Limits, ZSTD_WINDOW_LOG_MAX};
use crate::path::RelPath;
use crate::sign::{PublicKey, SignatureError, SignerId, SigningKey};
use crate::stream::{PayloadKey, StreamError, StreamReader, StreamWriter};

/// Most zero bytes after the last tar entry, the end-of-archive marker
/// (1,024 bytes) included: six 10,240-byte tar records, room for any padding
/// tar writes with its default or a larger blocking factor, and a bound on
/// what a reader decompresses after the archive ended.
pub const MAX_TAR_TAIL: u64 = 64 * 1024;

/// Highest zstd level `pack` accepts; 20–22 need windows over the decoder's
/// 8 MiB bound.
pub const MAX_LEVEL: i32 = 19;
/// Default zstd level (see docs/bundle-format.md for the reasoning).
pub const DEFAULT_LEVEL: i32 = 9;

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PackOptions<'a> {
    /// Encrypt for this key; `None` makes an unencrypted bundle.
    pub key: Option<&'a Key>,
    /// The bundle's generation.
    pub generation: u64,
    /// Creation time, Unix seconds (the caller's clock: the library has none).
    pub created: i64,
    /// Expiry, Unix seconds.
    pub expires: Option<i64>,
    /// Which nodes the bundle is for.
    pub scope: Scope,
    /// zstd level, 1 to 19.
    pub level: i32,
    /// zstd worker threads (0: compress on the calling thread).
    pub threads: u32,
    /// Paths of the base image to delete.
    pub deletions: Vec<RelPath>,
    /// Limits the bundle must fit.
    pub limits: Limits,
}

/// What `pack` wrote.
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// The header written.
    pub header: Header,
    /// The bundle digest (header tag, hex).
    pub digest: String,
    /// What went into the tar.
    pub tree: TreeSummary,
}

/// Why packing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The tree could not be archived.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The header could not be made.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A bad option.
    #[error("{0}")]
    Options(String),
    /// The result would break a limit readers enforce.
    #[error("bundle {what} of {value} bytes is over the limit of {limit} bytes")]
    Limit {
        /// Which size.
        what: &'static str,
        /// The size.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// Writing the bundle failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        err: io::Error,
    },
}

pub(crate) fn pio(context: &'static str) -> impl FnOnce(io::Error) -> PackError {
    move |err| PackError::Io { context, err }
}

/// Packs the tree at `root` into `out`, which must be empty and seekable:
/// the header is written last, once the payload's length and digest are known.
/// The tar is compressed as independent zstd frames of
/// [`FRAME_SIZE`](crate::frame::FRAME_SIZE) bytes of tar each.
pub fn pack<W: Write + Seek>(root: &Path, out: W, opts: &PackOptions<'_>) -> Result<PackSummary, PackError> {
    pack_with(root, out, opts, FRAME_SIZE, None)
}

/// [`pack`], and sign the header with the publisher key `signer` (see
/// docs/bundle-format.md, *Publisher signature*). The signature is made
/// when the header is written, last, once the payload digest is known; for
/// an encrypted bundle the header tag then covers the signature.
///
/// A function of its own rather than a field of [`PackOptions`], so that
/// the callers that build `PackOptions` by hand are unchanged.
pub fn pack_signed<W: Write + Seek>(
    root: &Path,
    out: W,
    opts: &PackOptions<'_>,
    signer: &SigningKey,
) -> Result<PackSummary, PackError> {
    pack_with(root, out, opts, FRAME_SIZE, Some(signer))
}

/// [`pack`] with frames of `frame_size` bytes of tar (for tests and for
/// measuring the frame size; readers accept any).
pub fn pack_frames<W: Write + Seek>(
    root: &Path,
    out: W,
    opts: &PackOptions<'_>,
    frame_size: usize,
) -> Result<PackSummary, PackError> {
    pack_with(root, out, opts, frame_size, None)
}

fn pack_with<W: Write + Seek>(
    root: &Path,
    mut out: W,
    opts: &PackOptions<'_>,
    frame_size: usize,
    signer: Option<&SigningKey>,
) -> Result<PackSummary, PackError> {
    if !(1..=MAX_LEVEL).contains(&opts.level) {
        return Err(PackError::Options(format!("compression level must be 1 to {MAX_LEVEL}")));
    }
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| PackError::Options(format!("reading the OS random source: {e}")))?;
    let cipher = if opts.key.is_some() { Cipher::Aes256GcmStream } else { Cipher::None };
    let mut header = Header {
        cipher,
        key_id: opts.key.map(Key::id).unwrap_or_default(),
        salt,
        generation: opts.generation,
        created: opts.created,
        expires: opts.expires,
        payload_len: 0,
        expanded_len: 0,
        entry_count: 0,
        kind: PayloadKind::TarZstd,
        scope: opts.scope.clone(),
        payload_sha256: [0; 32],
        signature: None,
    };
    // Validate the header (scope, expiry, key) before doing the work.
    header.to_bytes(opts.key)?;
    out.seek(SeekFrom::Start(0)).map_err(pio("writing bundle"))?;
    out.write_all(&[0u8; HEADER_LEN]).map_err(pio("writing bundle"))?;

    let sink = HashWriter::new(BufWriter::with_capacity(256 * 1024, &mut out));
    let (tree, expanded, sink) = match opts.key {
        Some(key) => {
            let payload_key = crate::header::payload_key(key, &header.salt);
            let enc = StreamWriter::new(&payload_key, sink);
            let (tree, expanded, enc) = compress_tree(root, enc, opts, frame_size)?;
            (tree, expanded, enc.finish().map_err(pio("encrypting payload"))?)
        }
        None => compress_tree(root, sink, opts, frame_size)?,
    };
    let (sha, payload_len, mut buffered) = sink.finish();
    buffered.flush().map_err(pio("writing bundle"))?;
    drop(buffered);
    for (what, value, limit) in
        [("payload", payload_len, opts.limits.max_payload), ("expanded size", expanded, opts.limits.max_expanded)]
    {
        if value > limit {
            return Err(PackError::Limit { what, value, limit });
        }
    }
    header.payload_len = payload_len;
    header.expanded_len = expanded;
    header.entry_count = tree.entries;
    header.payload_sha256 = sha;
    if let Some(signer) = signer {
        header.sign(signer)?;
    }
    let bytes = header.to_bytes(opts.key)?;
    out.seek(SeekFrom::Start(0)).map_err(pio("writing header"))?;
    out.write_all(&bytes).map_err(pio("writing header"))?;
    out.flush().map_err(pio("writing header"))?;
    let digest = RawHeader::parse(&bytes)?.digest_hex();
    Ok(PackSummary { header, digest, tree })
}

fn compress_tree<W: Write>(
    root: &Path,
    w: W,
    opts: &PackOptions<'_>,
    frame_size: usize,
) -> Result<(TreeSummary, u64, W), PackError> {
    let window_log = ZSTD_WINDOW_LOG_MAX.min(window_for_level(opts.level));
    let enc = FrameWriter::new(w, opts.level, window_log, opts.threads, frame_size).map_err(pio("configuring zstd"))?;
    let counted = CountWriter::new(enc);
    let (counted, tree) = write_tree(root, &opts.deletions, counted, &opts.limits)?;
    let expanded = counted.count();
    let w = counted.into_inner().finish().map_err(pio("finishing zstd"))?;
    Ok((tree, expanded, w))
}

/// zstd's own window for a level on large inputs, capped by the decoder bound.
fn window_for_level(level: i32) -> u32 {
    match level {
        1 => 19,
        2..=3 => 21,
        4..=7 => 22,
        _ => 23,
    }
}

/// Why a bundle could not be opened or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The header is malformed, or the key is wrong.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A chunk failed to authenticate.
    #[error(transparent)]
    Stream(StreamError),
    /// A publisher signature was required and the bundle does not carry a
    /// valid one, or its payload is not the one signed.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The input ended before the declared payload length.
    #[error("truncated: payload is {got} bytes, the header declares {expected}")]
    Truncated {
        /// Declared payload bytes.
        expected: u64,
        /// Payload bytes present.
        got: u64,
    },
    /// Bytes follow the payload.
    #[error("trailing data after the end of the bundle")]
    TrailingData,
    /// A declared or actual size is over a limit.
    #[error("bundle {what} of {value} bytes is over the limit of {limit} bytes")]
    Limit {
        /// Which size.
        what: &'static str,
        /// The size (at least; streaming stops at the first byte over).
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The payload does not match its digest or the header's counts.
    #[error("corrupt bundle: {0}")]
    Corrupt(String),
    /// The tar stream broke a rule.
    #[error(transparent)]
    Extract(ExtractError),
    /// The payload is not a tar stream (an image is written out whole with
    /// `Authenticated::write_image`, never extracted entry by entry).
    #[error("the payload is an {} payload, not a tar stream: it is mounted, not extracted", .0.name())]
    NotTar(PayloadKind),
    /// The payload is not an image (`write_image` on a tar bundle).
    #[error("the payload is a {} payload, not an image", .0.name())]
    NotImage(PayloadKind),
    /// Reading the input failed.
    #[error("reading bundle")]
    Io(#[source] io::Error),
}

/// A bundle whose header has been read but not authenticated.
#[derive(Debug)]
pub struct BundleReader<R> {
    inner: R,
    raw: RawHeader,
}

impl<R: Read> BundleReader<R> {
    /// Reads the header from `inner`.
    pub fn new(mut inner: R) -> Result<Self, OpenError> {
        let mut buf = [0u8; HEADER_LEN];
        let got = read_full(&mut inner, &mut buf).map_err(OpenError::Io)?;
        let raw = RawHeader::parse(buf.get(..got).unwrap_or_default())?;
        Ok(BundleReader { inner, raw })
    }

    /// The header as received, not yet authenticated.
    pub fn raw_header(&self) -> &RawHeader {
        &self.raw
    }

    /// The key id the header asks for (zero when unencrypted).
    pub fn key_id(&self) -> KeyId {
        self.raw.key_id()
    }

    /// Authenticates the header and checks its declared sizes against
    /// `limits`, so an oversized bundle is refused before its payload is read.
    pub fn authenticate(self, key: Option<&Key>, limits: &Limits) -> Result<Authenticated<R>, OpenError> {
        let (header, payload_key) = self.raw.authenticate(key)?;
        for (what, value, limit) in [
            ("payload", header.payload_len, limits.max_payload),
            ("expanded size", header.expanded_len, limits.max_expanded),
            ("entry count", u64::from(header.entry_count), u64::from(limits.max_entries)),
        ] {
            if value > limit {
                return Err(OpenError::Limit { what, value, limit });
            }
        }
        Ok(Authenticated {
            inner: self.inner,
            raw: self.raw,
            header,
            payload_key,
            limits: *limits,
            signer: None,
            cancel: None,
        })
    }
}

/// A bundle whose header authenticated; the payload is still unread.
#[derive(Debug)]
pub struct Authenticated<R> {
    pub(crate) inner: R,
    pub(crate) raw: RawHeader,
    pub(crate) header: Header,
    pub(crate) payload_key: Option<PayloadKey>,
    limits: Limits,
    /// Set by `require_signature`: the payload digest must then match.
    pub(crate) signer: Option<SignerId>,
    /// Set by `cancel_on`.
    cancel: Option<Arc<AtomicBool>>,
}

/// What a successful open found.
#[derive(Debug, Clone)]
pub struct OpenSummary {
    /// The authenticated header.
    pub header: Header,
    /// The bundle digest (header tag, hex).
    pub digest: String,
    /// What the payload held.
    pub extract: ExtractSummary,
}

/// Options for [`Authenticated::extract`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions<'a> {
    /// An empty directory to extract into; `None` verifies only.
    pub dest: Option<&'a Path>,
    /// Apply owners from the bundle (needs root).
    pub owners: bool,
    /// Decompress on a second thread while extracting on this one.
    pub threaded: bool,
}

impl<R: Read + Send> Authenticated<R> {
    /// The authenticated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The bundle digest (header tag, hex).
    pub fn digest_hex(&self) -> String {
        self.raw.digest_hex()
    }

    /// Requires a valid signature by `publisher`: checks the signer id and
    /// the signature over the header as received now, before any payload
    /// byte is read, and makes [`Authenticated::extract`] hash the payload
    /// and refuse it unless it matches the signed digest. Without this call
    /// a signature is not checked.
    pub fn require_signature(self, publisher: &PublicKey) -> Result<Self, OpenError> {
        self.require_signature_by_any(std::slice::from_ref(publisher))
    }

    /// [`Authenticated::require_signature`] with a set of trusted
    /// publishers: a signature by any one of them is accepted (see
    /// [`RawHeader::verify_signature_by_any`]).
    pub fn require_signature_by_any(mut self, publishers: &[PublicKey]) -> Result<Self, OpenError> {
        self.signer = Some(self.raw.verify_signature_by_any(publishers)?);
        Ok(self)
    }

    /// Makes [`Authenticated::extract`] stop, with
    /// [`ExtractError::Cancelled`] (shown as `extraction cancelled`), soon
    /// after `flag` is set: it is checked before every tar entry and every
    /// block of file data. The hook for a caller's deadline (the loader's
    /// time budget); the library has no clock of its own.
    pub fn cancel_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Runs `consume` over exactly the payload's bytes, then checks what
    /// every payload kind needs checked, in this order: the input held the
    /// whole payload (after an error, what is left is read so that
    /// truncation and corruption are told apart), the payload digest
    /// (unencrypted or signed bundles; an encrypted, unsigned bundle is
    /// authenticated chunk by chunk and never hashed, which keeps SHA-256
    /// off the fast path), `consume`'s own verdict, and that the input ends
    /// where the header says.
    pub(crate) fn verified_payload<T>(
        &mut self,
        consume: impl FnOnce(&mut PayloadSource<'_, R>, Option<&PayloadKey>, &Header) -> Result<T, OpenError>,
    ) -> Result<T, OpenError> {
        let hash = self.header.cipher == Cipher::None || self.header.signature.is_some();
        let mut src = PayloadSource {
            inner: &mut self.inner,
            remaining: self.header.payload_len,
            got: 0,
            hasher: hash.then(Sha256::new),
        };
        let result = consume(&mut src, self.payload_key.as_ref(), &self.header);
        if src.remaining > 0 && result.is_err() {
            let _ = io::copy(&mut src, &mut io::sink());
        }
        if src.remaining > 0 {
            return Err(OpenError::Truncated { expected: self.header.payload_len, got: src.got });
        }
        if let Some(h) = src.hasher.take() {
            if h.finalize().as_slice() != self.header.payload_sha256 {
                return Err(match self.signer {
                    Some(signer) => SignatureError::PayloadDigest { signer }.into(),
                    None => OpenError::Corrupt("payload digest mismatch".into()),
                });
            }
        }
        let value = result?;
        let mut extra = [0u8; 1];
        if read_full(&mut self.inner, &mut extra).map_err(OpenError::Io)? > 0 {
            return Err(OpenError::TrailingData);
        }
        Ok(value)
    }

    /// Streams the payload: decrypts, decompresses and extracts it, then
    /// checks that the input ends exactly where the header says. On error,
    /// whatever was written to `dest` must be discarded.
    pub fn extract(mut self, opts: OpenOptions<'_>) -> Result<OpenSummary, OpenError> {
        if self.header.kind != PayloadKind::TarZstd {
            return Err(OpenError::NotTar(self.header.kind));
        }
        let cancel = self.cancel.clone();
        let limits = self.limits;
        let summary =
            self.verified_payload(|src, key, header| run_payload(src, key, header, &limits, opts, cancel.as_deref()))?;
        Ok(OpenSummary { header: self.header, digest: self.raw.digest_hex(), extract: summary })
    }
}

/// The payload bytes: exactly `remaining` bytes of the input, hashed when
/// the digest must be checked.
pub(crate) struct PayloadSource<'a, R> {
    pub(crate) inner: &'a mut R,
    pub(crate) remaining: u64,
    pub(crate) got: u64,
    pub(crate) hasher: Option<Sha256>,
}

impl<R: Read> Read for PayloadSource<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf.get_mut(..want).unwrap_or_default())?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(buf.get(..n).unwrap_or_default());
        }
        self.remaining -= n as u64;
        self.got += n as u64;
        Ok(n)
    }
}

fn run_payload<R: Read + Send>(
    src: &mut PayloadSource<'_, R>,
    payload_key: Option<&PayloadKey>,
    header: &Header,
    limits: &Limits,
    opts: OpenOptions<'_>,
    cancel: Option<&AtomicBool>,
) -> Result<ExtractSummary, OpenError> {
    let payload_len = header.payload_len;
    let decoded = |src| decoded_reader(src, payload_key, payload_len, header.expanded_len, limits);
    let consume = |tar: &mut dyn Read| -> Result<ExtractSummary, OpenError> {
        let summary = extract(&mut *tar, ExtractOptions { dest: opts.dest, limits, owners: opts.owners, cancel })
            .map_err(|e| match e {
                ExtractError::Io { err, context } => match classify_io(err, limits) {
                    OpenError::Io(err) => OpenError::Extract(ExtractError::Io { context, err }),
                    other => other,
                },
                e => OpenError::Extract(e),
            })?;
        // The tar reader stops at the first zero block of the end-of-archive
        // marker (two zero blocks); the second must follow, then only zero
        // padding, at most MAX_TAR_TAIL bytes in all. An archive that simply
        // stops was cut short.
        let mut buf = [0u8; 8192];
        let mut zeros: u64 = 512;
        loop {
            match tar.read(&mut buf) {
                Ok(0) if zeros < 1024 => {
                    return Err(OpenError::Corrupt("the archive has no end-of-archive marker".into()));
                }
                Ok(0) => return Ok(summary),
                Ok(n) if buf.get(..n).unwrap_or_default().iter().all(|&b| b == 0) => {
                    zeros += n as u64;
                    if zeros > MAX_TAR_TAIL {
                        return Err(OpenError::Corrupt(format!(
                            "more than {MAX_TAR_TAIL} bytes of zeros after the last entry of the archive"
                        )));
                    }
                }
                Ok(_) => return Err(OpenError::Corrupt("data after the end of the archive".into())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify_io(e, limits)),
            }
        }
    };

    let (expanded, summary) = if opts.threaded {
        let plain = plain_reader(src, payload_key, payload_len);
        decode_parallel(decoder_count(), plain, header.expanded_len, limits, consume)?
    } else {
        let mut limited = decoded(src)?;
        let summary = consume(&mut limited)?;
        (limited.count(), summary)
    };
    if expanded != header.expanded_len {
        return Err(OpenError::Corrupt(format!(
            "expanded size {expanded} differs from the header's {}",
            header.expanded_len
        )));
    }
    if summary.entries != header.entry_count {
        return Err(OpenError::Corrupt(format!("{} entries, the header says {}", summary.entries, header.entry_count)));
    }
    Ok(summary)
}

/// The zstd stream: the payload decrypted (when encrypted). zstd reads
/// straight from the decrypted chunk (StreamReader is BufRead); only the
/// unencrypted payload needs a buffer of its own.
pub(crate) fn plain_reader<'s, R: Read + Send>(
    src: &'s mut PayloadSource<'_, R>,
    payload_key: Option<&'s PayloadKey>,
    payload_len: u64,
) -> Box<dyn BufRead + Send + 's> {
    match payload_key {
        Some(k) => Box::new(StreamReader::new(k, src, payload_len)),
        None => Box::new(BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), src)),
    }
}

/// The payload chain on one thread: decrypt (when encrypted), zstd,
/// expanded-size limit.
fn decoded_reader<'s, R: Read + Send>(
    src: &'s mut PayloadSource<'_, R>,
    payload_key: Option<&'s PayloadKey>,
    payload_len: u64,
    expanded_len: u64,
    limits: &Limits,
) -> Result<LimitReader<Box<dyn Read + 's>>, OpenError> {
    let plain = plain_reader(src, payload_key, payload_len);
    let mut dec = zstd::Decoder::with_buffer(plain).map_err(|e| OpenError::Corrupt(format!("zstd: {e}")))?;
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| OpenError::Corrupt(format!("zstd: {e}")))?;
    let (limit, what) = expanded_bound(expanded_len, limits);
    Ok(LimitReader::new(Box::new(ZstdErrors(dec)), limit, what))
}

/// What the decompressed tar stream is cut at: the header's expanded
/// length, so that a bundle that declares little cannot write a lot before
/// it is refused (the header's length is within the limit: `authenticate`
/// checked it). Past it the error is the limit's when the two are equal.
pub(crate) fn expanded_bound(expanded_len: u64, limits: &Limits) -> (u64, &'static str) {
    if expanded_len < limits.max_expanded {
        (expanded_len, DECLARED_EXPANDED)
    } else {
        (limits.max_expanded, "expanded size")
    }
}

/// The [`LimitExceeded::what`] of the header's expanded length.
const DECLARED_EXPANDED: &str = "declared expanded size";

/// Maps an I/O error from the payload chain to the error that caused it.
pub(crate) fn classify_io(e: io::Error, limits: &Limits) -> OpenError {
    if e.get_ref().is_some_and(|i| i.is::<StreamError>()) {
        return match e.into_inner().map(|b| b.downcast::<StreamError>()) {
            Some(Ok(se)) => OpenError::Stream(*se),
            Some(Err(other)) => OpenError::Io(io::Error::other(other)),
            None => OpenError::Corrupt("stream error".into()),
        };
    }
    if let Some(le) = e.get_ref().and_then(|i| i.downcast_ref::<LimitExceeded>()) {
        if le.what == DECLARED_EXPANDED {
            return OpenError::Corrupt(format!(
                "the tar stream is longer than the header's expanded size of {} bytes",
                le.limit
            ));
        }
        return OpenError::Limit { what: le.what, value: le.limit + 1, limit: limits.max_expanded };
    }
    if let Some(z) = e.get_ref().and_then(|i| i.downcast_ref::<ZstdError>()) {
        return OpenError::Corrupt(z.to_string());
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return OpenError::Corrupt("payload ended unexpectedly".into());
    }
    OpenError::Io(e)
}

/// Marks zstd's own errors as corruption, keeping errors from below it
/// (authentication, truncation) as they are.
struct ZstdErrors<R>(R);

impl<R: Read> Read for ZstdErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|i| i.is::<StreamError>()) || e.kind() == io::ErrorKind::UnexpectedEof {
                e
            } else {
                io::Error::new(io::ErrorKind::InvalidData, ZstdError(e.to_string()))
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("zstd: {0}")]
struct ZstdError(String);

/// Hex of a payload digest, for display.
pub fn sha_hex(sha: &[u8; 32]) -> String {
    hex_encode(sha)
}
