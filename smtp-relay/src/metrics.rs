//! Process-wide counters and a Prometheus text endpoint (`GET /metrics` on
//! `metrics_listen`), served by a plain tokio listener.
//!
//! Counters are global atomics: the audit functions and the queue bump
//! them where the events happen, so no code path can forget to count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strum::{EnumCount as _, IntoEnumIterator as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::disconnect::Disconnect;
use crate::refusal::Refusal;

pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
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

/// The exposition text (Prometheus text format 0.0.4).
pub fn render(now: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = write!(
            out,
            "# HELP smtp_relay_{name} {help}\n# TYPE smtp_relay_{name} counter\nsmtp_relay_{name} {v}\n"
        );
    };
    counter("sessions_total", "SMTP sessions started.", SESSIONS.get());
    counter(
        "auth_failures_total",
        "Failed AUTH attempts.",
        AUTH_FAILURES.get(),
    );
    counter("accepted_total", "Messages queued.", ACCEPTED.get());
    counter(
        "relayed_total",
        "Queued messages with external recipients.",
        RELAYED.get(),
    );
    counter(
        "delivered_total",
        "Recipients accepted by a next hop.",
        DELIVERED.get(),
    );
    counter(
        "deferred_total",
        "Recipient delivery attempts that failed temporarily.",
        DEFERRED.get(),
    );
    counter(
        "bounced_total",
        "Recipients failed permanently.",
        BOUNCED.get(),
    );
    let _ = write!(
        out,
        "# HELP smtp_relay_refused_total Refusals by reason.\n# TYPE smtp_relay_refused_total counter\n"
    );
    for reason in Refusal::iter() {
        let _ = writeln!(
            out,
            "smtp_relay_refused_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            refused_count(reason)
        );
    }
    let _ = write!(
        out,
        "# HELP smtp_relay_disconnects_total Ended sessions by reason.\n# TYPE smtp_relay_disconnects_total counter\n"
    );
    for reason in Disconnect::iter() {
        let _ = writeln!(
            out,
            "smtp_relay_disconnects_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            disconnect_count(reason)
        );
    }
    let depth = QUEUE_DEPTH.get();
    let oldest = OLDEST_RECEIVED_AT.get();
    let age = if depth == 0 || oldest == 0 {
        0
    } else {
        now.saturating_sub(oldest)
    };
    let _ = write!(
        out,
        "# HELP smtp_relay_queue_depth Messages in the queue.\n# TYPE smtp_relay_queue_depth gauge\nsmtp_relay_queue_depth {depth}\n\
         # HELP smtp_relay_oldest_message_age_seconds Age of the oldest queued message.\n# TYPE smtp_relay_oldest_message_age_seconds gauge\nsmtp_relay_oldest_message_age_seconds {age}\n"
    );
    out
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = answer(tcp).await {
                        warn!(event = "metrics_error", client = %peer, error = %e);
                    }
                });
            }
            Err(e) => {
                warn!(event = "metrics_error", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
            && !buf[..len].windows(2).any(|w| w == b"\n\n")
            && len < buf.len()
        {
            let n = tcp.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if read.is_err() {
        return Ok(());
    }
    let first = buf[..len].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let (status, body) = if first.starts_with(b"GET /metrics ") || first == b"GET /metrics\r" {
        ("200 OK", render(crate::clock::unix_now()))
    } else {
        ("404 Not Found", "not found; try /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(Duration::from_secs(5), tcp.write_all(response.as_bytes()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
    let _ = tcp.shutdown().await;
    Ok(())
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
            "smtp_relay_queue_depth ",
            "smtp_relay_oldest_message_age_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert!(refused_count(Refusal::RelayDenied) >= 1);
    }
}
