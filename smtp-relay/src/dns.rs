//! The one way the relay builds a DNS resolver: only the nameservers the config names, UDP with
//! TCP fallback, no hosts file, no search domains. Delivery's MX lookups and every check
//! (SPF, DKIM, DMARC, DNSBL) share this builder so they behave alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gatekeeper_support::dns::name_servers;
use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig, TokioResolver};

use crate::config::DnsConfig;

fn options(timeout: Duration, attempts: usize, cache_size: u64) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = timeout;
    opts.attempts = attempts;
    opts.ndots = 0;
    opts.cache_size = cache_size;
    opts
}

/// A resolver asking `nameservers` in order.
pub fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
    attempts: usize,
    cache_size: u64,
) -> anyhow::Result<TokioResolver> {
    anyhow::ensure!(!nameservers.is_empty(), "no nameservers configured");
    TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(name_servers(nameservers)),
        TokioRuntimeProvider::default(),
    )
    .with_options(options(timeout, attempts, cache_size))
    .build()
    .context("DNS resolver")
}

/// The same `nameservers` without the resolver's cache, for queries whose whole response
/// matters: DANE's TLSA lookups read the AD bit of the header, which hickory's
/// resolver neither asks for (it sets no DO bit unless it validates itself) nor keeps.
pub fn message_pool(
    nameservers: &[SocketAddr],
    timeout: Duration,
    attempts: usize,
) -> anyhow::Result<NameServerPool<TokioRuntimeProvider>> {
    anyhow::ensure!(!nameservers.is_empty(), "no nameservers configured");
    let context = PoolContext::new(
        options(timeout, attempts, 0),
        TlsConfig::new().context("DNS transport")?,
    );
    Ok(NameServerPool::from_config(
        name_servers(nameservers),
        Arc::new(context),
        TokioRuntimeProvider::default(),
    ))
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
