//! DNS for delivery: MX and address lookups through the nameservers listed
//! in the config (`[delivery].nameservers`, else `[dns]`; built by
//! [`crate::dns::resolver`]). Without configured nameservers, host names of
//! routes fall back to the system resolver and MX lookups are refused.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

/// Lookup failures, split the way delivery needs them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// Retry later (timeout, SERVFAIL, no nameserver answered).
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    /// The name does not exist or accepts no mail (null MX): bounce.
    #[error("{0}")]
    Permanent(String),
}

pub struct Dns {
    resolver: Option<TokioResolver>,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

impl Dns {
    pub fn new(nameservers: &[SocketAddr]) -> anyhow::Result<Dns> {
        if nameservers.is_empty() {
            return Ok(Dns { resolver: None });
        }
        // Delivery waits longer than a check: a deferred message costs a retry cycle.
        let resolver = crate::dns::resolver(nameservers, Duration::from_secs(5), 2, 8192)?;
        Ok(Dns {
            resolver: Some(resolver),
        })
    }

    /// MX hosts of `domain`, best preference first. An empty list means the
    /// domain exists but has no MX (RFC 5321 5.1: use the domain itself).
    pub async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let Some(resolver) = &self.resolver else {
            return Err(DnsError::Temporary(
                "no nameservers configured for MX lookups".into(),
            ));
        };
        match resolver.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => {
                let mut hosts: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange.to_ascii().trim_end_matches('.').to_owned(),
                        )),
                        _ => None,
                    })
                    .collect();
                hosts.sort();
                // RFC 7505 null MX: a single "." exchange.
                if hosts.len() == 1 && hosts[0].1.is_empty() {
                    return Err(DnsError::Permanent(format!(
                        "{domain} does not accept mail (null MX)"
                    )));
                }
                hosts.retain(|(_, h)| !h.is_empty());
                Ok(hosts)
            }
            Err(e) if e.is_nx_domain() => {
                Err(DnsError::Permanent(format!("domain {domain} not found")))
            }
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(DnsError::Temporary(format!("MX {domain}: {e}"))),
        }
    }

    /// Addresses of `host` (an IP literal is its own address).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let Some(resolver) = &self.resolver else {
            return match tokio::net::lookup_host((host, 0)).await {
                Ok(addrs) => Ok(addrs.map(|a| a.ip()).collect()),
                Err(e) => Err(DnsError::Temporary(format!("{host}: {e}"))),
            };
        };
        match resolver.lookup_ip(fqdn(host)).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) if e.is_nx_domain() => {
                Err(DnsError::Permanent(format!("host {host} not found")))
            }
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(DnsError::Temporary(format!("{host}: {e}"))),
        }
    }
}
