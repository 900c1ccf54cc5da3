//! TPM 2.0 command marshalling (TPM 2.0 Library, Part 1 §18 and Part 2):
//! big-endian integers, `TPM2B` size-prefixed buffers, the command and
//! response headers and the authorization area. Only what the sealing and
//! unsealing commands need; every read is bounds-checked because a response
//! comes from a device (or a TCP peer) that is not trusted to be well formed.

use std::fmt;

/// `TPM_ST_NO_SESSIONS`.
pub const ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`.
pub const ST_SESSIONS: u16 = 0x8002;
/// `TPM_RS_PW`: the password authorization "session".
pub const RS_PW: u32 = 0x4000_0009;
/// `TPMA_SESSION` continueSession.
const SESSION_CONTINUE: u8 = 0x01;
/// `TPMA_SESSION` encrypt: the TPM encrypts the first response parameter.
pub const ATTR_ENCRYPT: u8 = 0x40;
/// `TPMA_SESSION` decrypt: the first command parameter is encrypted.
pub const ATTR_DECRYPT: u8 = 0x20;

/// Command and response header length: tag, size, code.
pub const HEADER_LEN: usize = 10;
/// Largest command or response this module handles (TPMs report 4096 in
/// `TPM_PT_MAX_COMMAND_SIZE`; nothing sent here comes near it).
pub const MAX_MESSAGE: usize = 8192;

/// An authorization to put in a command's authorization area.
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    /// The empty password (`TPM_RS_PW`, empty HMAC field).
    EmptyPassword,
    /// A policy or HMAC session, with the caller's nonce, the session
    /// attributes ([`ATTR_ENCRYPT`], [`ATTR_DECRYPT`]; continueSession clear:
    /// the session ends with the command) and the command HMAC.
    Session {
        /// The session handle.
        handle: u32,
        /// nonceCaller for this command.
        nonce: [u8; 16],
        /// The session attributes.
        attrs: u8,
        /// The command HMAC, required once the session has a session key
        /// (salted or bound); `None` sends an empty one.
        hmac: Option<[u8; 32]>,
    },
}

/// A command being built.
pub struct Command {
    buf: Vec<u8>,
    code: u32,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Commands may carry key material (TPM2_Create): never print bytes.
        write!(f, "Command({:#x}, {} bytes)", self.code, self.buf.len())
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

impl Command {
    /// Starts a command with `handles` in its handle area and, when `auths`
    /// is not empty, an authorization area.
    pub fn new(code: u32, handles: &[u32], auths: &[Auth]) -> Command {
        let tag = if auths.is_empty() { ST_NO_SESSIONS } else { ST_SESSIONS };
        let mut c = Command { buf: Vec::with_capacity(256), code };
        c.u16(tag).u32(0).u32(code);
        for h in handles {
            c.u32(*h);
        }
        if !auths.is_empty() {
            let mut area = Vec::new();
            for a in auths {
                match a {
                    Auth::EmptyPassword => {
                        area.extend_from_slice(&RS_PW.to_be_bytes());
                        area.extend_from_slice(&0u16.to_be_bytes()); // nonceCaller: empty
                        area.push(SESSION_CONTINUE);
                    }
                    Auth::Session { handle, nonce, attrs, hmac } => {
                        area.extend_from_slice(&handle.to_be_bytes());
                        area.extend_from_slice(&16u16.to_be_bytes());
                        area.extend_from_slice(nonce);
                        area.push(*attrs);
                        match hmac {
                            Some(h) => {
                                area.extend_from_slice(&32u16.to_be_bytes());
                                area.extend_from_slice(h);
                            }
                            None => area.extend_from_slice(&0u16.to_be_bytes()),
                        }
                        continue;
                    }
                }
                area.extend_from_slice(&0u16.to_be_bytes()); // password: empty
            }
            c.u32(u32::try_from(area.len()).unwrap_or(0)).bytes(&area);
        }
        c
    }

    /// Appends a u8.
    pub fn u8(&mut self, v: u8) -> &mut Command {
        self.buf.push(v);
        self
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Command {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Command {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Command {
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends a `TPM2B`: a u16 size, then the bytes. Callers pass buffers
    /// far below 64 KiB; a longer one would be a bug, marshalled as empty.
    pub fn tpm2b(&mut self, v: &[u8]) -> &mut Command {
        match u16::try_from(v.len()) {
            Ok(n) => self.u16(n).bytes(v),
            Err(_) => self.u16(0),
        }
    }

    /// The command code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// The finished command bytes, with the size field filled in.
    pub fn finish(&mut self) -> &[u8] {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX).to_be_bytes();
        if let Some(size) = self.buf.get_mut(2..6) {
            size.copy_from_slice(&len);
        }
        &self.buf
    }
}

/// A bounds-checked reader over response bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

/// A response that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed TPM response")]
pub struct Malformed;

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([*b.first().ok_or(Malformed)?, *b.get(1).ok_or(Malformed)?]))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| Malformed)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Reads a `TPM2B` and returns its contents.
    pub fn tpm2b(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// Reads a `TPM2B` and returns it with its size prefix (the form
    /// `tpm2_load` reads from files and the TPM takes back in `TPM2_Load`).
    pub fn tpm2b_whole(&mut self) -> Result<Vec<u8>, Malformed> {
        let body = self.tpm2b()?;
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&u16::try_from(body.len()).map_err(|_| Malformed)?.to_be_bytes());
        out.extend_from_slice(body);
        Ok(out)
    }

    /// Bytes left.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// A parsed successful response: the handles and the parameter area.
#[derive(Debug)]
pub struct Response<'a> {
    /// The handle area (as many handles as the command returns).
    pub handles: Vec<u32>,
    /// The parameters.
    pub params: Reader<'a>,
    /// The response authorization area (empty without sessions).
    pub auth: Reader<'a>,
}

/// What came back: a response code other than success, or a response.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// `TPM_RC_SUCCESS`.
    Ok(Response<'a>),
    /// Any other response code.
    Rc(u32),
}

/// Parses a response to a command that returns `handles` handles.
pub fn parse_response(buf: &[u8], handles: usize) -> Result<Parsed<'_>, Malformed> {
    let mut r = Reader::new(buf);
    let tag = r.u16()?;
    let size = r.u32()?;
    let rc = r.u32()?;
    if usize::try_from(size).map_err(|_| Malformed)? != buf.len() {
        return Err(Malformed);
    }
    if rc != 0 {
        return Ok(Parsed::Rc(rc));
    }
    let mut hs = Vec::with_capacity(handles);
    for _ in 0..handles {
        hs.push(r.u32()?);
    }
    let (params, auth) = match tag {
        ST_SESSIONS => {
            let n = r.u32()?;
            let params = Reader::new(r.take(usize::try_from(n).map_err(|_| Malformed)?)?);
            (params, r)
        }
        ST_NO_SESSIONS => (r, Reader::new(&[])),
        _ => return Err(Malformed),
    };
    Ok(Parsed::Ok(Response { handles: hs, params, auth }))
}

/// A TPM response code as a person can look it up: the name when known
/// and, for format-one codes, which handle, session or parameter it blames.
pub fn rc_text(rc: u32) -> String {
    // Format one (bit 7): error number in bits 0..5, plus 0x80.
    let (base, blame) = if rc & 0x80 != 0 {
        let n = (rc >> 8) & 0xF;
        let blame = if rc & 0x40 != 0 {
            format!(" (parameter {n})")
        } else if n == 0 {
            String::new()
        } else if n & 0x8 != 0 {
            format!(" (session {})", n & 0x7)
        } else {
            format!(" (handle {n})")
        };
        ((rc & 0x3F) | 0x80, blame)
    } else {
        (rc, String::new())
    };
    let name = match base {
        0x084 => "TPM_RC_VALUE",
        0x08B => "TPM_RC_HANDLE",
        0x08E => "TPM_RC_AUTH_FAIL",
        0x095 => "TPM_RC_SIZE",
        0x09D => "TPM_RC_POLICY_FAIL",
        0x09F => "TPM_RC_INTEGRITY",
        0x0A2 => "TPM_RC_BAD_AUTH",
        0x100 => "TPM_RC_INITIALIZE",
        0x101 => "TPM_RC_FAILURE",
        0x128 => "TPM_RC_PCR_CHANGED",
        0x902 => "TPM_RC_OBJECT_MEMORY",
        0x903 => "TPM_RC_SESSION_MEMORY",
        0x908 => "TPM_RC_YIELDED",
        0x909 => "TPM_RC_CANCELED",
        0x921 => "TPM_RC_LOCKOUT",
        0x922 => "TPM_RC_RETRY",
        0x923 => "TPM_RC_NV_UNAVAILABLE",
        0x90A => "TPM_RC_TESTING",
        _ => "",
    };
    if name.is_empty() { format!("TPM error {rc:#05x}{blame}") } else { format!("{name}{blame} ({rc:#05x})") }
}

/// Warnings after which the same command may simply be sent again.
pub fn is_retry(rc: u32) -> bool {
    matches!(rc, 0x908 | 0x922 | 0x923 | 0x90A)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_layout() {
        let mut c = Command::new(0x17B, &[], &[]);
        c.u16(8);
        assert_eq!(c.finish(), &[0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7B, 0, 8]);
        let mut c = Command::new(0x15E, &[0x8000_0000], &[Auth::EmptyPassword]);
        let b = c.finish().to_vec();
        assert_eq!(&b[..2], &[0x80, 0x02]);
        assert_eq!(&b[14..18], &[0, 0, 0, 9]);
        assert_eq!(&b[18..27], &[0x40, 0, 0, 9, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn responses() {
        let ok = [0x80, 0x01, 0, 0, 0, 14, 0, 0, 0, 0, 0, 2, 0xAB, 0xCD];
        let Parsed::Ok(mut r) = parse_response(&ok, 0).unwrap() else { panic!() };
        assert_eq!(r.params.tpm2b().unwrap(), &[0xAB, 0xCD]);
        let err = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x9D];
        assert!(matches!(parse_response(&err, 0).unwrap(), Parsed::Rc(0x99D)));
        // Declared size disagrees with what arrived; short handle area.
        assert!(parse_response(&ok[..12], 0).is_err());
        let short = [0x80, 0x02, 0, 0, 0, 12, 0, 0, 0, 0, 0, 1];
        assert!(parse_response(&short, 1).is_err());
        for cut in 0..ok.len() {
            let _ = parse_response(&ok[..cut], 1);
        }
    }

    #[test]
    fn rc_names() {
        assert_eq!(rc_text(0x99D), "TPM_RC_POLICY_FAIL (session 1) (0x99d)");
        assert_eq!(rc_text(0x1C4), "TPM_RC_VALUE (parameter 1) (0x1c4)");
        assert_eq!(rc_text(0x128), "TPM_RC_PCR_CHANGED (0x128)");
        assert_eq!(rc_text(0x7777), "TPM error 0x7777");
    }
}
