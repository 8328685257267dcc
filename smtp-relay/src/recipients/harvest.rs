//! Recipient harvesting: a client that tries address after address to learn which exist. Each
//! unknown recipient in a session counts; the first few are answered at once (a typo is no
//! crime), then each answer waits `unknown_delay`, doubled per unknown, at most 10 s, and the
//! `unknown_max`-th ends the session with `421 4.7.0`. Across sessions the ban trigger
//! `[bans] unknown_recipients` takes over.

use std::time::Duration;

use crate::config::recipients::MAX_UNKNOWN_DELAY;

/// Unknown recipients answered without delay.
pub const FREE: u32 = 3;

/// What to do about the latest unknown recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Refuse it (`550 5.1.1`) after this delay.
    Refuse(Duration),
    /// Close the session (`421 4.7.0`).
    Close,
}

/// One session's count.
#[derive(Debug, Default)]
pub struct Harvest {
    unknown: u32,
}

impl Harvest {
    /// Counts an unknown recipient.
    pub fn unknown(&mut self, delay: Duration, max: u32) -> Step {
        self.unknown = self.unknown.saturating_add(1);
        if self.unknown >= max {
            return Step::Close;
        }
        if self.unknown <= FREE {
            return Step::Refuse(Duration::ZERO);
        }
        let doublings = (self.unknown - FREE - 1).min(16);
        Step::Refuse(delay.saturating_mul(1 << doublings).min(MAX_UNKNOWN_DELAY))
    }

    /// Unknown recipients so far.
    pub fn count(&self) -> u32 {
        self.unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_then_doubling_then_close() {
        let mut h = Harvest::default();
        let ms = Duration::from_millis;
        let steps: Vec<Step> = (0..10).map(|_| h.unknown(ms(1000), 10)).collect();
        assert_eq!(
            steps,
            [
                Step::Refuse(ms(0)),
                Step::Refuse(ms(0)),
                Step::Refuse(ms(0)),
                Step::Refuse(ms(1000)),
                Step::Refuse(ms(2000)),
                Step::Refuse(ms(4000)),
                Step::Refuse(ms(8000)),
                Step::Refuse(ms(10_000)),
                Step::Refuse(ms(10_000)),
                Step::Close,
            ]
        );
        assert_eq!(h.count(), 10);
        let mut h = Harvest::default();
        assert_eq!(h.unknown(ms(1000), 1), Step::Close, "unknown_max = 1");
    }
}
