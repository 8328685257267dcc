//! Durations in the config: a plain number in the key's own unit (seconds
//! for `*_secs`, milliseconds for `*_ms`), as before, or a string with
//! units: `"30s"`, `"5m"`, `"1h30m"`, `"5d"`, `"250ms"`.
//!
//! Self-contained (serde and std only) so that it can move to a crate both
//! daemons share.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error(
        "{0:?}: expected a number followed by a unit (ms, s, m, h, d), e.g. \"90s\" or \"1h30m\""
    )]
    Syntax(String),
    #[error("{0:?}: unknown unit (use ms, s, m, h or d)")]
    Unit(String),
    #[error("{0:?} is too long")]
    Overflow(String),
}

/// Parses `"1h30m"`-style text: one or more `<digits><unit>` parts, units
/// `ms`, `s`, `m`, `h`, `d`, in any order, added up.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(DurationError::Syntax(text.to_owned()));
        }
        let overflow = || DurationError::Overflow(text.to_owned());
        let n: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        let part = match &rest[digits..digits + units] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(overflow)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(overflow)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(overflow)?),
            unit => return Err(DurationError::Unit(unit.to_owned())),
        };
        total = total.checked_add(part).ok_or_else(overflow)?;
        rest = &rest[digits + units..];
    }
    Ok(total)
}

/// The unit of a plain number.
#[derive(Clone, Copy)]
enum Unit {
    Secs,
    Millis,
}

struct DurationVisitor(Unit);

impl DurationVisitor {
    fn number<E: de::Error>(&self, n: f64) -> Result<Duration, E> {
        let secs = match self.0 {
            Unit::Secs => n,
            Unit::Millis => n / 1000.0,
        };
        Duration::try_from_secs_f64(secs)
            .map_err(|_| E::custom(format!("{n} is not a duration (negative or too large)")))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.0 {
            Unit::Secs => "seconds",
            Unit::Millis => "milliseconds",
        };
        write!(
            f,
            "a number of {unit} or a duration such as \"30s\", \"5m\", \"1h30m\", \"5d\""
        )
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        Ok(match self.0 {
            Unit::Secs => Duration::from_secs(n),
            Unit::Millis => Duration::from_millis(n),
        })
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!("{n} is negative"))),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        self.number(n)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }
}

/// `#[serde(deserialize_with = "duration::secs")]`: plain numbers are seconds.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Secs))
}

/// `#[serde(deserialize_with = "duration::millis")]`: plain numbers are
/// milliseconds.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Millis))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn units_and_combinations() {
        let s = Duration::from_secs;
        assert_eq!(parse("30s"), Ok(s(30)));
        assert_eq!(parse("5m"), Ok(s(300)));
        assert_eq!(parse("1h30m"), Ok(s(5400)));
        assert_eq!(parse("5d"), Ok(s(432_000)));
        assert_eq!(parse(" 250ms "), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        for bad in ["30", "s", "1.5s", "-5s", "5 m", "1h30"] {
            assert!(
                matches!(parse(bad), Err(DurationError::Syntax(_))),
                "{bad}: {:?}",
                parse(bad)
            );
        }
        assert_eq!(parse("3w"), Err(DurationError::Unit("w".into())));
        assert!(matches!(
            parse("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse("999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[derive(Debug, Deserialize)]
    struct Keys {
        #[serde(deserialize_with = "secs")]
        timeout_secs: Duration,
        #[serde(deserialize_with = "millis")]
        delay_ms: Duration,
    }

    fn keys(text: &str) -> Result<Keys, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn plain_numbers_keep_the_key_unit() {
        let k = keys("timeout_secs = 300\ndelay_ms = 500").expect("plain");
        assert_eq!(k.timeout_secs, Duration::from_secs(300));
        assert_eq!(k.delay_ms, Duration::from_millis(500));
        let k = keys("timeout_secs = 0.5\ndelay_ms = \"2s\"").expect("mixed");
        assert_eq!(k.timeout_secs, Duration::from_millis(500));
        assert_eq!(k.delay_ms, Duration::from_secs(2));
        let k = keys("timeout_secs = \"1h30m\"\ndelay_ms = 1").expect("units");
        assert_eq!(k.timeout_secs, Duration::from_secs(5400));
        for bad in [
            "timeout_secs = -1\ndelay_ms = 1",
            "timeout_secs = -1.0\ndelay_ms = 1",
            "timeout_secs = \"soon\"\ndelay_ms = 1",
            "timeout_secs = true\ndelay_ms = 1",
        ] {
            let e = keys(bad).expect_err(bad).to_string();
            assert!(e.contains("timeout_secs"), "{bad}: {e}");
        }
    }
}
