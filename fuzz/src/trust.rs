//! Fuzz target `keys_pubkey_arg` and its seeds: the fleet-trust parsers that
//! read what an attacker with access to the command line or the boot image
//! could write (issue 13): a `rd.stateless.pubkey=` value and a publisher
//! public key file.

use stateless_bundle::{PublicKey, SigningKey};
use stateless_keys::publishers::{MAX_PUBKEY_ENTRIES, PubkeySpec, parse_pubkey_arg};

/// `stateless_keys::publishers::parse_pubkey_arg` over the input as text,
/// and `PublicKey::from_file_text` / `SigningKey::from_file_text` over the
/// raw bytes. An accepted list has 1 to 16 entries and prints back (each
/// entry's `Display`, comma-joined) to a value that parses to the same list;
/// an accepted public key file re-serialises to one that parses to the same
/// key, with the same signer id.
pub fn keys_pubkey_arg(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(specs) = parse_pubkey_arg(text)
    {
        assert!((1..=MAX_PUBKEY_ENTRIES).contains(&specs.len()), "{} entries", specs.len());
        let printed = specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let again = parse_pubkey_arg(&printed).expect("a printed list parses");
        assert_eq!(again, specs, "pubkey list round trip");
        for s in &specs {
            if let PubkeySpec::File(p) = s {
                assert!(p.is_absolute(), "relative path accepted: {}", p.display());
            }
        }
    }
    if let Ok(k) = PublicKey::from_file_text(data) {
        let again = PublicKey::from_file_text(k.to_file_text().as_bytes()).expect("a written key file parses");
        assert_eq!(again, k, "public key file round trip");
        assert_eq!(again.signer_id(), k.signer_id());
    }
    let _ = SigningKey::from_file_text(data);
}

/// Seeds for `keys_pubkey_arg`: lists of both kinds, a public key file and
/// a few near misses. The keys come from fixed seeds: nothing is secret.
pub fn keys_pubkey_arg_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let pk = |seed: u8| SigningKey::from_seed(&[seed; 32]).public_key();
    let inline = |seed: u8| format!("ed25519:{}", stateless_bundle::key::hex_encode(&pk(seed).to_bytes()));
    vec![
        ("file", b"file:/etc/stateless/publishers/5d0c3a4f1e2b7a69.pub".to_vec()),
        ("inline", inline(1).into_bytes()),
        ("rotation", format!("{},file:/etc/stateless/new.pub,{}", inline(1), inline(2)).into_bytes()),
        ("stray_comma", format!("{},", inline(3)).into_bytes()),
        ("relative", b"file:etc/p.pub".to_vec()),
        ("public_key_file", pk(4).to_file_text().into_bytes()),
        ("signing_key_file", SigningKey::from_seed(&[5; 32]).to_file_text().into_bytes()),
    ]
}
