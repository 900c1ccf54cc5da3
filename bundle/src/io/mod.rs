//! Small single-purpose I/O adapters used by the reader and writer.

mod hash;
mod limit;
mod member;

pub use hash::{HashReader, HashWriter};
pub use limit::{CountWriter, LimitExceeded, LimitReader};
pub use member::{MAX_METADATA_MEMBER, MemberGuard, MemberTooLarge};

/// `Read::read` for a reader that is already a `BufRead`: copies out what
/// `fill_buf` lends, at most `out.len()` bytes, and consumes it.
pub(crate) fn read_buffered<R: std::io::BufRead + ?Sized>(r: &mut R, out: &mut [u8]) -> std::io::Result<usize> {
    let avail = r.fill_buf()?;
    let n = avail.len().min(out.len());
    out.get_mut(..n).unwrap_or_default().copy_from_slice(avail.get(..n).unwrap_or_default());
    r.consume(n);
    Ok(n)
}

/// Reads until `buf` is full or the input ends, retrying interrupted
/// reads; returns the bytes read (fewer than `buf.len()` only at the end).
pub fn read_full<R: std::io::Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
