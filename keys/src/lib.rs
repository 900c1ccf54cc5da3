//! Key files and key sources.
//!
//! A key file holds one site key in the text format of
//! [`stateless_bundle::key`]; it is written with mode 0600 and a warning is
//! logged when one is read that the group or others can read. Key sources
//! (a file, a directory of key files; later a USB stick and the TPM) share the
//! [`KeySource`] trait so the loader can walk its key ladder and pick the key
//! whose id a bundle names.

mod file;
mod source;

pub use file::{KeyFileError, read_key_file, write_key_file};
pub use source::{DirSource, FileSource, KeySource, KeySourceError, find_key};
