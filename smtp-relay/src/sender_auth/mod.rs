//! Sender authentication: SPF at MAIL FROM, DKIM, ARC and DMARC over the message, an
//! `Authentication-Results:` field with the results, and the listener's `dmarc_policy`.
//!
//! Scope: `mta` listeners, clients that neither authenticated nor are in `trusted_networks`.
//! Forged results claiming our authserv-id are removed from every message ([`strip`]).
//! DNS goes through the `[dns]` resolver only (`crate::dns`).

pub mod message;
pub mod results;
pub mod spf;
pub mod strip;

use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;

use crate::config::{DmarcPolicy, Role, SenderAuthConfig};
use spf::{SpfIdentity, SpfTask};

/// A check's result, as counted and logged (RFC 8601 result names).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "lowercase")]
pub enum CheckResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The checks, as counted (`smtp_relay_checks_total{check=...}`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "lowercase")]
pub enum AuthCheck {
    Spf,
    Dkim,
    Arc,
    Dmarc,
}

impl AuthCheck {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The checks of a server, built once.
pub struct SenderAuth {
    auth: Arc<MessageAuthenticator>,
    config: SenderAuthConfig,
    hostname: String,
}

impl SenderAuth {
    /// `resolver` is the `[dns]` one; `hostname` ours (SPF's `%{r}`).
    pub fn new(resolver: TokioResolver, config: SenderAuthConfig, hostname: &str) -> SenderAuth {
        SenderAuth {
            auth: Arc::new(MessageAuthenticator(resolver)),
            config,
            hostname: hostname.to_owned(),
        }
    }

    pub fn config(&self) -> &SenderAuthConfig {
        &self.config
    }

    /// DMARC needs the SPF and DKIM results, so it runs them.
    fn spf_on(&self) -> bool {
        self.config.spf || self.config.dmarc
    }

    fn dkim_on(&self) -> bool {
        self.config.dkim || self.config.dmarc
    }

    /// Whether the message needs holding for verification.
    fn message_checks_on(&self) -> bool {
        self.dkim_on() || self.config.arc
    }
}

/// A session's view: what its listener does, and the current transaction's checks.
pub struct SessionAuth {
    auth: Option<Arc<SenderAuth>>,
    role: Role,
    pub dmarc_policy: DmarcPolicy,
    transaction: Option<TransactionAuth>,
}

/// The checks of one transaction (MAIL FROM to the end of DATA).
pub struct TransactionAuth {
    pub auth: Arc<SenderAuth>,
    pub spf: Option<SpfTask>,
    pub identity: SpfIdentity,
    /// Whether the message is held and verified (else only SPF is reported).
    pub verify_message: bool,
}

impl TransactionAuth {
    /// Waits for SPF, when it runs.
    pub async fn wait_spf(&mut self) {
        if let Some(task) = &mut self.spf {
            task.wait().await;
        }
    }

    /// The SPF result and whom it is about, after [`TransactionAuth::wait_spf`].
    pub fn spf(&self) -> Option<(&mail_auth::SpfOutput, &SpfIdentity)> {
        self.spf.as_ref().and_then(SpfTask::get)
    }
}

impl SessionAuth {
    pub fn new(auth: Option<Arc<SenderAuth>>, role: Role, dmarc_policy: DmarcPolicy) -> Self {
        SessionAuth {
            auth,
            role,
            dmarc_policy,
            transaction: None,
        }
    }

    /// Call after each command with whether a transaction was open before it and the current
    /// sender (`None` without a transaction). A new transaction from a client the checks apply
    /// to starts SPF; a transaction that ended drops (aborts) its checks.
    pub fn after_command(
        &mut self,
        had_transaction: bool,
        sender: Option<&str>,
        client: IpAddr,
        helo: &str,
        authenticated_or_trusted: bool,
    ) {
        match sender {
            None => self.transaction = None,
            Some(sender) if !had_transaction => {
                self.transaction = None;
                let Some(auth) = &self.auth else { return };
                if self.role != Role::Mta || authenticated_or_trusted || !auth.config.any() {
                    return;
                }
                let identity = SpfIdentity {
                    ip: client.to_canonical(),
                    helo: helo.to_owned(),
                    sender: sender.to_owned(),
                };
                let spf = auth.spf_on().then(|| {
                    SpfTask::spawn(
                        auth.auth.clone(),
                        identity.clone(),
                        auth.hostname.clone(),
                        auth.config.check_timeout,
                    )
                });
                self.transaction = Some(TransactionAuth {
                    auth: auth.clone(),
                    spf,
                    identity,
                    verify_message: auth.message_checks_on(),
                });
            }
            Some(_) => {}
        }
    }

    /// The checks of the transaction whose DATA begins.
    pub fn take(&mut self) -> Option<TransactionAuth> {
        self.transaction.take()
    }
}
