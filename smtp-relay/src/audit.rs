//! The audit log: one `tracing` line per event, target `audit`, with the
//! same grep-able fields everywhere: `event`, `client`, `tls`, `user`
//! (`none` when not authenticated), and for messages `queue_id`, `sender`,
//! `recipients`, `size`, `outcome`. Peer-supplied strings are logged with
//! `Debug` formatting so they cannot forge log lines.

use std::net::SocketAddr;

use tracing::{info, warn};

use crate::metrics;

fn user_or_none(user: Option<&str>) -> &str {
    user.unwrap_or("none")
}

pub fn listening(address: SocketAddr, role: &str) {
    info!(target: "audit", event = "listening", address = %address, role, "listener ready");
}

pub fn peer_refused(client: SocketAddr, listener: SocketAddr) {
    metrics::refused("peer_not_allowed");
    warn!(target: "audit", event = "peer_refused", client = %client, listener = %listener,
        outcome = "554 5.7.1", "peer outside the listener's allowed ranges");
}

pub fn connect(client: SocketAddr, listener: SocketAddr, role: &str) {
    metrics::SESSIONS.inc();
    info!(target: "audit", event = "connect", client = %client, listener = %listener, role,
        "connection");
}

pub fn disconnect(client: SocketAddr, tls: bool, user: Option<&str>, reason: &str) {
    info!(target: "audit", event = "disconnect", client = %client, tls,
        user = user_or_none(user), reason, "connection closed");
}

pub fn too_many_errors(client: SocketAddr, tls: bool, user: Option<&str>) {
    metrics::refused("too_many_errors");
    warn!(target: "audit", event = "too_many_errors", client = %client, tls,
        user = user_or_none(user), outcome = "421 4.7.0", "too many bad commands");
}

pub fn too_many_commands(client: SocketAddr, tls: bool, user: Option<&str>) {
    metrics::refused("too_many_commands");
    warn!(target: "audit", event = "too_many_commands", client = %client, tls,
        user = user_or_none(user), outcome = "421 4.7.0", "command limit reached");
}

pub fn too_many_from_client(client: SocketAddr, listener: SocketAddr) {
    metrics::refused("too_many_connections");
    warn!(target: "audit", event = "too_many_from_client", client = %client,
        listener = %listener, outcome = "421 4.7.0", "per-client session limit reached");
}

pub fn auth_throttled(client: SocketAddr, attempted_user: Option<&str>) {
    metrics::refused("auth_throttled");
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
    metrics::refused("sender_not_owned");
    warn!(target: "audit", event = "sender_refused", client = %client, user = ?user,
        sender = ?sender, outcome = "553 5.7.1", "sender not owned by user");
}

pub fn relay_denied(client: SocketAddr, tls: bool, sender: &str, recipient: &str) {
    metrics::refused("relay_denied");
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
    pub outcome: &'a str,
}

pub fn message(e: &MessageEvent<'_>) {
    let recipients = e.recipients.join(",");
    match e.outcome.get(..3) {
        Some("250") => metrics::ACCEPTED.inc(),
        Some("552") => metrics::refused("message_too_big"),
        Some("550") => metrics::refused("bare_line_ending"),
        Some("500") => metrics::refused("line_too_long"),
        _ => metrics::refused("local_error"),
    }
    if e.outcome.starts_with('2') {
        info!(target: "audit", event = "message", client = %e.client, tls = e.tls,
            user = ?user_or_none(e.user), queue_id = e.queue_id, sender = ?e.sender,
            recipients = ?recipients, size = e.size, outcome = e.outcome, "message queued");
    } else {
        warn!(target: "audit", event = "message", client = %e.client, tls = e.tls,
            user = ?user_or_none(e.user), queue_id = e.queue_id, sender = ?e.sender,
            recipients = ?recipients, size = e.size, outcome = e.outcome, "message refused");
    }
}
