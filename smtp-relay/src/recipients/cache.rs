//! Probe answers per recipient address, each kept until its own deadline, with a fixed memory
//! bound: two generations of hash maps (as `bans::sources`). New entries go into the current
//! one; when it is full it becomes the previous one and the old previous one is dropped whole.
//! So at most `2 * capacity` entries exist, and what goes first is what was used longest ago.

use std::collections::HashMap;
use std::time::Instant;

pub struct Cache<V> {
    capacity: usize,
    current: HashMap<String, (V, Instant)>,
    previous: HashMap<String, (V, Instant)>,
}

impl<V: Clone> Cache<V> {
    pub fn new(capacity: usize) -> Cache<V> {
        Cache {
            capacity: capacity.max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    /// The answer for `key` unless it expired by `now`. A hit from the previous generation
    /// moves into the current one, so entries in use survive a rotation.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<V> {
        if let Some((v, until)) = self.current.get(key) {
            if *until > now {
                return Some(v.clone());
            }
            self.current.remove(key);
            return None;
        }
        let (v, until) = self.previous.remove(key)?;
        if until <= now {
            return None;
        }
        self.put(key.to_owned(), v.clone(), until);
        Some(v)
    }

    /// Keeps `value` for `key` until `until`.
    pub fn put(&mut self, key: String, value: V, until: Instant) {
        if self.current.len() >= self.capacity && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.previous.remove(&key);
        self.current.insert(key, (value, until));
    }

    /// Entries held, both generations, expired ones included.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn answers_expire_at_their_own_deadline() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        c.put("a@example.org".into(), 1, t0 + s(60));
        c.put("b@example.org".into(), 2, t0 + s(5));
        assert_eq!(c.get("a@example.org", t0 + s(10)), Some(1));
        assert_eq!(c.get("b@example.org", t0 + s(4)), Some(2));
        assert_eq!(c.get("b@example.org", t0 + s(5)), None, "expired");
        assert_eq!(c.get("b@example.org", t0), None, "and gone");
        assert_eq!(c.get("c@example.org", t0), None);
        c.put("a@example.org".into(), 3, t0 + s(1));
        assert_eq!(c.get("a@example.org", t0), Some(3), "replaced");
    }

    #[test]
    fn memory_is_bounded_and_used_entries_survive() {
        let mut c = Cache::new(4);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        for i in 0..1000 {
            c.put(format!("u{i}@example.org"), i, later);
            // One address in constant use.
            if i == 0 || c.get("u0@example.org", t0).is_some() {
                continue;
            }
            panic!("the address in use was dropped at {i}");
        }
        assert!(c.len() <= 8, "{} entries", c.len());
        assert_eq!(c.get("u999@example.org", t0), Some(999));
        assert_eq!(c.get("u500@example.org", t0), None, "old entries go");
    }
}
