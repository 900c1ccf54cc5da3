//! TLS server configuration with rustls (ring provider, TLS 1.2 and 1.3).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM file could not be read or parsed.
    #[error("{}: {msg}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// Loads a PEM certificate chain (server certificate first) and its
/// private key.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem = |path: &Path, msg: String| TlsError::Pem { path: path.to_owned(), msg };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(TlsError::Config)?;
    // A node connects once per boot and keeps the connection for its few
    // requests: resumption tickets would be made (and stored) for nothing,
    // on every handshake of a boot storm.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
