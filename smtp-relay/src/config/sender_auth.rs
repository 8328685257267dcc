//! `[sender_auth]`: SPF, DKIM, DMARC and ARC on mail from unauthenticated clients outside
//! `trusted_networks` on `mta` listeners, and the listener key `dmarc_policy`. Every check is off
//! unless switched on; the checks ask the nameservers of `[dns]` only, so a check without that
//! table is a config error.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, KeyPath, duration, ensure, positive};

/// Longest overall deadline per check: the client waits for our reply after its final dot.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSenderAuth {
    spf: bool,
    dkim: bool,
    dmarc: bool,
    arc: bool,
    authserv_id: Option<String>,
    #[serde(deserialize_with = "duration::millis")]
    check_timeout_ms: Duration,
    max_verify_size: u64,
    quarantine_header: String,
    arc_trusted_sealers: Vec<String>,
}

/// The documented defaults of `[sender_auth]`.
impl Default for RawSenderAuth {
    fn default() -> RawSenderAuth {
        RawSenderAuth {
            spf: false,
            dkim: false,
            dmarc: false,
            arc: false,
            authserv_id: None,
            check_timeout_ms: Duration::from_secs(5),
            max_verify_size: 10 * 1024 * 1024,
            quarantine_header: "X-Gatekeeper-Quarantine".to_owned(),
            arc_trusted_sealers: Vec::new(),
        }
    }
}

/// The validated `[sender_auth]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderAuthConfig {
    pub spf: bool,
    pub dkim: bool,
    pub dmarc: bool,
    pub arc: bool,
    /// The authserv-id of our `Authentication-Results:` (RFC 8601 2.5); default the hostname.
    pub authserv_id: String,
    /// Overall deadline of each check; past it the check gives `temperror`.
    pub check_timeout: Duration,
    /// Larger messages go to the spool unverified (DKIM and DMARC need the whole message in
    /// memory: this bounds it per session).
    pub max_verify_size: u64,
    /// Header added to a DMARC failure that is accepted (quarantine, or reject when not honored).
    pub quarantine_header: String,
    /// ARC sealers (`d=` of the last seal) whose ARC pass turns a DMARC reject into the
    /// quarantine header: forwarders and lists we trust to have checked the original.
    pub arc_trusted_sealers: Vec<String>,
}

impl SenderAuthConfig {
    /// Whether any check runs (an empty table only strips forged results).
    pub fn any(&self) -> bool {
        self.spf || self.dkim || self.dmarc || self.arc
    }
}

/// What a listener does with a DMARC `p=reject` failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum DmarcPolicy {
    /// `550 5.7.1` for `p=reject`; quarantine adds the header.
    Honor,
    /// Never refuse: a failure under `p=reject` or `p=quarantine` gets the header.
    #[default]
    ReportOnly,
}

/// `hostname` is the default authserv-id; `dns` tells whether `[dns]` exists.
pub(super) fn validate(
    raw: RawSenderAuth,
    hostname: &str,
    dns: bool,
    at: &KeyPath,
) -> Result<SenderAuthConfig, Invalid> {
    let timeout_at = at.key("check_timeout_ms");
    let check_timeout = positive(raw.check_timeout_ms, &timeout_at)?;
    ensure(
        check_timeout <= MAX_CHECK_TIMEOUT,
        &timeout_at,
        "at most 60000",
    )?;
    positive(raw.max_verify_size, &at.key("max_verify_size"))?;
    let authserv_id = raw.authserv_id.unwrap_or_else(|| hostname.to_owned());
    ensure(
        crate::address::is_host_name(&authserv_id),
        &at.key("authserv_id"),
        "not a host name (RFC 8601: the authserv-id is this host's name)",
    )?;
    let header = &raw.quarantine_header;
    ensure(
        !header.is_empty()
            && header.len() <= 76
            && header.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
        &at.key("quarantine_header"),
        "not a header field name (printable ASCII, no colon)",
    )?;
    for (i, d) in raw.arc_trusted_sealers.iter().enumerate() {
        ensure(
            crate::address::is_host_name(d),
            &at.key("arc_trusted_sealers").index(i),
            "not a domain",
        )?;
    }
    let config = SenderAuthConfig {
        spf: raw.spf,
        dkim: raw.dkim,
        dmarc: raw.dmarc,
        arc: raw.arc,
        authserv_id,
        check_timeout,
        max_verify_size: raw.max_verify_size,
        quarantine_header: raw.quarantine_header,
        arc_trusted_sealers: raw.arc_trusted_sealers,
    };
    if config.any() && !dns {
        let on = [
            ("spf", config.spf),
            ("dkim", config.dkim),
            ("dmarc", config.dmarc),
            ("arc", config.arc),
        ]
        .into_iter()
        .find(|(_, on)| *on)
        .map_or("spf", |(key, _)| key);
        return Err(Invalid::new(
            at.key(on),
            "needs a [dns] table with the nameservers to ask (the checks never use the \
             system resolver)",
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, dns: bool) -> Result<SenderAuthConfig, Invalid> {
        let raw: RawSenderAuth = toml::from_str(text).expect("toml");
        validate(
            raw,
            "mx.example.org",
            dns,
            &KeyPath::root().key("sender_auth"),
        )
    }

    #[test]
    fn defaults_and_the_dns_requirement() {
        let c = check("", false).expect("an empty table needs no [dns]");
        assert_eq!(c.authserv_id, "mx.example.org");
        assert!(!c.any());
        assert_eq!(c.check_timeout, Duration::from_secs(5));
        assert_eq!(c.max_verify_size, 10 * 1024 * 1024);
        let e = check("dmarc = true", false).expect_err("no [dns]");
        assert!(e.message.contains("[dns]"), "{}", e.message);
        assert!(check("dmarc = true", true).expect("with [dns]").any());
    }

    #[test]
    fn bad_values_are_refused() {
        for text in [
            "authserv_id = \"not a host\"",
            "quarantine_header = \"X-Bad: header\"",
            "quarantine_header = \"\"",
            "check_timeout_ms = 0",
            "check_timeout_ms = 60001",
            "max_verify_size = 0",
            "arc_trusted_sealers = [\"no spaces allowed\"]",
        ] {
            assert!(check(text, true).is_err(), "{text} accepted");
        }
    }
}
