//! `[recipients]`: which local recipients exist, checked at RCPT time so mail for a
//! non-existent user is refused with `550 5.1.1` instead of accepted and bounced to a
//! (usually forged) sender. Per local domain a list file, a probe of the domain's next hop, or
//! no check; domains without a `[[recipients.domain]]` table accept every local part.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{DeliveryConfig, HopConfig, Invalid, KeyPath, duration, ensure, positive, resolve};

/// The longest tarpit delay per unknown recipient.
pub const MAX_UNKNOWN_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRecipients {
    #[serde(deserialize_with = "duration::secs")]
    positive_ttl_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    negative_ttl_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    tempfail_ttl_secs: Duration,
    probe_concurrency: usize,
    #[serde(deserialize_with = "duration::secs")]
    probe_timeout_secs: Duration,
    cache_entries: usize,
    #[serde(deserialize_with = "duration::secs")]
    reload_secs: Duration,
    #[serde(deserialize_with = "duration::millis")]
    unknown_delay_ms: Duration,
    unknown_max: u32,
    #[serde(rename = "domain")]
    domains: Vec<RawDomain>,
}

/// The documented defaults (Postfix's address_verify_* semantics for the cache).
impl Default for RawRecipients {
    fn default() -> RawRecipients {
        RawRecipients {
            positive_ttl_secs: Duration::from_secs(86_400),
            negative_ttl_secs: Duration::from_secs(600),
            tempfail_ttl_secs: Duration::from_secs(30),
            probe_concurrency: 8,
            probe_timeout_secs: Duration::from_secs(20),
            cache_entries: 100_000,
            reload_secs: Duration::from_secs(10),
            unknown_delay_ms: Duration::from_secs(1),
            unknown_max: 10,
            domains: Vec::new(),
        }
    }
}

/// How the recipients of one domain are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Source {
    /// A file of addresses and `@domain` catch-alls.
    List,
    /// An RCPT probe to the domain's next hop.
    Verify,
    /// Every local part (the default).
    Accept,
    /// An enabled entry of the company directory (`[directory]`) with that address.
    Directory,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: String,
    source: Source,
    #[serde(default)]
    file: Option<PathBuf>,
}

/// How one domain's recipients are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    List(PathBuf),
    /// The delivery route (or smarthost) that mail for the domain takes.
    Verify(HopConfig),
    Accept,
    /// The company directory (`[directory]`).
    Directory,
}

impl Rule {
    pub fn source(&self) -> Source {
        match self {
            Rule::List(_) => Source::List,
            Rule::Verify(_) => Source::Verify,
            Rule::Accept => Source::Accept,
            Rule::Directory => Source::Directory,
        }
    }
}

/// The validated `[recipients]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientsConfig {
    /// How long a probe's answer is kept: recipient exists, does not, or the hop could not say.
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub tempfail_ttl: Duration,
    /// Probes running at once, over the whole process.
    pub probe_concurrency: usize,
    /// One whole probe: connect, greeting, EHLO, MAIL, RCPT.
    pub probe_timeout: Duration,
    /// Cached answers per generation (two generations are kept).
    pub cache_entries: usize,
    /// How often list files are checked for changes.
    pub reload: Duration,
    /// Tarpit per unknown recipient after the third in a session, doubled each time.
    pub unknown_delay: Duration,
    /// Unknown recipients in a session before `421 4.7.0` and close.
    pub unknown_max: u32,
    /// Lowercased domain and its rule, one per domain.
    pub domains: Vec<(String, Rule)>,
}

/// The hop a probe for `domain` goes to: its route, else the smarthost. Never MX: that would
/// probe the public MX, which is usually us.
fn probe_hop(domain: &str, delivery: Option<&DeliveryConfig>) -> Option<HopConfig> {
    let d = delivery?;
    d.routes
        .iter()
        .find(|(name, _)| name == domain)
        .map(|(_, hop)| hop.clone())
        .or_else(|| d.smarthost.clone())
}

pub(super) fn validate(
    raw: RawRecipients,
    base: &Path,
    at: &KeyPath,
    local_domains: &[String],
    delivery: Option<&DeliveryConfig>,
    has_directory: bool,
) -> Result<RecipientsConfig, Invalid> {
    positive(raw.positive_ttl_secs, &at.key("positive_ttl_secs"))?;
    positive(raw.negative_ttl_secs, &at.key("negative_ttl_secs"))?;
    positive(raw.probe_concurrency, &at.key("probe_concurrency"))?;
    positive(raw.probe_timeout_secs, &at.key("probe_timeout_secs"))?;
    positive(raw.cache_entries, &at.key("cache_entries"))?;
    positive(raw.reload_secs, &at.key("reload_secs"))?;
    positive(raw.unknown_max, &at.key("unknown_max"))?;
    ensure(
        raw.unknown_delay_ms <= MAX_UNKNOWN_DELAY,
        &at.key("unknown_delay_ms"),
        "at most 10 s",
    )?;
    let mut domains: Vec<(String, Rule)> = Vec::new();
    for (i, d) in raw.domains.into_iter().enumerate() {
        let at = at.key("domain").index(i);
        let domain = d.domain.to_ascii_lowercase();
        ensure(
            local_domains.contains(&domain),
            &at.key("domain"),
            "not one of local_domains: recipients are only checked for local domains",
        )?;
        ensure(
            !domains.iter().any(|(seen, _)| *seen == domain),
            &at.key("domain"),
            format!("{domain} is configured twice"),
        )?;
        ensure(
            d.file.is_none() || d.source == Source::List,
            &at.key("file"),
            "only a source = \"list\" reads a file",
        )?;
        let rule = match d.source {
            Source::List => {
                let file = d
                    .file
                    .as_ref()
                    .ok_or_else(|| Invalid::new(at.clone(), "source = \"list\" needs a file"))?;
                Rule::List(resolve(base, file))
            }
            Source::Verify => Rule::Verify(probe_hop(&domain, delivery).ok_or_else(|| {
                Invalid::new(
                    at.key("source"),
                    format!(
                        "{domain} has no [[delivery.route]] and there is no [delivery.smarthost]: \
                         verify probes the next hop mail for {domain} goes to, never public MX"
                    ),
                )
            })?),
            Source::Accept => Rule::Accept,
            Source::Directory => {
                ensure(
                    has_directory,
                    &at.key("source"),
                    "source = \"directory\" needs a [directory] table",
                )?;
                Rule::Directory
            }
        };
        domains.push((domain, rule));
    }
    // Every list file must load now: `check` and the start report its errors by file and line.
    for (i, (_, rule)) in domains.iter().enumerate() {
        if let Rule::List(file) = rule {
            let served = list_domains(&domains, file);
            crate::recipients::list::load(file, &served)
                .map_err(|e| Invalid::new(at.key("domain").index(i).key("file"), e.to_string()))?;
        }
    }
    Ok(RecipientsConfig {
        positive_ttl: raw.positive_ttl_secs,
        negative_ttl: raw.negative_ttl_secs,
        tempfail_ttl: raw.tempfail_ttl_secs,
        probe_concurrency: raw.probe_concurrency,
        probe_timeout: raw.probe_timeout_secs,
        cache_entries: raw.cache_entries,
        reload: raw.reload_secs,
        unknown_delay: raw.unknown_delay_ms,
        unknown_max: raw.unknown_max,
        domains,
    })
}

/// The domains whose list is `file` (one file may serve several domains).
pub fn list_domains(domains: &[(String, Rule)], file: &Path) -> Vec<String> {
    domains
        .iter()
        .filter(|(_, rule)| matches!(rule, Rule::List(f) if f == file))
        .map(|(d, _)| d.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
hostname = "mx.example.org"
spool_dir = "spool"
local_domains = ["example.org", "Example.NET", "example.com"]

[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
address = "127.0.0.1:25"
role = "mta"
allow = ["127.0.0.0/8"]
"#;

    const DELIVERY: &str = r#"
[[delivery.route]]
domain = "example.org"
host = "127.0.0.1"
port = 2525
tls = "none"
"#;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("smtp-relay-rcfg-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("mkdir");
            Dir(d)
        }
        fn parse(&self, text: &str) -> Result<Config, String> {
            Config::parse(text, &self.0.join("relay.toml")).map_err(|e| format!("{e:#}"))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn defaults_and_rules() {
        let dir = Dir::new("ok");
        std::fs::write(dir.0.join("staff"), "alice@example.net\n@example.com\n").expect("write");
        let text = format!(
            "{BASE}\n[recipients]\nunknown_delay_ms = 10\n\n\
             [[recipients.domain]]\ndomain = \"Example.ORG\"\nsource = \"verify\"\n\n\
             [[recipients.domain]]\ndomain = \"example.net\"\nsource = \"list\"\nfile = \"staff\"\n\n\
             [[recipients.domain]]\ndomain = \"example.com\"\nsource = \"list\"\nfile = \"staff\"\n\
             {DELIVERY}"
        );
        let c = dir
            .parse(&text)
            .expect("valid")
            .recipients
            .expect("recipients");
        assert_eq!(c.positive_ttl, Duration::from_secs(86_400));
        assert_eq!(c.negative_ttl, Duration::from_secs(600));
        assert_eq!(c.tempfail_ttl, Duration::from_secs(30));
        assert_eq!((c.probe_concurrency, c.unknown_max), (8, 10));
        assert_eq!(c.unknown_delay, Duration::from_millis(10));
        assert_eq!(c.domains[0].0, "example.org");
        assert!(matches!(&c.domains[0].1, Rule::Verify(h) if h.port == 2525));
        assert_eq!(c.domains[1].1, Rule::List(dir.0.join("staff")));
        assert_eq!(
            list_domains(&c.domains, &dir.0.join("staff")),
            ["example.net", "example.com"]
        );
        assert_eq!(dir.parse(BASE).expect("valid").recipients, None);
        let bans = format!(
            "{BASE}\n[bans]\nunknown_recipients = {{ count = 20, within_secs = \"10m\", ban_secs = \"1h\" }}\n"
        );
        let trigger = dir
            .parse(&bans)
            .expect("valid")
            .bans
            .and_then(|b| b.unknown_recipients);
        assert_eq!(
            trigger.map(|t| (t.count, t.within, t.ban)),
            Some((20, Duration::from_secs(600), Duration::from_secs(3600)))
        );
    }

    #[test]
    fn errors_name_the_key_and_why() {
        let dir = Dir::new("bad");
        std::fs::write(dir.0.join("staff"), "alice@example.org\nbob@\n").expect("write");
        let table = |body: &str| format!("{BASE}\n[recipients]\n[[recipients.domain]]\n{body}\n");
        for (text, needle) in [
            (
                table("domain = \"example.org\"\nsource = \"verify\""),
                "recipients.domain[0].source = \"verify\": example.org has no [[delivery.route]]",
            ),
            (
                format!(
                    "{}\n[delivery]\nnameservers = [\"127.0.0.1:53\"]\n",
                    table("domain = \"example.org\"\nsource = \"verify\"")
                ),
                "never public MX",
            ),
            (
                table("domain = \"other.example\"\nsource = \"accept\""),
                "recipients.domain[0].domain = \"other.example\": not one of local_domains",
            ),
            (
                table("domain = \"example.org\"\nsource = \"list\""),
                "source = \"list\" needs a file",
            ),
            (
                table("domain = \"example.org\"\nsource = \"accept\"\nfile = \"staff\""),
                "only a source = \"list\" reads a file",
            ),
            (
                table("domain = \"example.org\"\nsource = \"list\"\nfile = \"staff\""),
                "staff:2: \"bob@\": not a plain local@domain address",
            ),
            (
                table("domain = \"example.org\"\nsource = \"list\"\nfile = \"missing\""),
                "recipients.domain[0].file = \"missing\":",
            ),
            (
                table("domain = \"example.org\"\nsource = \"maybe\""),
                "unknown variant `maybe`",
            ),
            (
                table("domain = \"example.org\"\nsource = \"directory\""),
                "recipients.domain[0].source = \"directory\": source = \"directory\" needs a [directory] table",
            ),
            (
                format!("{BASE}\n[recipients]\nunknown_delay_ms = \"11s\"\n"),
                "recipients.unknown_delay_ms = \"11s\": at most 10 s",
            ),
            (
                format!("{BASE}\n[recipients]\nunknown_max = 0\n"),
                "recipients.unknown_max = 0: must be positive",
            ),
            (
                format!(
                    "{}[[recipients.domain]]\ndomain = \"EXAMPLE.org\"\nsource = \"accept\"\n",
                    table("domain = \"example.org\"\nsource = \"accept\"")
                ),
                "example.org is configured twice",
            ),
        ] {
            let e = dir.parse(&text).expect_err(&text);
            assert!(e.contains(needle), "{needle:?} not in {e}");
            assert!(e.contains("relay.toml:"), "{e}");
        }
    }
}
