//! The ban socket's protocol and the limits a request meets before it becomes a ban.
//!
//! One JSON object per line each way: `{"ban": "203.0.113.9", "for_secs": 3600, "reason":
//! "auth-failures"}` is answered `{"ok": true, "banned": "203.0.113.9/32", "for_secs": 3600}` or
//! `{"ok": false, "error": "..."}`. The daemon decides, not the requester: durations are clamped to
//! `ban_max_secs`, requests beyond `ban_requests_per_minute` are refused, and a source inside the
//! allowlist or a `never_ban` range is never banned (the answer names the entry).

use std::{net::IpAddr, time::Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::store::ban_source;

/// Longest request line taken (a request is a few dozen bytes).
pub const MAX_LINE: usize = 4096;
/// Longest reason kept (logged and stored as given, control characters replaced).
const MAX_REASON: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub ban: String,
    pub for_secs: u64,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    pub fn banned(source: IpNet, for_secs: u64) -> Answer {
        Answer {
            ok: true,
            banned: Some(source.to_string()),
            for_secs: Some(for_secs),
            error: None,
        }
    }

    pub fn refused(refusal: &Refusal) -> Answer {
        Answer {
            ok: false,
            banned: None,
            for_secs: None,
            error: Some(refusal.to_string()),
        }
    }
}

/// Why a request did not become a ban; [`Refusal::label`] names it in metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "not a ban request ({0}); send {{\"ban\": ADDRESS, \"for_secs\": N, \"reason\": TEXT}}"
    )]
    Malformed(String),
    #[error("{0}")]
    BadSource(String),
    #[error("too many ban requests (ban_requests_per_minute = {0}); try again later")]
    RateLimited(u32),
    #[error("{addr} is in the allowlist ({entry})")]
    Allowlisted { addr: String, entry: IpNet },
    #[error("{addr} is in never_ban ({entry})")]
    NeverBan { addr: String, entry: IpNet },
    #[error("{0}")]
    Full(String),
    #[error("the ban could not be made: {0}")]
    Failed(String),
}

impl Refusal {
    pub const LABELS: [&'static str; 7] = [
        "malformed",
        "bad_source",
        "rate_limited",
        "allowlisted",
        "never_ban",
        "table_full",
        "error",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::BadSource(_) => "bad_source",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::Allowlisted { .. } => "allowlisted",
            Refusal::NeverBan { .. } => "never_ban",
            Refusal::Full(_) => "table_full",
            Refusal::Failed(_) => "error",
        }
    }
}

/// A request that passed the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub source: IpNet,
    /// Clamped to `ban_max_secs`.
    pub for_secs: u64,
    pub reason: String,
}

/// What a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_secs: u64,
    pub v6_prefix: u8,
    /// `never_ban` ranges.
    pub never_ban: Vec<IpNet>,
    /// The allowlist's networks.
    pub allow: Vec<IpNet>,
}

/// The first of `nets` that shares an address with `source` (either holds the other).
pub fn overlapping(nets: &[IpNet], source: IpNet) -> Option<IpNet> {
    nets.iter()
        .copied()
        .find(|n| n.contains(&source.network()) || source.contains(&n.network()))
}

impl Limits {
    /// Parses and checks one request line (rate limiting is the caller's, before this).
    pub fn check(&self, line: &str) -> Result<Checked, Refusal> {
        let request: Request =
            serde_json::from_str(line).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let addr: IpAddr =
            request.ban.trim().parse().map_err(|_| {
                Refusal::BadSource(format!("\"{}\" is not an IP address", request.ban))
            })?;
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(Refusal::BadSource(format!(
                "{addr} is an IPv4-mapped IPv6 address: send the IPv4 address"
            )));
        }
        if request.for_secs == 0 {
            return Err(Refusal::Malformed("for_secs is 0".into()));
        }
        let source = ban_source(addr, self.v6_prefix);
        if let Some(entry) = overlapping(&self.allow, source) {
            return Err(Refusal::Allowlisted {
                addr: addr.to_string(),
                entry,
            });
        }
        if let Some(entry) = overlapping(&self.never_ban, source) {
            return Err(Refusal::NeverBan {
                addr: addr.to_string(),
                entry,
            });
        }
        Ok(Checked {
            source,
            for_secs: request.for_secs.min(self.max_secs),
            reason: clean_reason(&request.reason),
        })
    }
}

/// The reason as logged and stored: printable, one line, bounded.
pub fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Requests per minute, as a token bucket: a burst of a minute's worth, refilled continuously.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> RateLimit {
        RateLimit {
            per_minute,
            tokens: f64::from(per_minute),
            last: Instant::now(),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one request's token; false when there is none left.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let capacity = f64::from(self.per_minute);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * capacity / 60.0).min(capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_secs: 86_400,
            v6_prefix: 64,
            never_ban: vec!["192.0.2.0/24".parse().expect("net")],
            allow: vec![
                "198.51.100.0/24".parse().expect("net"),
                "2001:db8:0:1:5::/80".parse().expect("net"),
            ],
        }
    }

    #[test]
    fn requests_are_checked_and_clamped() {
        let ok = limits()
            .check(r#"{"ban": "203.0.113.9", "for_secs": 3600, "reason": "auth-failures"}"#)
            .expect("ok");
        assert_eq!(ok.source.to_string(), "203.0.113.9/32");
        assert_eq!(ok.for_secs, 3600);
        let long = limits()
            .check(r#"{"ban": "2001:db8:0:2::7", "for_secs": 999999}"#)
            .expect("ok");
        assert_eq!(long.source.to_string(), "2001:db8:0:2::/64");
        assert_eq!(long.for_secs, 86_400);
        assert_eq!(
            serde_json::to_string(&Answer::banned(ok.source, ok.for_secs)).expect("json"),
            r#"{"ok":true,"banned":"203.0.113.9/32","for_secs":3600}"#
        );
    }

    #[test]
    fn allowlisted_never_ban_and_malformed_requests_are_refused_with_why() {
        let refuse = |line: &str| limits().check(line).expect_err("refused");
        let allowed = refuse(r#"{"ban": "198.51.100.7", "for_secs": 60}"#);
        assert_eq!(
            allowed.to_string(),
            "198.51.100.7 is in the allowlist (198.51.100.0/24)"
        );
        assert_eq!(allowed.label(), "allowlisted");
        // The /64 a ban would cover holds an allowlisted /80.
        let v6 = refuse(r#"{"ban": "2001:db8:0:1::9", "for_secs": 60}"#);
        assert_eq!(v6.label(), "allowlisted");
        let own = refuse(r#"{"ban": "192.0.2.25", "for_secs": 60}"#);
        assert_eq!(own.to_string(), "192.0.2.25 is in never_ban (192.0.2.0/24)");
        assert_eq!(refuse("{").label(), "malformed");
        assert_eq!(
            refuse(r#"{"ban": "x", "for_secs": 1}"#).label(),
            "bad_source"
        );
        assert_eq!(
            refuse(r#"{"ban": "203.0.113.9", "for_secs": 0}"#).label(),
            "malformed"
        );
        assert_eq!(
            refuse(r#"{"ban": "203.0.113.9", "for_secs": 5, "extra": 1}"#).label(),
            "malformed"
        );
        let answer = Answer::refused(&allowed);
        assert_eq!(
            serde_json::to_string(&answer).expect("json"),
            r#"{"ok":false,"error":"198.51.100.7 is in the allowlist (198.51.100.0/24)"}"#
        );
    }

    #[test]
    fn the_rate_is_a_minute_burst_refilled_continuously() {
        let start = Instant::now();
        let mut rate = RateLimit::new(3);
        assert!(rate.take(start) && rate.take(start) && rate.take(start));
        assert!(!rate.take(start));
        assert!(!rate.take(start + Duration::from_secs(10)));
        assert!(rate.take(start + Duration::from_secs(21)));
        assert_eq!(clean_reason(" a\nb\u{7} "), "a b");
    }
}
