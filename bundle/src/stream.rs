//! The encrypted payload: AES-256-GCM in the STREAM construction.
//!
//! The payload key is unique to each bundle (derived from a random salt), so
//! the 7-byte nonce prefix is all zero; the last 5 bytes of each nonce are the
//! big-endian chunk counter and the "last chunk" flag (`aead-stream`'s
//! `StreamBE32`). Every chunk holds [`CHUNK_SIZE`] bytes of plaintext except
//! the last, which holds 0 to [`CHUNK_SIZE`] bytes and is the only chunk with
//! the last flag set; it is empty only when the whole plaintext is. The
//! header declares the payload length, so a reader always knows which chunk
//! is the last one and never has to guess from a short read.
//!
//! The cipher is ring's AES-256-GCM (assembly with AES-NI and carry-less
//! multiplication), not a generic implementation: it is the loader's hottest
//! loop, and assembly keeps its speed whatever optimisation level the rest of
//! the static loader is built at (Cargo.toml, the release profile). The
//! tests check every chunk against the `aead-stream` crate's `StreamBE32`,
//! which is the construction's reference.

use std::io::{self, BufRead, Read, Write};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// AES-GCM tag bytes per chunk.
pub const TAG_SIZE: usize = 16;
/// Ciphertext bytes of a full chunk.
pub const ENCRYPTED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;

const NONCE_PREFIX: [u8; 7] = [0; 7];

/// The per-bundle payload key. Zeroized on drop.
pub struct PayloadKey(Zeroizing<[u8; 32]>);

impl PayloadKey {
    pub(crate) fn new(key: Zeroizing<[u8; 32]>) -> Self {
        PayloadKey(key)
    }

    fn stream(&self) -> Stream {
        // A 32-byte key is always accepted; the error arm is unreachable.
        let key = UnboundKey::new(&AES_256_GCM, self.0.as_slice()).map(LessSafeKey::new).ok();
        Stream { key }
    }
}

/// AES-256-GCM under one payload key, with STREAM's nonces.
struct Stream {
    key: Option<LessSafeKey>,
}

impl Stream {
    /// STREAM's nonce (BE32 flavour): the prefix, the chunk counter in big
    /// endian, and 1 for the last chunk, 0 for the others.
    fn nonce(chunk: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        let (prefix, tail) = n.split_at_mut(NONCE_PREFIX.len());
        prefix.copy_from_slice(&NONCE_PREFIX);
        let (counter, flag) = tail.split_at_mut(4);
        counter.copy_from_slice(&chunk.to_be_bytes());
        if let Some(f) = flag.first_mut() {
            *f = u8::from(last);
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `buf` in place and appends the tag.
    fn seal(&self, chunk: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), ()> {
        let key = self.key.as_ref().ok_or(())?;
        key.seal_in_place_append_tag(Self::nonce(chunk, last), Aad::empty(), buf).map_err(|_| ())
    }

    /// Checks the tag at the end of `buf` and decrypts in place, leaving the
    /// plaintext.
    fn open(&self, chunk: u32, last: bool, buf: &mut Vec<u8>) -> Result<(), ()> {
        let key = self.key.as_ref().ok_or(())?;
        let plain = key.open_in_place(Self::nonce(chunk, last), Aad::empty(), buf).map_err(|_| ())?.len();
        buf.truncate(plain);
        Ok(())
    }
}

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadKey(..)")
    }
}

/// Ciphertext length for `plain` bytes of plaintext.
pub fn encrypted_len(plain: u64) -> u64 {
    let chunk = CHUNK_SIZE as u64;
    let chunks = plain.div_ceil(chunk).max(1);
    plain + chunks * TAG_SIZE as u64
}

/// Plaintext length for a ciphertext of `len` bytes, or `None` when no
/// plaintext encrypts to that length.
pub fn plaintext_len(len: u64) -> Option<u64> {
    let full = ENCRYPTED_CHUNK_SIZE as u64;
    let chunks = len.div_ceil(full).max(1);
    let plain = len.checked_sub(chunks * TAG_SIZE as u64)?;
    (chunks <= u64::from(u32::MAX) && encrypted_len(plain) == len).then_some(plain)
}

/// Why a STREAM payload failed to decrypt. Carried inside `io::Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A chunk's tag did not verify.
    #[error("authentication failed in chunk {chunk}: the payload was modified or is corrupt")]
    Authentication {
        /// Zero-based chunk index.
        chunk: u32,
    },
    /// The declared length is not the length of any STREAM ciphertext
    /// (for instance 0: even an empty plaintext has one authenticated
    /// chunk).
    #[error("payload length {len} is not a valid encrypted length")]
    BadLength {
        /// The declared length.
        len: u64,
    },
    /// The payload ended before its declared length.
    #[error("truncated: payload ended in chunk {chunk}")]
    Truncated {
        /// Zero-based chunk index.
        chunk: u32,
    },
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        let kind = match e {
            StreamError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            StreamError::Authentication { .. } | StreamError::BadLength { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Encrypts everything written to it. [`StreamWriter::finish`] MUST be
/// called: it seals the last chunk, without which the payload is invalid.
pub struct StreamWriter<W: Write> {
    stream: Stream,
    inner: W,
    buf: Vec<u8>,
    chunk: u32,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a payload under `key`.
    pub fn new(key: &PayloadKey, inner: W) -> Self {
        StreamWriter { stream: key.stream(), inner, buf: Vec::with_capacity(ENCRYPTED_CHUNK_SIZE), chunk: 0 }
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        self.stream
            .seal(self.chunk, last, &mut self.buf)
            .map_err(|()| io::Error::other("AES-GCM encryption failed"))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.chunk =
            self.chunk.checked_add(1).ok_or_else(|| io::Error::other("payload too large for the STREAM counter"))?;
        Ok(())
    }

    /// Seals the last chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal(true)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full chunk is held back until more data arrives, because only
        // then do we know it is not the last one.
        if self.buf.len() == CHUNK_SIZE && !data.is_empty() {
            self.seal(false)?;
        }
        let take = data.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(data.get(..take).unwrap_or_default());
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> std::fmt::Debug for StreamWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter").field("chunk", &self.chunk).finish_non_exhaustive()
    }
}

/// Decrypts a payload of known length, chunk by chunk. Plaintext of a chunk
/// is released only after that chunk authenticated; callers must still read
/// to the end before trusting the whole payload.
pub struct StreamReader<R: Read> {
    stream: Stream,
    inner: R,
    remaining: u64,
    buf: Vec<u8>,
    pos: usize,
    chunk: u32,
    /// `payload_len` is not a possible ciphertext length.
    bad_length: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads `payload_len` bytes of ciphertext from `inner`.
    pub fn new(key: &PayloadKey, inner: R, payload_len: u64) -> Self {
        StreamReader {
            stream: key.stream(),
            inner,
            remaining: payload_len,
            buf: Vec::with_capacity(ENCRYPTED_CHUNK_SIZE),
            pos: 0,
            chunk: 0,
            bad_length: plaintext_len(payload_len).is_none(),
        }
    }

    /// True once the last chunk has been read and authenticated.
    pub fn is_finished(&self) -> bool {
        self.remaining == 0 && self.pos >= self.buf.len()
    }

    /// Returns the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let len = self.remaining.min(ENCRYPTED_CHUNK_SIZE as u64);
        let last = len == self.remaining;
        self.buf.clear();
        self.pos = 0;
        let got = (&mut self.inner).take(len).read_to_end(&mut self.buf)?;
        if (got as u64) < len {
            return Err(StreamError::Truncated { chunk: self.chunk }.into());
        }
        self.stream
            .open(self.chunk, last, &mut self.buf)
            .map_err(|()| StreamError::Authentication { chunk: self.chunk })?;
        self.remaining -= len;
        // The header validated the length, so the counter cannot overflow
        // before the last chunk.
        self.chunk = self.chunk.saturating_add(1);
        Ok(())
    }
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        crate::io::read_buffered(self, out)
    }
}

/// Lends the decrypted chunk itself, so a consumer such as zstd reads the
/// plaintext without another copy.
impl<R: Read> BufRead for StreamReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Checked here, not trusted to the caller: a length no plaintext
        // encrypts to would otherwise end the stream without a final chunk
        // (for 0, with no authentication at all).
        if self.bad_length {
            return Err(StreamError::BadLength { len: self.remaining }.into());
        }
        while self.pos >= self.buf.len() {
            if self.remaining == 0 {
                return Ok(&[]);
            }
            self.next_chunk()?;
        }
        Ok(self.buf.get(self.pos..).unwrap_or_default())
    }

    fn consume(&mut self, amt: usize) {
        self.pos = self.pos.saturating_add(amt).min(self.buf.len());
    }
}

impl<R: Read> std::fmt::Debug for StreamReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("chunk", &self.chunk)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PayloadKey {
        PayloadKey::new(Zeroizing::new([7u8; 32]))
    }

    fn encrypt(data: &[u8]) -> Vec<u8> {
        let mut w = StreamWriter::new(&key(), Vec::new());
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn decrypt(ct: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        StreamReader::new(&key(), ct, ct.len() as u64).read_to_end(&mut out)?;
        Ok(out)
    }

    /// The reference: `aead-stream`'s STREAM (BE32) over RustCrypto's
    /// AES-256-GCM, chunk by chunk.
    fn reference_encrypt(data: &[u8]) -> Vec<u8> {
        use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
        use aes_gcm::Aes256Gcm;
        use aes_gcm::aead::{KeyInit, array::Array};
        let stream = StreamBE32::from_aead(Aes256Gcm::new(&Array::from([7u8; 32])), &Array::from(NONCE_PREFIX));
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(CHUNK_SIZE).collect() };
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut buf = chunk.to_vec();
            stream.encrypt_in_place(u32::try_from(i).unwrap(), i + 1 == chunks.len(), &[], &mut buf).unwrap();
            out.extend_from_slice(&buf);
        }
        out
    }

    #[test]
    fn chunks_are_the_reference_stream_construction() {
        for len in [0, 1, 16, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let reference = reference_encrypt(&data);
            assert_eq!(encrypt(&data), reference, "len {len}");
            assert_eq!(decrypt(&reference).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn impossible_lengths_are_refused() {
        // 0 and 16 are shorter than one tag-only chunk plus data rules allow
        // for (0 has no chunk at all); a full chunk plus a lone tag is the
        // length of no plaintext either.
        for len in [0u64, 5, (ENCRYPTED_CHUNK_SIZE + TAG_SIZE) as u64] {
            assert_eq!(plaintext_len(len), None, "{len}");
            let ct = vec![0u8; usize::try_from(len).unwrap()];
            let err = StreamReader::new(&key(), &ct[..], len).read_to_end(&mut Vec::new()).unwrap_err();
            assert!(err.to_string().contains("not a valid encrypted length"), "{len}: {err}");
        }
    }

    #[test]
    fn round_trip_size_classes() {
        for len in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 5 * CHUNK_SIZE + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let ct = encrypt(&data);
            assert_eq!(ct.len() as u64, encrypted_len(len as u64), "len {len}");
            assert_eq!(plaintext_len(ct.len() as u64), Some(len as u64));
            assert_eq!(decrypt(&ct).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn lengths_that_no_plaintext_has() {
        assert_eq!(plaintext_len(0), None);
        assert_eq!(plaintext_len(15), None);
        assert_eq!(plaintext_len(16), Some(0));
        assert_eq!(plaintext_len(ENCRYPTED_CHUNK_SIZE as u64), Some(CHUNK_SIZE as u64));
        // A full chunk followed by a bare tag would be an empty last chunk
        // after a full one, which the writer never produces.
        assert_eq!(plaintext_len(ENCRYPTED_CHUNK_SIZE as u64 + 16), None);
        assert_eq!(plaintext_len(u64::MAX), None);
    }

    #[test]
    fn flipped_bit_names_the_chunk() {
        let mut ct = encrypt(&vec![1u8; 3 * CHUNK_SIZE + 5]);
        ct[2 * ENCRYPTED_CHUNK_SIZE + 3] ^= 1;
        let err = decrypt(&ct).unwrap_err();
        assert!(err.to_string().contains("authentication failed in chunk 2"), "{err}");
    }

    #[test]
    fn dropped_last_chunk_is_caught() {
        let ct = encrypt(&vec![1u8; 2 * CHUNK_SIZE + 5]);
        // Pretend the payload was two full chunks: the second was sealed as
        // "not last", so it must fail when read as the last one.
        let cut = &ct[..2 * ENCRYPTED_CHUNK_SIZE];
        assert!(decrypt(cut).unwrap_err().to_string().contains("chunk 1"));
    }

    #[test]
    fn short_input_is_truncation() {
        let ct = encrypt(&vec![1u8; 2 * CHUNK_SIZE]);
        let mut out = Vec::new();
        let err = StreamReader::new(&key(), &ct[..ct.len() - 10], ct.len() as u64).read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn buf_read_lends_whole_chunks() {
        for len in [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let ct = encrypt(&data);
            let mut r = StreamReader::new(&key(), &ct[..], ct.len() as u64);
            let mut out = Vec::new();
            loop {
                let got = r.fill_buf().unwrap();
                if got.is_empty() {
                    break;
                }
                assert!(got.len() <= CHUNK_SIZE);
                // Take part of the chunk, then the rest: consume() keeps the place.
                let half = got.len().div_ceil(2);
                out.extend_from_slice(&got[..half]);
                r.consume(half);
            }
            assert_eq!(out, data, "len {len}");
            assert!(r.is_finished());
        }
        assert!(StreamReader::new(&key(), &[][..], 0).fill_buf().is_err(), "a length of 0 is refused");
    }
}
