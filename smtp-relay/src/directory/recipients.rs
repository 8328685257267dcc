//! `source = "directory"` of `[recipients]`: a local recipient exists when an enabled entry
//! holds the address. Answers are cached with `[recipients]`' positive and negative TTLs
//! (the probe's [`Cache`]); a directory that does not answer is never cached, so the first
//! RCPT after an outage asks again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CompanyDirectory, Unavailable};
use crate::config::RecipientsConfig;
use crate::metrics;
use crate::recipients::cache::Cache;

pub struct RecipientLookup {
    directory: Arc<CompanyDirectory>,
    cache: Mutex<Cache<bool>>,
    positive_ttl: Duration,
    negative_ttl: Duration,
}

impl RecipientLookup {
    pub fn new(directory: Arc<CompanyDirectory>, r: &RecipientsConfig) -> RecipientLookup {
        RecipientLookup {
            directory,
            cache: Mutex::new(Cache::new(r.cache_entries)),
            positive_ttl: r.positive_ttl,
            negative_ttl: r.negative_ttl,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache<bool>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `address` (plain form) belongs to an enabled directory entry.
    pub async fn exists(&self, address: &str) -> Result<bool, Unavailable> {
        let key = address.to_ascii_lowercase();
        let cached = self.cache().get(&key, Instant::now());
        metrics::recipient_cache(cached.is_some());
        if let Some(known) = cached {
            return Ok(known);
        }
        let known = self.directory.address_exists(&key).await?;
        let ttl = if known {
            self.positive_ttl
        } else {
            self.negative_ttl
        };
        self.cache().put(key, known, Instant::now() + ttl);
        Ok(known)
    }
}
