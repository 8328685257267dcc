//! The one way the relay builds a DNS resolver: only the nameservers the config names, UDP with
//! TCP fallback, no hosts file, no search domains. Delivery's MX lookups and every check
//! (SPF, DKIM, DMARC, DNSBL) share this builder so they behave alike.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::DnsConfig;

/// A resolver asking `nameservers` in order.
pub fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
    attempts: usize,
    cache_size: u64,
) -> anyhow::Result<TokioResolver> {
    anyhow::ensure!(!nameservers.is_empty(), "no nameservers configured");
    let servers = nameservers
        .iter()
        .map(|ns| {
            let mut udp = ConnectionConfig::udp();
            udp.port = ns.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = ns.port();
            let mut c = NameServerConfig::udp_and_tcp(ns.ip());
            c.connections = vec![udp, tcp];
            c
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = timeout;
    opts.attempts = attempts;
    opts.ndots = 0;
    opts.cache_size = cache_size;
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .context("DNS resolver")
}

/// The resolver of `[dns]`.
pub fn from_config(config: &DnsConfig) -> anyhow::Result<TokioResolver> {
    resolver(
        &config.nameservers,
        config.timeout,
        config.attempts,
        config.cache_size,
    )
}
