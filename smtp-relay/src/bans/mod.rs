//! Bans at XDP on the relay's own evidence. Sessions report what they saw (a failed AUTH, a
//! connection, a fake end of data, input before the greeting); the configured triggers turn
//! that into a ban request for the client's address, which one task ([`client`]) sends to the
//! gatekeeper's ban socket. A session never waits for it: requests go through a bounded
//! channel and are dropped (counted) when it is full, and an unreachable socket only costs the
//! ban, never the SMTP service.
//!
//! An address already asked for is not asked for again while that ban runs, unless the new
//! ban is longer (the daemon extends a ban to the later deadline). Per-source state is bounded
//! by [`sources::Sources`].

pub mod client;
pub mod sources;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use crate::config::BansConfig;
use crate::metrics;
pub use client::BanClient;
use sources::{CAPACITY, Counter, Sources};

/// Requests waiting for the socket task; beyond this they are dropped.
const QUEUE: usize = 1024;

/// What made the relay ask for a ban: the `trigger` label of the metrics and log lines
/// (snake_case, as the config keys).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum Trigger {
    AuthFailures,
    Connections,
    Smuggling,
    PreGreet,
    UnknownRecipients,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The `reason` sent to the daemon, shown by `gatekeeper ban list`.
    pub fn reason(self) -> &'static str {
        match self {
            Trigger::AuthFailures => "auth-failures",
            Trigger::Connections => "connections",
            Trigger::Smuggling => "smuggling",
            Trigger::PreGreet => "pre-greet",
            Trigger::UnknownRecipients => "unknown-recipients",
        }
    }
}

/// How a ban request ended: the `result` label of `smtp_relay_ban_results_total`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum BanResult {
    /// The daemon banned the address.
    Accepted,
    /// The daemon said no (allowlisted, `never_ban`, rate, ...).
    Refused,
    /// No answer: socket missing, connection broken, timeout, unreadable answer.
    Failed,
    /// The queue to the socket task was full.
    Dropped,
}

impl BanResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One ban to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub ip: IpAddr,
    pub trigger: Trigger,
    pub ban: Duration,
}

/// A ban asked for: until when, and how long it was.
#[derive(Clone, Copy)]
struct Asked {
    until: Instant,
    length: Duration,
}

/// Addresses asked for recently, shared with the socket task (which forgets failed ones).
#[derive(Clone)]
struct Recent(Arc<Mutex<Sources<Asked>>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recent {
    /// Records a ban of `length` for `ip` unless one at least as long still runs.
    fn claim(&self, ip: IpAddr, length: Duration, now: Instant) -> bool {
        let mut map = lock(&self.0);
        match map.take(ip) {
            Some(a) if a.until > now && a.length >= length => {
                map.put(ip, a);
                false
            }
            _ => {
                map.put(
                    ip,
                    Asked {
                        until: now + length,
                        length,
                    },
                );
                true
            }
        }
    }

    /// Forgets `ip`, so the next evidence asks again (the request did not get through).
    fn forget(&self, ip: IpAddr) {
        lock(&self.0).take(ip);
    }

    /// The daemon granted only `granted` (clamped to its maximum) from `since`: ask again when
    /// that ends, not when the length asked for would have.
    fn granted(&self, ip: IpAddr, since: Instant, granted: Duration) {
        let mut map = lock(&self.0);
        if let Some(a) = map.take(ip) {
            map.put(
                ip,
                Asked {
                    until: a.until.min(since + granted),
                    length: a.length,
                },
            );
        }
    }
}

struct Active {
    config: BansConfig,
    auth_failures: Option<Mutex<Counter>>,
    connections: Option<Mutex<Counter>>,
    unknown_recipients: Option<Mutex<Counter>>,
    recent: Recent,
    tx: mpsc::Sender<Request>,
    /// Set while requests are being dropped, so the WARN comes once per episode.
    dropping: AtomicBool,
}

/// The sessions' side of the bans: evidence in, requests out. Inert without `[bans]`.
pub struct Bans {
    active: Option<Active>,
}

impl Bans {
    /// No `[bans]`: every report is ignored.
    pub fn disabled() -> Bans {
        Bans { active: None }
    }

    /// The handle for sessions and, with `[bans]`, the socket task to spawn.
    pub fn new(config: Option<&BansConfig>) -> (Bans, Option<BanClient>) {
        let Some(config) = config else {
            return (Bans::disabled(), None);
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let recent = Recent(Arc::new(Mutex::new(Sources::new(CAPACITY))));
        let counter = |t: &crate::config::bans::CountTrigger| {
            Mutex::new(Counter::new(t.count, t.within, CAPACITY))
        };
        let client = BanClient::new(config, rx, recent.clone());
        let bans = Bans {
            active: Some(Active {
                auth_failures: config.auth_failures.as_ref().map(counter),
                connections: config.connections.as_ref().map(counter),
                unknown_recipients: config.unknown_recipients.as_ref().map(counter),
                config: config.clone(),
                recent,
                tx,
                dropping: AtomicBool::new(false),
            }),
        };
        (bans, Some(client))
    }

    /// How long to hold the greeting back to catch pre-greet talkers, when configured.
    pub fn pre_greet_delay(&self) -> Option<Duration> {
        self.active.as_ref()?.config.pre_greet.map(|p| p.delay)
    }

    /// A connection from `ip` was accepted.
    pub fn connection(&self, ip: IpAddr) {
        self.count(ip, Trigger::Connections, |a| {
            a.connections.as_ref().zip(a.config.connections)
        });
    }

    /// An AUTH attempt from `ip` failed (bad credentials, malformed, or refused by the
    /// throttle: a guesser held at 454 keeps counting here).
    pub fn auth_failed(&self, ip: IpAddr) {
        self.count(ip, Trigger::AuthFailures, |a| {
            a.auth_failures.as_ref().zip(a.config.auth_failures)
        });
    }

    /// `ip` sent a fake end of data.
    pub fn smuggling(&self, ip: IpAddr) {
        if let Some(a) = &self.active
            && let Some(ban) = a.config.smuggling
        {
            self.request(a, ip, Trigger::Smuggling, ban);
        }
    }

    /// `ip` talked before the greeting.
    pub fn pre_greet(&self, ip: IpAddr) {
        if let Some(a) = &self.active
            && let Some(p) = a.config.pre_greet
        {
            self.request(a, ip, Trigger::PreGreet, p.ban);
        }
    }

    /// A RCPT from `ip` was refused as an unknown recipient.
    pub fn unknown_recipient(&self, ip: IpAddr) {
        self.count(ip, Trigger::UnknownRecipients, |a| {
            a.unknown_recipients
                .as_ref()
                .zip(a.config.unknown_recipients)
        });
    }

    fn count(
        &self,
        ip: IpAddr,
        trigger: Trigger,
        pick: impl Fn(&Active) -> Option<(&Mutex<Counter>, crate::config::bans::CountTrigger)>,
    ) {
        let Some(a) = &self.active else { return };
        let Some((counter, config)) = pick(a) else {
            return;
        };
        if lock(counter).hit(ip, Instant::now()) {
            self.request(a, ip, trigger, config.ban);
        }
    }

    fn request(&self, a: &Active, ip: IpAddr, trigger: Trigger, ban: Duration) {
        let ip = ip.to_canonical();
        if !a.recent.claim(ip, ban, Instant::now()) {
            return;
        }
        metrics::ban_requested(trigger);
        match a.tx.try_send(Request { ip, trigger, ban }) {
            Ok(()) => a.dropping.store(false, Ordering::Relaxed),
            Err(e) => {
                a.recent.forget(ip);
                let result = match e {
                    mpsc::error::TrySendError::Full(_) => BanResult::Dropped,
                    mpsc::error::TrySendError::Closed(_) => BanResult::Failed,
                };
                metrics::ban_result(trigger, result);
                if !a.dropping.swap(true, Ordering::Relaxed) {
                    warn!(target: "audit", event = "ban", client = %ip, trigger = trigger.as_str(),
                        outcome = result.as_str(),
                        "ban requests are not getting through to the socket task (queue full)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_ban_is_not_asked_for_again_unless_longer() {
        let r = Recent(Arc::new(Mutex::new(Sources::new(16))));
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(r.claim(ip, s(60), t0));
        assert!(!r.claim(ip, s(60), t0 + s(10)));
        assert!(!r.claim(ip, s(30), t0 + s(10)));
        assert!(r.claim(ip, s(600), t0 + s(10)), "a longer ban is asked for");
        assert!(r.claim(ip, s(60), t0 + s(700)), "after the ban ended");
        r.forget(ip);
        assert!(r.claim(ip, s(60), t0 + s(701)), "forgotten after a failure");
        // Clamped by the daemon: the shorter ban ends sooner.
        r.granted(ip, t0 + s(701), s(5));
        assert!(!r.claim(ip, s(60), t0 + s(702)));
        assert!(r.claim(ip, s(60), t0 + s(707)));
    }
}
