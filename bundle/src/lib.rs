//! The Stateless Loader bundle format.
//!
//! A bundle is one file: a fixed 320-byte [`header`] followed by the payload,
//! a zstd-compressed tar of a directory tree, encrypted with AES-256-GCM in
//! the STREAM construction ([`stream`]) unless the site chose no key. This
//! crate is pure: parse and serialise functions over bytes, thin `Read` and
//! `Write` loops, and extraction into a directory the caller names. It has no
//! clock, no network and no logger; the loader, `statelessctl` and the server
//! share it. The format is specified in `docs/bundle-format.md`. A header may
//! carry an Ed25519 publisher signature ([`sign`]): [`pack_signed`] makes one
//! and [`Authenticated::require_signature`] requires one.
//!
//! ```no_run
//! use stateless_bundle::{BundleReader, Key, Limits, OpenOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Key::from_file_text(&std::fs::read("site.key")?)?;
//! let reader = BundleReader::new(std::fs::File::open("node42.bundle")?)?;
//! let bundle = reader.authenticate(Some(&key), &Limits::default())?;
//! let staging = std::path::Path::new("staging");
//! bundle.extract(OpenOptions { dest: Some(staging), ..Default::default() })?;
//! # Ok(()) }
//! ```

pub mod archive;
mod bundle;
mod decode;
pub mod extract;
pub mod frame;
pub mod header;
pub mod image;
pub mod io;
pub mod key;
pub mod limits;
pub mod path;
pub mod sign;
pub mod stream;

pub use bundle::{
    Authenticated, BundleReader, DEFAULT_LEVEL, MAX_LEVEL, MAX_TAR_TAIL, OpenError, OpenOptions, OpenSummary,
    PackError, PackOptions, PackSummary, pack, pack_frames, pack_signed, sha_hex,
};
pub use header::{Cipher, Header, HeaderError, PayloadKind, RawHeader, Scope};
pub use image::{EROFS_MAGIC, EROFS_MAGIC_OFFSET, ImageSummary, pack_image, pack_image_signed};
pub use key::{Key, KeyError, KeyId};
pub use limits::Limits;
pub use path::RelPath;
pub use sign::{PublicKey, PublisherKeyError, SignatureError, SignerId, SigningKey};

/// An error and its sources joined by `: `, the one line a person reads (what
/// `anyhow`'s `{:#}` prints). A source whose text the line already ends with
/// is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}
