//! The checks the relay runs on strangers and what each one found: the labels of
//! `smtp_relay_checks_total{check,result}`, named once here (snake_case of the variant names).

/// A check.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum Check {
    /// One DNSBL zone asked about a client.
    Dnsbl,
    /// One DNSWL zone asked about a client.
    Dnswl,
    /// The EHLO/HELO name of a stranger.
    Helo,
    /// Whether a client talked before the greeting.
    PreGreet,
}

/// What a check found.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum CheckResult {
    /// The zone lists the client with a code that counts.
    Listed,
    /// NXDOMAIN, no address, or only codes the zone's `codes` filter leaves out.
    NotListed,
    /// No answer in time, or a server failure: counted 0, never a refusal.
    Temperror,
    /// An answer that is not a listing: outside 127.0.0.0/8, or a list's error code
    /// (127.255.255.252–255, e.g. "you asked through a public resolver"). Logged at WARN.
    Ignored,
    /// A good HELO name; a client that waited for the greeting.
    Pass,
    /// A HELO name that is neither a host name with a dot nor an address literal.
    Invalid,
    /// A stranger's HELO claiming our host name, a local domain or our address.
    Ours,
    /// A client that talked before the greeting.
    Talker,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The results this check can have (the metric has only these pairs).
    pub fn results(self) -> &'static [CheckResult] {
        use CheckResult::*;
        match self {
            Check::Dnsbl | Check::Dnswl => &[Listed, NotListed, Temperror, Ignored],
            Check::Helo => &[Pass, Invalid, Ours],
            Check::PreGreet => &[Pass, Talker],
        }
    }
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}
