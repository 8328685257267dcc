//! The audit log: one `tracing` line per event, target `audit`, with the
//! same grep-able fields everywhere: `event`, `client`, `tls`, `user`
//! (`none` when not authenticated), and for messages `queue_id`, `sender`,
//! `recipients`, `size`, `outcome`. Peer-supplied strings are logged with
//! `Debug` formatting so they cannot forge log lines.

use std::net::SocketAddr;

use tracing::{info, warn};

use crate::disconnect::Disconnect;
use crate::metrics;
use crate::refusal::{MessageOutcome, Refusal};
use crate::reply::Reply;

fn user_or_none(user: Option<&str>) -> &str {
    user.unwrap_or("none")
}

pub fn listening(address: SocketAddr, role: &str) {
    info!(target: "audit", event = "listening", address = %address, role, "listener ready");
}

pub fn peer_refused(client: SocketAddr, listener: SocketAddr) {
    metrics::refused(Refusal::PeerNotAllowed);
    warn!(target: "audit", event = "peer_refused", client = %client, listener = %listener,
        outcome = "554 5.7.1", "peer outside the listener's allowed ranges");
}

pub fn connect(client: SocketAddr, listener: SocketAddr, role: &str) {
    metrics::SESSIONS.inc();
    info!(target: "audit", event = "connect", client = %client, listener = %listener, role,
        "connection");
}

pub fn disconnect(client: SocketAddr, tls: bool, user: Option<&str>, reason: Disconnect) {
    metrics::disconnected(reason);
    info!(target: "audit", event = "disconnect", client = %client, tls,
        user = user_or_none(user), reason = reason.as_str(), "connection closed");
}

pub fn too_many_errors(client: SocketAddr, tls: bool, user: Option<&str>) {
    metrics::refused(Refusal::TooManyErrors);
    warn!(target: "audit", event = "too_many_errors", client = %client, tls,
        user = user_or_none(user), outcome = "421 4.7.0", "too many bad commands");
}

pub fn too_many_commands(client: SocketAddr, tls: bool, user: Option<&str>) {
    metrics::refused(Refusal::TooManyCommands);
    warn!(target: "audit", event = "too_many_commands", client = %client, tls,
        user = user_or_none(user), outcome = "421 4.7.0", "command limit reached");
}

pub fn too_many_from_client(client: SocketAddr, listener: SocketAddr) {
    metrics::refused(Refusal::TooManyConnections);
    warn!(target: "audit", event = "too_many_from_client", client = %client,
        listener = %listener, outcome = "421 4.7.0", "per-client session limit reached");
}

pub fn auth_throttled(client: SocketAddr, attempted_user: Option<&str>) {
    metrics::refused(Refusal::AuthThrottled);
    warn!(target: "audit", event = "auth", client = %client, tls = true,
        user = ?attempted_user.unwrap_or(""), outcome = "throttled",
        reason = "too many failures", "authentication refused for now (454 4.7.0)");
}

pub fn tls_started(client: SocketAddr, version: &str) {
    info!(target: "audit", event = "tls", client = %client, tls = true, version,
        outcome = "ok", "TLS established");
}

pub fn tls_failed(client: SocketAddr, error: &str) {
    warn!(target: "audit", event = "tls", client = %client, tls = false, error,
        outcome = "failed", "TLS handshake failed");
}

pub fn starttls_injection(client: SocketAddr) {
    warn!(target: "audit", event = "starttls_injection", client = %client,
        "discarded plaintext pipelined after STARTTLS");
}

pub fn pre_greet(client: SocketAddr) {
    warn!(target: "audit", event = "pre_greet", client = %client, outcome = "554 5.5.1",
        "input before the greeting");
}

pub fn smuggling_attempt(client: SocketAddr, tls: bool, user: Option<&str>) {
    warn!(target: "audit", event = "smuggling_attempt", client = %client, tls,
        user = user_or_none(user), "fake end of data (SMTP smuggling) in a message");
}

pub fn auth_succeeded(client: SocketAddr, user: &str, mechanism: &str) {
    info!(target: "audit", event = "auth", client = %client, tls = true, user = ?user,
        mechanism, outcome = "ok", "authenticated");
}

pub fn auth_failed(client: SocketAddr, attempted_user: Option<&str>, mechanism: &str, why: &str) {
    metrics::AUTH_FAILURES.inc();
    warn!(target: "audit", event = "auth", client = %client, tls = true,
        user = ?attempted_user.unwrap_or(""), mechanism, outcome = "failed", reason = why,
        "authentication failed");
}

pub fn sender_refused(client: SocketAddr, user: &str, sender: &str) {
    metrics::refused(Refusal::SenderNotOwned);
    warn!(target: "audit", event = "sender_refused", client = %client, user = ?user,
        sender = ?sender, outcome = "553 5.7.1", "sender not owned by user");
}

pub fn relay_denied(client: SocketAddr, tls: bool, sender: &str, recipient: &str) {
    metrics::refused(Refusal::RelayDenied);
    warn!(target: "audit", event = "relay_denied", client = %client, tls, user = "none",
        sender = ?sender, recipient = ?recipient, outcome = "554 5.7.1", "relay access denied");
}

/// The end of a DATA phase: queued or refused.
pub struct MessageEvent<'a> {
    pub client: SocketAddr,
    pub tls: bool,
    pub user: Option<&'a str>,
    pub queue_id: &'a str,
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub size: u64,
    /// What is counted.
    pub outcome: MessageOutcome,
    /// What the client was told (logged as `outcome`, e.g. `250 2.0.0`).
    pub reply: &'a Reply,
}

pub fn message(e: &MessageEvent<'_>) {
    let recipients = e.recipients.join(",");
    // Counted from the typed outcome: the reply code does not tell the
    // reason (a 550 may be a bare line ending or a policy refusal).
    match e.outcome {
        MessageOutcome::Queued => metrics::ACCEPTED.inc(),
        MessageOutcome::Refused(reason) => metrics::refused(reason),
    }
    let outcome = format!("{} {}", e.reply.code, e.reply.enhanced.unwrap_or(""));
    if e.outcome == MessageOutcome::Queued {
        info!(target: "audit", event = "message", client = %e.client, tls = e.tls,
            user = ?user_or_none(e.user), queue_id = e.queue_id, sender = ?e.sender,
            recipients = ?recipients, size = e.size, outcome, "message queued");
    } else {
        warn!(target: "audit", event = "message", client = %e.client, tls = e.tls,
            user = ?user_or_none(e.user), queue_id = e.queue_id, sender = ?e.sender,
            recipients = ?recipients, size = e.size, outcome, "message refused");
    }
}

/// A RCPT for a local recipient refused by `[recipients]`: unknown (`550 5.1.1`) or not
/// confirmed by the next hop (`451 4.4.3`). `detail` says why (the hop's reply, the list).
pub struct RecipientEvent<'a> {
    pub client: SocketAddr,
    pub tls: bool,
    pub user: Option<&'a str>,
    pub sender: &'a str,
    pub recipient: &'a str,
    /// `unknown` or `unverified`.
    pub result: &'a str,
    /// `list` or `verify`.
    pub source: &'a str,
    pub detail: &'a str,
    pub reply: &'a Reply,
}

pub fn recipient_refused(e: &RecipientEvent<'_>, reason: Refusal) {
    metrics::refused(reason);
    let outcome = format!("{} {}", e.reply.code, e.reply.enhanced.unwrap_or(""));
    warn!(target: "audit", event = "recipient", client = %e.client, tls = e.tls,
        user = ?user_or_none(e.user), sender = ?e.sender, recipient = ?e.recipient,
        result = e.result, source = e.source, detail = ?e.detail, outcome,
        "recipient refused");
}

pub fn recipient_harvest(client: SocketAddr, tls: bool, user: Option<&str>, unknown: u32) {
    metrics::refused(Refusal::RecipientHarvest);
    warn!(target: "audit", event = "recipient_harvest", client = %client, tls,
        user = user_or_none(user), unknown, outcome = "421 4.7.0",
        "too many unknown recipients, closing");
}

/// `zone:weight,...` for the log.
fn weighted(entries: &[(String, i64)]) -> String {
    let parts: Vec<String> = entries.iter().map(|(z, w)| format!("{z}:{w}")).collect();
    parts.join(",")
}

/// The DNS lists' verdict on a connecting client (one line per decision; `cached` when it
/// came from the verdict cache).
pub fn screen(client: SocketAddr, d: &crate::screen::Decision, cached: bool) {
    let listed = weighted(&d.listed);
    let wl = weighted(&d.welcome);
    let temperror = d.temperror.join(",");
    if d.blocked() {
        metrics::refused(Refusal::Dnsbl);
        warn!(target: "audit", event = "screen", client = %client, listed, wl, temperror,
            score = d.score, threshold = d.threshold, cached, outcome = "554 5.7.1",
            blocked_using = d.blocked_by().unwrap_or(""),
            "client refused: DNS list score reached the threshold");
    } else {
        info!(target: "audit", event = "screen", client = %client, listed, wl, temperror,
            score = d.score, threshold = d.threshold, cached, outcome = "pass",
            "DNS lists checked");
    }
}

/// A stranger's EHLO/HELO name judged bad or ours: refused with `reply`, or only logged
/// (`outcome="logged"`) under `helo = "log"`.
pub fn helo(
    client: SocketAddr,
    name: &str,
    result: crate::check::CheckResult,
    reply: Option<&Reply>,
) {
    let outcome = match reply {
        Some(r) => {
            metrics::refused(Refusal::HeloRejected);
            format!("{} {}", r.code, r.enhanced.unwrap_or(""))
        }
        None => "logged".to_owned(),
    };
    warn!(target: "audit", event = "helo", client = %client, helo = ?name,
        result = result.as_str(), outcome, "suspicious HELO name");
}

/// The sender authentication results of one message (counted per check), on one line next
/// to the message's own (`queue_id` ties them).
pub fn check(client: SocketAddr, queue_id: &str, verdict: &crate::sender_auth::message::Verdict) {
    use crate::sender_auth::{AuthCheck, CheckResult};
    let name = |r: Option<CheckResult>| r.map_or("off", CheckResult::as_str);
    for (check, result) in [
        (AuthCheck::Spf, verdict.spf),
        (AuthCheck::Dkim, verdict.dkim),
        (AuthCheck::Arc, verdict.arc),
        (AuthCheck::Dmarc, verdict.dmarc),
    ] {
        if let Some(result) = result {
            metrics::checked(check, result);
        }
    }
    let action = match &verdict.action {
        crate::sender_auth::message::DmarcAction::Accept => "accept".to_owned(),
        crate::sender_auth::message::DmarcAction::Quarantine { policy, domain } => {
            format!("quarantine (p={policy} of {domain})")
        }
        crate::sender_auth::message::DmarcAction::Reject { domain } => {
            format!("reject (p=reject of {domain})")
        }
    };
    info!(target: "audit", event = "check", client = %client, queue_id,
        spf = name(verdict.spf), dkim = name(verdict.dkim), arc = name(verdict.arc),
        dmarc = name(verdict.dmarc), action, "sender authentication");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(reason: Refusal, reply: Reply) {
        message(&MessageEvent {
            client: "192.0.2.7:1".parse().expect("addr"),
            tls: false,
            user: None,
            queue_id: "X",
            sender: "a@example.org",
            recipients: &[],
            size: 0,
            outcome: MessageOutcome::Refused(reason),
            reply: &reply,
        });
    }

    /// The counter follows the reason, not the reply code: before, every
    /// 550 at the end of DATA was counted as `bare_line_ending`.
    #[test]
    fn a_550_that_is_not_a_bare_line_ending_is_not_counted_as_one() {
        let bare = metrics::refused_count(Refusal::BareLineEnding);
        let local = metrics::refused_count(Refusal::LocalError);
        refuse(
            Refusal::LocalError,
            Reply::new(550, "5.7.1", "Message refused by policy"),
        );
        assert_eq!(metrics::refused_count(Refusal::BareLineEnding), bare);
        assert!(metrics::refused_count(Refusal::LocalError) > local);
    }
}
