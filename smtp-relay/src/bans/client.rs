//! The one task that talks to the gatekeeper's ban socket: one JSON request line, one JSON
//! answer line, over a connection kept for the next request.
//!
//! `{"ban": "203.0.113.9", "for_secs": 3600, "reason": "auth-failures"}` is answered
//! `{"ok": true, "banned": "203.0.113.9/32", "for_secs": 3600}` or
//! `{"ok": false, "error": "..."}`. A connection the daemon closed (it restarted) is replaced
//! once at once; a socket that cannot be reached is tried again after a back-off (100 ms
//! doubling to 10 s) and reported once per outage. Every step waits at most
//! `request_timeout_ms`.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{BanResult, Recent, Request};
use crate::config::BansConfig;
use crate::metrics;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest answer line we read; the daemon's are far shorter.
const ANSWER_LIMIT: u64 = 4096;

#[derive(Serialize)]
struct WireRequest<'a> {
    ban: String,
    for_secs: u64,
    reason: &'a str,
}

/// The daemon's answer line.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub banned: Option<String>,
    #[serde(default)]
    pub for_secs: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("ban socket unreachable, waiting before the next attempt")]
    Backoff,
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("ban socket: {0}")]
    Io(#[source] io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreadable answer {0:?}")]
    BadAnswer(String),
}

/// The request line for `req`.
pub fn request_line(req: &Request) -> String {
    let wire = WireRequest {
        ban: req.ip.to_string(),
        // Whole seconds, rounded up: a ban is never shorter than configured.
        for_secs: req.ban.as_secs() + u64::from(req.ban.subsec_nanos() > 0),
        reason: req.trigger.reason(),
    };
    let mut line = serde_json::to_string(&wire).unwrap_or_default();
    line.push('\n');
    line
}

/// A connection to the socket, made when needed.
struct Link {
    path: PathBuf,
    timeout: Duration,
    stream: Option<BufReader<UnixStream>>,
    /// Since the last failed connect, until the next successful one.
    down: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Link {
    async fn connect(&mut self) -> Result<(), LinkError> {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(LinkError::Backoff);
        }
        let source = match tokio::time::timeout(self.timeout, UnixStream::connect(&self.path)).await
        {
            Ok(Ok(stream)) => {
                if self.down {
                    info!(event = "ban_socket_up", socket = %self.path.display(),
                        "the gatekeeper's ban socket answers again");
                }
                self.down = false;
                self.retry_at = None;
                self.backoff = BACKOFF_MIN;
                self.stream = Some(BufReader::new(stream));
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        if !self.down {
            warn!(event = "ban_socket_down", socket = %self.path.display(), error = %source,
                "cannot reach the gatekeeper's ban socket: no bans until it is back \
                 (SMTP service goes on)");
            self.down = true;
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Err(LinkError::Connect {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Sends `line` and reads the answer; a kept connection that turns out closed is replaced
    /// once.
    async fn ask(&mut self, line: &str) -> Result<Answer, LinkError> {
        loop {
            let fresh = self.stream.is_none();
            if fresh {
                self.connect().await?;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Err(LinkError::Backoff);
            };
            match tokio::time::timeout(self.timeout, exchange(stream, line)).await {
                Ok(Ok(text)) => {
                    return serde_json::from_str(text.trim_end()).map_err(|_| {
                        self.stream = None;
                        LinkError::BadAnswer(text)
                    });
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    if fresh {
                        return Err(LinkError::Io(e));
                    }
                }
                Err(_) => {
                    self.stream = None;
                    return Err(LinkError::Timeout(self.timeout));
                }
            }
        }
    }
}

async fn exchange(stream: &mut BufReader<UnixStream>, line: &str) -> io::Result<String> {
    stream.get_mut().write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    let n = (&mut *stream)
        .take(ANSWER_LIMIT)
        .read_line(&mut answer)
        .await?;
    if n == 0 || !answer.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without a whole answer",
        ));
    }
    Ok(answer)
}

/// The socket task, spawned by the server.
pub struct BanClient {
    rx: mpsc::Receiver<Request>,
    recent: Recent,
    link: Link,
}

impl BanClient {
    pub(super) fn new(config: &BansConfig, rx: mpsc::Receiver<Request>, recent: Recent) -> Self {
        BanClient {
            rx,
            recent,
            link: Link {
                path: config.socket.clone(),
                timeout: config.request_timeout,
                stream: None,
                down: false,
                retry_at: None,
                backoff: BACKOFF_MIN,
            },
        }
    }

    /// Sends requests until every sender is gone.
    pub async fn run(mut self) {
        while let Some(req) = self.rx.recv().await {
            let sent = Instant::now();
            let answer = self.link.ask(&request_line(&req)).await;
            self.report(&req, sent, answer);
        }
    }

    /// The one log line per ban, the metric, and the de-duplication's view of it.
    fn report(&self, req: &Request, sent: Instant, answer: Result<Answer, LinkError>) {
        let (client, trigger) = (req.ip, req.trigger.as_str());
        let requested = req.ban.as_secs();
        let result = match answer {
            Ok(Answer {
                ok: true,
                banned,
                for_secs,
                ..
            }) => {
                let granted = for_secs.unwrap_or(requested);
                if granted < requested {
                    self.recent
                        .granted(req.ip, sent, Duration::from_secs(granted));
                }
                info!(target: "audit", event = "ban", client = %client, trigger,
                    requested_secs = requested, for_secs = granted,
                    banned = banned.as_deref().unwrap_or(""), outcome = "ok",
                    "banned at XDP by the gatekeeper");
                BanResult::Accepted
            }
            Ok(Answer {
                ok: false, error, ..
            }) => {
                warn!(target: "audit", event = "ban", client = %client, trigger,
                    requested_secs = requested, outcome = "refused",
                    error = ?error.as_deref().unwrap_or(""), "the gatekeeper refused the ban");
                BanResult::Refused
            }
            Err(e) => {
                // Asked again on the next evidence.
                self.recent.forget(req.ip);
                if matches!(e, LinkError::Backoff | LinkError::Connect { .. }) {
                    // The outage was reported once by the link.
                    debug!(target: "audit", event = "ban", client = %client, trigger,
                        requested_secs = requested, outcome = "failed", error = %e);
                } else {
                    warn!(target: "audit", event = "ban", client = %client, trigger,
                        requested_secs = requested, outcome = "failed", error = %e,
                        "ban request got no answer");
                }
                BanResult::Failed
            }
        };
        metrics::ban_result(req.trigger, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bans::Trigger;

    #[test]
    fn request_lines_follow_the_protocol() {
        let req = Request {
            ip: "203.0.113.9".parse().expect("ip"),
            trigger: Trigger::AuthFailures,
            ban: Duration::from_millis(3_599_500),
        };
        assert_eq!(
            request_line(&req),
            "{\"ban\":\"203.0.113.9\",\"for_secs\":3600,\"reason\":\"auth-failures\"}\n"
        );
        let a: Answer =
            serde_json::from_str(r#"{"ok": true, "banned": "203.0.113.9/32", "for_secs": 60}"#)
                .expect("ok answer");
        assert_eq!((a.ok, a.for_secs), (true, Some(60)));
        let a: Answer =
            serde_json::from_str(r#"{"ok": false, "error": "in the allowlist"}"#).expect("refusal");
        assert_eq!(a.error.as_deref(), Some("in the allowlist"));
    }
}
