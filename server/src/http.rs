//! The small part of HTTP/1.1 the server speaks, as pure functions over
//! bytes: request heads, entity-tag comparison, byte ranges and dates.
//!
//! Everything here sees untrusted bytes: sizes are bounded by the caller's
//! buffer and nothing indexes without a check.

use std::time::{SystemTime, UNIX_EPOCH};

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Header names (lowercase) and values (trimmed).
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").map(|v| v.to_ascii_lowercase());
        match self.minor {
            0 => conn.is_some_and(|c| c.contains("keep-alive")),
            _ => !conn.is_some_and(|c| c.split(',').any(|t| t.trim() == "close")),
        }
    }
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Longer than [`MAX_HEAD`] or more than [`MAX_HEADERS`] lines.
    #[error("request head too large")]
    TooLarge,
    /// Not an HTTP/1.x request.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Looks for a complete request head at the start of `buf`. Returns the
/// head and its length in bytes, `None` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let Some(end) = find_end(buf) else {
        return if buf.len() >= MAX_HEAD { Err(HeadError::TooLarge) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let head = buf.get(..end).ok_or(HeadError::Malformed("truncated"))?;
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("not UTF-8"))?;
    // Tolerate a stray empty line before the request line (RFC 9112 2.2).
    let mut lines = text.trim_start_matches("\r\n").split("\r\n");
    let request_line = lines.next().ok_or(HeadError::Malformed("empty"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("bad request line"));
    };
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(HeadError::Malformed("not HTTP/1.x")),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("request target must be a path"));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed("header without colon"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(HeadError::Malformed("bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some((RequestHead { method: method.to_owned(), path: path.to_owned(), minor, headers }, end)))
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The opaque part of an entity tag, without `W/` and quotes.
fn opaque(tag: &str) -> &str {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(t)
}

/// `If-None-Match`: whether `header` (a list of tags, or `*`) matches our
/// entity tag, with the weak comparison RFC 9110 13.1.2 asks for. Unquoted
/// tags are accepted too, since some clients send the bare digest.
pub fn none_match(header: &str, etag: &str) -> bool {
    let ours = opaque(etag);
    header.split(',').map(str::trim).any(|t| t == "*" || (!t.is_empty() && opaque(t) == ours))
}

/// `If-Range`: strong comparison with our entity tag. A date (or a weak
/// tag) never matches, so the full body is sent, which is always correct.
pub fn if_range_matches(header: &str, etag: &str) -> bool {
    let h = header.trim();
    !h.starts_with("W/") && h.starts_with('"') && h == etag
}

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Ignore the header and send everything (200).
    Full,
    /// Send bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the body is in the range (416).
    Unsatisfiable,
}

/// Interprets a `Range` header. Only a single `bytes=` range is served;
/// anything else (several ranges, other units, garbage) gets the full body,
/// which RFC 9110 14.2 allows.
pub fn parse_range(header: &str, len: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return RangeAnswer::Full };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAnswer::Full };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| if s.bytes().all(|c| c.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial { start: len.saturating_sub(n), end: len - 1 },
            None => RangeAnswer::Full,
        },
        // bytes=N- or bytes=N-M
        (false, _) => {
            let Some(start) = num(a) else { return RangeAnswer::Full };
            let end = if b.is_empty() {
                None
            } else {
                match num(b) {
                    Some(e) if e >= start => Some(e),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            let last = len - 1;
            RangeAnswer::Partial { start, end: end.map_or(last, |e| e.min(last)) }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for `Date` and
/// `Last-Modified`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let wd = WD.get((days % 7) as usize).copied().unwrap_or("Thu");
    let mon = MON.get((m as usize).saturating_sub(1)).copied().unwrap_or("Jan");
    format!("{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The reason phrase of the statuses the server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn heads() {
        let req = b"GET /v1/default/bundle?x=1 HTTP/1.1\r\nHost: a\r\nIf-None-Match:  \"abc\" \r\n\r\nrest";
        let (h, n) = parse_head(req).unwrap().unwrap();
        assert_eq!(n, req.len() - 4);
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/v1/default/bundle");
        assert_eq!(h.header("if-none-match"), Some("\"abc\""));
        assert!(h.keep_alive());
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
        let close = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap().0;
        assert!(!close.keep_alive());
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert!(!old.keep_alive());
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse_head(bad), Err(HeadError::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        let big = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn etags() {
        let ours = "\"abc\"";
        assert!(none_match("\"abc\"", ours));
        assert!(none_match("W/\"abc\"", ours));
        assert!(none_match("\"x\", \"abc\"", ours));
        assert!(none_match("*", ours));
        assert!(none_match("abc", ours));
        assert!(!none_match("\"abd\"", ours));
        assert!(!none_match("", ours));
        assert!(if_range_matches("\"abc\"", ours));
        assert!(!if_range_matches("W/\"abc\"", ours));
        assert!(!if_range_matches("Sun, 06 Nov 1994 08:49:37 GMT", ours));
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        let table: &[(&str, u64, RangeAnswer)] = &[
            ("bytes=0-", 10, Partial { start: 0, end: 9 }),
            ("bytes=4-", 10, Partial { start: 4, end: 9 }),
            ("bytes=9-", 10, Partial { start: 9, end: 9 }),
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=2-5", 10, Partial { start: 2, end: 5 }),
            ("bytes=2-500", 10, Partial { start: 2, end: 9 }),
            ("bytes=-3", 10, Partial { start: 7, end: 9 }),
            ("bytes=-30", 10, Partial { start: 0, end: 9 }),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=5-2", 10, Full),
            ("bytes=0-1,3-4", 10, Full),
            ("items=0-1", 10, Full),
            ("bytes=x-", 10, Full),
            ("bytes=+1-", 10, Full),
            ("bytes=-", 10, Full),
            ("bytes=99999999999999999999-", 10, Full),
        ];
        for (h, len, want) in table {
            assert_eq!(parse_range(h, *len), *want, "{h} of {len}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(1_709_210_096)), "Thu, 29 Feb 2024 12:34:56 GMT");
    }
}
