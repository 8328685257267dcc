//! The two clocks a ban lives on: the program compares deadlines with CLOCK_MONOTONIC (what
//! `bpf_ktime_get_ns` and its coarse variant read), which stops meaning anything at a reboot; the
//! state file keeps wall-clock (Unix) times, which survive it. Conversions go through "now" on
//! both clocks, read one right after the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::rules::clock::monotonic_ns;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// "Now" on both clocks, for converting between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub unix: u64,
    pub monotonic_ns: u64,
}

impl Now {
    pub fn read() -> Now {
        Now {
            unix: unix_now(),
            monotonic_ns: monotonic_ns(),
        }
    }

    /// The monotonic deadline of a ban that ends at Unix time `until` (now if it is past).
    pub fn deadline_ns(self, until_unix: u64) -> u64 {
        let left = until_unix.saturating_sub(self.unix);
        self.monotonic_ns
            .saturating_add(left.saturating_mul(1_000_000_000))
    }

    /// The Unix time of a monotonic deadline (rounded up to the second).
    pub fn until_unix(self, deadline_ns: u64) -> u64 {
        let left = deadline_ns.saturating_sub(self.monotonic_ns);
        self.unix.saturating_add(left.div_ceil(1_000_000_000))
    }

    /// What is left of a ban ending at Unix time `until` (zero once over).
    pub fn left(self, until_unix: u64) -> Duration {
        Duration::from_secs(until_unix.saturating_sub(self.unix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_convert_both_ways() {
        let now = Now {
            unix: 1_790_000_000,
            monotonic_ns: 5_000_000_000,
        };
        assert_eq!(now.deadline_ns(1_790_000_060), 65_000_000_000);
        assert_eq!(now.until_unix(65_000_000_000), 1_790_000_060);
        // Past: now, and never before now.
        assert_eq!(now.deadline_ns(1_700_000_000), 5_000_000_000);
        assert_eq!(now.left(1_700_000_000), Duration::ZERO);
        assert_eq!(now.left(1_790_000_090), Duration::from_secs(90));
        let read = Now::read();
        assert!(read.monotonic_ns > 0 && read.unix > 1_600_000_000);
    }
}
