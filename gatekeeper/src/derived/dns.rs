//! The DNS questions the derived entries ask, behind a small trait: the daemon asks the
//! configured nameservers through hickory-resolver (the same resolver the relay uses, built the
//! same way: only the nameservers the config names, UDP with TCP fallback, no hosts file, no
//! search domains, no cache), and the walker's unit tests answer from a table.

use std::{future::Future, net::IpAddr};

use anyhow::Context as _;
use hickory_resolver::{
    TokioResolver,
    config::{ResolveHosts, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::{RData, RecordType},
};

use gatekeeper_support::derived::DnsSettings;

/// The record types the walker asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rtype {
    Txt,
    A,
    Aaaa,
    Mx,
}

impl std::fmt::Display for Rtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rtype::Txt => "TXT",
            Rtype::A => "A",
            Rtype::Aaaa => "AAAA",
            Rtype::Mx => "MX",
        })
    }
}

/// One record of an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rdata {
    /// A TXT record, its strings joined (RFC 7208 3.3).
    Txt(String),
    Ip(IpAddr),
    /// An MX record's exchange, lower case, without the final dot.
    Mx(String),
}

/// An answer: its records (empty: NXDOMAIN or no data, a "void lookup") and their lowest TTL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub records: Vec<Rdata>,
    pub ttl: u32,
}

/// A question that got no usable answer (SERVFAIL, REFUSED, a timeout...): the resolution fails
/// and the last good set stays in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name} {rtype}: {reason}")]
pub struct DnsFailure {
    pub name: String,
    pub rtype: Rtype,
    pub reason: String,
}

/// Asks DNS.
pub trait Dns: Sync {
    fn lookup(
        &self,
        name: &str,
        rtype: Rtype,
    ) -> impl Future<Output = Result<Answer, DnsFailure>> + Send;
}

/// The daemon's resolver: the `[dns]` nameservers only.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub fn new(settings: &DnsSettings) -> anyhow::Result<Resolver> {
        anyhow::ensure!(
            !settings.nameservers.is_empty(),
            "[dns] names no nameservers"
        );
        let servers = gatekeeper_support::dns::name_servers(&settings.nameservers);
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.timeout = settings.timeout;
        opts.attempts = settings.attempts;
        opts.ndots = 0;
        // Every refresh must see what the nameservers say now: the refresh interval is the
        // records' TTL already.
        opts.cache_size = 0;
        let inner = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .context("building the DNS resolver")?;
        Ok(Resolver { inner })
    }
}

impl Dns for Resolver {
    async fn lookup(&self, name: &str, rtype: Rtype) -> Result<Answer, DnsFailure> {
        let failure = |reason: String| DnsFailure {
            name: name.to_string(),
            rtype,
            reason,
        };
        let record_type = match rtype {
            Rtype::Txt => RecordType::TXT,
            Rtype::A => RecordType::A,
            Rtype::Aaaa => RecordType::AAAA,
            Rtype::Mx => RecordType::MX,
        };
        // Absolute: no search domain is ever appended.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match self.inner.lookup(fqdn.as_str(), record_type).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                return Ok(Answer::default());
            }
            Err(e) => return Err(failure(e.to_string())),
        };
        let mut answer = Answer {
            records: Vec::new(),
            ttl: u32::MAX,
        };
        for record in lookup.answers() {
            let data = match (&record.data, rtype) {
                (RData::TXT(txt), Rtype::Txt) => Rdata::Txt(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect(),
                ),
                (RData::A(a), Rtype::A) => Rdata::Ip(IpAddr::V4(a.0)),
                (RData::AAAA(a), Rtype::Aaaa) => Rdata::Ip(IpAddr::V6(a.0)),
                (RData::MX(mx), Rtype::Mx) => Rdata::Mx(
                    mx.exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                ),
                // CNAMEs on the way count for the TTL only.
                _ => {
                    answer.ttl = answer.ttl.min(record.ttl);
                    continue;
                }
            };
            answer.ttl = answer.ttl.min(record.ttl);
            answer.records.push(data);
        }
        if answer.records.is_empty() {
            answer.ttl = 0;
        }
        Ok(answer)
    }
}
