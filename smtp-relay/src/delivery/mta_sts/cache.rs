//! The policy cache: one JSON file per domain under `<spool_dir>/mta-sts/`, so policies survive
//! restarts (RFC 8461 5: a cached policy is what protects against an attacker who strips the
//! TXT record or blocks the policy host), and a copy in memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The TXT record's id the policy was fetched for.
    pub id: String,
    pub policy: Policy,
    /// Unix seconds.
    pub fetched_at: u64,
}

impl Cached {
    pub fn expired(&self, now: u64) -> bool {
        now >= self.fetched_at.saturating_add(self.policy.max_age)
    }
}

pub struct Cache {
    dir: PathBuf,
    memory: Mutex<HashMap<String, Cached>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cache {
    /// Creates `dir` (mode 0700 like the spool) if needed.
    pub fn open(dir: PathBuf) -> anyhow::Result<Cache> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| anyhow::anyhow!("creating MTA-STS cache {}: {e}", dir.display()))?;
        Ok(Cache {
            dir,
            memory: Mutex::new(HashMap::new()),
        })
    }

    /// `domain` is a validated, lowercased host name, so it is a safe file name.
    fn path(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.json"))
    }

    /// The cached entry (memory first, then disk), expired or not.
    pub fn get(&self, domain: &str) -> Option<Cached> {
        if let Some(c) = lock(&self.memory).get(domain) {
            return Some(c.clone());
        }
        let text = std::fs::read(self.path(domain)).ok()?;
        match serde_json::from_slice::<Cached>(&text) {
            Ok(c) => {
                lock(&self.memory).insert(domain.to_owned(), c.clone());
                Some(c)
            }
            Err(e) => {
                warn!(event = "mta_sts_cache", domain, error = %e, "unreadable cache entry ignored");
                None
            }
        }
    }

    /// Stores `entry` in memory and on disk (atomically; a write error is logged, the memory
    /// copy still serves until restart).
    pub async fn put(&self, domain: &str, entry: Cached) {
        lock(&self.memory).insert(domain.to_owned(), entry.clone());
        let path = self.path(domain);
        let written = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let json = serde_json::to_vec_pretty(&entry)?;
            gatekeeper_support::atomic::replace(&path, &json)?;
            Ok(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(event = "mta_sts_cache", domain, error = %format!("{e:#}"), "cannot write cache entry")
            }
            Err(e) => {
                warn!(event = "mta_sts_cache", domain, error = %e, "cannot write cache entry")
            }
        }
    }
}
