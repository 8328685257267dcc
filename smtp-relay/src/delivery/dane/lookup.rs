//! The TLSA lookup of an MX host through the configured nameservers, with the DO bit set so a
//! validating resolver reports whether the answer is DNSSEC-validated (the AD bit).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::NameServerPool;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle as _, FirstAnswer as _};
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::{DnsRequestOptions, DnsResponse, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// A TLSA record DANE for SMTP can use (RFC 7672 3.1): DANE-TA(2) or DANE-EE(3), a full
/// certificate or its public key, matched exactly or by SHA-256/SHA-512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    pub usage: Usage,
    pub selector: Selector,
    pub matching: Matching,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// DANE-TA(2): the chain must lead to this trust anchor; names are checked.
    TrustAnchor,
    /// DANE-EE(3): the server's own certificate or key; names and dates are not checked.
    EndEntity,
}

/// What the TLSA answer means for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tlsa {
    /// DNSSEC-validated records, at least one usable: TLS with a matching certificate.
    Usable(Vec<TlsaRecord>),
    /// DNSSEC-validated records, none usable (PKIX-TA/EE, unknown parameters): TLS without
    /// authentication.
    Unusable,
    /// No TLSA records (NXDOMAIN or NODATA): no DANE.
    None,
    /// Records without the AD bit (an unsigned zone, or a resolver that does not validate):
    /// treated as no DANE.
    Insecure,
}

/// The lookup failed for a host whose zone is signed (or whose signature state is unknown):
/// delivery to it is deferred, never downgraded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("DANE: TLSA lookup for {name} failed: {reason}")]
pub struct LookupFailed {
    pub name: String,
    pub reason: String,
}

/// TLSA lookups through the nameservers of `[delivery]` (else `[dns]`).
pub struct Dane {
    pool: NameServerPool<TokioRuntimeProvider>,
}

/// DO bit set: a validating resolver answers with AD when the records are secure.
fn dnssec_options() -> DnsRequestOptions {
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_set_dnssec_ok = true;
    options.recursion_desired = true;
    options
}

/// The usable records of an answer (RFC 7672 3.1: PKIX usages are not for SMTP; private and
/// unassigned parameters are unusable too).
fn usable(records: impl IntoIterator<Item = RData>) -> Vec<TlsaRecord> {
    records
        .into_iter()
        .filter_map(|r| {
            let RData::TLSA(t) = r else { return None };
            let usage = match t.cert_usage {
                CertUsage::DaneTa => Usage::TrustAnchor,
                CertUsage::DaneEe => Usage::EndEntity,
                _ => return None,
            };
            let selector_ok = matches!(t.selector, Selector::Full | Selector::Spki);
            let matching_ok = matches!(
                t.matching,
                Matching::Raw | Matching::Sha256 | Matching::Sha512
            );
            (selector_ok && matching_ok).then_some(TlsaRecord {
                usage,
                selector: t.selector,
                matching: t.matching,
                data: t.cert_data,
            })
        })
        .collect()
}

/// NXDOMAIN and NODATA: the name has no records of the type.
fn is_empty_answer(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }))
    )
}

impl Dane {
    /// `None` without nameservers (MX delivery is refused then anyway).
    pub fn new(nameservers: &[SocketAddr]) -> anyhow::Result<Option<Dane>> {
        if nameservers.is_empty() {
            return Ok(None);
        }
        let pool = crate::dns::message_pool(nameservers, Duration::from_secs(5), 2)?;
        Ok(Some(Dane { pool }))
    }

    async fn ask(&self, name: &Name, kind: RecordType) -> Result<DnsResponse, NetError> {
        self.pool
            .lookup(Query::query(name.clone(), kind), dnssec_options())
            .first_answer()
            .await
    }

    /// The TLSA records of `host` for `port` (`_25._tcp.<host>` for port 25).
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Tlsa, LookupFailed> {
        let text = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        let failed = |reason: String| LookupFailed {
            name: text.clone(),
            reason,
        };
        let name = Name::from_ascii(&text).map_err(|e| failed(e.to_string()))?;
        match self.ask(&name, RecordType::TLSA).await {
            Ok(response) => {
                let records: Vec<RData> = response
                    .answers
                    .iter()
                    .filter(|r| r.record_type() == RecordType::TLSA)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    // An answer of CNAMEs only: no TLSA at the end of it.
                    return Ok(Tlsa::None);
                }
                if !response.metadata.authentic_data {
                    return Ok(Tlsa::Insecure);
                }
                let usable = usable(records);
                Ok(if usable.is_empty() {
                    Tlsa::Unusable
                } else {
                    Tlsa::Usable(usable)
                })
            }
            Err(e) if is_empty_answer(&e) => Ok(Tlsa::None),
            // Some unsigned zones' servers mishandle TLSA queries (RFC 7672 2.2.2): only a
            // host whose address records are secure has its delivery deferred.
            Err(e) if self.addresses_insecure(host).await => {
                tracing::debug!(event = "dane_insecure_host", host, error = %e);
                Ok(Tlsa::Insecure)
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Whether `host`'s A records come without the AD bit (a failed lookup is not "insecure").
    async fn addresses_insecure(&self, host: &str) -> bool {
        let Ok(name) = Name::from_ascii(format!("{}.", host.trim_end_matches('.'))) else {
            return false;
        };
        for kind in [RecordType::A, RecordType::AAAA] {
            match self.ask(&name, kind).await {
                Ok(r) if !r.answers.is_empty() => return !r.metadata.authentic_data,
                _ => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::TLSA;

    fn tlsa(usage: u8, selector: u8, matching: u8) -> RData {
        RData::TLSA(TLSA::new(
            usage.into(),
            selector.into(),
            matching.into(),
            vec![1, 2, 3],
        ))
    }

    #[test]
    fn only_dane_ta_and_dane_ee_records_are_usable() {
        let got = usable([
            tlsa(0, 0, 1),
            tlsa(1, 1, 1),
            tlsa(3, 1, 1),
            tlsa(2, 0, 2),
            tlsa(3, 2, 1),
            tlsa(3, 1, 3),
            tlsa(4, 1, 1),
        ]);
        assert_eq!(
            got.iter()
                .map(|r| (r.usage, r.selector, r.matching))
                .collect::<Vec<_>>(),
            vec![
                (Usage::EndEntity, Selector::Spki, Matching::Sha256),
                (Usage::TrustAnchor, Selector::Full, Matching::Sha512),
            ]
        );
    }
}
