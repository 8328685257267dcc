//! MTA-STS (RFC 8461) for delivery to MX hosts: which policy a recipient domain publishes.
//!
//! - [`record`]: the `_mta-sts` TXT record (the policy id).
//! - [`policy`]: the policy file and MX matching.
//! - [`fetch`]: the HTTPS fetch with its limits.
//! - [`cache`]: policies on disk under the spool directory and in memory.
//!
//! [`MtaSts::policy`] is the control flow of RFC 8461 5.1: an unexpired cached policy whose id
//! the TXT record still names is used as is; a new id, an expired policy or none cached means a
//! fetch; a failed fetch keeps the unexpired cached policy; with no TXT record and no cache
//! there is no policy. A policy host that cannot be reached and nothing cached is also "no
//! policy" (RFC 8461 3.3: the sender delivers as without MTA-STS): the domain loses no mail
//! because its web server is down, and gains protection only once a fetch succeeded.

pub mod cache;
pub mod fetch;
pub mod policy;
pub mod record;

use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use tracing::{info, warn};

use cache::{Cache, Cached};
use fetch::Fetcher;
pub use policy::{Mode, Policy};

use super::dns::Dns;

/// A policy that applies to one delivery, with what names it in logs and bounces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applicable {
    pub domain: String,
    pub id: String,
    pub policy: Policy,
}

impl std::fmt::Display for Applicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MTA-STS policy of {} (id {}, mode {})",
            self.domain, self.id, self.policy.mode
        )
    }
}

/// What the TXT lookup found.
enum Txt {
    Id(String),
    Absent,
    Failed(String),
}

pub struct MtaSts {
    resolver: Option<TokioResolver>,
    dns: Arc<Dns>,
    fetcher: Fetcher,
    cache: Cache,
}

impl MtaSts {
    pub fn new(
        resolver: Option<TokioResolver>,
        dns: Arc<Dns>,
        fetcher: Fetcher,
        cache: Cache,
    ) -> MtaSts {
        MtaSts {
            resolver,
            dns,
            fetcher,
            cache,
        }
    }

    /// The policy of `domain` to apply now, `None` when there is none (or its mode is `none`).
    pub async fn policy(&self, domain: &str) -> Option<Applicable> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !crate::address::is_host_name(&domain) {
            return None;
        }
        let now = crate::clock::unix_now();
        let cached = self.cache.get(&domain).filter(|c| !c.expired(now));
        let id = match self.txt(&domain).await {
            Txt::Id(id) => id,
            // No record (or a broken one): a cached policy stays in force until it expires.
            Txt::Absent => return cached.and_then(|c| applicable(&domain, c)),
            Txt::Failed(e) => {
                warn!(event = "mta_sts", domain, error = %e, cached = cached.is_some(), "TXT lookup failed");
                return cached.and_then(|c| applicable(&domain, c));
            }
        };
        if let Some(c) = &cached
            && c.id == id
        {
            return applicable(&domain, c.clone());
        }
        match self.fetcher.fetch(&self.dns, &domain).await {
            Ok(text) => match Policy::parse(&text) {
                Ok(policy) => {
                    info!(event = "mta_sts_policy", domain, id, mode = %policy.mode,
                        max_age = policy.max_age, mx = %policy.mx.join(","), "policy fetched");
                    let entry = Cached {
                        id,
                        policy,
                        fetched_at: now,
                    };
                    self.cache.put(&domain, entry.clone()).await;
                    applicable(&domain, entry)
                }
                Err(e) => {
                    warn!(event = "mta_sts_policy", domain, id, error = %e, cached = cached.is_some(), "invalid policy");
                    cached.and_then(|c| applicable(&domain, c))
                }
            },
            Err(e) => {
                warn!(event = "mta_sts_policy", domain, id, error = %e, cached = cached.is_some(), "policy fetch failed");
                cached.and_then(|c| applicable(&domain, c))
            }
        }
    }

    async fn txt(&self, domain: &str) -> Txt {
        let Some(resolver) = &self.resolver else {
            return Txt::Failed("no nameservers configured".into());
        };
        match resolver.txt_lookup(format!("_mta-sts.{domain}.")).await {
            Ok(lookup) => {
                // A record's strings are joined without separator (RFC 7208 3.3 style).
                let texts: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect();
                match record::id_from_records(texts.iter().map(String::as_str)) {
                    Some(id) => Txt::Id(id),
                    None => Txt::Absent,
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Txt::Absent,
            Err(e) => Txt::Failed(e.to_string()),
        }
    }
}

fn applicable(domain: &str, c: Cached) -> Option<Applicable> {
    (c.policy.mode != Mode::None).then(|| Applicable {
        domain: domain.to_owned(),
        id: c.id,
        policy: c.policy,
    })
}
