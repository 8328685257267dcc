//! AUTH brute-force throttle. Failures are counted per client address and
//! per attempted user name (whether or not the user exists, so the answers
//! reveal nothing about which names are real). Each failure is answered
//! after a delay that doubles with the failures counted so far; once either
//! count reaches the limit, AUTH gets `454 4.7.0` without a password check
//! until the window since the last failure has passed. A success clears
//! the counts of that address and user.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept per map; beyond it, expired entries are pruned and new
/// keys are not tracked (the other map still counts).
const MAX_ENTRIES: usize = 100_000;
/// Longest delay before a failure reply.
const MAX_DELAY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

pub struct AuthThrottle {
    base_delay: Duration,
    max_failures: u32,
    window: Duration,
    by_ip: Mutex<HashMap<IpAddr, Entry>>,
    by_user: Mutex<HashMap<String, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AuthThrottle {
    pub fn new(base_delay: Duration, max_failures: u32, window: Duration) -> AuthThrottle {
        AuthThrottle {
            base_delay,
            max_failures,
            window,
            by_ip: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
        }
    }

    fn live<K: std::hash::Hash + Eq>(&self, map: &HashMap<K, Entry>, key: &K, now: Instant) -> u32 {
        map.get(key)
            .filter(|e| now.duration_since(e.last) < self.window)
            .map_or(0, |e| e.failures)
    }

    /// Whether AUTH from `ip` for `user` is refused for now.
    pub fn blocked(&self, ip: IpAddr, user: &str) -> bool {
        let now = Instant::now();
        let ip_failures = self.live(&lock(&self.by_ip), &ip.to_canonical(), now);
        let user_failures = self.live(&lock(&self.by_user), &user.to_owned(), now);
        ip_failures.max(user_failures) >= self.max_failures
    }

    fn bump<K: std::hash::Hash + Eq + Clone>(
        &self,
        map: &mut HashMap<K, Entry>,
        key: &K,
        now: Instant,
    ) -> u32 {
        if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
            map.retain(|_, e| now.duration_since(e.last) < self.window);
            if map.len() >= MAX_ENTRIES {
                return 0;
            }
        }
        let failures = self.live(map, key, now) + 1;
        map.insert(
            key.clone(),
            Entry {
                failures,
                last: now,
            },
        );
        failures
    }

    /// Records a failure; returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr, user: &str) -> Duration {
        let now = Instant::now();
        let a = self.bump(&mut lock(&self.by_ip), &ip.to_canonical(), now);
        let b = self.bump(&mut lock(&self.by_user), &user.to_owned(), now);
        let n = a.max(b).clamp(1, 30);
        self.base_delay.saturating_mul(1 << (n - 1)).min(MAX_DELAY)
    }

    /// Records a success: the address and the user start clean.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        lock(&self.by_ip).remove(&ip.to_canonical());
        lock(&self.by_user).remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_block_per_ip_and_per_user() {
        let t = AuthThrottle::new(Duration::from_millis(100), 3, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(!t.blocked(a, "alice"));
        assert_eq!(t.failed(a, "alice"), Duration::from_millis(100));
        assert_eq!(t.failed(a, "nobody"), Duration::from_millis(200));
        assert!(!t.blocked(a, "carol"));
        assert_eq!(t.failed(a, "carol"), Duration::from_millis(400));
        // The address is blocked for every user, the users only where they
        // failed three times (nobody, alice: once each).
        assert!(t.blocked(a, "bob"));
        assert!(!t.blocked(b, "alice"));
        t.failed(b, "alice");
        t.failed(b, "alice");
        assert!(t.blocked("192.0.2.3".parse().expect("ip"), "alice"));
        // Unknown names are counted just like real ones.
        for _ in 0..3 {
            t.failed("192.0.2.9".parse().expect("ip"), "ghost");
        }
        assert!(t.blocked("192.0.2.4".parse().expect("ip"), "ghost"));
        t.succeeded(b, "alice");
        assert!(!t.blocked(b, "alice"));
        // IPv4-mapped IPv6 is the same client.
        assert!(t.blocked("::ffff:192.0.2.1".parse().expect("ip"), "x"));
    }

    #[test]
    fn window_expires() {
        let t = AuthThrottle::new(Duration::from_millis(1), 1, Duration::from_millis(30));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        t.failed(a, "u");
        assert!(t.blocked(a, "u"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!t.blocked(a, "u"));
    }
}
