//! DKIM (RFC 6376), ARC (RFC 8617) and DMARC (RFC 7489) over a whole received message, each
//! inside the overall deadline, and what the listener's `dmarc_policy` makes of the result.
//! A deadline or a DNS failure is `temperror`, which never refuses mail.

use std::future::Future;
use std::time::Duration;

use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, DkimOutput, DkimResult, DmarcOutput, DmarcResult, DnsError,
    Error, SpfOutput, SpfResult,
};

use super::results::ResultsBuilder;
use super::spf::SpfIdentity;
use super::{CheckResult, SenderAuth};
use crate::config::DmarcPolicy;

/// What the relay does with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmarcAction {
    Accept,
    /// Accepted with the quarantine header (`p=quarantine`, or `p=reject` under report-only).
    Quarantine {
        policy: &'static str,
        domain: String,
    },
    /// `550 5.7.1` (`p=reject` under honor).
    Reject {
        domain: String,
    },
}

/// The outcome of the checks on one message.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Our `Authentication-Results:` field, CRLF-terminated.
    pub header: String,
    pub action: DmarcAction,
    pub spf: Option<CheckResult>,
    pub dkim: Option<CheckResult>,
    pub arc: Option<CheckResult>,
    pub dmarc: Option<CheckResult>,
}

/// The results field and the verdict before DKIM, ARC and DMARC: SPF's result (if it ran) in
/// both, the action still "accept".
fn begin<'a>(
    authserv_id: &'a str,
    spf: Option<(&SpfOutput, &SpfIdentity)>,
) -> (ResultsBuilder<'a>, Verdict) {
    let mut ar = ResultsBuilder::new(authserv_id);
    let mut verdict = Verdict {
        header: String::new(),
        action: DmarcAction::Accept,
        spf: None,
        dkim: None,
        arc: None,
        dmarc: None,
    };
    if let Some((output, who)) = spf {
        ar.spf(output, who);
        verdict.spf = Some(CheckResult::of_spf(output.result()));
    }
    (ar, verdict)
}

fn timed_out() -> Error {
    Error::Dns(DnsError::Resolver("check timed out".to_owned()))
}

/// `fut` within `deadline`, else `fallback()`.
async fn within<T>(
    deadline: Duration,
    fut: impl Future<Output = T>,
    fallback: impl FnOnce() -> T,
) -> T {
    tokio::time::timeout(deadline, fut)
        .await
        .unwrap_or_else(|_| fallback())
}

impl SenderAuth {
    /// Runs the checks that are on over `msg` (the message as received, before any header of
    /// ours) from `client`. `spf` is the transaction's SPF result, when SPF ran.
    pub async fn verify(
        &self,
        msg: &[u8],
        client: std::net::IpAddr,
        spf: Option<(&SpfOutput, &SpfIdentity)>,
        policy: DmarcPolicy,
    ) -> Verdict {
        let config = &self.config;
        let deadline = config.check_timeout;
        let (mut ar, mut verdict) = begin(&config.authserv_id, spf);
        let Some(parsed) = AuthenticatedMessage::parse(msg) else {
            // No header block to read: nothing can be verified, and nothing refused.
            if self.dkim_on() {
                ar.not_verified("dkim", "no message header");
                verdict.dkim = Some(CheckResult::PermError);
            }
            if config.dmarc {
                ar.not_verified("dmarc", "no message header");
                verdict.dmarc = Some(CheckResult::None);
            }
            verdict.header = ar.header();
            return verdict;
        };
        let verified: Vec<DkimOutput<'_>> = if self.dkim_on() {
            within(deadline, self.auth.verify_dkim(&parsed), || {
                vec![DkimOutput::temp_err(timed_out())]
            })
            .await
        } else {
            Vec::new()
        };
        let dkim = body_hash_mismatch_is_fail(&verified);
        if self.dkim_on() {
            ar.dkim(&dkim, parsed.from());
            verdict.dkim = Some(CheckResult::of_dkim_all(&dkim));
        }
        let arc = if config.arc {
            let arc = within(deadline, self.auth.verify_arc(&parsed), || {
                ArcOutput::default().with_result(DkimResult::TempError(timed_out()))
            })
            .await;
            ar.arc(&arc, client);
            verdict.arc = Some(CheckResult::of_dkim(arc.result()));
            Some(arc)
        } else {
            None
        };
        if config.dmarc
            && let Some((spf_output, who)) = spf
        {
            let params = mail_auth::dmarc::verify::DmarcParameters::new(
                &parsed,
                &dkim,
                who.mail_from_domain(),
                spf_output,
            );
            let dmarc = within(deadline, self.auth.verify_dmarc(params), || {
                DmarcOutput::default()
                    .with_domain(parsed.from().rsplit_once('@').map_or("", |(_, d)| d))
                    .with_spf_result(DmarcResult::TempError(timed_out()))
                    .with_dkim_result(DmarcResult::TempError(timed_out()))
            })
            .await;
            ar.dmarc(&dmarc);
            verdict.dmarc = Some(CheckResult::of_dmarc(&dmarc.result()));
            let sealed_by_trusted = arc.as_ref().is_some_and(|arc| {
                matches!(arc.result(), DkimResult::Pass)
                    && arc.sets().last().is_some_and(|set| {
                        config
                            .arc_trusted_sealers
                            .iter()
                            .any(|d| d.eq_ignore_ascii_case(&set.seal.header.d))
                    })
            });
            verdict.action = decide(&dmarc, policy, sealed_by_trusted);
        }
        verdict.header = ar.header();
        verdict
    }

    /// The field when the message is not verified (too large to hold, or only SPF is on):
    /// SPF as found, DKIM and DMARC, if on, as not run.
    pub fn without_message(&self, spf: Option<(&SpfOutput, &SpfIdentity)>) -> Verdict {
        let (mut ar, mut verdict) = begin(&self.config.authserv_id, spf);
        if self.dkim_on() {
            ar.not_verified("dkim", "not verified: message too large");
            verdict.dkim = Some(CheckResult::None);
        }
        if self.config.dmarc {
            ar.not_verified("dmarc", "not verified: message too large");
            verdict.dmarc = Some(CheckResult::None);
        }
        verdict.header = ar.header();
        verdict
    }
}

/// A body that does not match its signature's hash is `fail` (RFC 6376 3.7: PERMFAIL "body
/// hash did not verify"; RFC 8601 2.7.1: signed, but failed verification). mail-auth says
/// `neutral` there.
fn body_hash_mismatch_is_fail<'a>(all: &'a [DkimOutput<'_>]) -> Vec<DkimOutput<'a>> {
    all.iter()
        .map(|o| match (o.result(), o.signature()) {
            (DkimResult::Neutral(e @ Error::Dkim(DkimError::FailedBodyHashMatch)), Some(sig)) => {
                DkimOutput::fail(e.clone()).with_signature(sig)
            }
            _ => o.clone(),
        })
        .collect()
}

/// Reject only a real `fail` under `p=reject` and `honor` (never a temperror or permerror),
/// unless a trusted ARC sealer vouches for the message; other failures under `p=reject` or
/// `p=quarantine` are accepted and marked.
pub fn decide(dmarc: &DmarcOutput, policy: DmarcPolicy, sealed_by_trusted: bool) -> DmarcAction {
    if !matches!(dmarc.result(), DmarcResult::Fail(_)) {
        return DmarcAction::Accept;
    }
    let domain = printable_domain(dmarc.domain());
    match dmarc.policy() {
        Policy::Reject if policy == DmarcPolicy::Honor && !sealed_by_trusted => {
            DmarcAction::Reject { domain }
        }
        Policy::Reject => DmarcAction::Quarantine {
            policy: "reject",
            domain,
        },
        Policy::Quarantine => DmarcAction::Quarantine {
            policy: "quarantine",
            domain,
        },
        Policy::None | Policy::Unspecified => DmarcAction::Accept,
    }
}

/// The From domain as it may appear in our reply and header: it comes from the message, so
/// anything but letters, digits, dots, hyphens and underscores becomes `?` (no CR/LF ever
/// reaches the client or the header block).
fn printable_domain(domain: &str) -> String {
    domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

impl CheckResult {
    pub fn of_spf(r: SpfResult) -> CheckResult {
        match r {
            SpfResult::Pass => CheckResult::Pass,
            SpfResult::Fail => CheckResult::Fail,
            SpfResult::SoftFail => CheckResult::SoftFail,
            SpfResult::Neutral => CheckResult::Neutral,
            SpfResult::TempError => CheckResult::TempError,
            SpfResult::PermError => CheckResult::PermError,
            SpfResult::None => CheckResult::None,
        }
    }

    pub fn of_dkim(r: &DkimResult) -> CheckResult {
        match r {
            DkimResult::Pass => CheckResult::Pass,
            DkimResult::Neutral(_) => CheckResult::Neutral,
            DkimResult::Fail(_) => CheckResult::Fail,
            DkimResult::PermError(_) => CheckResult::PermError,
            DkimResult::TempError(_) => CheckResult::TempError,
            DkimResult::None => CheckResult::None,
        }
    }

    /// Several signatures: the best result counts (one valid signature is enough).
    pub fn of_dkim_all(all: &[DkimOutput<'_>]) -> CheckResult {
        all.iter()
            .map(|o| CheckResult::of_dkim(o.result()))
            .min_by_key(|r| r.rank())
            .unwrap_or(CheckResult::None)
    }

    pub fn of_dmarc(r: &DmarcResult) -> CheckResult {
        match r {
            DmarcResult::Pass => CheckResult::Pass,
            DmarcResult::Fail(_) => CheckResult::Fail,
            DmarcResult::TempError(_) => CheckResult::TempError,
            DmarcResult::PermError(_) => CheckResult::PermError,
            DmarcResult::None => CheckResult::None,
        }
    }

    /// Better first.
    fn rank(self) -> u8 {
        match self {
            CheckResult::Pass => 0,
            CheckResult::Fail => 1,
            CheckResult::SoftFail => 2,
            CheckResult::Neutral => 3,
            CheckResult::TempError => 4,
            CheckResult::PermError => 5,
            CheckResult::None => 6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_from_the_message_cannot_break_a_reply_or_header() {
        assert_eq!(printable_domain("example.com"), "example.com");
        assert_eq!(
            printable_domain("evil.example\r\n250 ok"),
            "evil.example??250?ok"
        );
    }
}
