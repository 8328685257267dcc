//! `[screen]`: connection-time screening of strangers on `mta` listeners (postscreen's job):
//! weighted DNSBL and DNSWL zones summed against a threshold, the pre-greet test and the HELO
//! sanity check. Everything is off unless written; zones need the `[dns]` table (the relay never
//! asks the system resolver).

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

use super::{BansConfig, DnsConfig, Invalid, KeyPath, address, duration, ensure, positive};

/// Longest greeting delay (pre-greet) and longest wait for the lists: clients give up on a
/// silent server after a minute or so.
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawScreen {
    threshold: i64,
    #[serde(deserialize_with = "duration::millis")]
    dnsbl_timeout_ms: Duration,
    #[serde(deserialize_with = "duration::secs")]
    cache_secs: Duration,
    helo: HeloCheck,
    #[serde(deserialize_with = "duration::millis")]
    pre_greet_delay_ms: Duration,
    dnsbl: Vec<RawZone>,
    dnswl: Vec<RawZone>,
}

/// The documented defaults of `[screen]`.
impl Default for RawScreen {
    fn default() -> RawScreen {
        RawScreen {
            threshold: 1,
            dnsbl_timeout_ms: Duration::from_millis(1500),
            cache_secs: Duration::from_secs(300),
            helo: HeloCheck::Off,
            pre_greet_delay_ms: Duration::ZERO,
            dnsbl: Vec::new(),
            dnswl: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    zone: String,
    #[serde(default = "one")]
    weight: i64,
    #[serde(default)]
    codes: Vec<String>,
}

fn one() -> i64 {
    1
}

/// What the HELO check does with a bad or stolen name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum HeloCheck {
    /// No check.
    #[default]
    Off,
    /// Judge and log (audit), never refuse.
    Log,
    /// `501 5.5.2` for bad syntax, `550 5.7.1` for our own name or address.
    Reject,
}

/// One DNSBL or DNSWL zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Lowercased, without a final dot.
    pub zone: String,
    /// Added to the score (DNSBL) or taken off it (DNSWL) when the zone lists the client.
    pub weight: i64,
    /// Answers that count; empty: every answer in 127.0.0.0/8.
    pub codes: Vec<RangeInclusive<Ipv4Addr>>,
}

impl ZoneConfig {
    /// Whether `answer` is one of the codes this entry counts.
    pub fn counts(&self, answer: Ipv4Addr) -> bool {
        self.codes.is_empty() || self.codes.iter().any(|r| r.contains(&answer))
    }
}

/// The validated `[screen]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenConfig {
    /// Score at which a client is refused.
    pub threshold: i64,
    /// How long the greeting waits for the lists at most.
    pub dnsbl_timeout: Duration,
    /// How long a verdict is kept per client address (0: not kept).
    pub cache: Duration,
    pub helo: HeloCheck,
    /// Greeting delay of the pre-greet test, if on (`[bans.pre_greet]` has its own).
    pub pre_greet_delay: Option<Duration>,
    pub dnsbl: Vec<ZoneConfig>,
    pub dnswl: Vec<ZoneConfig>,
}

/// An answer code (`127.0.0.2`), a range (`127.0.0.4-127.0.0.7`) or a network (`127.0.0.0/30`),
/// inside 127.0.0.0/8: lists answer nothing else.
fn parse_code(text: &str) -> Result<RangeInclusive<Ipv4Addr>, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not an IPv4 address, range (a-b) or network in 127.0.0.0/8");
    let range = if let Some((a, b)) = text.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        a..=b
    } else if text.contains('/') {
        let net: ipnet::Ipv4Net = text.parse().map_err(|_| bad())?;
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set; the network is {}",
                net.trunc()
            ));
        }
        net.network()..=net.broadcast()
    } else {
        let a: Ipv4Addr = text.parse().map_err(|_| bad())?;
        a..=a
    };
    if range.start().octets()[0] != 127 || range.end().octets()[0] != 127 {
        return Err(bad());
    }
    Ok(range)
}

fn zone(raw: RawZone, at: &KeyPath) -> Result<ZoneConfig, Invalid> {
    let name = raw.zone.trim_end_matches('.').to_ascii_lowercase();
    ensure(
        address::is_host_name(&name) && name.contains('.'),
        &at.key("zone"),
        "not a DNS zone name (e.g. \"zen.example.org\")",
    )?;
    ensure(
        (1..=1000).contains(&raw.weight),
        &at.key("weight"),
        "must be between 1 and 1000",
    )?;
    let mut codes = Vec::new();
    for (i, c) in raw.codes.iter().enumerate() {
        codes.push(parse_code(c).map_err(|e| Invalid::new(at.key("codes").index(i), e))?);
    }
    Ok(ZoneConfig {
        zone: name,
        weight: raw.weight,
        codes,
    })
}

pub(super) fn validate(
    raw: RawScreen,
    dns: Option<&DnsConfig>,
    bans: Option<&BansConfig>,
    at: &KeyPath,
) -> Result<ScreenConfig, Invalid> {
    ensure(
        (1..=10_000).contains(&raw.threshold),
        &at.key("threshold"),
        "must be between 1 and 10000",
    )?;
    let timeout_at = at.key("dnsbl_timeout_ms");
    let dnsbl_timeout = positive(raw.dnsbl_timeout_ms, &timeout_at)?;
    ensure(dnsbl_timeout <= MAX_DELAY, &timeout_at, "at most 30 s")?;
    let delay_at = at.key("pre_greet_delay_ms");
    ensure(
        raw.pre_greet_delay_ms <= MAX_DELAY,
        &delay_at,
        "at most 30 s: clients give up on a silent server",
    )?;
    let pre_greet_delay = (!raw.pre_greet_delay_ms.is_zero()).then_some(raw.pre_greet_delay_ms);
    if let (Some(ours), Some(theirs)) = (pre_greet_delay, bans.and_then(|b| b.pre_greet))
        && ours != theirs.delay
    {
        return Err(Invalid::new(
            delay_at,
            format!(
                "{} ms differs from bans.pre_greet.delay_ms ({} ms): the greeting has one \
                 delay; set the same value in both or leave screen.pre_greet_delay_ms out",
                ours.as_millis(),
                theirs.delay.as_millis()
            ),
        ));
    }
    let mut dnsbl = Vec::new();
    for (i, z) in raw.dnsbl.into_iter().enumerate() {
        dnsbl.push(zone(z, &at.key("dnsbl").index(i))?);
    }
    let mut dnswl = Vec::new();
    for (i, z) in raw.dnswl.into_iter().enumerate() {
        dnswl.push(zone(z, &at.key("dnswl").index(i))?);
    }
    if dns.is_none() {
        let key = if dnsbl.is_empty() { "dnswl" } else { "dnsbl" };
        ensure(
            dnsbl.is_empty() && dnswl.is_empty(),
            &at.key(key),
            "DNS lists need a [dns] table with the nameservers to ask \
             (the relay never uses the system resolver)",
        )?;
    }
    Ok(ScreenConfig {
        threshold: raw.threshold,
        dnsbl_timeout,
        cache: raw.cache_secs,
        helo: raw.helo,
        pre_greet_delay,
        dnsbl,
        dnswl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn codes_are_addresses_ranges_or_networks_in_127_8() {
        assert_eq!(
            parse_code("127.0.0.2"),
            Ok(ip("127.0.0.2")..=ip("127.0.0.2"))
        );
        assert_eq!(
            parse_code("127.0.0.4-127.0.0.7"),
            Ok(ip("127.0.0.4")..=ip("127.0.0.7"))
        );
        assert_eq!(
            parse_code("127.0.1.0/30"),
            Ok(ip("127.0.1.0")..=ip("127.0.1.3"))
        );
        for bad in [
            "10.0.0.2",
            "127.0.0.7-127.0.0.4",
            "127.0.0.1/24",
            "127.0.0.0/7",
            "zen",
            "::1",
        ] {
            assert!(parse_code(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn an_entry_without_codes_counts_every_answer() {
        let z = ZoneConfig {
            zone: "bl.test".into(),
            weight: 1,
            codes: vec![],
        };
        assert!(z.counts(ip("127.0.0.9")));
        let z = ZoneConfig {
            codes: vec![
                ip("127.0.0.2")..=ip("127.0.0.2"),
                ip("127.0.0.4")..=ip("127.0.0.7"),
            ],
            ..z
        };
        assert!(z.counts(ip("127.0.0.2")) && z.counts(ip("127.0.0.5")));
        assert!(!z.counts(ip("127.0.0.3")) && !z.counts(ip("127.0.0.9")));
    }
}
