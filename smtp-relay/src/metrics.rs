//! Process-wide counters and the Prometheus endpoint (`GET /metrics` on
//! `metrics_listen`), served by gatekeeper-support's metrics endpoint.
//!
//! Counters are global atomics: the audit functions and the queue bump
//! them where the events happen, so no code path can forget to count. A
//! prometheus-client collector reads them at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use gatekeeper_support::metrics::{self as expose, endpoint};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use strum::{EnumCount as _, IntoEnumIterator as _};
use tokio::net::TcpListener;

use crate::bans::{BanResult, Trigger};
use crate::check::{Check, CheckResult};
use crate::delivery::tls_policy::{Applied, TlsResult};
use crate::disconnect::Disconnect;
use crate::recipients::RecipientResult;
use crate::refusal::Refusal;
use crate::sender_auth::{AuthCheck, CheckResult as AuthResult};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub static SESSIONS: Counter = Counter::new();
pub static AUTH_FAILURES: Counter = Counter::new();
/// Messages queued (250 after DATA).
pub static ACCEPTED: Counter = Counter::new();
/// Accepted messages with at least one external recipient.
pub static RELAYED: Counter = Counter::new();
/// Recipients the next hop took (250).
pub static DELIVERED: Counter = Counter::new();
/// Recipients whose attempt failed temporarily.
pub static DEFERRED: Counter = Counter::new();
/// Recipients that failed for good (refused or expired).
pub static BOUNCED: Counter = Counter::new();
/// Messages in the queue and the enqueue time (Unix seconds) of the oldest.
pub static QUEUE_DEPTH: Counter = Counter::new();
pub static OLDEST_RECEIVED_AT: Counter = Counter::new();

/// Refusals by reason, indexed by the [`Refusal`] discriminant.
static REFUSED: [Counter; Refusal::COUNT] = [const { Counter::new() }; Refusal::COUNT];

/// Counts a refusal.
pub fn refused(reason: Refusal) {
    REFUSED[reason as usize].inc();
}

pub fn refused_count(reason: Refusal) -> u64 {
    REFUSED[reason as usize].get()
}

/// Ended sessions by reason, indexed by the [`Disconnect`] discriminant.
static DISCONNECTS: [Counter; Disconnect::COUNT] = [const { Counter::new() }; Disconnect::COUNT];

pub fn disconnected(reason: Disconnect) {
    DISCONNECTS[reason as usize].inc();
}

pub fn disconnect_count(reason: Disconnect) -> u64 {
    DISCONNECTS[reason as usize].get()
}

/// Ban requests by trigger (evidence enough, not asked for already).
static BANS_REQUESTED: [Counter; Trigger::COUNT] = [const { Counter::new() }; Trigger::COUNT];
/// How they ended, by trigger and [`BanResult`].
static BAN_RESULTS: [[Counter; BanResult::COUNT]; Trigger::COUNT] =
    [const { [const { Counter::new() }; BanResult::COUNT] }; Trigger::COUNT];

pub fn ban_requested(trigger: Trigger) {
    BANS_REQUESTED[trigger as usize].inc();
}

pub fn ban_requested_count(trigger: Trigger) -> u64 {
    BANS_REQUESTED[trigger as usize].get()
}

pub fn ban_result(trigger: Trigger, result: BanResult) {
    BAN_RESULTS[trigger as usize][result as usize].inc();
}

pub fn ban_result_count(trigger: Trigger, result: BanResult) -> u64 {
    BAN_RESULTS[trigger as usize][result as usize].get()
}

/// Recipient checks at RCPT time by result (`[recipients]`).
static RECIPIENT_CHECKS: [Counter; RecipientResult::COUNT] =
    [const { Counter::new() }; RecipientResult::COUNT];
/// Answers of the recipient probe cache: hits, misses.
static RECIPIENT_CACHE: [Counter; 2] = [const { Counter::new() }; 2];

pub fn recipient_checked(result: RecipientResult) {
    RECIPIENT_CHECKS[result as usize].inc();
}

pub fn recipient_check_count(result: RecipientResult) -> u64 {
    RECIPIENT_CHECKS[result as usize].get()
}

pub fn recipient_cache(hit: bool) {
    RECIPIENT_CACHE[usize::from(hit)].inc();
}

pub fn recipient_cache_count(hit: bool) -> u64 {
    RECIPIENT_CACHE[usize::from(hit)].get()
}

/// Sender authentication results, by check and result.
static AUTH_CHECKS: [[Counter; AuthResult::COUNT]; AuthCheck::COUNT] =
    [const { [const { Counter::new() }; AuthResult::COUNT] }; AuthCheck::COUNT];

pub fn checked(check: AuthCheck, result: AuthResult) {
    AUTH_CHECKS[check as usize][result as usize].inc();
}

pub fn auth_check_count(check: AuthCheck, result: AuthResult) -> u64 {
    AUTH_CHECKS[check as usize][result as usize].get()
}

/// Check outcomes, by [`Check`] and [`CheckResult`].
static CHECKS: [[Counter; CheckResult::COUNT]; Check::COUNT] =
    [const { [const { Counter::new() }; CheckResult::COUNT] }; Check::COUNT];

pub fn check(check: Check, result: CheckResult) {
    CHECKS[check as usize][result as usize].inc();
}

pub fn check_count(check: Check, result: CheckResult) -> u64 {
    CHECKS[check as usize][result as usize].get()
}

/// The exposition text (Prometheus text format 0.0.4).
/// DKIM signatures made at delivery, by algorithm (ed25519, rsa), and signing failures.
static DKIM_SIGNED: [Counter; 2] = [const { Counter::new() }; 2];
pub static DKIM_SIGN_FAILED: Counter = Counter::new();

pub fn dkim_signed(algorithm: crate::dkim::keys::Algorithm) {
    DKIM_SIGNED[algorithm as usize].inc();
}

pub fn dkim_signed_count(algorithm: crate::dkim::keys::Algorithm) -> u64 {
    DKIM_SIGNED[algorithm as usize].get()
}

/// Delivery attempts by TLS policy applied and how their TLS ended (`delivery::tls_policy`).
static DELIVERY_TLS: [[Counter; TlsResult::COUNT]; Applied::LABELS.len()] =
    [const { [const { Counter::new() }; TlsResult::COUNT] }; Applied::LABELS.len()];

pub fn delivery_tls(policy: &str, result: TlsResult) {
    if let Some(i) = Applied::LABELS.iter().position(|l| *l == policy) {
        DELIVERY_TLS[i][result as usize].inc();
    }
}

pub fn delivery_tls_count(policy: &str, result: TlsResult) -> u64 {
    Applied::LABELS
        .iter()
        .position(|l| *l == policy)
        .map_or(0, |i| DELIVERY_TLS[i][result as usize].get())
}

pub fn render(now: u64) -> String {
    expose::render(Snapshot { now })
}

/// The counters as they are at a scrape at `now` (Unix seconds).
#[derive(Debug)]
struct Snapshot {
    now: u64,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        expose::counter(
            e,
            "smtp_relay_sessions",
            "SMTP sessions started.",
            SESSIONS.get(),
        )?;
        expose::counter(
            e,
            "smtp_relay_auth_failures",
            "Failed AUTH attempts.",
            AUTH_FAILURES.get(),
        )?;
        expose::counter(e, "smtp_relay_accepted", "Messages queued.", ACCEPTED.get())?;
        expose::counter(
            e,
            "smtp_relay_relayed",
            "Queued messages with external recipients.",
            RELAYED.get(),
        )?;
        expose::counter(
            e,
            "smtp_relay_delivered",
            "Recipients accepted by a next hop.",
            DELIVERED.get(),
        )?;
        expose::counter(
            e,
            "smtp_relay_deferred",
            "Recipient delivery attempts that failed temporarily.",
            DEFERRED.get(),
        )?;
        expose::counter(
            e,
            "smtp_relay_bounced",
            "Recipients failed permanently.",
            BOUNCED.get(),
        )?;
        crate::directory::metrics::encode(e)?;
        expose::counter_family(
            e,
            "smtp_relay_refused",
            "Refusals by reason.",
            Refusal::iter().map(|reason| ([("reason", reason.as_str())], refused_count(reason))),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_disconnects",
            "Ended sessions by reason.",
            Disconnect::iter()
                .map(|reason| ([("reason", reason.as_str())], disconnect_count(reason))),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_bans_requested",
            "Ban requests for the gatekeeper's ban socket, by trigger.",
            Trigger::iter().map(|t| ([("trigger", t.as_str())], ban_requested_count(t))),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_ban_results",
            "How ban requests ended (accepted, refused, failed, dropped), by trigger.",
            Trigger::iter().flat_map(|t| {
                BanResult::iter().map(move |r| {
                    (
                        [("trigger", t.as_str()), ("result", r.as_str())],
                        ban_result_count(t, r),
                    )
                })
            }),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_checks",
            "Checks made on sessions (DNS lists, HELO, pre-greet, recipients, SPF, DKIM, ARC, \
             DMARC), by check and result.",
            Check::iter()
                .flat_map(|c| {
                    c.results().iter().map(move |&r| {
                        (
                            [("check", c.as_str()), ("result", r.as_str())],
                            check_count(c, r),
                        )
                    })
                })
                .chain(RecipientResult::iter().map(|r| {
                    (
                        [("check", "recipient"), ("result", r.as_str())],
                        recipient_check_count(r),
                    )
                }))
                .chain(AuthCheck::iter().flat_map(|c| {
                    AuthResult::iter().map(move |r| {
                        (
                            [("check", c.as_str()), ("result", r.as_str())],
                            auth_check_count(c, r),
                        )
                    })
                })),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_check_cache",
            "Answers of the checks' caches (hit, miss), by check.",
            [("hit", true), ("miss", false)]
                .into_iter()
                .map(|(label, hit)| {
                    (
                        [("check", "recipient"), ("result", label)],
                        recipient_cache_count(hit),
                    )
                }),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_dkim_signatures",
            "DKIM signatures added at delivery, by algorithm.",
            [
                crate::dkim::keys::Algorithm::Ed25519,
                crate::dkim::keys::Algorithm::Rsa,
            ]
            .into_iter()
            .map(|a| ([("algorithm", a.as_str())], dkim_signed_count(a))),
        )?;
        expose::counter_family(
            e,
            "smtp_relay_delivery_tls",
            "Delivery attempts by TLS policy applied (dane, mta_sts_enforce, mta_sts_testing, \
             opportunistic, required, none) and result (verified, encrypted, plaintext, failed, \
             mx_mismatch).",
            Applied::LABELS.into_iter().flat_map(|p| {
                TlsResult::iter().map(move |r| {
                    (
                        [("policy", p), ("result", r.as_str())],
                        delivery_tls_count(p, r),
                    )
                })
            }),
        )?;
        expose::counter(
            e,
            "smtp_relay_dkim_sign_failures",
            "Messages sent unsigned because signing failed.",
            DKIM_SIGN_FAILED.get(),
        )?;
        let depth = QUEUE_DEPTH.get();
        let oldest = OLDEST_RECEIVED_AT.get();
        let age = if depth == 0 || oldest == 0 {
            0
        } else {
            self.now.saturating_sub(oldest)
        };
        expose::gauge(
            e,
            "smtp_relay_queue_depth",
            "Messages in the queue.",
            expose::gauge_value(depth),
        )?;
        expose::gauge(
            e,
            "smtp_relay_oldest_message_age_seconds",
            "Age of the oldest queued message.",
            expose::gauge_value(age),
        )
    }
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    endpoint::serve(listener, || async { Ok(render(crate::clock::unix_now())) }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_series() {
        refused(Refusal::RelayDenied);
        disconnected(Disconnect::EofInData);
        let text = render(100);
        for name in [
            "smtp_relay_sessions_total ",
            "smtp_relay_auth_failures_total ",
            "smtp_relay_accepted_total ",
            "smtp_relay_relayed_total ",
            "smtp_relay_delivered_total ",
            "smtp_relay_deferred_total ",
            "smtp_relay_bounced_total ",
            "smtp_relay_refused_total{reason=\"relay_denied\"} ",
            "smtp_relay_disconnects_total{reason=\"eof_in_data\"} ",
            "smtp_relay_disconnects_total{reason=\"closed\"} ",
            "smtp_relay_bans_requested_total{trigger=\"auth_failures\"} ",
            "smtp_relay_ban_results_total{trigger=\"pre_greet\",result=\"dropped\"} ",
            "smtp_relay_checks_total{check=\"dmarc\",result=\"temperror\"} ",
            "smtp_relay_queue_depth ",
            "smtp_relay_checks_total{check=\"recipient\",result=\"unknown\"} ",
            "smtp_relay_check_cache_total{check=\"recipient\",result=\"hit\"} ",
            "smtp_relay_checks_total{check=\"dnsbl\",result=\"temperror\"} ",
            "smtp_relay_checks_total{check=\"helo\",result=\"ours\"} ",
            "smtp_relay_checks_total{check=\"pre_greet\",result=\"talker\"} ",
            "smtp_relay_oldest_message_age_seconds ",
            "smtp_relay_delivery_tls_total{policy=\"mta_sts_enforce\",result=\"mx_mismatch\"} ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(refused_count(Refusal::RelayDenied) >= 1);
    }
}
