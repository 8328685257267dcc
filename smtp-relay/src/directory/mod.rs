//! The company directory (`[directory]`, LDAP / Active Directory): who may log in, which
//! addresses they may send as, and which local recipients exist.
//!
//! A login searches the user with the service account (values escaped, [`filter`]), checks
//! that the entry is enabled and in the relay group, then binds as the entry's DN with the
//! given password: the directory checks the password, the relay never sees a hash. Every
//! AUTH binds (no cache of passwords or their hashes). When no server answers in time the
//! caller gets [`Unavailable`] and answers with a temporary error: no login and no unknown
//! recipient ever gets through because the directory is down. One WARN per outage.
//!
//! - [`filter`]: RFC 4515 filters from user input.
//! - [`account`]: an entry as the relay uses it.
//! - [`pool`]: connections with failover.
//! - [`recipients`]: the RCPT-time check, cached.
//! - [`metrics`]: the `smtp_relay_directory_*` counters.

pub mod account;
pub mod filter;
pub mod metrics;
pub mod pool;
pub mod recipients;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ldap3::{Ldap, Scope, SearchEntry};
use tracing::{info, warn};

use crate::config::DirectoryConfig;
use crate::config::directory::Membership;
pub use account::Account;
use metrics::{Kind, Outcome};
use pool::Pool;

/// LDAP result code of a bind with a wrong password (RFC 4511 A.1).
const INVALID_CREDENTIALS: u32 = 49;

/// No directory server answered (in time): the caller answers 454 / 451.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("directory unavailable: {0}")]
pub struct Unavailable(pub String);

/// Why a login was refused (for the audit line; the client only sees 535).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Refused {
    NoSuchUser,
    Ambiguous,
    Disabled,
    NotInRelayGroup,
    BadPassword,
    EmptyPassword,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What AUTH against the directory came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Accepted(Account),
    Refused(Refused),
}

/// What `directory test` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub account: Account,
    /// `None` without a `relay_group`.
    pub in_relay_group: Option<bool>,
}

pub struct CompanyDirectory {
    config: DirectoryConfig,
    /// Bound as the service account.
    searches: Pool,
    /// User binds only.
    binds: Pool,
    /// Set at the first failure of an outage, cleared by the next success.
    down: AtomicBool,
}

/// An operation's result, or why the directory could not say.
type Op<T> = Result<T, Unavailable>;

fn ldap_error(e: impl std::fmt::Display) -> Unavailable {
    Unavailable(e.to_string())
}

impl CompanyDirectory {
    /// Reads the service account's password and the CA file; connects lazily.
    pub fn new(config: &DirectoryConfig) -> anyhow::Result<CompanyDirectory> {
        let text = std::fs::read_to_string(&config.bind_password_file).with_context(|| {
            format!(
                "reading bind_password_file {}",
                config.bind_password_file.display()
            )
        })?;
        let password = text.lines().next().unwrap_or("").to_owned();
        anyhow::ensure!(
            !password.is_empty(),
            "bind_password_file {} is empty",
            config.bind_password_file.display()
        );
        let tls = crate::delivery::tls::clients(config.ca_file.as_deref())?.verified;
        let service = Some((config.bind_dn.clone(), password));
        Ok(CompanyDirectory {
            searches: Pool::new(
                config.servers.clone(),
                tls.clone(),
                service,
                config.pool_size,
            ),
            binds: Pool::new(config.servers.clone(), tls, None, config.pool_size),
            config: config.clone(),
            down: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.config
    }

    /// The server URLs, for log lines.
    fn servers(&self) -> String {
        self.config
            .servers
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `op` within the timeout and keeps the outage state: one WARN when the directory
    /// stops answering, one INFO when it is back. A failure is tried once more on fresh
    /// connections (within the same timeout): an idle connection the server closed, or a
    /// server that went away while another answers, is no outage.
    async fn timed<T, F: Future<Output = Op<T>>>(&self, what: &str, op: impl Fn() -> F) -> Op<T> {
        let attempts = async {
            match op().await {
                Ok(v) => Ok(v),
                Err(_) => {
                    self.searches.clear();
                    self.binds.clear();
                    op().await
                }
            }
        };
        let result = match tokio::time::timeout(self.config.timeout, attempts).await {
            Ok(r) => r,
            Err(_) => Err(Unavailable(format!(
                "no answer within {} ms",
                self.config.timeout.as_millis()
            ))),
        };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    metrics::set_down(false);
                    info!(
                        event = "directory_up",
                        servers = %self.servers(),
                        "the directory answers again"
                    );
                }
            }
            Err(e) => {
                // The idle connections may all lead to the server that failed.
                self.searches.clear();
                self.binds.clear();
                if !self.down.swap(true, Ordering::Relaxed) {
                    metrics::set_down(true);
                    warn!(
                        event = "directory_down",
                        servers = %self.servers(),
                        during = what,
                        error = %e,
                        "the directory does not answer: AUTH gets 454, directory recipients 451"
                    );
                }
            }
        }
        result
    }

    /// Entries under the base DN matching `filter`, with the attributes of a user.
    async fn search(&self, ldap: &mut Ldap, filter: &str) -> Op<Vec<SearchEntry>> {
        let attrs = self.config.user_attributes();
        let (entries, _) = ldap
            .search(&self.config.base_dn, Scope::Subtree, filter, attrs)
            .await
            .map_err(ldap_error)?
            .success()
            .map_err(ldap_error)?;
        // Referrals (AD's other partitions) are not entries.
        Ok(entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect())
    }

    /// The account `name` logs in as; `Err(Refused)` when there is none or several.
    async fn find(&self, ldap: &mut Ldap, name: &str) -> Op<Result<Account, Refused>> {
        let f = filter::login(
            &self.config.user_filter,
            &self.config.login_attributes,
            name,
        );
        let mut entries = self.search(ldap, &f).await?;
        if entries.len() > 1 {
            return Ok(Err(Refused::Ambiguous));
        }
        Ok(match entries.pop() {
            Some(e) => Ok(Account::from_entry(e.dn, &e.attrs, &self.config)),
            None => Err(Refused::NoSuchUser),
        })
    }

    /// Whether `account` may relay: no group configured, or a member of it.
    async fn in_relay_group(&self, ldap: &mut Ldap, account: &Account) -> Op<Option<bool>> {
        let Some(group) = &self.config.relay_group else {
            return Ok(None);
        };
        let member = match self.config.group_membership {
            Membership::MemberOf => account.groups.iter().any(|g| account::same_dn(g, group)),
            Membership::GroupSearch => {
                let (entries, _) = ldap
                    .search(
                        group,
                        Scope::Base,
                        &filter::member(&account.dn),
                        vec!["1.1"],
                    )
                    .await
                    .map_err(ldap_error)?
                    .success()
                    .map_err(ldap_error)?;
                entries.iter().any(|e| !e.is_ref())
            }
        };
        Ok(Some(member))
    }

    /// Search, checks, then a bind as the user. A wrong password is a refusal; every other
    /// failure of the directory makes the login [`Unavailable`].
    async fn try_login(&self, name: &str, password: &str) -> Op<Login> {
        let mut ldap = self.searches.get().await.map_err(ldap_error)?;
        let account = match self.find(&mut ldap, name).await? {
            Ok(a) => a,
            Err(r) => {
                self.searches.put(ldap);
                return Ok(Login::Refused(r));
            }
        };
        let in_group = self.in_relay_group(&mut ldap, &account).await?;
        self.searches.put(ldap);
        if account.disabled {
            return Ok(Login::Refused(Refused::Disabled));
        }
        if in_group == Some(false) {
            return Ok(Login::Refused(Refused::NotInRelayGroup));
        }
        let mut ldap = self.binds.get().await.map_err(ldap_error)?;
        let result = ldap
            .simple_bind(&account.dn, password)
            .await
            .map_err(ldap_error)?;
        self.binds.put(ldap);
        match result.rc {
            0 => Ok(Login::Accepted(account)),
            INVALID_CREDENTIALS => Ok(Login::Refused(Refused::BadPassword)),
            _ => Err(Unavailable(result.to_string())),
        }
    }

    /// AUTH with `name` and `password` against the directory.
    pub async fn login(&self, name: &str, password: &str) -> Op<Login> {
        // An empty password would be an unauthenticated bind, which servers answer with
        // success (RFC 4513 5.1.2): never ask.
        if password.is_empty() {
            return Ok(Login::Refused(Refused::EmptyPassword));
        }
        let started = Instant::now();
        let result = self.timed("login", || self.try_login(name, password)).await;
        let outcome = match &result {
            Ok(Login::Accepted(_)) => Outcome::Found,
            Ok(Login::Refused(_)) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        };
        metrics::lookup(Kind::Login, outcome, started.elapsed());
        result
    }

    /// Whether an enabled entry holds `address` (in plain form).
    pub async fn address_exists(&self, address: &str) -> Op<bool> {
        let started = Instant::now();
        let result = self
            .timed("recipient", || async {
                let mut ldap = self.searches.get().await.map_err(ldap_error)?;
                let f = filter::address(
                    &self.config.user_filter,
                    &self.config.address_attributes,
                    address,
                );
                let entries = self.search(&mut ldap, &f).await?;
                self.searches.put(ldap);
                Ok(entries.into_iter().any(|e| {
                    let a = Account::from_entry(e.dn, &e.attrs, &self.config);
                    !a.disabled && a.owns(address)
                }))
            })
            .await;
        let outcome = match result {
            Ok(true) => Outcome::Found,
            Ok(false) => Outcome::NotFound,
            Err(_) => Outcome::Error,
        };
        metrics::lookup(Kind::Recipient, outcome, started.elapsed());
        result
    }

    /// What the relay would use for `name` (`directory test`); `None` when no entry or
    /// several match. Binds and searches as the service account only.
    pub async fn report(&self, name: &str) -> Op<Result<Report, Refused>> {
        self.timed("test", || async {
            let mut ldap = self.searches.get().await.map_err(ldap_error)?;
            let account = match self.find(&mut ldap, name).await? {
                Ok(a) => a,
                Err(r) => return Ok(Err(r)),
            };
            let in_relay_group = self.in_relay_group(&mut ldap, &account).await?;
            Ok(Ok(Report {
                account,
                in_relay_group,
            }))
        })
        .await
    }

    /// Connects and binds as the service account (`directory test` without a user).
    pub async fn check_service_bind(&self) -> Op<()> {
        self.timed("test", || async {
            let ldap = self.searches.get().await.map_err(ldap_error)?;
            self.searches.put(ldap);
            Ok(())
        })
        .await
    }

    /// The timeout of one operation.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }
}

/// The shared handle the server, the sessions and the recipient check hold.
pub type Shared = Arc<CompanyDirectory>;

/// What `check` and the start warn about.
pub fn warnings(config: &crate::config::Config) -> Vec<String> {
    match &config.directory {
        Some(d) if d.insecure_plaintext => vec![
            "[directory] insecure_plaintext = true: the service account's and users' passwords \
             go to the directory unencrypted (loopback only)"
                .to_owned(),
        ],
        _ => Vec::new(),
    }
}

/// `smtp-relay directory test`: the service bind, and what the relay would use for `user`.
pub async fn test(directory: &CompanyDirectory, user: Option<&str>) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let c = directory.config();
    directory
        .check_service_bind()
        .await
        .context("binding as the service account")?;
    let mut out = format!(
        "service bind: OK as {} ({})\n",
        c.bind_dn,
        c.servers
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let Some(user) = user else {
        return Ok(out);
    };
    match directory.report(user).await.context("searching the user")? {
        Err(why) => {
            writeln!(out, "user {user:?}: not usable: {}", why.as_str())?;
        }
        Ok(report) => {
            let a = &report.account;
            writeln!(out, "user {user:?}")?;
            writeln!(out, "  dn: {}", a.dn)?;
            writeln!(out, "  addresses: {}", list(&a.addresses))?;
            writeln!(out, "  groups: {}", list(&a.groups))?;
            writeln!(out, "  disabled: {}", if a.disabled { "yes" } else { "no" })?;
            let group = match (&c.relay_group, report.in_relay_group) {
                (Some(g), Some(true)) => format!("yes ({g})"),
                (Some(g), _) => format!("no ({g})"),
                (None, _) => "no relay_group configured: every enabled user".to_owned(),
            };
            writeln!(out, "  relay group: {group}")?;
            let may = !a.disabled && report.in_relay_group != Some(false);
            writeln!(
                out,
                "  may log in: {}",
                if may {
                    "yes (with the right password)"
                } else {
                    "no"
                }
            )?;
        }
    }
    Ok(out)
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}
