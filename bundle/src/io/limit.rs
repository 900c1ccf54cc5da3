//! Byte limits: a reader that fails past a limit, and a counting writer.

use std::io::{self, Read, Write};

/// The error a [`LimitReader`] returns, carried inside `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("{what} exceeds the limit of {limit} bytes")]
pub struct LimitExceeded {
    /// What was being counted.
    pub what: &'static str,
    /// The limit in bytes.
    pub limit: u64,
}

/// Reads at most `limit` bytes; one more is an error, never a silent cut.
#[derive(Debug)]
pub struct LimitReader<R> {
    inner: R,
    what: &'static str,
    limit: u64,
    count: u64,
}

impl<R: Read> LimitReader<R> {
    /// Wraps `inner`; `what` names the quantity in the error.
    pub fn new(inner: R, limit: u64, what: &'static str) -> Self {
        LimitReader { inner, what, limit, count: 0 }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Returns the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte past the limit so that reaching it exactly is fine
        // and going over is detected.
        let allowed = (self.limit - self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(buf.get_mut(..want).unwrap_or_default())?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                LimitExceeded { what: self.what, limit: self.limit },
            ));
        }
        Ok(n)
    }
}

/// Counts bytes written through it.
#[derive(Debug)]
pub struct CountWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> CountWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        CountWriter { inner, count: 0 }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Returns the inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for CountWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_limit_is_fine_one_more_is_not() {
        let data = [0u8; 100];
        let mut out = Vec::new();
        LimitReader::new(&data[..], 100, "x").read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 100);
        let err = LimitReader::new(&data[..], 99, "expanded size").read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "expanded size exceeds the limit of 99 bytes");
    }
}
