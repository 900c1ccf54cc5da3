//! The payload's zstd frames: cutting the tar into independent frames when
//! packing, and finding a frame's declared size and its end without
//! decompressing it when reading (RFC 8878, section 3.1.1).
//!
//! `pack` writes the tar as frames of [`FRAME_SIZE`] bytes of tar each (the
//! last one shorter), every one with its content size in the frame header,
//! so that a reader can cut the compressed stream at frame boundaries and
//! decompress several frames at once, each in one call into a buffer of
//! exactly its size. Nothing here trusts a frame: the header parser only
//! decides whether a frame *may* take the one-shot path; zstd itself still
//! checks every block, the declared size and the checksum.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use zstd::zstd_safe::CParameter;

/// Bytes of tar per frame when packing. Chosen by measurement (see
/// docs/bundle-format.md, *Compression*): large enough that the ratio
/// hardly suffers, small enough that two frames are decoded at once while
/// a third is being extracted within the reader's memory bound.
pub const FRAME_SIZE: usize = 2 << 20;

/// Largest content size a frame may declare to be decoded in one piece
/// (whole, in parallel with other frames). Larger frames, and frames that
/// do not declare their size, are decoded as a stream through their window
/// (at most 8 MiB) instead, as one-frame bundles always were.
pub const MAX_FRAME_CONTENT: u64 = 2 << 20;

/// Longest zstd frame header: magic, descriptor, window, dictionary id and
/// content size fields.
pub(crate) const MAX_FRAME_HEADER: usize = 4 + 1 + 1 + 4 + 8;

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// Largest block zstd produces or accepts (128 KiB).
const MAX_BLOCK: usize = 128 << 10;

/// What a zstd frame header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Bytes of the header itself.
    pub len: usize,
    /// Declared decompressed size.
    pub content_size: Option<u64>,
    /// Window the frame needs.
    pub window: u64,
    /// A 4-byte content checksum follows the last block.
    pub checksum: bool,
    /// The frame names a dictionary (bundles never use one).
    pub dictionary: bool,
}

/// Parses the header of a zstd frame at the start of `b`. `None` for
/// anything that is not a complete, plain zstd frame header (skippable
/// frames, other magic numbers, the reserved bit, too few bytes): such
/// input is left to zstd's streaming decoder and its errors.
pub(crate) fn parse_header(b: &[u8]) -> Option<FrameHeader> {
    let magic = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
    if magic != ZSTD_MAGIC {
        return None;
    }
    let fhd = *b.get(4)?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let reserved = fhd & 0x08 != 0;
    let checksum = fhd & 0x04 != 0;
    let dict_len = match fhd & 3 {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => 4,
    };
    if reserved {
        return None;
    }
    let mut pos = 5;
    let mut window = 0u64;
    if !single_segment {
        let wd = *b.get(pos)?;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        window = base + (base / 8) * u64::from(wd & 7);
        pos += 1;
    }
    let dict = b.get(pos..pos + dict_len)?;
    let dictionary = dict.iter().any(|&x| x != 0);
    pos += dict_len;
    let fcs_len = match fcs_flag {
        0 if single_segment => 1,
        0 => 0,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let field = b.get(pos..pos + fcs_len)?;
    let mut le = [0u8; 8];
    le.get_mut(..fcs_len)?.copy_from_slice(field);
    let value = u64::from_le_bytes(le);
    pos += fcs_len;
    let content_size = match fcs_len {
        0 => None,
        2 => Some(value + 256),
        _ => Some(value),
    };
    if single_segment {
        window = content_size?;
    }
    Some(FrameHeader { len: pos, content_size, window, checksum, dictionary })
}

/// Upper bound on the compressed size of a frame holding `content` bytes
/// (above zstd's own `ZSTD_compressBound`, which every encoder stays
/// within). A frame larger than this is left to the streaming decoder.
pub(crate) fn compressed_bound(content: u64) -> u64 {
    content + (content >> 7) + 4096
}

/// How reading one frame with [`read_frame`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameRead {
    /// `out` holds exactly the frame.
    Complete,
    /// `out` holds a prefix of the frame that cannot be decoded whole (a
    /// reserved block type, an oversized block, more bytes than the bound,
    /// or the input ended); the caller decodes it as a stream.
    Stream,
}

/// Appends the frame whose header `h` starts `src` to `out`, walking its
/// block headers so that exactly the frame's bytes are consumed.
pub(crate) fn read_frame(src: &mut dyn BufRead, h: &FrameHeader, out: &mut Vec<u8>) -> io::Result<FrameRead> {
    let bound = compressed_bound(h.content_size.unwrap_or(0));
    if !take(src, h.len, out)? {
        return Ok(FrameRead::Stream);
    }
    loop {
        let at = out.len();
        if !take(src, 3, out)? {
            return Ok(FrameRead::Stream);
        }
        let b = out.get(at..at + 3).unwrap_or_default();
        let bh = b.iter().rev().fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
        let last = bh & 1 != 0;
        let size = (bh >> 3) as usize;
        let data = match (bh >> 1) & 3 {
            0 | 2 if size <= MAX_BLOCK => size,
            1 => 1,
            _ => return Ok(FrameRead::Stream),
        };
        if out.len() as u64 + data as u64 > bound || !take(src, data, out)? {
            return Ok(FrameRead::Stream);
        }
        if last {
            break;
        }
    }
    if h.checksum && !take(src, 4, out)? {
        return Ok(FrameRead::Stream);
    }
    Ok(FrameRead::Complete)
}

/// Moves `n` bytes from `src` to the end of `out`; false if `src` ended first.
fn take(src: &mut dyn BufRead, mut n: usize, out: &mut Vec<u8>) -> io::Result<bool> {
    while n > 0 {
        let avail = src.fill_buf()?;
        if avail.is_empty() {
            return Ok(false);
        }
        let k = avail.len().min(n);
        out.extend_from_slice(avail.get(..k).unwrap_or_default());
        src.consume(k);
        n -= k;
    }
    Ok(true)
}

/// zstd compression into independent frames of `frame_size` bytes of
/// input, each with its content size in the header, compressed on
/// `threads` worker threads (none: on the caller's thread) and written in
/// order. [`FrameWriter::finish`] MUST be called: it writes the last frame.
pub(crate) struct FrameWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    frame_size: usize,
    /// Compression on the caller's thread, when there are no workers.
    inline: Option<zstd::bulk::Compressor<'static>>,
    pool: Option<Pool>,
}

struct Pool {
    jobs: Option<mpsc::SyncSender<(u64, Vec<u8>)>>,
    results: mpsc::Receiver<(u64, io::Result<Vec<u8>>)>,
    workers: Vec<JoinHandle<()>>,
    sent: u64,
    written: u64,
    early: BTreeMap<u64, Vec<u8>>,
    max_in_flight: u64,
}

fn compressor(level: i32, window_log: u32) -> io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::WindowLog(window_log))?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    Ok(c)
}

fn compress(c: &mut zstd::bulk::Compressor<'static>, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress_to_buffer(data, &mut out)?;
    Ok(out)
}

impl<W: Write> FrameWriter<W> {
    /// Compresses at `level` with windows of at most 2^`window_log` bytes.
    pub(crate) fn new(inner: W, level: i32, window_log: u32, threads: u32, frame_size: usize) -> io::Result<Self> {
        let frame_size = frame_size.max(1);
        let mut w = FrameWriter { inner, buf: Vec::with_capacity(frame_size), frame_size, inline: None, pool: None };
        if threads == 0 {
            w.inline = Some(compressor(level, window_log)?);
            return Ok(w);
        }
        let (jobs, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads as usize);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (res_tx, results) = mpsc::channel();
        let mut workers = Vec::new();
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let res_tx = res_tx.clone();
            let mut c = compressor(level, window_log)?;
            workers.push(std::thread::spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, data)) = job else { return };
                    if res_tx.send((seq, compress(&mut c, &data))).is_err() {
                        return;
                    }
                }
            }));
        }
        let max_in_flight = 2 * u64::from(threads);
        w.pool = Some(Pool {
            jobs: Some(jobs),
            results,
            workers,
            sent: 0,
            written: 0,
            early: BTreeMap::new(),
            max_in_flight,
        });
        Ok(w)
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.frame_size));
        if let Some(c) = self.inline.as_mut() {
            let frame = compress(c, &data)?;
            return self.inner.write_all(&frame);
        }
        let Some(pool) = self.pool.as_mut() else { return Err(io::Error::other("zstd compressor missing")) };
        let jobs = pool.jobs.as_ref().ok_or_else(|| io::Error::other("zstd compressor finished"))?;
        jobs.send((pool.sent, data)).map_err(|_| io::Error::other("zstd compression thread stopped"))?;
        pool.sent += 1;
        while pool.sent - pool.written >= pool.max_in_flight {
            pool.write_one(&mut self.inner)?;
        }
        Ok(())
    }

    /// Compresses and writes what is left; returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        if let Some(mut pool) = self.pool.take() {
            pool.jobs = None;
            while pool.written < pool.sent {
                pool.write_one(&mut self.inner)?;
            }
            for w in pool.workers.drain(..) {
                w.join().map_err(|_| io::Error::other("zstd compression thread panicked"))?;
            }
        }
        Ok(self.inner)
    }
}

impl Pool {
    /// Waits for the next frame in order and writes it.
    fn write_one<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        loop {
            if let Some(frame) = self.early.remove(&self.written) {
                out.write_all(&frame)?;
                self.written += 1;
                return Ok(());
            }
            let (seq, frame) = self.results.recv().map_err(|_| io::Error::other("zstd compression thread stopped"))?;
            self.early.insert(seq, frame?);
        }
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() >= self.frame_size {
            self.submit()?;
        }
        let take = data.len().min(self.frame_size - self.buf.len());
        self.buf.extend_from_slice(data.get(..take).unwrap_or_default());
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> std::fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter").field("frame_size", &self.frame_size).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(data: &[u8], level: i32, threads: u32, size: usize) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), level, 23, threads, size).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn header_of_packed_frames_declares_the_size() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let out = frames(&data, 3, 0, 100_000);
        let mut src = &out[..];
        let mut sizes = Vec::new();
        while !src.is_empty() {
            let h = parse_header(src).unwrap();
            let mut frame = Vec::new();
            assert_eq!(read_frame(&mut src, &h, &mut frame).unwrap(), FrameRead::Complete);
            assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&frame).unwrap(), frame.len());
            sizes.push(h.content_size.unwrap());
        }
        assert_eq!(sizes, [100_000, 100_000, 100_000]);
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
    }

    #[test]
    fn threads_make_the_same_frames() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        assert_eq!(frames(&data, 5, 0, 65_536), frames(&data, 5, 3, 65_536));
    }

    #[test]
    fn streaming_frames_have_no_size() {
        let out = zstd::encode_all(&b"hello"[..], 3).unwrap();
        let h = parse_header(&out).unwrap();
        assert_eq!(h.content_size, None);
        assert_eq!(parse_header(&out[..3]), None);
        assert_eq!(parse_header(b"\x50\x2a\x4d\x18\0\0\0\0"), None, "skippable frame");
    }

    #[test]
    fn walking_stops_at_truncation_and_reserved_blocks() {
        let out = frames(&[5u8; 1000], 3, 0, 4096);
        let h = parse_header(&out).unwrap();
        for cut in 0..out.len() {
            let mut frame = Vec::new();
            assert_eq!(read_frame(&mut &out[..cut], &h, &mut frame).unwrap(), FrameRead::Stream, "{cut}");
            assert_eq!(frame, &out[..cut]);
        }
        let mut bad = out.clone();
        bad[h.len] |= 0b110; // block type 3 (reserved)
        assert_eq!(read_frame(&mut &bad[..], &h, &mut Vec::new()).unwrap(), FrameRead::Stream);
    }
}
