//! rustls server configuration from PEM files (ring provider), kept in step
//! with the files.
//!
//! Certificates are renewed every few weeks (ACME). Before each TLS handshake
//! [`TlsStore::acceptor`] `stat`s the certificate and key files and loads them
//! again when either changed, so a renewal takes effect without a restart;
//! SIGHUP asks for the same check at once (a deploy hook's
//! `systemctl reload smtp-relay`). A pair that does not load — a key that does
//! not match yet because the renewal wrote only one file so far, a truncated
//! file — leaves the previous certificate in service and is logged once per
//! change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use gatekeeper_support::stamp::FileStamp;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

/// Builds a TLS acceptor from a PEM certificate chain and a PEM private key.
/// Errors name the file at fault.
pub fn load_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "TLS certificate {} contains no PEM certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading TLS private key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| format!("TLS certificate {} does not match its key", cert.display()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The versions of the certificate and key files.
type Stamps = [Option<FileStamp>; 2];

/// The TLS acceptor in service and the file versions it was made from.
pub struct TlsStore {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Stamps, tokio_rustls::TlsAcceptor)>,
}

impl TlsStore {
    /// Loads the pair; errors name the file at fault.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsStore> {
        // Stamp first, then read: a change after the stamp is seen next time.
        let stamps = [FileStamp::of(cert), FileStamp::of(key)];
        let acceptor = load_acceptor(cert, key)?;
        Ok(TlsStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new((stamps, acceptor)),
        })
    }

    /// The acceptor for the next handshake, after picking up changed files.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = [FileStamp::of(&self.cert), FileStamp::of(&self.key)];
        if now != state.0 {
            state.0 = now;
            match load_acceptor(&self.cert, &self.key) {
                Ok(acceptor) => {
                    info!(event = "tls_reloaded", cert = %self.cert.display(),
                        "certificate and key loaded again");
                    state.1 = acceptor;
                }
                Err(e) => {
                    warn!(event = "tls_reload_failed", cert = %self.cert.display(),
                        error = format!("{e:#}"), "keeping the certificate in service");
                }
            }
        }
        state.1.clone()
    }
}
