//! Recipient validation at RCPT time (`[recipients]`): mail for a local user that does not
//! exist is refused with `550 5.1.1` before DATA, so it is never queued and never bounced to
//! a (usually forged) sender. Per local domain:
//!
//! - [`list`]: a file of addresses and `@domain` catch-alls, followed on change;
//! - [`probe`]: an RCPT probe to the domain's next hop, cached;
//! - [`crate::directory::recipients`]: the company directory (`[directory]`), cached;
//! - no check (`accept`, and every domain without a table).
//!
//! `postmaster@` of every local domain is always accepted (RFC 5321 4.5.1). [`harvest`] slows
//! and ends sessions that try many unknown recipients. The check applies to every session
//! (authenticated, trusted or not) and to local recipients only.

pub mod cache;
pub mod harvest;
pub mod list;
pub mod probe;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::recipients::{Rule, Source, list_domains};
use crate::config::{Config, HopConfig};
use crate::directory::CompanyDirectory;
use crate::directory::recipients::RecipientLookup;
use crate::metrics;
use list::ListFile;
use probe::{Answer, Prober};

/// The `result` label of `smtp_relay_checks_total{check="recipient"}`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum RecipientResult {
    /// Listed, or confirmed by the next hop (`250`).
    Known,
    /// Not listed, or refused by the next hop (`550 5.1.1`).
    Unknown,
    /// The next hop could not say (`451 4.4.3`).
    Unverified,
}

impl RecipientResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The outcome of checking one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: RecipientResult,
    pub source: Source,
    /// Why, for the audit line: the next hop's reply, or the list's name.
    pub detail: String,
}

impl Verdict {
    /// A recipient nothing checks.
    pub fn accepted() -> Verdict {
        Verdict::new(RecipientResult::Known, Source::Accept, "")
    }

    fn new(result: RecipientResult, source: Source, detail: impl Into<String>) -> Verdict {
        Verdict {
            result,
            source,
            detail: detail.into(),
        }
    }
}

/// How one domain is checked.
enum Check {
    List(Arc<ListFile>),
    Verify(HopConfig),
    Directory,
}

/// The recipients of the local domains, one per process.
pub struct Directory {
    domains: HashMap<String, Check>,
    prober: Option<Prober>,
    /// For `source = "directory"`; attached by [`Directory::use_company_directory`].
    company: Option<RecipientLookup>,
    settings: crate::config::RecipientsConfig,
    pub unknown_delay: Duration,
    pub unknown_max: u32,
}

/// The local part and the lowercased domain of `local@domain`.
fn split(address: &str) -> Option<(&str, String)> {
    let (local, domain) = address.rsplit_once('@')?;
    Some((local, domain.to_ascii_lowercase()))
}

impl Directory {
    /// `None` without a `[recipients]` table. List files are read again here (they were
    /// validated with the config and may have changed since).
    pub fn new(config: &Config) -> anyhow::Result<Option<Directory>> {
        let Some(r) = &config.recipients else {
            return Ok(None);
        };
        let mut files: HashMap<PathBuf, Arc<ListFile>> = HashMap::new();
        let mut domains = HashMap::new();
        for (domain, rule) in &r.domains {
            let check = match rule {
                Rule::List(file) => {
                    let list = match files.get(file) {
                        Some(l) => l.clone(),
                        None => {
                            let served = list_domains(&r.domains, file);
                            let l = Arc::new(ListFile::open(file, served, r.reload)?);
                            files.insert(file.clone(), l.clone());
                            l
                        }
                    };
                    Check::List(list)
                }
                Rule::Verify(hop) => Check::Verify(hop.clone()),
                Rule::Accept => continue,
                Rule::Directory => Check::Directory,
            };
            domains.insert(domain.clone(), check);
        }
        let prober = if domains.values().any(|c| matches!(c, Check::Verify(_))) {
            Some(Prober::new(config, r)?)
        } else {
            None
        };
        Ok(Some(Directory {
            domains,
            prober,
            company: None,
            settings: r.clone(),
            unknown_delay: r.unknown_delay,
            unknown_max: r.unknown_max,
        }))
    }

    /// The company directory for the domains with `source = "directory"` (without it they
    /// answer 451).
    pub fn use_company_directory(&mut self, directory: Arc<CompanyDirectory>) {
        self.company = Some(RecipientLookup::new(directory, &self.settings));
    }

    /// Whether the local recipient `address` needs [`Directory::verify`]: not for postmaster
    /// (RFC 5321 4.5.1) and not in domains that accept every local part.
    pub fn checks(&self, address: &str) -> bool {
        match split(address) {
            Some((local, domain)) => {
                !local.eq_ignore_ascii_case("postmaster") && self.domains.contains_key(&domain)
            }
            None => false,
        }
    }

    /// Whether the local recipient `address` exists. Counted in `smtp_relay_checks_total`.
    pub async fn verify(&self, address: &str) -> Verdict {
        let verdict = self.judge(address).await;
        metrics::recipient_checked(verdict.result);
        verdict
    }

    async fn judge(&self, address: &str) -> Verdict {
        let check = split(address).and_then(|(_, domain)| self.domains.get(&domain));
        match check {
            None => Verdict::accepted(),
            Some(Check::List(list)) => {
                let result = if list.contains(address) {
                    RecipientResult::Known
                } else {
                    RecipientResult::Unknown
                };
                Verdict::new(result, Source::List, "not in the recipient list")
            }
            Some(Check::Verify(hop)) => {
                let Some(prober) = &self.prober else {
                    return Verdict::new(RecipientResult::Unverified, Source::Verify, "no prober");
                };
                match prober.verify(address, hop).await {
                    Answer::Known => Verdict::new(RecipientResult::Known, Source::Verify, ""),
                    Answer::Unknown(reply) => {
                        Verdict::new(RecipientResult::Unknown, Source::Verify, reply)
                    }
                    Answer::Unavailable(why) => {
                        Verdict::new(RecipientResult::Unverified, Source::Verify, why)
                    }
                }
            }
            Some(Check::Directory) => {
                let Some(company) = &self.company else {
                    return Verdict::new(
                        RecipientResult::Unverified,
                        Source::Directory,
                        "no directory",
                    );
                };
                match company.exists(address).await {
                    Ok(true) => Verdict::new(RecipientResult::Known, Source::Directory, ""),
                    Ok(false) => Verdict::new(
                        RecipientResult::Unknown,
                        Source::Directory,
                        "not in the directory",
                    ),
                    Err(e) => Verdict::new(
                        RecipientResult::Unverified,
                        Source::Directory,
                        e.to_string(),
                    ),
                }
            }
        }
    }
}
