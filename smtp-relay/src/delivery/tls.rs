//! TLS client configs for next hops (rustls, ring provider): a verifying
//! one for `tls = "required"` (the CA file from the config, else the
//! platform's trust store) and an encrypting-only one for opportunistic
//! STARTTLS, whose verifier accepts any certificate but still checks the
//! handshake signatures, as RFC 7435 allows.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::warn;

use super::client::TlsClients;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trust anchors of every verifying TLS client the relay has (next hops;
/// MTA-STS policy fetches are to use the same): `ca_file` alone when
/// configured, else the platform's store as rustls-native-certs finds it
/// (`SSL_CERT_FILE` and `SSL_CERT_DIR` first, as OpenSSL does; otherwise the
/// distribution's bundle, wherever it keeps it). An empty store is not an
/// error: `required` hops then fail closed (deferred), and the log says why.
pub fn roots(ca_file: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(file) = ca_file {
        for cert in CertificateDer::pem_file_iter(file)
            .with_context(|| format!("reading CA file {}", file.display()))?
        {
            let cert = cert.with_context(|| format!("parsing CA file {}", file.display()))?;
            // One certificate rustls cannot use does not void the others.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            anyhow::bail!("CA file {} holds no usable certificate", file.display());
        }
        return Ok(roots);
    }
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(event = "trust_store", error = %error, "reading the system trust store");
    }
    // A system store may hold certificates rustls rejects; the rest still count.
    let (_added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        warn!(
            event = "trust_store",
            ignored, "certificates of the system trust store that rustls cannot use"
        );
    }
    if roots.is_empty() {
        warn!(
            event = "trust_store",
            "no trust anchors in the system store (install ca-certificates, or set \
             SSL_CERT_FILE or [delivery] ca_file): next hops with tls = \"required\" are deferred"
        );
    }
    Ok(roots)
}

/// Builds both configs.
pub fn clients(ca_file: Option<&Path>) -> anyhow::Result<TlsClients> {
    let roots = roots(ca_file)?;
    let verified = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let unverified = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
        .with_no_client_auth();
    Ok(TlsClients {
        verified: Arc::new(verified),
        unverified: Arc::new(unverified),
    })
}

/// Accepts any certificate (opportunistic TLS) but verifies that the peer
/// holds its key (DANE's verifier uses it for that part too).
#[derive(Debug)]
pub(super) struct EncryptOnly(pub(super) Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
