//! Key files and key sources.
//!
//! A key file holds one site key in the text format of
//! [`stateless_bundle::key`]; it is written with mode 0600 and a warning is
//! logged when one is read that the group or others can read; the same goes
//! for a publisher signing key file, while its public key file is written
//! 0644 ([`stateless_bundle::sign`] has the formats). Key sources
//! share the [`KeySource`] trait so the loader can walk its key ladder and
//! pick the key whose id a bundle names: key files and directories of them
//! (the boot image), a USB stick ([`usb`]) and the TPM ([`tpm`]).
//! [`cpio`] writes the archive that puts keys into a boot image and
//! [`sealed`] is the file format of a TPM-sealed key. [`derive`](mod@derive) makes
//! per-node, per-group and fleet-default keys from the site key, and
//! [`publishers`] parses the list of publisher public keys a node trusts
//! (`rd.stateless.pubkey=`). `docs/keys.md` is the user-facing description.

pub mod blockdev;
pub mod cpio;
pub mod derive;
pub mod fat;
mod file;
pub mod publishers;
pub mod sealed;
mod source;
pub mod tpm;
pub mod usb;

pub use file::{
    KeyFileError, MAX_PUBLIC_KEY_FILES, read_key_file, read_public_key_dir, read_public_key_file,
    read_signing_key_file, write_key_file, write_public_key_file, write_signing_key_file,
};
pub use source::{DirSource, FileSource, KeySource, KeySourceError, Lookup, Offered, find_key};
pub use tpm::source::TpmSource;
pub use usb::UsbSource;

/// Where keys embedded in the boot image live (`*.key`, mode 0600).
pub const EMBEDDED_KEY_DIR: &str = "/etc/stateless/keys";
/// Where TPM-sealed keys live in the boot image (`*.sealed`).
pub const SEALED_DIR: &str = "/etc/stateless/tpm";
/// Where publisher public keys live in the boot image (`<signer id>.pub`,
/// mode 0644), put there by `statelessctl key initramfs --pubkey`.
pub const PUBLISHER_DIR: &str = "/etc/stateless/publishers";
