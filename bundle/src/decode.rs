//! Decompressing the payload on several threads, for a threaded open.
//!
//! One thread (the *splitter*) reads the authenticated plaintext (the
//! STREAM reader releases a chunk only after its tag verified) and cuts it
//! at zstd frame boundaries by walking the block headers
//! ([`crate::frame`]). A frame that declares a content size of at most
//! [`MAX_FRAME_CONTENT`] goes whole to one of the decoder threads (one per
//! CPU, from [`MIN_DECODERS`] to [`MAX_DECODERS`]), which decompress it in
//! one call into a buffer of exactly that size. Any other frame (no declared size, a larger one, anything zstd
//! will refuse) and a small last frame are decoded by the splitter itself
//! as a stream, in pieces, through their window (at most 8 MiB), as
//! one-frame bundles always were; a bundle of one small frame starts no
//! decoder thread. The caller's thread extracts the decoded bytes strictly
//! in stream order.
//!
//! Invariants:
//! - Everything in flight (compressed frames read ahead, decoded frames
//!   and pieces not yet extracted, the window of a frame being streamed)
//!   is paid for from one budget of [`IN_FLIGHT_BYTES`] and a few items
//!   more than there are decoders, so memory does not grow with the bundle: a
//!   frame's declared size is charged before a byte of it is read, its
//!   compressed bytes (at most its compressed bound) once they are. Idle
//!   buffers kept for reuse are bounded apart (6 MiB).
//! - A frame that declares more than the expanded size the header has left
//!   (or the expanded-size limit) is refused before anything is allocated
//!   for it; zstd refuses a frame that decodes to more or less than it
//!   declares.
//! - Errors travel in stream order: the extractor stops at the first
//!   failed frame, piece or read, and that error is the one reported, as
//!   on one thread.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::{Scope, ScopedJoinHandle};

use zstd::stream::raw::{Decoder as RawDecoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::DParameter;

use crate::bundle::{OpenError, classify_io};
use crate::extract::ExtractSummary;
use crate::frame::{FrameRead, MAX_FRAME_CONTENT, MAX_FRAME_HEADER, compressed_bound, parse_header, read_frame};
use crate::io::LimitReader;
use crate::limits::{Limits, ZSTD_WINDOW_LOG_MAX};

/// Threads that decompress whole frames, besides the splitter, at least:
/// on one or two CPUs two decoders still overlap with reading and
/// extraction.
pub const MIN_DECODERS: usize = 2;
/// ... and at most: the byte budget holds about five 2 MiB frames with
/// their compressed bytes, so more decoders would only wait for room.
pub const MAX_DECODERS: usize = 4;
/// Bytes in flight between reading and extraction, at most (a single item
/// larger than this is let through alone).
pub const IN_FLIGHT_BYTES: u64 = 16 << 20;
/// Frames and pieces in flight besides one per decoder, at most: the one
/// being extracted and the one the splitter is reading.
const SPARE_ITEMS: u32 = 2;

/// One decoder per CPU this process may run on, within the bounds above.
pub(crate) fn decoder_count() -> usize {
    std::thread::available_parallelism().map_or(MIN_DECODERS, |n| n.get().clamp(MIN_DECODERS, MAX_DECODERS))
}

/// Bytes of a piece of a frame decoded as a stream.
const PIECE: usize = 256 * 1024;
/// Idle buffers kept for reuse, at most (touching fresh memory costs page
/// faults, and glibc gives large blocks back on free).
const POOL_BUFFERS: usize = 4;
/// Their capacity, at most.
const POOL_BYTES: usize = 6 << 20;
/// A last frame up to this size is decoded as a stream on the splitter;
/// a larger one goes to a decoder thread like the others.
const LAST_FRAME_STREAMED: u64 = 2 << 20;

/// Decodes `plain` (the payload's zstd frames) on up to `decoders` threads
/// besides the splitter and hands the tar stream to `consume` on this one.
/// Returns the expanded size and what `consume` returned.
pub(crate) fn decode_parallel<F>(
    decoders: usize,
    plain: Box<dyn BufRead + Send + '_>,
    expanded_len: u64,
    limits: &Limits,
    consume: F,
) -> Result<(u64, ExtractSummary), OpenError>
where
    F: FnOnce(&mut dyn Read) -> Result<ExtractSummary, OpenError>,
{
    let shared = Shared::new(decoders);
    let (tx, rx) = mpsc::channel();
    let limits = *limits;
    std::thread::scope(|s| {
        let shared = &shared;
        let splitter = s.spawn(move || {
            let (jobs, job_rx) = mpsc::sync_channel(decoders);
            let mut sp = Splitter {
                src: Prefixed { inner: plain, pending: Vec::new(), pos: 0 },
                shared,
                out: tx,
                seq: 0,
                declared: 0,
                expanded_len,
                limits,
                jobs: Some(jobs),
                job_rx: Arc::new(Mutex::new(job_rx)),
                workers: Vec::new(),
                decoders,
            };
            let res = sp.run(s);
            sp.jobs = None;
            for w in sp.workers.drain(..) {
                let _ = w.join();
            }
            if let Err(Halt::Failed(e)) = res {
                let _ = sp.out.send((sp.seq, Item::Failed(e)));
            }
        });
        let ordered = Ordered {
            rx,
            next: 0,
            early: BTreeMap::new(),
            cur: Vec::new(),
            pos: 0,
            credit: None,
            shared,
            failed: None,
            done: false,
        };
        let (limit, what) = crate::bundle::expanded_bound(expanded_len, &limits);
        let mut limited = LimitReader::new(ordered, limit, what);
        let consumed = consume(&mut limited);
        let expanded = limited.count();
        let mut ordered = limited.into_inner();
        let failed = ordered.failed.take();
        // Closes the budget, so a splitter waiting for room stops.
        drop(ordered);
        let joined = splitter.join();
        // A decoding or reading error is the cause: the extractor only saw
        // its input end early.
        if let Some(e) = failed {
            return Err(e);
        }
        if joined.is_err() {
            return Err(OpenError::Corrupt("decompression thread panicked".into()));
        }
        Ok((expanded, consumed?))
    })
}

/// What the extractor receives, numbered in stream order.
enum Item {
    /// Decoded bytes, and the budget they hold (`None`: none).
    Data { buf: Vec<u8>, credit: Option<u64> },
    /// Decoding stopped here.
    Failed(OpenError),
}

/// A frame for a decoder thread.
struct Job {
    seq: u64,
    frame: Vec<u8>,
    content_size: u64,
    credit: u64,
}

#[derive(Default)]
struct Budget {
    bytes: u64,
    items: u32,
    closed: bool,
}

struct Shared {
    budget: Mutex<Budget>,
    /// Frames and pieces in flight, at most.
    max_items: u32,
    room: Condvar,
    pool: Mutex<Vec<Vec<u8>>>,
}

impl Shared {
    fn new(decoders: usize) -> Self {
        Shared {
            budget: Mutex::default(),
            max_items: u32::try_from(decoders).unwrap_or(u32::MAX).saturating_add(SPARE_ITEMS),
            room: Condvar::new(),
            pool: Mutex::default(),
        }
    }

    /// Waits until `n` bytes fit in the budget and takes them; false once
    /// the extractor has gone.
    fn acquire(&self, n: u64) -> bool {
        let max_items = self.max_items;
        self.take(n, 1, |b| b.items > 0 && (b.bytes + n > IN_FLIGHT_BYTES || b.items >= max_items))
    }

    /// Adds `n` bytes to what the newest item holds, waiting for room
    /// unless it is the only item in flight.
    fn acquire_more(&self, n: u64) -> bool {
        self.take(n, 0, |b| b.items > 1 && b.bytes + n > IN_FLIGHT_BYTES)
    }

    /// Waits while `full` says there is no room, then adds `bytes` and
    /// `items` to the budget; false once the extractor has gone.
    fn take(&self, bytes: u64, items: u32, full: impl Fn(&Budget) -> bool) -> bool {
        let Ok(mut b) = self.budget.lock() else { return false };
        while !b.closed && full(&b) {
            b = match self.room.wait(b) {
                Ok(b) => b,
                Err(_) => return false,
            };
        }
        if b.closed {
            return false;
        }
        b.bytes += bytes;
        b.items += items;
        true
    }

    fn release(&self, n: u64) {
        if let Ok(mut b) = self.budget.lock() {
            b.bytes = b.bytes.saturating_sub(n);
            b.items = b.items.saturating_sub(1);
        }
        self.room.notify_all();
    }

    fn close(&self) {
        if let Ok(mut b) = self.budget.lock() {
            b.closed = true;
        }
        self.room.notify_all();
    }

    /// An empty buffer with room for `cap` bytes, reused when possible.
    fn take_buf(&self, cap: usize) -> Vec<u8> {
        let mut buf = self.pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
        buf.clear();
        buf.reserve(cap);
        buf
    }

    fn give_buf(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        if let Ok(mut p) = self.pool.lock() {
            let held: usize = p.iter().map(Vec::capacity).sum();
            if p.len() < POOL_BUFFERS && held + buf.capacity() <= POOL_BYTES {
                p.push(buf);
            }
        }
    }
}

/// Why the splitter stopped early.
enum Halt {
    /// The extractor has gone; nothing to report.
    Closed,
    /// This error, at this point of the stream.
    Failed(OpenError),
}

struct Splitter<'p, 'a> {
    src: Prefixed<'p>,
    shared: &'a Shared,
    out: mpsc::Sender<(u64, Item)>,
    /// Number of the next item.
    seq: u64,
    /// Expanded bytes announced so far (declared sizes and pieces).
    declared: u64,
    expanded_len: u64,
    limits: Limits,
    jobs: Option<mpsc::SyncSender<Job>>,
    job_rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    workers: Vec<ScopedJoinHandle<'a, ()>>,
    /// Decoder threads to start, at most.
    decoders: usize,
}

impl<'a> Splitter<'_, 'a> {
    fn run<'env>(&mut self, scope: &'a Scope<'a, 'env>) -> Result<(), Halt> {
        for first in std::iter::once(true).chain(std::iter::repeat(false)) {
            let limits = self.limits;
            let head = self.src.peek(MAX_FRAME_HEADER).map_err(|e| Halt::Failed(classify_io(e, &limits)))?;
            // No frame at all is an error, as zstd's stream decoder says.
            if head.is_empty() && first {
                return Err(Halt::Failed(OpenError::Corrupt("payload ended unexpectedly".into())));
            }
            if head.is_empty() {
                return Ok(());
            }
            let header = parse_header(head);
            // A frame that declares more than the bundle may still expand to
            // is refused before anything is allocated for it, whichever way
            // it would be decoded.
            if let Some(size) = header.and_then(|h| h.content_size) {
                self.check_claim(size)?;
            }
            let whole = header.filter(|h| {
                h.content_size.is_some_and(|c| c <= MAX_FRAME_CONTENT)
                    && h.window <= 1 << ZSTD_WINDOW_LOG_MAX
                    && !h.dictionary
            });
            let Some((h, size)) = whole.and_then(|h| Some((h, h.content_size?))) else {
                self.stream_frame(Vec::new(), header.map(|h| h.window))?;
                continue;
            };
            // The decoded size is paid for before the frame is read, the
            // compressed bytes once they are known.
            if !self.shared.acquire(size) {
                return Err(Halt::Closed);
            }
            let mut frame = Vec::with_capacity(usize::try_from(compressed_bound(size)).unwrap_or(0));
            match read_frame(&mut self.src, &h, &mut frame) {
                Ok(FrameRead::Complete) => {}
                Ok(FrameRead::Stream) => {
                    self.shared.release(size);
                    self.stream_frame(frame, Some(h.window))?;
                    continue;
                }
                Err(e) => return Err(self.io_halt(e)),
            }
            let credit = size + frame.len() as u64;
            if !self.shared.acquire_more(frame.len() as u64) {
                return Err(Halt::Closed);
            }
            // A small last frame is decoded here, in pieces the extractor
            // can start on at once: a small one-frame bundle needs no other
            // thread.
            match self.src.fill_buf().map(<[u8]>::is_empty) {
                Ok(true) if size <= LAST_FRAME_STREAMED => {
                    self.shared.release(credit);
                    self.stream_frame(frame, Some(h.window))?;
                }
                Ok(_) => self.dispatch(scope, frame, size, credit)?,
                Err(e) => {
                    self.dispatch(scope, frame, size, credit)?;
                    return Err(self.io_halt(e));
                }
            }
        }
        Ok(())
    }

    fn io_halt(&self, e: io::Error) -> Halt {
        Halt::Failed(classify_io(e, &self.limits))
    }

    /// Refuses a frame that declares more than the limit or the header's
    /// expanded size leave.
    fn check_claim(&self, size: u64) -> Result<(), Halt> {
        let limit = self.limits.max_expanded;
        if size > limit.saturating_sub(self.declared) {
            return Err(Halt::Failed(OpenError::Limit { what: "expanded size", value: limit + 1, limit }));
        }
        let left = self.expanded_len.saturating_sub(self.declared);
        if size > left {
            return Err(Halt::Failed(OpenError::Corrupt(format!(
                "zstd frame declares {size} bytes, more than the {left} left of the header's expanded size"
            ))));
        }
        Ok(())
    }

    fn dispatch<'env>(
        &mut self,
        scope: &'a Scope<'a, 'env>,
        frame: Vec<u8>,
        size: u64,
        credit: u64,
    ) -> Result<(), Halt> {
        if self.workers.len() < self.decoders {
            let (rx, out, shared) = (Arc::clone(&self.job_rx), self.out.clone(), self.shared);
            self.workers.push(scope.spawn(move || decode_frames(&rx, &out, shared)));
        }
        let job = Job { seq: self.seq, frame, content_size: size, credit };
        let jobs = self.jobs.as_ref().ok_or(Halt::Closed)?;
        jobs.send(job).map_err(|_| Halt::Closed)?;
        self.seq += 1;
        self.declared += size;
        Ok(())
    }

    fn emit(&mut self, buf: Vec<u8>) -> Result<(), Halt> {
        let n = buf.len() as u64;
        if !self.shared.acquire(n) {
            return Err(Halt::Closed);
        }
        self.out.send((self.seq, Item::Data { buf, credit: Some(n) })).map_err(|_| Halt::Closed)?;
        self.seq += 1;
        self.declared += n;
        Ok(())
    }

    /// Decodes one frame as a stream: first the bytes of it already read
    /// (`prefix`), then the rest from the source, stopping exactly at the
    /// frame's end. The window (as the header declares it, or the most
    /// zstd will allow) is paid for from the budget while the frame lasts,
    /// and given back with the decoder afterwards.
    fn stream_frame(&mut self, prefix: Vec<u8>, window: Option<u64>) -> Result<(), Halt> {
        let window = window.unwrap_or(u64::MAX).min(1 << ZSTD_WINDOW_LOG_MAX);
        if !self.shared.acquire(window) {
            return Err(Halt::Closed);
        }
        let result = self.stream_frame_in(&prefix);
        self.shared.release(window);
        result
    }

    fn stream_frame_in(&mut self, prefix: &[u8]) -> Result<(), Halt> {
        let zstd_halt = |e: io::Error| Halt::Failed(OpenError::Corrupt(format!("zstd: {e}")));
        let mut dec = RawDecoder::new().map_err(zstd_halt)?;
        dec.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX)).map_err(zstd_halt)?;
        let mut used = 0usize;
        let mut piece = self.shared.take_buf(PIECE);
        let result = loop {
            let from_prefix = used < prefix.len();
            let before = piece.len();
            let step = {
                let input = if from_prefix { Ok(prefix.get(used..).unwrap_or_default()) } else { self.src.fill_buf() };
                match input {
                    Err(e) => Err(Halt::Failed(classify_io(e, &self.limits))),
                    Ok(input) => {
                        let eof = input.is_empty();
                        let mut inb = InBuffer::around(input);
                        let mut outb = OutBuffer::around_pos(&mut piece, before);
                        dec.run(&mut inb, &mut outb).map(|hint| (hint, inb.pos(), eof)).map_err(zstd_halt)
                    }
                }
            };
            let (hint, consumed, eof) = match step {
                Ok(s) => s,
                Err(h) => break Err(h),
            };
            if from_prefix {
                used += consumed;
            } else {
                self.src.consume(consumed);
            }
            if hint != 0 && eof && piece.len() == before {
                break Err(Halt::Failed(OpenError::Corrupt("payload ended unexpectedly".into())));
            }
            if piece.len() >= PIECE || piece.len() == piece.capacity() || (hint == 0 && !piece.is_empty()) {
                let full = std::mem::replace(&mut piece, self.shared.take_buf(PIECE));
                if let Err(h) = self.emit(full) {
                    break Err(h);
                }
            }
            if hint == 0 {
                if used < prefix.len() {
                    break Err(Halt::Failed(OpenError::Corrupt("zstd: frame ended before its last block".into())));
                }
                break Ok(());
            }
        };
        self.shared.give_buf(piece);
        result
    }
}

/// A decoder thread: decompresses whole frames until the splitter stops.
fn decode_frames(jobs: &Mutex<mpsc::Receiver<Job>>, out: &mpsc::Sender<(u64, Item)>, shared: &Shared) {
    let mut dctx = zstd::bulk::Decompressor::new();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let item = match dctx.as_mut() {
            Ok(d) => {
                let mut buf = shared.take_buf(usize::try_from(job.content_size).unwrap_or(0));
                match d.decompress_to_buffer(&job.frame, &mut buf) {
                    Ok(n) if n as u64 == job.content_size => Item::Data { buf, credit: Some(job.credit) },
                    Ok(n) => Item::Failed(OpenError::Corrupt(format!(
                        "zstd: frame decoded to {n} bytes, its header declares {}",
                        job.content_size
                    ))),
                    Err(e) => Item::Failed(OpenError::Corrupt(format!("zstd: {e}"))),
                }
            }
            Err(e) => Item::Failed(OpenError::Corrupt(format!("zstd: {e}"))),
        };
        drop(job.frame);
        if out.send((job.seq, item)).is_err() {
            return;
        }
    }
}

/// The extractor's side: the decoded items in stream order, as one reader.
struct Ordered<'a> {
    rx: mpsc::Receiver<(u64, Item)>,
    next: u64,
    early: BTreeMap<u64, Item>,
    cur: Vec<u8>,
    pos: usize,
    credit: Option<u64>,
    shared: &'a Shared,
    failed: Option<OpenError>,
    done: bool,
}

impl Ordered<'_> {
    fn next_item(&mut self) -> Option<Item> {
        if let Some(item) = self.early.remove(&self.next) {
            return Some(item);
        }
        loop {
            match self.rx.recv() {
                Ok((seq, item)) if seq == self.next => return Some(item),
                Ok((seq, item)) => {
                    self.early.insert(seq, item);
                }
                Err(_) => return None,
            }
        }
    }
}

impl Read for Ordered<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            if self.failed.is_some() {
                return Err(io::Error::other("decoding the payload failed"));
            }
            if self.done {
                return Ok(0);
            }
            if let Some(n) = self.credit.take() {
                self.shared.release(n);
            }
            self.shared.give_buf(std::mem::take(&mut self.cur));
            self.pos = 0;
            match self.next_item() {
                Some(Item::Data { buf, credit }) => {
                    self.cur = buf;
                    self.credit = credit;
                    self.next += 1;
                }
                Some(Item::Failed(e)) => self.failed = Some(e),
                None if self.early.is_empty() => self.done = true,
                None => self.failed = Some(OpenError::Corrupt("a decompression thread stopped".into())),
            }
        }
        let avail = self.cur.get(self.pos..).unwrap_or_default();
        let n = avail.len().min(out.len());
        out.get_mut(..n).unwrap_or_default().copy_from_slice(avail.get(..n).unwrap_or_default());
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Ordered<'_> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// The plaintext with bytes already taken from it for a look at a frame
/// header put back in front.
struct Prefixed<'p> {
    inner: Box<dyn BufRead + Send + 'p>,
    pending: Vec<u8>,
    pos: usize,
}

impl Prefixed<'_> {
    /// Up to `n` bytes from the current position (fewer only at the end),
    /// without consuming them.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.pos >= self.pending.len() {
            self.pending.clear();
            self.pos = 0;
            // Usually the inner buffer has them in one piece.
            if self.inner.fill_buf()?.len() >= n {
                return self.inner.fill_buf();
            }
        } else if self.pos > 0 {
            self.pending.drain(..self.pos);
            self.pos = 0;
        }
        while self.pending.len() < n {
            let avail = self.inner.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            let k = avail.len().min(n - self.pending.len());
            self.pending.extend_from_slice(avail.get(..k).unwrap_or_default());
            self.inner.consume(k);
        }
        Ok(self.pending.get(self.pos..).unwrap_or_default())
    }
}

impl Read for Prefixed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        crate::io::read_buffered(self, out)
    }
}

impl BufRead for Prefixed<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos < self.pending.len() {
            return Ok(self.pending.get(self.pos..).unwrap_or_default());
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.pos < self.pending.len() {
            self.pos = (self.pos + amt).min(self.pending.len());
        } else {
            self.inner.consume(amt);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    /// Text-like data: compressible, different in every frame.
    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"stateless loader frames "[i % 24] ^ ((i / 4096) as u8 & 0x0f)).collect()
    }

    /// `data` cut into independent frames that declare their size, as pack
    /// writes them.
    fn frames(data: &[u8], frame: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in data.chunks(frame) {
            out.extend(zstd::bulk::compress(part, 3).unwrap());
        }
        out
    }

    fn decode(decoders: usize, stream: &[u8], expanded: u64) -> Result<Vec<u8>, OpenError> {
        let mut got = Vec::new();
        let limits = Limits::default();
        let (n, _) = decode_parallel(decoders, Box::new(stream), expanded, &limits, |r| {
            r.read_to_end(&mut got).map_err(OpenError::Io)?;
            Ok(ExtractSummary::default())
        })?;
        assert_eq!(n, got.len() as u64);
        Ok(got)
    }

    #[test]
    fn any_number_of_decoders_keeps_stream_order() {
        // 21 frames of 1 MiB and a short last one: several rounds of every
        // decoder, frames finishing out of order, and the streamed tail.
        let want = data(21 * (1 << 20) + 12_345);
        let stream = frames(&want, 1 << 20);
        for decoders in [1, MIN_DECODERS, MAX_DECODERS, 7] {
            let got = decode(decoders, &stream, want.len() as u64).unwrap();
            assert!(got == want, "{decoders} decoders: output differs");
        }
    }

    #[test]
    fn a_bad_frame_is_reported_in_stream_order_with_many_decoders() {
        let want = data(9 * (1 << 20));
        let mut stream = frames(&want, 1 << 20);
        // Corrupt a block in the middle of the stream.
        let mid = stream.len() / 2;
        stream[mid] ^= 0xff;
        stream[mid + 1] ^= 0xff;
        let err = decode(MAX_DECODERS, &stream, want.len() as u64).unwrap_err();
        assert!(matches!(err, OpenError::Corrupt(_)), "{err}");
    }
}
