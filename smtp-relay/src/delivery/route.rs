//! Which next hop a recipient goes to: a per-domain route, else the
//! smarthost, else the MX hosts of the recipient's domain.

use std::net::{IpAddr, SocketAddr};

use crate::config::{DeliveryConfig, HopConfig, TlsMode};

use super::dns::{Dns, DnsError};

/// How to find the hosts of a next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// A configured host (route or smarthost) or an address literal.
    Host { host: String, port: u16 },
    /// The MX hosts of a domain, on `mx_port`.
    Mx { domain: String, port: u16 },
}

/// A destination: recipients with the same key share connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub key: String,
    pub targets: Targets,
    pub tls: TlsMode,
    pub auth: Option<(String, String)>,
    /// The recipient domain whose published TLS policies (MTA-STS) apply: the MX domain, or a
    /// route's domain; `None` for the smarthost and address literals.
    pub policy_domain: Option<String>,
}

/// One address to try, with the name to check its certificate against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
}

pub struct Router {
    routes: Vec<(String, HopConfig)>,
    smarthost: Option<HopConfig>,
    mx_port: u16,
    mx_tls: TlsMode,
}

/// The domain part of a stored recipient address (after the last `@`).
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// A configured hop; `domain` is the route's (`None`: the smarthost).
fn hop(h: &HopConfig, domain: Option<&str>) -> NextHop {
    // Policy modes depend on the recipient domain, so its routes do not share connections.
    let policy_domain = domain.filter(|_| h.tls.is_policy()).map(str::to_owned);
    NextHop {
        key: format!(
            "{}:{}/{}/{}/{}",
            h.host,
            h.port,
            h.tls.as_str(),
            h.auth.as_ref().map_or("", |(u, _)| u.as_str()),
            policy_domain.as_deref().unwrap_or("")
        ),
        targets: Targets::Host {
            host: h.host.clone(),
            port: h.port,
        },
        tls: h.tls,
        auth: h.auth.clone(),
        policy_domain,
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` as an IP.
fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

impl Router {
    pub fn new(config: &DeliveryConfig) -> Router {
        Router {
            routes: config.routes.clone(),
            smarthost: config.smarthost.clone(),
            mx_port: config.mx_port,
            mx_tls: config.mx_tls,
        }
    }

    /// The next hop for a recipient address.
    pub fn route(&self, address: &str) -> NextHop {
        let domain = domain_of(address).to_ascii_lowercase();
        if let Some((d, h)) = self.routes.iter().find(|(d, _)| *d == domain) {
            return hop(h, Some(d));
        }
        if let Some(h) = &self.smarthost {
            return hop(h, None);
        }
        if let Some(ip) = address_literal(&domain) {
            return NextHop {
                key: format!("{ip}:{}/{}", self.mx_port, self.mx_tls.as_str()),
                targets: Targets::Host {
                    host: ip.to_string(),
                    port: self.mx_port,
                },
                tls: self.mx_tls,
                auth: None,
                policy_domain: None,
            };
        }
        NextHop {
            key: format!("mx:{domain}"),
            targets: Targets::Mx {
                domain: domain.clone(),
                port: self.mx_port,
            },
            tls: self.mx_tls,
            auth: None,
            policy_domain: Some(domain),
        }
    }
}

/// Resolves a next hop into the addresses to try, in order: MX hosts by
/// preference, each host's addresses in resolver order. A domain without
/// MX is its own mail host (RFC 5321 5.1).
pub async fn resolve(dns: &Dns, targets: &Targets) -> Result<Vec<Target>, DnsError> {
    let (hosts, port) = match targets {
        Targets::Host { host, port } => (vec![host.clone()], *port),
        Targets::Mx { domain, port } => {
            let mx = dns.mx(domain).await?;
            let hosts = if mx.is_empty() {
                vec![domain.clone()]
            } else {
                mx.into_iter().map(|(_, h)| h).collect()
            };
            (hosts, *port)
        }
    };
    let mut out = Vec::new();
    let mut last_error = None;
    for host in hosts {
        match dns.addresses(&host).await {
            Ok(ips) => out.extend(ips.into_iter().map(|ip| Target {
                name: host.clone(),
                addr: SocketAddr::new(ip, port),
            })),
            Err(e) => last_error = Some(e),
        }
    }
    if out.is_empty() {
        return Err(last_error
            .unwrap_or_else(|| DnsError::Temporary(format!("no address found for {targets:?}"))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> DeliveryConfig {
        DeliveryConfig {
            routes: vec![(
                "example.org".into(),
                HopConfig {
                    host: "127.0.0.1".into(),
                    port: 2525,
                    tls: TlsMode::None,
                    auth: None,
                },
            )],
            smarthost: None,
            nameservers: vec![],
            mx_port: 25,
            mx_tls: TlsMode::Opportunistic,
            ca_file: None,
            mta_sts_port: 443,
            mta_sts_fetch_timeout: Duration::from_secs(1),
            connections_per_destination: 1,
            max_deliveries: 1,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            max_queue_lifetime: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(1),
            connection_idle: Duration::from_secs(1),
        }
    }

    #[test]
    fn routes_smarthost_mx() {
        let mut c = config();
        let r = Router::new(&c);
        let h = r.route("bob@EXAMPLE.org");
        assert_eq!(
            h.targets,
            Targets::Host {
                host: "127.0.0.1".into(),
                port: 2525
            }
        );
        assert_eq!(h.tls, TlsMode::None);
        assert_eq!(
            r.route("x@other.example").targets,
            Targets::Mx {
                domain: "other.example".into(),
                port: 25
            }
        );
        assert_eq!(
            r.route("x@[127.0.0.9]").targets,
            Targets::Host {
                host: "127.0.0.9".into(),
                port: 25
            }
        );
        // The same host for two domains is one destination.
        c.routes.push(("example.net".into(), c.routes[0].1.clone()));
        c.smarthost = Some(HopConfig {
            host: "relay.internal".into(),
            port: 587,
            tls: TlsMode::Required,
            auth: None,
        });
        let r = Router::new(&c);
        assert_eq!(r.route("a@example.org").key, r.route("b@example.net").key);
        assert_eq!(
            r.route("x@other.example").targets,
            Targets::Host {
                host: "relay.internal".into(),
                port: 587
            }
        );
    }

    #[test]
    fn domain_part() {
        assert_eq!(domain_of("\"a@b\"@example.org"), "example.org");
        assert_eq!(domain_of("postmaster"), "");
    }
}
