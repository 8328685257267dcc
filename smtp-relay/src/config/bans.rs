//! `[bans]`: where the gatekeeper's ban socket is and which evidence asks it for a ban. Every
//! trigger is off unless its table is written; a `[bans]` table without triggers connects to
//! nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, KeyPath, duration, ensure, positive, resolve};

/// The gatekeeper daemon's default `ban_socket`.
pub const DEFAULT_SOCKET: &str = "/run/gatekeeper/ban.sock";
/// Longest greeting delay: clients give up on a silent server after a minute or so.
const MAX_PRE_GREET_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawBans {
    socket: PathBuf,
    #[serde(deserialize_with = "duration::millis")]
    request_timeout_ms: Duration,
    auth_failures: Option<RawCount>,
    connections: Option<RawCount>,
    smuggling: Option<RawSmuggling>,
    pre_greet: Option<RawPreGreet>,
    unknown_recipients: Option<RawCount>,
}

impl Default for RawBans {
    fn default() -> RawBans {
        RawBans {
            socket: PathBuf::from(DEFAULT_SOCKET),
            request_timeout_ms: Duration::from_secs(2),
            auth_failures: None,
            connections: None,
            smuggling: None,
            pre_greet: None,
            unknown_recipients: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCount {
    count: u32,
    #[serde(deserialize_with = "duration::secs")]
    within_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    ban_secs: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmuggling {
    #[serde(deserialize_with = "duration::secs")]
    ban_secs: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreGreet {
    #[serde(deserialize_with = "duration::millis")]
    delay_ms: Duration,
    #[serde(deserialize_with = "duration::secs")]
    ban_secs: Duration,
}

/// "`count` events from one address within `within`": ban it for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountTrigger {
    pub count: u32,
    pub within: Duration,
    pub ban: Duration,
}

/// Wait `delay` before the greeting; input that arrives first bans for `ban`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreGreet {
    pub delay: Duration,
    pub ban: Duration,
}

/// The validated `[bans]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BansConfig {
    pub socket: PathBuf,
    /// Bounds connecting, sending and reading the answer of one request.
    pub request_timeout: Duration,
    /// AUTH attempts that failed (bad credentials, malformed, or refused by the throttle).
    pub auth_failures: Option<CountTrigger>,
    /// Connections accepted from one address.
    pub connections: Option<CountTrigger>,
    /// A fake end of data in DATA (SMTP smuggling): the ban's length.
    pub smuggling: Option<Duration>,
    pub pre_greet: Option<PreGreet>,
    /// RCPTs refused as unknown (`550 5.1.1`, see `[recipients]`): a recipient harvester.
    pub unknown_recipients: Option<CountTrigger>,
}

/// A ban length: whole seconds on the socket, so at least one.
fn ban_length(d: Duration, at: &KeyPath) -> Result<Duration, Invalid> {
    ensure(d >= Duration::from_secs(1), at, "must be at least 1 second")?;
    Ok(d)
}

fn count_trigger(raw: RawCount, at: &KeyPath) -> Result<CountTrigger, Invalid> {
    Ok(CountTrigger {
        count: positive(raw.count, &at.key("count"))?,
        within: positive(raw.within_secs, &at.key("within_secs"))?,
        ban: ban_length(raw.ban_secs, &at.key("ban_secs"))?,
    })
}

pub(super) fn validate(raw: RawBans, base: &Path, at: &KeyPath) -> Result<BansConfig, Invalid> {
    ensure(
        !raw.socket.as_os_str().is_empty(),
        &at.key("socket"),
        "empty path",
    )?;
    let request_timeout = positive(raw.request_timeout_ms, &at.key("request_timeout_ms"))?;
    let auth_failures = raw
        .auth_failures
        .map(|r| count_trigger(r, &at.key("auth_failures")))
        .transpose()?;
    let connections = raw
        .connections
        .map(|r| count_trigger(r, &at.key("connections")))
        .transpose()?;
    let smuggling = raw
        .smuggling
        .map(|r| ban_length(r.ban_secs, &at.key("smuggling").key("ban_secs")))
        .transpose()?;
    let pre_greet = match raw.pre_greet {
        Some(r) => {
            let delay_at = at.key("pre_greet").key("delay_ms");
            let delay = positive(r.delay_ms, &delay_at)?;
            ensure(
                delay <= MAX_PRE_GREET_DELAY,
                &delay_at,
                "at most 30 s: clients give up on a silent server",
            )?;
            Some(PreGreet {
                delay,
                ban: ban_length(r.ban_secs, &at.key("pre_greet").key("ban_secs"))?,
            })
        }
        None => None,
    };
    let unknown_recipients = raw
        .unknown_recipients
        .map(|r| count_trigger(r, &at.key("unknown_recipients")))
        .transpose()?;
    Ok(BansConfig {
        socket: resolve(base, &raw.socket),
        request_timeout,
        auth_failures,
        connections,
        smuggling,
        pre_greet,
        unknown_recipients,
    })
}
