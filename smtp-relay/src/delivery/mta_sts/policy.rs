//! The MTA-STS policy file (RFC 8461 3.2): `key: value` lines, CRLF or LF, with `version`,
//! `mode`, `mx` (repeated) and `max_age`. Unknown keys are ignored, as the RFC asks.

use serde::{Deserialize, Serialize};

/// RFC 8461 3.2: max_age is at most 31557600 (one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a policy asks of senders.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts over verified TLS.
    Enforce,
    /// Report what enforce would refuse, deliver anyway.
    Testing,
    /// The domain withdrew its policy.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns, lowercased: `mx.example.org` or `*.example.org`.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("version is not STSv1")]
    Version,
    #[error("no valid mode")]
    Mode,
    #[error("no valid max_age")]
    MaxAge,
    #[error("mode {0} without any mx")]
    NoMx(Mode),
    #[error("bad mx pattern {0:?}")]
    BadMx(String),
}

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim_matches([' ', '\t', '\r']);
            // The first of a repeated key counts (RFC 8461 3.2), except mx.
            match key.trim() {
                "version" if version.is_none() => version = Some(value == "STSv1"),
                "mode" if mode.is_none() => {
                    mode = Some(match value {
                        "enforce" => Some(Mode::Enforce),
                        "testing" => Some(Mode::Testing),
                        "none" => Some(Mode::None),
                        _ => None,
                    })
                }
                "max_age" if max_age.is_none() => {
                    // 1*10DIGIT: no sign, no spaces, at most ten digits.
                    max_age = Some(
                        (!value.is_empty()
                            && value.len() <= 10
                            && value.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| value.parse::<u64>().ok())
                        .flatten(),
                    )
                }
                "mx" => {
                    let pattern = value.to_ascii_lowercase();
                    if !valid_pattern(&pattern) {
                        return Err(PolicyError::BadMx(value.to_owned()));
                    }
                    mx.push(pattern);
                }
                _ => {}
            }
        }
        if version != Some(true) {
            return Err(PolicyError::Version);
        }
        let mode = mode.flatten().ok_or(PolicyError::Mode)?;
        let max_age = max_age.flatten().ok_or(PolicyError::MaxAge)?;
        if mode != Mode::None && mx.is_empty() {
            return Err(PolicyError::NoMx(mode));
        }
        Ok(Policy {
            mode,
            mx,
            // Longer values are clamped to the limit rather than refused.
            max_age: max_age.min(MAX_AGE_LIMIT),
        })
    }

    /// Whether `host` (an MX name) is allowed by the policy (RFC 8461 4.1): an exact match, or
    /// `*.suffix` matching exactly one more label on the left. Case-insensitive; a final dot is
    /// ignored.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// A host name, optionally with one leading `*.` label.
fn valid_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_example() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n\
             mx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .expect("valid");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("a.b.example.net"), "a wildcard covers one label");
        assert!(!p.allows("example.net"));
        assert!(!p.allows("evil.example.com"));
    }

    #[test]
    fn refuses_broken_policies() {
        let base = "version: STSv1\nmode: testing\nmx: mx.example\nmax_age: 86400\n";
        assert!(Policy::parse(base).is_ok());
        for (from, to, error) in [
            ("STSv1", "STSv2", PolicyError::Version),
            ("testing", "sometimes", PolicyError::Mode),
            ("86400", "-1", PolicyError::MaxAge),
            ("86400", "12345678901", PolicyError::MaxAge),
            ("mx: mx.example\n", "", PolicyError::NoMx(Mode::Testing)),
            (
                "mx.example",
                "mx..example",
                PolicyError::BadMx("mx..example".into()),
            ),
        ] {
            assert_eq!(
                Policy::parse(&base.replace(from, to)),
                Err(error),
                "{from} -> {to}"
            );
        }
        let none = Policy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert_eq!(none.map(|p| p.max_age), Err(PolicyError::MaxAge));
        let clamped = Policy::parse("version: STSv1\nmode: none\nmax_age: 9999999999\nx: y\n");
        assert_eq!(clamped.map(|p| p.max_age), Ok(MAX_AGE_LIMIT));
    }
}
