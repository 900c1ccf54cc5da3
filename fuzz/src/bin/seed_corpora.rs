//! Turns the test vectors into seed corpora, one directory per fuzz target:
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --bin seed_corpora -- tests/vectors fuzz/corpus
//! ```
//!
//! * `bundle_open`: each bundle as it is, and (when its payload can be
//!   recovered with the vector's key) its payload resealed unencrypted, so
//!   mutations are not stopped by the header checksum;
//! * `header_parse`: the 320 header bytes followed by the vector's key;
//! * `stream_decrypt`: a fixed test key followed by the payload encrypted
//!   under the key the target derives from it;
//! * `tar_extract`: the decompressed tar stream;
//! * `keys_sealed`, `keys_tpm_wrapped`, `keys_cpio`, `keys_usb`, `keys_tpm_response`,
//!   `keys_tpm_pcr_read`, `keys_tpm_nv`, `keys_tpm_srk_public`, `keys_tpm_hmac`,
//!   `keys_tpm_signed_policy`, `keys_pubkey_arg`: a few well-formed inputs
//!   made here (sealed-key files of both versions with made-up blobs, keys
//!   wrapped for a made-up SRK and its public area, a key archive, a small
//!   FAT image with a key file, TPM responses, PCR_Read parameters, NV
//!   answers, an SRK public area, a response with a good HMAC, a signed
//!   policy and a policy public key, `rd.stateless.pubkey=` values);
//! * `dns_answer`, `cmdline_split`: DNS answers and kernel command lines
//!   made here (`stateless_fuzz::loader::seed`).
//!
//! * `http_head`: well-formed request heads as the loader, `persist` and
//!   common clients send them, and every framing ambiguity the server must
//!   refuse (`stateless_server::http::AMBIGUOUS_HEADS`);
//! * `server_bodies`: enrolment and boot-report bodies made here.
//!
//! Nothing is committed: `fuzz/corpus` is ignored by git.

use std::fs;
use std::io::Read;
use std::path::Path;

use stateless_bundle::header::HEADER_LEN;
use stateless_bundle::stream::StreamReader;
use stateless_bundle::{Cipher, Key, RawHeader};
use stateless_fuzz::{encrypt, payload_key, seal};

const STREAM_KEY: [u8; 32] = [0x11; 32];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [vectors, corpus] = args.as_slice() else {
        eprintln!("usage: seed_corpora VECTORS_DIR CORPUS_DIR");
        std::process::exit(2);
    };
    let corpus = Path::new(corpus);
    for t in ["bundle_open", "image_open", "header_parse", "stream_decrypt", "tar_extract"] {
        fs::create_dir_all(corpus.join(t)).expect("creating corpus directory");
    }
    let write = |target: &str, name: &str, data: &[u8]| {
        fs::write(corpus.join(target).join(name), data).expect("writing seed");
    };
    let mut entries: Vec<_> = fs::read_dir(vectors).expect("reading vectors").filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    let (mut n, mut plains) = (0, 0);
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains('.') || !e.path().is_file() {
            continue;
        }
        let data = fs::read(e.path()).expect("reading vector");
        let Some(split) = data.windows(2).position(|w| w == b"\n\n") else { continue };
        let text = String::from_utf8_lossy(&data[..split]);
        let bundle = &data[split + 2..];
        let key =
            text.lines().find_map(|l| l.strip_prefix("key: ")).and_then(|k| Key::from_file_text(k.as_bytes()).ok());
        n += 1;
        write("bundle_open", &name, bundle);
        if name.contains("image") {
            write("image_open", &name, bundle);
        }
        let mut header = bundle[..bundle.len().min(HEADER_LEN)].to_vec();
        if let (Some(k), true) = (&key, header.len() == HEADER_LEN) {
            header.extend_from_slice(k.as_bytes());
        }
        write("header_parse", &name, &header);

        // Recover the compressed payload where the vector allows it.
        let Ok(raw) = RawHeader::parse(bundle) else { continue };
        let Ok((fields, pk)) = raw.authenticate(key.as_ref()) else { continue };
        let payload = &bundle[HEADER_LEN..];
        let plain = match (raw.cipher(), pk) {
            (Cipher::None, _) => payload.to_vec(),
            (_, Some(pk)) => {
                let mut out = Vec::new();
                match StreamReader::new(&pk, payload, fields.payload_len).read_to_end(&mut out) {
                    Ok(_) => out,
                    Err(_) => continue,
                }
            }
            _ => continue,
        };
        plains += 1;
        write("bundle_open", &format!("{name}.plain"), &seal(&fields, None, &plain));
        let mut s = STREAM_KEY.to_vec();
        s.extend_from_slice(&encrypt(&payload_key(&Key::from_bytes(STREAM_KEY)), &plain));
        write("stream_decrypt", &name, &s);
        let Ok(mut dec) = zstd::stream::read::Decoder::new(&plain[..]) else { continue };
        let _ = dec.window_log_max(23);
        let mut tar = Vec::new();
        if dec.take(16 << 20).read_to_end(&mut tar).is_ok() && !tar.is_empty() {
            write("tar_extract", &name, &tar);
        }
    }
    seed_keys(corpus);
    stateless_fuzz::loader::seed(corpus);
    seed_http(corpus);
    seed_server_bodies(corpus);
    println!("seeded {} from {n} vectors ({plains} payloads recovered)", corpus.display());
}

/// Seeds for the key-source parsers, made from scratch (no key file is read;
/// the key is a constant).
fn seed_keys(corpus: &Path) {
    use stateless_keys::sealed::{Bank, SealedKey, policy_pcr_digest};
    let key = Key::from_bytes(STREAM_KEY);
    let write = |target: &str, name: &str, data: &[u8]| {
        fs::create_dir_all(corpus.join(target)).expect("creating corpus directory");
        fs::write(corpus.join(target).join(name), data).expect("writing seed");
    };
    let pcrs = vec![(0u8, vec![0u8; 32]), (7u8, vec![0x77; 32])];
    let sealed = SealedKey {
        key_id: key.id(),
        parent_name: [&[0u8, 0x0b][..], &[0x5a; 32]].concat(),
        bank: Bank::Sha256,
        policy: policy_pcr_digest(Bank::Sha256, &pcrs),
        pcrs,
        policy_key: None,
        public: [&[0u8, 4][..], &[1, 2, 3, 4]].concat(),
        private: [&[0u8, 2][..], &[9, 9]].concat(),
    };
    write("keys_sealed", "two_pcrs", sealed.to_text().as_bytes());

    // A key wrapped for a made-up SRK (a fixed P-256 key pair), under PCR
    // values and under a policy key; and the SRK's public area itself.
    {
        use stateless_keys::tpm::import::{SrkPublic, WrapPolicy, wrap};
        // The P-256 base point: on the curve, and nobody's SRK.
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        assert!(stateless_bundle::key::hex_decode(
            "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
            &mut x
        ));
        assert!(stateless_bundle::key::hex_decode(
            "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
            &mut y
        ));
        let srk = SrkPublic::from_point(&x, &y).expect("srk");
        let pcrs = vec![(7u8, vec![0u8; 32])];
        let w = wrap(&key, &srk, &WrapPolicy::Pcrs(Bank::Sha256, pcrs)).expect("wrap");
        write("keys_tpm_wrapped", "pcr7", w.to_text().as_bytes());
        let signer = stateless_keys::tpm::policy::PolicySigningKey::generate().expect("policy key");
        let w = wrap(&key, &srk, &WrapPolicy::Authorized(signer.public())).expect("wrap");
        write("keys_tpm_wrapped", "policy_key", w.to_text().as_bytes());
        write("keys_tpm_wrapped", "srk_public", &srk.public);
        // Bound to a made-up RSA EK (the template with an odd modulus).
        let mut ek = stateless_keys::tpm::enrol::ek_template();
        let n = ek.len();
        ek[n - 256] = 0xC0;
        ek[n - 1] = 0x01;
        let pcrs = vec![(7u8, vec![0u8; 32])];
        let w = stateless_keys::tpm::import::wrap_bound(&key, &srk, &ek, &WrapPolicy::Pcrs(Bank::Sha256, pcrs))
            .expect("wrap_bound");
        write("keys_tpm_wrapped", "bound", w.to_text().as_bytes());
    }
    // Signed policies: a policy key made from a constant scalar (the seeds
    // are made at run time and never committed), a sealed-key file of
    // version 2 under it, a signed policy with the lock PCR, its public half.
    use stateless_keys::tpm::policy::{KEY_MAGIC, PolicySigningKey, SignedPolicy, policy_authorize_digest};
    let signer =
        PolicySigningKey::parse(format!("{KEY_MAGIC}\nsecret {}\n", "11".repeat(32)).as_bytes()).expect("policy key");
    let v2 = SealedKey {
        pcrs: Vec::new(),
        policy: policy_authorize_digest(&signer.public().name()),
        policy_key: Some(signer.public()),
        ..sealed.clone()
    };
    write("keys_sealed", "v2_policy_key", v2.to_text().as_bytes());
    let pinned =
        SealedKey { policy: stateless_keys::sealed::policy_auth_value_digest(&sealed.policy), ..sealed.clone() };
    write("keys_sealed", "v1_pin", pinned.to_text().as_bytes());
    let lock = stateless_keys::tpm::lock::with_lock(vec![(7, vec![0x77; 32])], vec![0; 32]);
    let signed = SignedPolicy::sign(&signer, Bank::Sha256, lock).expect("signing");
    write("keys_tpm_signed_policy", "pcr_7_15", signed.to_text().as_bytes());
    write("keys_tpm_signed_policy", "policy_pub", signer.public().to_text().as_bytes());
    let list = format!("# published\n{}{}", signed.to_text(), signed.to_text().replace("bank sha256", "bank md5"));
    write("keys_tpm_signed_policy", "policy_list", list.as_bytes());

    // TPM2_CreatePrimary's SRK public area (our template, a point on the
    // curve: the P-256 generator), and a response with a good HMAC.
    let mut area = stateless_keys::tpm::srk_template();
    area.truncate(area.len() - 4);
    for c in [
        "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296",
        "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5",
    ] {
        let mut b = [0u8; 32];
        assert!(stateless_bundle::key::hex_decode(c, &mut b));
        area.extend_from_slice(&[0, 32]);
        area.extend_from_slice(&b);
    }
    let mut srk = (area.len() as u16).to_be_bytes().to_vec();
    srk.extend_from_slice(&area);
    write("keys_tpm_srk_public", "p256_generator", &srk);
    write("keys_tpm_hmac", "unseal_good_hmac", &stateless_fuzz::keys_tpm_hmac_seed());

    let mut a = stateless_keys::cpio::Archive::new(1_700_000_000);
    a.dir("etc", 0o755).expect("cpio");
    a.file(&format!("etc/stateless/keys/{}.key", key.id()), 0o600, key.to_file_text().as_bytes()).expect("cpio");
    let one = a.finish().expect("cpio");
    let mut two = one.clone();
    two.extend_from_slice(&[0; 8]);
    two.extend_from_slice(&one);
    write("keys_cpio", "one", &one);
    write("keys_cpio", "two_padded", &two);

    // A small FAT12 image labelled STATELESS with a key at the documented path.
    let mut img = std::io::Cursor::new(vec![0u8; 192 * 1024]);
    let mut label = [b' '; 11];
    label[..9].copy_from_slice(b"STATELESS");
    fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new().volume_label(label)).expect("formatting");
    {
        let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).expect("opening");
        let dir = fs.root_dir().create_dir("stateless").and_then(|d| d.create_dir("keys")).expect("mkdir");
        let mut f = dir.create_file("site.key").expect("create");
        std::io::Write::write_all(&mut f, key.to_file_text().as_bytes()).expect("write");
    }
    write("keys_usb", "fat12_stateless", img.get_ref());

    // TPM responses: GetRandom(8), a PCR_Read of PCR 7, an error code.
    let get_random = [0x80, 0x01, 0, 0, 0, 20, 0, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut pcr_read =
        vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0x0B, 3, 0x80, 0, 0, 0, 0, 0, 1, 0, 32];
    pcr_read.extend_from_slice(&[0x77; 32]);
    let len = pcr_read.len() as u8;
    pcr_read[5] = len;
    write("keys_tpm_response", "get_random", &get_random);
    write("keys_tpm_response", "pcr_read", &pcr_read);
    write("keys_tpm_response", "policy_fail", &[0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x09, 0x9D]);

    for (name, data) in stateless_fuzz::keys_pubkey_arg_seeds() {
        write("keys_pubkey_arg", name, &data);
    }
    for (name, data) in stateless_fuzz::model_toml_seeds() {
        write("model_toml", name, &data);
    }
    for (name, data) in stateless_fuzz::import_ignition_seeds() {
        write("import_ignition", &name, &data);
    }
    // PCR_Read parameters (after a bank byte: 1 is SHA-256): PCRs 0 and 7;
    // PCR 7 of SHA-1 beside a SHA-256 selection that is skipped; none.
    let mut two = vec![1, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0x0B, 3, 0x81, 0, 0, 0, 0, 0, 2, 0, 32];
    two.extend_from_slice(&[0xAA; 32]);
    two.extend_from_slice(&[0, 32]);
    two.extend_from_slice(&[0x77; 32]);
    let mut mixed = vec![0, 0, 0, 0, 6, 0, 0, 0, 2, 0, 0x0B, 3, 0x01, 0, 0, 0, 0x04, 3, 0x80, 0, 0, 0, 0, 0, 1, 0, 20];
    mixed.extend_from_slice(&[0x55; 20]);
    write("keys_tpm_pcr_read", "sha256_0_7", &two);
    write("keys_tpm_pcr_read", "sha1_beside_sha256", &mixed);
    write("keys_tpm_pcr_read", "none", &[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);

    // Rollback counters (`keys_tpm_nv`, a selector byte first): the
    // NV_ReadPublic answer for the loader's counter of node:n1, a counter
    // read of 5, a handle list and a property list.
    use stateless_keys::tpm::nv;
    let handle = nv::first_handle("node:n1");
    let public = nv::NvPublic {
        index: handle,
        name_alg: 0x000B,
        attributes: nv::COUNTER_ATTRIBUTES | 1 << 29,
        auth_policy: nv::target_tag("node:n1").to_vec(),
        data_size: 8,
    };
    let mut read_public = vec![0];
    read_public.extend_from_slice(&handle.to_be_bytes());
    let bytes = public.to_bytes();
    read_public.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    read_public.extend_from_slice(&bytes);
    read_public.extend_from_slice(&34u16.to_be_bytes());
    read_public.extend_from_slice(&public.name());
    write("keys_tpm_nv", "read_public_counter", &read_public);
    write("keys_tpm_nv", "counter_5", &[1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]);
    let mut handles = vec![2, 0, 0, 0, 0, 1, 0, 0, 0, 2];
    handles.extend_from_slice(&nv::NV_BASE.to_be_bytes());
    handles.extend_from_slice(&handle.to_be_bytes());
    write("keys_tpm_nv", "handles", &handles);
    let props = [3, 0, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 2, 0x0A, 0, 0, 0, 4];
    write("keys_tpm_nv", "properties", &props);
}

/// Seeds for the bodies nodes send: an enrolment with and without an EK
/// certificate, and boot reports naming the node, another node, or none.
fn seed_server_bodies(corpus: &Path) {
    let dir = corpus.join("server_bodies");
    fs::create_dir_all(&dir).expect("creating corpus directory");
    let pcr = "ab".repeat(32);
    let seeds = [
        format!(
            r#"{{"ek_public":"{}","srk_public":"{}","pcrs":{{"7":"{pcr}","15":"{pcr}"}}}}"#,
            "01".repeat(314),
            "02".repeat(90)
        ),
        format!(r#"{{"ek_public":"0A0b","srk_public":"0c","ek_cert":"{}"}}"#, "30".repeat(40)),
        r#"{"result":"applied","node":"node42","generation":3,"capabilities":{"tpm":{"present":true}}}"#.to_owned(),
        r#"{"result":"failed","node":"node43"}"#.to_owned(),
        r#"{"result":"applied"}"#.to_owned(),
    ];
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed{i}")), seed).expect("writing seed");
    }
}

/// Seeds for the server's request-head parser: good heads (so mutations
/// explore the accepting paths) and every refused framing ambiguity.
fn seed_http(corpus: &Path) {
    let dir = corpus.join("http_head");
    fs::create_dir_all(&dir).expect("creating corpus directory");
    let good: &[&[u8]] = &[
        b"GET /v1/nodes/node42/bundle HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: \"abc\"\r\n\r\n",
        b"GET /v1/default/bundle HTTP/1.1\r\nHost: a\r\nRange: bytes=100-\r\nIf-Range: \"abc\"\r\n\r\n",
        b"HEAD /v1/groups/rack7/bundle HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"PUT /v1/nodes/node42/bundle HTTP/1.1\r\nHost: a\r\nAuthorization: Stateless-Push-Ed25519 node=node42,ts=1,sig=00\r\nContent-Length: 320\r\nExpect: 100-continue\r\n\r\n",
        b"\r\nGET /?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\nRange: bytes=-99999999999999999999999\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ];
    for (i, g) in good.iter().enumerate() {
        fs::write(dir.join(format!("good{i}")), g).expect("writing seed");
    }
    for (i, (bad, _)) in stateless_server::http::AMBIGUOUS_HEADS.iter().enumerate() {
        fs::write(dir.join(format!("ambiguous{i:02}")), bad).expect("writing seed");
    }
}
