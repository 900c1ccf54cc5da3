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
    /// The body length: the single `Content-Length`, 0 when there is none
    /// (a request without framing headers has no body, RFC 9112 6.3).
    pub content_length: u64,
    /// Whether a `Content-Length` header was present.
    pub has_content_length: bool,
}

impl RequestHead {
    /// The first header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        // Every Connection field counts: its values form one list.
        let mut tokens = self
            .headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase());
        match self.minor {
            0 => tokens.any(|t| t == "keep-alive"),
            _ => !tokens.any(|t| t == "close"),
        }
    }
}

/// Why a request head was refused. Every refusal closes the connection:
/// after a head we do not understand, where the next request starts is
/// unknown, and guessing is how requests are smuggled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Longer than [`MAX_HEAD`] or more than [`MAX_HEADERS`] lines (431).
    #[error("request head too large")]
    TooLarge,
    /// Not a well-formed HTTP/1.x request head (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The body's length is ambiguous or invalid (400): several or invalid
    /// `Content-Length`s, or `Content-Length` with `Transfer-Encoding`.
    #[error("ambiguous request framing: {0}")]
    Framing(&'static str),
    /// `Transfer-Encoding` (chunked uploads are not supported; 501).
    #[error("Transfer-Encoding is not supported; send a Content-Length")]
    TransferEncoding,
    /// An HTTP version other than 1.0 and 1.1 (505).
    #[error("only HTTP/1.0 and HTTP/1.1 are supported")]
    Version,
}

impl HeadError {
    /// The status the refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::TransferEncoding => 501,
            HeadError::Version => 505,
            HeadError::Malformed(_) | HeadError::Framing(_) => 400,
        }
    }
}

/// A token character (RFC 9110 5.6.2): header names and methods.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a header value: visible ASCII, space and tab. Control
/// bytes (NUL, bare CR/LF) and obs-text are refused rather than passed on.
fn value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

/// Fields that decide where a request ends or where it goes: their names
/// must be spelt exactly.
const FRAMING_FIELDS: &[&str] = &["content-length", "transfer-encoding"];

/// Request heads a server must refuse (RFC 9112 and the smuggling
/// literature), with the status `statelessctl serve` answers: a test table
/// for the parser, the fuzz target's seeds and the server tests.
pub const AMBIGUOUS_HEADS: &[(&[u8], u16)] = &[
    // Two lengths: which one frames the body?
    (b"PUT /v1/nodes/a/bundle HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\ncontent-length: 1\r\nCONTENT-LENGTH: 2\r\n\r\n", 400),
    // Lengths that are not a plain decimal number.
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
    // Content-Length with Transfer-Encoding, and Transfer-Encoding alone.
    (b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    // Framing fields spelt with `_`, which some gateways read as `-`.
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\nGET /", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\ntransfer_encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nTRANSFER_ENCODING: chunked\r\nContent-Length: 3\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\ncontent_length: 5\r\n\r\n", 400),
    // obs-fold: a continuation line.
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n Content-Length: 4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tmore\r\n\r\n", 400),
    // Bare LF and bare CR as line ends.
    (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\nContent-Length: 4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\rContent-Length: 4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
    // Whitespace before the colon, bad name and value bytes.
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad(Name): x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    // Fields that must appear once.
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"PUT / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\nauthorization: y\r\nContent-Length: 0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-\r\nRange: bytes=5-\r\n\r\n", 400),
    // Request lines with extra or missing spaces, bad targets, versions.
    (b"GET  / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\n\r\n", 400),
    (b" GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET\t/ HTTP/1.1\r\n\r\n", 400),
    (b"GET / x HTTP/1.1\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET /a\x01b HTTP/1.1\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\n\r\n", 400),
    (b"GET / http/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\n\r\n", 505),
    (b"GET / HTTP/1.10\r\n\r\n", 505),
];

/// Looks for a complete request head at the start of `buf`. Returns the
/// head and its length in bytes, `None` when more bytes are needed.
///
/// The grammar is RFC 9112's, strictly: lines end in CRLF (a bare CR or LF
/// is refused, not tolerated), one space between the parts of the request
/// line, no space before a header's colon, no obs-fold, no control bytes,
/// at most one `Content-Length` (all digits) and no `Transfer-Encoding`.
/// Anything a front proxy could read differently from us is refused.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let Some(end) = find_end(buf)? else {
        return if buf.len() >= MAX_HEAD { Err(HeadError::TooLarge) } else { Ok(None) };
    };
    if end > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let head = buf.get(..end).ok_or(HeadError::Malformed("truncated"))?;
    // Tolerate stray empty lines before the request line (RFC 9112 2.2).
    let mut head = head;
    while let Some(rest) = head.strip_prefix(b"\r\n") {
        head = rest;
    }
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed("empty"))?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("bad request line"));
    };
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        v if v.starts_with(b"HTTP/") => return Err(HeadError::Version),
        _ => return Err(HeadError::Malformed("bad request line")),
    };
    if method.is_empty() || !method.iter().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !target.starts_with(b"/") || !target.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(HeadError::Malformed("request target must be a path"));
    }
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).map_err(|_| HeadError::Malformed("not ASCII"));
    let target = text(target)?;
    let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p).to_owned();
    let mut headers = Vec::new();
    let (mut content_length, mut has_content_length) = (0u64, false);
    for line in lines {
        if line.is_empty() {
            // The blank line that ends the head.
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HeadError::TooLarge);
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err(HeadError::Malformed("folded header line"));
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(HeadError::Malformed("header without colon"))?;
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Err(HeadError::Malformed("bad header name"));
        }
        if !value.iter().all(|&b| value_byte(b)) {
            return Err(HeadError::Malformed("bad byte in a header value"));
        }
        let name = text(name)?.to_ascii_lowercase();
        // `_` is a token byte, but some gateways map it to `-` (CGI
        // variables do): `Content_Length` would frame the body for them and
        // be an unknown field here.
        if name.contains('_') && FRAMING_FIELDS.contains(&name.replace('_', "-").as_str()) {
            return Err(HeadError::Framing("a framing field's name spelt with `_`"));
        }
        let value = text(value)?.trim_matches([' ', '\t']).to_owned();
        match name.as_str() {
            "content-length" => {
                // Even two equal values are refused (RFC 9112 6.3 allows
                // either): a list is never what a real client sends.
                if has_content_length {
                    return Err(HeadError::Framing("more than one Content-Length"));
                }
                content_length = parse_length(&value)?;
                has_content_length = true;
            }
            // Fields read as one value: a second copy would be ignored
            // here but might be the one a proxy in front acted on.
            "host" | "authorization" | "range" | "if-range" | "expect" if headers.iter().any(|(n, _)| *n == name) => {
                return Err(HeadError::Malformed("a header that must appear once is repeated"));
            }
            _ => {}
        }
        headers.push((name, value));
    }
    let has_te = headers.iter().any(|(n, _)| n == "transfer-encoding");
    if has_te && has_content_length {
        return Err(HeadError::Framing("both Content-Length and Transfer-Encoding"));
    }
    if has_te {
        return Err(HeadError::TransferEncoding);
    }
    Ok(Some((RequestHead { method: text(method)?, path, minor, headers, content_length, has_content_length }, end)))
}

/// `Content-Length`: 1 to 19 digits (no sign, no spaces, no list), which
/// always fits in a u64.
fn parse_length(v: &str) -> Result<u64, HeadError> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::Framing("invalid Content-Length"));
    }
    v.parse().map_err(|_| HeadError::Framing("invalid Content-Length"))
}

/// The length of the head (through its blank line) at the start of `buf`,
/// `None` if it is not all there yet. A CR not followed by LF, or an LF
/// not preceded by CR, is refused as soon as it is seen.
fn find_end(buf: &[u8]) -> Result<Option<usize>, HeadError> {
    let limit = buf.len().min(MAX_HEAD.saturating_add(1));
    // Whether the request line has ended: empty lines before it are
    // skipped, the first empty line after it ends the head.
    let mut started = false;
    let mut line_start = 0usize;
    let mut i = 0usize;
    while i < limit {
        match buf.get(i) {
            Some(b'\r') => match buf.get(i + 1) {
                Some(b'\n') => {
                    if i == line_start && started {
                        return Ok(Some(i + 2));
                    }
                    started |= i > line_start;
                    i += 2;
                    line_start = i;
                }
                Some(_) => return Err(HeadError::Malformed("bare CR")),
                None => return Ok(None),
            },
            Some(b'\n') => return Err(HeadError::Malformed("bare LF")),
            _ => i += 1,
        }
    }
    Ok(None)
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
/// a list of several gets the full body (RFC 9110 14.2 allows it) unless
/// none of its ranges is satisfiable, which is 416 whatever the list's
/// length. The unit is case-insensitive (RFC 9110 14.1). A header that
/// does not parse, or names another unit, is ignored: the full body.
pub fn parse_range(header: &str, len: u64) -> RangeAnswer {
    let h = header.trim();
    let Some(spec) = h.get(..6).filter(|u| u.eq_ignore_ascii_case("bytes=")).and_then(|_| h.get(6..)) else {
        return RangeAnswer::Full;
    };
    let mut answers = Vec::new();
    for one in spec.split(',') {
        // Empty list elements are allowed (RFC 9110 5.6.1), but not a
        // list of nothing else.
        if one.trim().is_empty() {
            continue;
        }
        match parse_one_range(one, len) {
            Some(a) => answers.push(a),
            // One invalid range makes the whole header invalid: ignore it.
            None => return RangeAnswer::Full,
        }
        if answers.len() > 64 {
            return RangeAnswer::Full;
        }
    }
    match answers.as_slice() {
        [] => RangeAnswer::Full,
        [one] => *one,
        many if many.iter().all(|a| *a == RangeAnswer::Unsatisfiable) => RangeAnswer::Unsatisfiable,
        _ => RangeAnswer::Full,
    }
}

/// One range of a `bytes=` list: `None` when it does not parse.
fn parse_one_range(spec: &str, len: u64) -> Option<RangeAnswer> {
    let (a, b) = spec.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    // A position too large for a u64 is still a position: past the end of
    // any body (416 for a start, the whole body for an end or a suffix).
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b)? {
            0 => Some(RangeAnswer::Unsatisfiable),
            _ if len == 0 => Some(RangeAnswer::Unsatisfiable),
            n => Some(RangeAnswer::Partial { start: len.saturating_sub(n), end: len - 1 }),
        },
        // bytes=N- or bytes=N-M
        (false, _) => {
            let start = num(a)?;
            let end = if b.is_empty() { None } else { Some(num(b).filter(|e| *e >= start)?) };
            if start >= len {
                return Some(RangeAnswer::Unsatisfiable);
            }
            let last = len - 1;
            Some(RangeAnswer::Partial { start, end: end.map_or(last, |e| e.min(last)) })
        }
        (true, true) => None,
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
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
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
            b"get / HTTP/1.1\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse_head(bad), Err(HeadError::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        let empty_lines = parse_head(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!((empty_lines.0.path.as_str(), empty_lines.1), ("/", 22));
        let big = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));
    }

    /// Every framing ambiguity of RFC 9112 is refused, with the status the
    /// server answers it with. The same list seeds the `http_head` fuzz
    /// target and is sent over TCP by `ctl/tests/server.rs`.
    #[test]
    fn framing_ambiguities_are_refused() {
        for (req, status) in crate::http::AMBIGUOUS_HEADS {
            let got = parse_head(req);
            assert_eq!(got.as_ref().map_err(HeadError::status), Err(*status), "{:?}", String::from_utf8_lossy(req));
        }
        let one = parse_head(b"PUT /x HTTP/1.1\r\nContent-Length: 007\r\n\r\n").unwrap().unwrap().0;
        assert_eq!((one.content_length, one.has_content_length), (7, true));
        let none = parse_head(b"GET /x HTTP/1.1\r\n\r\n").unwrap().unwrap().0;
        assert_eq!((none.content_length, none.has_content_length), (0, false));
        // A bare LF is refused as soon as it arrives, not after a timeout.
        assert!(parse_head(b"GET / HTTP/1.1\n").is_err());
        // A CR at the end of the buffer waits for its LF.
        assert_eq!(parse_head(b"GET / HTTP/1.1\r"), Ok(None));
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
            ("bytes=99999999999999999999-", 10, Unsatisfiable),
            ("bytes=99999999999999999999999-", 10, Unsatisfiable),
            ("bytes=18446744073709551615-", 10, Unsatisfiable),
            ("bytes=18446744073709551616-18446744073709551617", 10, Unsatisfiable),
            ("bytes=0-99999999999999999999999", 10, Partial { start: 0, end: 9 }),
            ("bytes=-99999999999999999999999", 10, Partial { start: 0, end: 9 }),
            ("bytes=5-99999999999999999999999", 10, Partial { start: 5, end: 9 }),
            ("bytes=99999999999999999999999-5", 10, Full),
            // The unit is case-insensitive: the same answers in any case.
            ("BYTES=99999999999999999999999-", 10, Unsatisfiable),
            ("Bytes=2-5", 10, Partial { start: 2, end: 5 }),
            ("bYtEs=-0", 10, Unsatisfiable),
            ("bytes =0-", 10, Full),
            // Lists: 416 only when no range is satisfiable.
            ("bytes=10-,99999999999999999999999-", 10, Unsatisfiable),
            ("BYTES=-0,20-30", 10, Unsatisfiable),
            ("bytes=0-0,1-1", 10, Full),
            ("bytes=0-0,20-", 10, Full),
            ("bytes=20-,x", 10, Full),
            ("bytes=20-,5-2", 10, Full),
            ("bytes=,", 10, Full),
            ("bytes=2-5,", 10, Partial { start: 2, end: 5 }),
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
