//! DANE for MX delivery (RFC 7672): the TLSA records of an MX host decide whether STARTTLS is
//! mandatory and which certificate the host must present.
//!
//! - [`lookup`]: the TLSA query for `_<port>._tcp.<mx host>` and what its answer means.
//! - [`verify`]: the rustls certificate verifier for DANE-EE(3) and DANE-TA(2) records.
//!
//! Trust in the answer: the relay does not validate DNSSEC itself. It sets the DO bit on the
//! TLSA query and believes the AD bit of the reply, as Postfix does with
//! `smtp_dns_support_level = dnssec`. So the configured nameservers must be a validating
//! resolver on a path nobody can tamper with (loopback: unbound or knot-resolver on the relay's
//! host). A non-validating resolver never sets AD: every TLSA answer is then "insecure" and
//! delivery stays opportunistic, which is safe but gives no DANE.
//!
//! Limits (documented in the README): the TLSA base domain is the MX host name as the MX record
//! names it (no CNAME expansion), and the address records are not checked for security before
//! the TLSA lookup (RFC 7672 2.2.2) except when the TLSA lookup fails, to tell a broken signed
//! zone (defer) from a broken unsigned one (deliver without DANE).

pub mod lookup;
pub mod verify;

use std::sync::Arc;

pub use lookup::{Dane, LookupFailed, Tlsa};

/// What DANE asks of one connection to one MX host.
pub enum DaneTls {
    /// No DANE for this host (no TLSA records, or an unsigned answer): the hop's own TLS mode.
    Off,
    /// STARTTLS is mandatory and the certificate must match a usable TLSA record.
    Authenticated(Arc<rustls::ClientConfig>),
    /// TLSA records exist but none is usable: STARTTLS is mandatory, the certificate is not
    /// checked (RFC 7672 2.2: "encrypt", as Postfix does).
    EncryptOnly,
}

impl Dane {
    /// The TLS a connection to `host` on `port` needs; `Err` defers the host. A DANE config is
    /// `base` (protocol versions, crypto provider) with the DANE verifier.
    pub async fn for_host(
        &self,
        host: &str,
        port: u16,
        base: &rustls::ClientConfig,
    ) -> Result<DaneTls, LookupFailed> {
        Ok(match self.tlsa(host, port).await? {
            Tlsa::Usable(records) => DaneTls::Authenticated(verify::client_config(base, records)),
            Tlsa::Unusable => DaneTls::EncryptOnly,
            Tlsa::None | Tlsa::Insecure => DaneTls::Off,
        })
    }
}
