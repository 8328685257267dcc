//! `[dns]`: the nameservers every DNS-based check asks (SPF, DKIM, DMARC, DNSBL, …), and the
//! delivery's MX lookups when `[delivery].nameservers` is not set. The relay never falls back to
//! the system resolver for a check: a check that needs DNS refuses to start without this table.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, KeyPath, duration, ensure, positive};

/// Longest per-query timeout: checks have their own, shorter, overall deadlines.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDns {
    nameservers: Vec<SocketAddr>,
    #[serde(deserialize_with = "duration::millis")]
    timeout_ms: Duration,
    attempts: usize,
    cache_size: u64,
}

/// The documented defaults of `[dns]`.
impl Default for RawDns {
    fn default() -> RawDns {
        RawDns {
            nameservers: Vec::new(),
            timeout_ms: Duration::from_secs(2),
            attempts: 1,
            cache_size: 8192,
        }
    }
}

/// The validated `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Asked in order (UDP, TCP on truncation).
    pub nameservers: Vec<SocketAddr>,
    /// Per query and server.
    pub timeout: Duration,
    /// Tries per query and server.
    pub attempts: usize,
    /// Records kept in the resolver's cache (TTL-bounded); 0 turns it off.
    pub cache_size: u64,
}

pub(super) fn validate(raw: RawDns, at: &KeyPath) -> Result<DnsConfig, Invalid> {
    ensure(
        !raw.nameservers.is_empty(),
        &at.key("nameservers"),
        "empty: list the resolvers to ask (e.g. [\"127.0.0.1:53\"]); the relay never uses the \
         system resolver for its checks",
    )?;
    let timeout_at = at.key("timeout_ms");
    let timeout = positive(raw.timeout_ms, &timeout_at)?;
    ensure(timeout <= MAX_TIMEOUT, &timeout_at, "at most 30000")?;
    let attempts = positive(raw.attempts, &at.key("attempts"))?;
    ensure(attempts <= 5, &at.key("attempts"), "at most 5")?;
    Ok(DnsConfig {
        nameservers: raw.nameservers,
        timeout,
        attempts,
        cache_size: raw.cache_size,
    })
}
