//! The certificate check of a DANE connection (RFC 7672 3.1, RFC 7671):
//!
//! - DANE-EE(3): the server's certificate (selector 0) or its public key (selector 1) matches
//!   the record. Names and validity dates are not checked: the DNSSEC-signed record is the
//!   whole authentication.
//! - DANE-TA(2): a certificate of the chain the server sent matches the record; that
//!   certificate is the trust anchor of an ordinary path validation (dates, key usage) of the
//!   server's certificate, whose name must be the MX host name (the TLSA base domain). The
//!   anchor must be in the chain (RFC 7671 5.2.2: servers include it); a bare public key that
//!   the server does not send is not supported.
//!
//! Either way the handshake signatures are verified: the server must hold the key.

use std::sync::Arc;

use hickory_resolver::proto::rr::rdata::tlsa::{Matching, Selector};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError};

use super::lookup::{TlsaRecord, Usage};
use crate::delivery::tls::EncryptOnly;

/// Why no record matched; the deferral names it.
#[derive(Debug, thiserror::Error)]
#[error("DANE: {0}")]
struct Mismatch(String);

fn mismatch(text: impl Into<String>) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Mismatch(
        text.into(),
    )))))
}

/// Whether `cert` is what `record` describes.
pub fn matches(record: &TlsaRecord, cert: &CertificateDer<'_>) -> bool {
    let spki;
    let selected: &[u8] = match record.selector {
        Selector::Full => cert.as_ref(),
        Selector::Spki => match webpki::anchor_from_trusted_cert(cert) {
            Ok(anchor) => {
                spki = webpki::spki_for_anchor(&anchor);
                spki.as_ref()
            }
            Err(_) => return false,
        },
        _ => return false,
    };
    match record.matching {
        Matching::Raw => selected == record.data.as_slice(),
        Matching::Sha256 => {
            ring::digest::digest(&ring::digest::SHA256, selected).as_ref() == record.data
        }
        Matching::Sha512 => {
            ring::digest::digest(&ring::digest::SHA512, selected).as_ref() == record.data
        }
        _ => false,
    }
}

/// `base` with a [`DaneVerifier`] for `records`. No session resumption: a resumed session skips
/// the certificate check, and a ticket from a connection under another policy must not stand in
/// for DANE.
pub fn client_config(
    base: &rustls::ClientConfig,
    records: Vec<TlsaRecord>,
) -> Arc<rustls::ClientConfig> {
    let mut config = base.clone();
    config.resumption = rustls::client::Resumption::disabled();
    let provider = config.crypto_provider().clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(DaneVerifier::new(records, provider)));
    Arc::new(config)
}

/// Verifies server certificates against the usable TLSA records of one MX host.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<TlsaRecord>,
    provider: Arc<CryptoProvider>,
    signatures: EncryptOnly,
}

impl DaneVerifier {
    pub fn new(records: Vec<TlsaRecord>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier {
            records,
            signatures: EncryptOnly(provider.clone()),
            provider,
        }
    }

    /// DANE-TA: the path from `end_entity` to an anchor in the chain that `record` matches.
    fn trust_anchor_path(
        &self,
        record: &TlsaRecord,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<bool, rustls::Error> {
        let Some(anchor) = intermediates.iter().find(|c| matches(record, c)) else {
            return Ok(false);
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| mismatch(format!("the trust anchor is unusable: {e}")))?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| mismatch(format!("the trust anchor is unusable: {e}")))?;
        webpki.verify_server_cert(end_entity, intermediates, server_name, &[], now)?;
        Ok(true)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .records
            .iter()
            .any(|r| r.usage == Usage::EndEntity && matches(r, end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // A DANE-TA path that fails after its anchor matched says why (name, dates).
        let mut failure = None;
        for record in self
            .records
            .iter()
            .filter(|r| r.usage == Usage::TrustAnchor)
        {
            match self.trust_anchor_path(record, end_entity, intermediates, server_name, now) {
                Ok(true) => return Ok(ServerCertVerified::assertion()),
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| {
            mismatch("no TLSA record matches the certificate chain of the MX host")
        }))
    }

    // The handshake signatures: checked as for opportunistic TLS.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData as _};

    struct Chain {
        ca: CertificateDer<'static>,
        ca_key: KeyPair,
        leaf: CertificateDer<'static>,
        leaf_key: KeyPair,
    }

    fn chain(name: &str) -> Chain {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(
            params,
            KeyPair::from_pem(&ca_key.serialize_pem()).expect("k"),
        );
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        Chain {
            ca: ca.der().clone(),
            ca_key,
            leaf: leaf.der().clone(),
            leaf_key,
        }
    }

    fn record(usage: Usage, selector: u8, matching: u8, data: &[u8]) -> TlsaRecord {
        let matching: Matching = matching.into();
        let data = match matching {
            Matching::Sha256 => ring::digest::digest(&ring::digest::SHA256, data)
                .as_ref()
                .to_vec(),
            Matching::Sha512 => ring::digest::digest(&ring::digest::SHA512, data)
                .as_ref()
                .to_vec(),
            _ => data.to_vec(),
        };
        TlsaRecord {
            usage,
            selector: selector.into(),
            matching,
            data,
        }
    }

    fn verify(records: Vec<TlsaRecord>, c: &Chain, name: &str) -> Result<(), rustls::Error> {
        let v = DaneVerifier::new(records, Arc::new(rustls::crypto::ring::default_provider()));
        v.verify_server_cert(
            &c.leaf,
            std::slice::from_ref(&c.ca),
            &ServerName::try_from(name.to_owned()).expect("name"),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
    }

    #[test]
    fn dane_ee_matches_certificate_or_key_and_ignores_the_name() {
        let c = chain("mx.example.org");
        let spki = c.leaf_key.subject_public_key_info();
        for (selector, data) in [(0, c.leaf.as_ref()), (1, spki.as_slice())] {
            for matching in [0, 1, 2] {
                let r = record(Usage::EndEntity, selector, matching, data);
                assert!(matches(&r, &c.leaf), "3 {selector} {matching}");
                // RFC 7672 3.1.1: the name is not checked for DANE-EE.
                verify(vec![r], &c, "other.example.net").expect("3 x x matches");
            }
        }
        let other = chain("mx.example.org");
        let r = record(
            Usage::EndEntity,
            1,
            1,
            &other.leaf_key.subject_public_key_info(),
        );
        assert!(verify(vec![r], &c, "mx.example.org").is_err());
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain_and_the_mx_name() {
        let c = chain("mx.example.org");
        for (selector, data) in [(0, c.ca.to_vec()), (1, c.ca_key.subject_public_key_info())] {
            let r = record(Usage::TrustAnchor, selector, 1, &data);
            verify(vec![r.clone()], &c, "mx.example.org").expect("2 x 1 matches");
            let e = verify(vec![r.clone()], &c, "mx2.example.org").expect_err("wrong name");
            assert!(e.to_string().contains("not valid for name"), "{e}");
            // A DANE-TA record is no DANE-EE record: the leaf itself is not its anchor.
            let leaf_as_ta = record(Usage::TrustAnchor, 0, 1, &c.leaf);
            assert!(verify(vec![leaf_as_ta], &c, "mx.example.org").is_err());
        }
        let other = chain("mx.example.org");
        let r = record(Usage::TrustAnchor, 0, 1, &other.ca);
        let e = verify(vec![r], &c, "mx.example.org").expect_err("other CA");
        assert!(e.to_string().contains("no TLSA record matches"), "{e}");
    }
}
