//! Per-source state with a fixed memory bound: two generations of hash maps. New and touched
//! entries go into the current one; when it is full it becomes the previous one and the old
//! previous one is dropped whole. So at most `2 * capacity` entries exist, every operation is
//! O(1), and what is forgotten first is what was touched longest ago (an approximate LRU). A
//! flood from many addresses costs the trackers some counts, never unbounded memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses remembered per generation by each map of the relay's ban triggers.
pub const CAPACITY: usize = 65_536;

pub struct Sources<V> {
    capacity: usize,
    current: HashMap<IpAddr, V>,
    previous: HashMap<IpAddr, V>,
}

impl<V> Sources<V> {
    pub fn new(capacity: usize) -> Sources<V> {
        Sources {
            capacity: capacity.max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// Removes and returns the entry of `ip` (IPv4-mapped IPv6 is the IPv4 address).
    pub fn take(&mut self, ip: IpAddr) -> Option<V> {
        let ip = ip.to_canonical();
        self.current
            .remove(&ip)
            .or_else(|| self.previous.remove(&ip))
    }

    /// Stores the entry of `ip` in the current generation.
    pub fn put(&mut self, ip: IpAddr, value: V) {
        if self.current.len() >= self.capacity {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(ip.to_canonical(), value);
    }

    /// Entries held, both generations.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Events from one address counted in a fixed window that opens with the first of them.
#[derive(Clone, Copy)]
struct Window {
    opened: Instant,
    count: u32,
}

/// "`threshold` events within `within`" per source.
pub struct Counter {
    threshold: u32,
    within: Duration,
    windows: Sources<Window>,
}

impl Counter {
    pub fn new(threshold: u32, within: Duration, capacity: usize) -> Counter {
        Counter {
            threshold,
            within,
            windows: Sources::new(capacity),
        }
    }

    /// Counts one event from `ip` at `now`; true when it reaches the threshold (the count then
    /// starts over, so the next ban needs as much evidence again).
    pub fn hit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let mut w = self
            .windows
            .take(ip)
            .filter(|w| now.saturating_duration_since(w.opened) < self.within)
            .unwrap_or(Window {
                opened: now,
                count: 0,
            });
        w.count += 1;
        if w.count >= self.threshold {
            return true;
        }
        self.windows.put(ip, w);
        false
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC000_0200 + n))
    }

    #[test]
    fn counts_reach_the_threshold_within_the_window_only() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Counter::new(3, s(10), 100);
        assert!(!c.hit(ip(1), t0));
        assert!(!c.hit(ip(1), t0 + s(1)));
        assert!(!c.hit(ip(2), t0 + s(1)), "other addresses count apart");
        assert!(c.hit(ip(1), t0 + s(2)));
        // Starts over after a trigger.
        assert!(!c.hit(ip(1), t0 + s(3)));
        // A window that closed does not count.
        assert!(!c.hit(ip(2), t0 + s(20)));
        assert!(!c.hit(ip(2), t0 + s(21)));
        assert!(c.hit(ip(2), t0 + s(22)));
        // IPv4-mapped IPv6 is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert!(!c.hit(ip(9), t0));
        assert!(!c.hit(mapped, t0));
        assert!(c.hit(ip(9), t0));
    }

    #[test]
    fn a_flood_of_addresses_stays_within_two_generations() {
        let now = Instant::now();
        let mut c = Counter::new(2, Duration::from_secs(60), 1000);
        for n in 0..100_000 {
            c.hit(ip(n), now);
            assert!(c.tracked() <= 2000);
        }
        // A source touched recently survives the flood's generations.
        let mut c = Counter::new(3, Duration::from_secs(60), 1000);
        c.hit(ip(0), now);
        for n in 1..900 {
            c.hit(ip(n), now);
        }
        c.hit(ip(0), now);
        for n in 900..1800 {
            c.hit(ip(n), now);
        }
        assert!(c.hit(ip(0), now), "recently touched entry was forgotten");
    }
}
