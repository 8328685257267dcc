//! TLS client configs for next hops (rustls, ring provider): a verifying
//! one for `tls = "required"` (CA file from the config, else the system
//! bundle) and an encrypting-only one for opportunistic STARTTLS, whose
//! verifier accepts any certificate but still checks the handshake
//! signatures, as RFC 7435 allows.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::client::TlsClients;

/// Debian's bundle, used when no `ca_file` is configured.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds both configs. A missing system bundle leaves the verifying config
/// with no roots, so `required` hops then fail closed.
pub fn clients(ca_file: Option<&Path>) -> anyhow::Result<TlsClients> {
    let mut roots = rustls::RootCertStore::empty();
    let file = ca_file.unwrap_or(Path::new(SYSTEM_BUNDLE));
    if ca_file.is_some() || file.exists() {
        for cert in CertificateDer::pem_file_iter(file)
            .with_context(|| format!("reading CA file {}", file.display()))?
        {
            let cert = cert.with_context(|| format!("parsing CA file {}", file.display()))?;
            // The system bundle may hold certificates rustls rejects; skip them.
            let _ = roots.add(cert);
        }
        if ca_file.is_some() && roots.is_empty() {
            anyhow::bail!("CA file {} holds no usable certificate", file.display());
        }
    }
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
/// holds its key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

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
