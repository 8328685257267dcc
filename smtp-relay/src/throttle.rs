//! AUTH brute-force throttle. Failures are counted per client address, per
//! client address and attempted user name, and per user name alone (whether
//! or not the user exists, so the answers reveal nothing about which names
//! are real).
//!
//! Only the keys that include the client's address ever lock out: once the
//! address, or the address with that name, has `max_failures` recent
//! failures, AUTH from there gets `454 4.7.0` without a password check until
//! the window since the last failure has passed. The name alone only slows
//! failures down (at most [`MAX_USER_DELAY`]): a lockout keyed by name would
//! let anyone who can connect lock a known user out from everywhere, while
//! the right password from an address that did not fail must keep working.
//!
//! Each failure is answered after a delay that doubles with the failures
//! counted so far. A success clears the address's counts and the name's.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept per map; beyond it, expired entries are pruned and new
/// keys are not tracked (the other maps still count).
const MAX_ENTRIES: usize = 100_000;
/// Longest delay before a failure reply, from the address's counts.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Longest delay from the name's count alone: a guesser spread over many
/// addresses is slowed, the user's own typos are not punished for long.
pub const MAX_USER_DELAY: Duration = Duration::from_secs(2);
/// Octets of an attempted name kept as a key. Configured names are at most
/// this long, so longer ones only share a key with other unknown names, and
/// a flood of long names cannot grow the maps beyond their bound.
const MAX_NAME: usize = 256;

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Failure counts by one kind of key.
struct Counts<K>(Mutex<HashMap<K, Entry>>);

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new() -> Counts<K> {
        Counts(Mutex::new(HashMap::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Failures of `key` within `window` of its last one.
    fn live(&self, key: &K, now: Instant, window: Duration) -> u32 {
        live(&self.lock(), key, now, window)
    }

    /// Counts a failure of `key`; returns its live failures, this one included.
    fn bump(&self, key: &K, now: Instant, window: Duration) -> u32 {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
            map.retain(|_, e| now.duration_since(e.last) < window);
            if map.len() >= MAX_ENTRIES {
                return 0;
            }
        }
        let failures = live(&map, key, now, window) + 1;
        map.insert(
            key.clone(),
            Entry {
                failures,
                last: now,
            },
        );
        failures
    }

    fn clear(&self, key: &K) {
        self.lock().remove(key);
    }
}

fn live<K: Hash + Eq>(map: &HashMap<K, Entry>, key: &K, now: Instant, window: Duration) -> u32 {
    map.get(key)
        .filter(|e| now.duration_since(e.last) < window)
        .map_or(0, |e| e.failures)
}

/// `name` cut to at most [`MAX_NAME`] octets, on a character boundary.
fn name_key(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// `base` doubled per failure before the `failures`-th, at most `max`.
fn delay(base: Duration, failures: u32, max: Duration) -> Duration {
    let doublings = failures.clamp(1, 30) - 1;
    base.saturating_mul(1 << doublings).min(max)
}

pub struct AuthThrottle {
    base_delay: Duration,
    max_failures: u32,
    window: Duration,
    by_ip: Counts<IpAddr>,
    by_ip_user: Counts<(IpAddr, String)>,
    by_user: Counts<String>,
}

impl AuthThrottle {
    pub fn new(base_delay: Duration, max_failures: u32, window: Duration) -> AuthThrottle {
        AuthThrottle {
            base_delay,
            max_failures,
            window,
            by_ip: Counts::new(),
            by_ip_user: Counts::new(),
            by_user: Counts::new(),
        }
    }

    /// Whether AUTH from `ip` for `user` is refused for now: only the
    /// address, or the address with this name, can be locked out.
    pub fn blocked(&self, ip: IpAddr, user: &str) -> bool {
        let (now, ip) = (Instant::now(), ip.to_canonical());
        self.by_ip.live(&ip, now, self.window) >= self.max_failures
            || self
                .by_ip_user
                .live(&(ip, name_key(user)), now, self.window)
                >= self.max_failures
    }

    /// Records a failure; returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr, user: &str) -> Duration {
        let (now, ip, name) = (Instant::now(), ip.to_canonical(), name_key(user));
        let by_ip = self.by_ip.bump(&ip, now, self.window);
        let by_ip_user = self.by_ip_user.bump(&(ip, name.clone()), now, self.window);
        let by_user = self.by_user.bump(&name, now, self.window);
        delay(self.base_delay, by_ip.max(by_ip_user), MAX_DELAY).max(delay(
            self.base_delay,
            by_user,
            MAX_USER_DELAY,
        ))
    }

    /// Records a success: the address, the address with this name, and the
    /// name start clean.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        let (ip, name) = (ip.to_canonical(), name_key(user));
        self.by_ip.clear(&ip);
        self.by_ip_user.clear(&(ip, name.clone()));
        self.by_user.clear(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_grow_then_the_address_is_blocked_for_every_user() {
        let t = AuthThrottle::new(ms(100), 3, Duration::from_secs(60));
        let a = ip("192.0.2.1");
        assert!(!t.blocked(a, "alice"));
        assert_eq!(t.failed(a, "alice"), ms(100));
        assert_eq!(t.failed(a, "nobody"), ms(200));
        assert!(!t.blocked(a, "carol"));
        assert_eq!(t.failed(a, "carol"), ms(400));
        assert!(t.blocked(a, "bob"));
        // IPv4-mapped IPv6 is the same client.
        assert!(t.blocked(ip("::ffff:192.0.2.1"), "x"));
        // Unknown names are counted like real ones, and other addresses
        // are not blocked for any of them.
        for name in ["alice", "nobody", "carol", "bob"] {
            assert!(!t.blocked(ip("192.0.2.2"), name));
        }
    }

    /// Anyone who can connect could otherwise lock a known user out.
    #[test]
    fn a_name_alone_is_never_locked_out_only_slowed() {
        let t = AuthThrottle::new(ms(100), 3, Duration::from_secs(60));
        // 20 failures for alice, from 20 addresses.
        let delays: Vec<Duration> = (1..=20)
            .map(|i| t.failed(ip(&format!("192.0.2.{i}")), "alice"))
            .collect();
        assert_eq!(&delays[..3], &[ms(100), ms(200), ms(400)]);
        assert!(delays.iter().all(|d| *d <= MAX_USER_DELAY), "{delays:?}");
        assert_eq!(delays[19], MAX_USER_DELAY);
        assert!(!t.blocked(ip("198.51.100.7"), "alice"));
        assert!(!t.blocked(ip("192.0.2.1"), "alice"));
        // The address's own count still goes up to MAX_DELAY.
        let a = ip("192.0.2.200");
        let own: Vec<Duration> = (0..10).map(|_| t.failed(a, "x")).collect();
        assert_eq!(own[9], MAX_DELAY);
    }

    /// A guesser with an account of its own cannot clear its count for the
    /// name it guesses by logging in as itself.
    #[test]
    fn the_address_with_the_name_blocks_even_after_a_success_for_another_name() {
        let t = AuthThrottle::new(ms(1), 3, Duration::from_secs(60));
        let a = ip("2001:db8::1");
        t.failed(a, "alice");
        t.failed(a, "alice");
        t.succeeded(a, "mallory");
        t.failed(a, "alice");
        assert!(t.blocked(a, "alice"));
        assert!(!t.blocked(a, "mallory"));
        t.succeeded(a, "alice");
        assert!(!t.blocked(a, "alice"));
    }

    #[test]
    fn long_names_share_one_bounded_key() {
        let t = AuthThrottle::new(ms(100), 10, Duration::from_secs(60));
        let long = "\u{e9}".repeat(300);
        assert_eq!(t.failed(ip("192.0.2.1"), &format!("{long}1")), ms(100));
        // A second address, so only the name's count can make this 200 ms.
        assert_eq!(t.failed(ip("192.0.2.2"), &format!("{long}2")), ms(200));
        assert_eq!(name_key(&long).len(), MAX_NAME);
        assert_eq!(name_key("alice"), "alice");
    }

    #[test]
    fn window_expires() {
        let t = AuthThrottle::new(ms(1), 1, ms(30));
        let a = ip("192.0.2.1");
        t.failed(a, "u");
        assert!(t.blocked(a, "u"));
        std::thread::sleep(ms(40));
        assert!(!t.blocked(a, "u"));
    }
}
