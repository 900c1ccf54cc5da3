//! Image payloads: an EROFS file system image carried whole, encrypted and
//! authenticated like any payload (docs/bundle-format.md, *Image payload*).
//!
//! The library does not read EROFS: it seals an image that `mkfs.erofs`
//! made and, when opening, writes the decrypted image out only as a whole
//! that authenticated. It checks the superblock magic so that a file that
//! is plainly not an image is refused with a clear line, but a crafted
//! image that carries the magic and authenticates is still untrusted file
//! system metadata: whoever mounts it relies on the kernel's EROFS checks
//! (the loader refuses the stack when the kernel refuses the mount).

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::bundle::{PayloadSource, pio, plain_reader};
use crate::header::{Cipher, HEADER_LEN, Header, PayloadKind, RawHeader, SALT_LEN};
use crate::io::{HashWriter, read_full};
use crate::key::Key;
use crate::sign::SigningKey;
use crate::stream::StreamWriter;
use crate::{Authenticated, OpenError, PackError, PackOptions};

/// Where the EROFS superblock magic sits in an image.
pub const EROFS_MAGIC_OFFSET: usize = 1024;
/// The EROFS superblock magic, as stored (little-endian `0xE0F5E1E2`).
pub const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();

/// What packing or opening an image bundle found.
#[derive(Debug, Clone)]
pub struct ImageSummary {
    /// The authenticated (or written) header.
    pub header: Header,
    /// The bundle digest (header tag, hex).
    pub digest: String,
    /// Bytes of the image.
    pub image_len: u64,
}

/// Seals the EROFS image at `image` into `out` (empty and seekable): the
/// image is the payload, byte for byte. `opts.level`, `opts.threads` and
/// `opts.limits.max_entries` do not apply; deletions must be inside the
/// image as overlayfs whiteouts, so `opts.deletions` must be empty.
pub fn pack_image<W: Write + Seek>(image: &Path, out: W, opts: &PackOptions<'_>) -> Result<ImageSummary, PackError> {
    pack_image_with(image, out, opts, None)
}

/// [`pack_image`], and sign the header as `signer` (the same signature as
/// a tar bundle's: it covers the header and, through its digest, the
/// payload).
pub fn pack_image_signed<W: Write + Seek>(
    image: &Path,
    out: W,
    opts: &PackOptions<'_>,
    signer: &SigningKey,
) -> Result<ImageSummary, PackError> {
    pack_image_with(image, out, opts, Some(signer))
}

fn pack_image_with<W: Write + Seek>(
    image: &Path,
    mut out: W,
    opts: &PackOptions<'_>,
    signer: Option<&SigningKey>,
) -> Result<ImageSummary, PackError> {
    if !opts.deletions.is_empty() {
        return Err(PackError::Options(
            "an image bundle carries its deletions as whiteouts inside the image, not as a list".into(),
        ));
    }
    let mut file = std::fs::File::open(image).map_err(pio("opening the image"))?;
    let image_len = file.metadata().map_err(pio("reading the image"))?.len();
    let mut head = [0u8; EROFS_MAGIC_OFFSET + 4];
    let got = read_full(&mut file, &mut head).map_err(pio("reading the image"))?;
    if got < head.len() || !has_magic(&head) {
        return Err(PackError::Options(format!("{} is not an EROFS image (no superblock magic)", image.display())));
    }
    if image_len > opts.limits.max_expanded {
        return Err(PackError::Limit { what: "image size", value: image_len, limit: opts.limits.max_expanded });
    }
    file.seek(SeekFrom::Start(0)).map_err(pio("reading the image"))?;

    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| PackError::Options(format!("reading the OS random source: {e}")))?;
    let mut header = Header {
        cipher: if opts.key.is_some() { Cipher::Aes256GcmStream } else { Cipher::None },
        key_id: opts.key.map(Key::id).unwrap_or_default(),
        salt,
        generation: opts.generation,
        created: opts.created,
        expires: opts.expires,
        kind: PayloadKind::ErofsImage,
        payload_len: 0,
        expanded_len: 0,
        entry_count: 0,
        scope: opts.scope.clone(),
        payload_sha256: [0; 32],
        signature: None,
    };
    header.to_bytes(opts.key)?;
    out.seek(SeekFrom::Start(0)).map_err(pio("writing bundle"))?;
    out.write_all(&[0u8; HEADER_LEN]).map_err(pio("writing bundle"))?;
    let sink = HashWriter::new(BufWriter::with_capacity(256 * 1024, &mut out));
    let (copied, sink) = match opts.key {
        Some(key) => {
            let payload_key = crate::header::payload_key(key, &header.salt);
            let mut enc = StreamWriter::new(&payload_key, sink);
            let n = io::copy(&mut file, &mut enc).map_err(pio("encrypting the image"))?;
            (n, enc.finish().map_err(pio("encrypting the image"))?)
        }
        None => {
            let mut sink = sink;
            (io::copy(&mut file, &mut sink).map_err(pio("writing bundle"))?, sink)
        }
    };
    if copied != image_len {
        return Err(PackError::Options(format!("{} changed while it was packed", image.display())));
    }
    let (sha, payload_len, mut buffered) = sink.finish();
    buffered.flush().map_err(pio("writing bundle"))?;
    drop(buffered);
    if payload_len > opts.limits.max_payload {
        return Err(PackError::Limit { what: "payload", value: payload_len, limit: opts.limits.max_payload });
    }
    header.payload_len = payload_len;
    header.expanded_len = image_len;
    header.payload_sha256 = sha;
    if let Some(signer) = signer {
        header.sign(signer)?;
    }
    let bytes = header.to_bytes(opts.key)?;
    out.seek(SeekFrom::Start(0)).map_err(pio("writing header"))?;
    out.write_all(&bytes).map_err(pio("writing header"))?;
    out.flush().map_err(pio("writing header"))?;
    let digest = RawHeader::parse(&bytes)?.digest_hex();
    Ok(ImageSummary { header, digest, image_len })
}

fn has_magic(head: &[u8]) -> bool {
    head.get(EROFS_MAGIC_OFFSET..EROFS_MAGIC_OFFSET + 4) == Some(EROFS_MAGIC.as_slice())
}

impl<R: Read + Send> Authenticated<R> {
    /// Decrypts an image payload into `dest` and checks all of it: every
    /// chunk's tag (encrypted), the payload digest (unencrypted or signed),
    /// the length the header declares, the EROFS magic, and that the input
    /// ends where the header says. Only when this returns `Ok` may `dest`'s
    /// bytes be used (mounted); on error they must be thrown away. The
    /// header's declared size was checked against the limits by
    /// `authenticate`, before anything is written, and `dest` never
    /// receives more than that many bytes.
    pub fn write_image<W: Write>(mut self, dest: W) -> Result<ImageSummary, OpenError> {
        if self.header.kind != PayloadKind::ErofsImage {
            return Err(OpenError::NotImage(self.header.kind));
        }
        let image_len = self
            .verified_payload(|src, key, header| copy_image(src, key, header.payload_len, header.expanded_len, dest))?;
        Ok(ImageSummary { header: self.header, digest: self.raw.digest_hex(), image_len })
    }
}

/// Copies the decrypted payload to `dest`, at most `declared` bytes, and
/// checks its length and magic.
fn copy_image<R: Read + Send, W: Write>(
    src: &mut PayloadSource<'_, R>,
    payload_key: Option<&crate::stream::PayloadKey>,
    payload_len: u64,
    declared: u64,
    mut dest: W,
) -> Result<u64, OpenError> {
    let mut plain = plain_reader(src, payload_key, payload_len);
    let mut head = Vec::with_capacity(EROFS_MAGIC_OFFSET + 4);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(crate::bundle::classify_io(e, &crate::Limits::default())),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        total += n as u64;
        if total > declared {
            return Err(OpenError::Corrupt(format!("the image is longer than the header's {declared} bytes")));
        }
        if head.len() < EROFS_MAGIC_OFFSET + 4 {
            let want = (EROFS_MAGIC_OFFSET + 4 - head.len()).min(chunk.len());
            head.extend_from_slice(chunk.get(..want).unwrap_or_default());
        }
        dest.write_all(chunk).map_err(OpenError::Io)?;
    }
    if total != declared {
        return Err(OpenError::Corrupt(format!("the image is {total} bytes, the header says {declared}")));
    }
    if !has_magic(&head) {
        return Err(OpenError::Corrupt("the image is not EROFS (no superblock magic at byte 1024)".into()));
    }
    dest.flush().map_err(OpenError::Io)?;
    Ok(total)
}
