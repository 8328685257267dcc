//! The relay's TOML config, parsed strictly (`deny_unknown_fields`) and
//! validated into typed values. Relative paths are taken relative to the
//! config file's directory. Every error names the file; TOML syntax errors
//! also carry line and column.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::Deserialize;

use crate::address;

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Port 25: mail for local domains from anyone admitted; relaying only
    /// after AUTH (inside STARTTLS).
    Mta,
    /// Port 587: STARTTLS, then AUTH, before MAIL.
    Submission,
    /// Port 465: implicit TLS, AUTH before MAIL.
    Submissions,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mta => "mta",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }

    /// Whether MAIL needs an authenticated session.
    pub fn requires_auth(self) -> bool {
        !matches!(self, Role::Mta)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: String,
    spool_dir: PathBuf,
    local_domains: Vec<String>,
    #[serde(default = "default_max_message_size")]
    max_message_size: u64,
    #[serde(default = "default_max_recipients")]
    max_recipients: usize,
    #[serde(default = "default_command_timeout")]
    command_timeout_secs: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    trusted_networks: Vec<IpNet>,
    tls: RawTls,
    #[serde(rename = "listener")]
    listeners: Vec<RawListener>,
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
}

fn default_max_message_size() -> u64 {
    25 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    100
}
fn default_command_timeout() -> u64 {
    300
}
fn default_max_connections() -> usize {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: SocketAddr,
    role: Role,
    #[serde(default)]
    allow: Vec<IpNet>,
    #[serde(default)]
    allow_gatekeeper: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    #[serde(default)]
    senders: Vec<String>,
}

/// The gatekeeper's own config; only `[[allow]]` matters here.
#[derive(Debug, Deserialize)]
struct GatekeeperFile {
    #[serde(default)]
    allow: Vec<GatekeeperAllow>,
}

#[derive(Debug, Deserialize)]
struct GatekeeperAllow {
    cidr: IpNet,
}

/// A validated listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub role: Role,
    /// Admitted peer ranges: `allow` plus every gatekeeper file's `[[allow]]`.
    pub allow: Vec<IpNet>,
}

impl ListenerConfig {
    /// Whether `peer` may talk to this listener. IPv4-mapped IPv6 peers are
    /// matched as IPv4, so a v4 range also covers them.
    pub fn admits(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// A validated user.
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
    /// Plain-form addresses (domain lowercased) this user may use in MAIL.
    pub senders: Vec<String>,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for error messages.
    pub path: PathBuf,
    pub hostname: String,
    pub spool_dir: PathBuf,
    /// Lowercased.
    pub local_domains: Vec<String>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub command_timeout: Duration,
    pub max_connections: usize,
    pub trusted_networks: Vec<IpNet>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub users: Vec<UserConfig>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Config> {
        let raw: RawConfig =
            toml::from_str(text).with_context(|| format!("{}: invalid config", path.display()))?;
        validate(raw, path).with_context(|| format!("{}: invalid config", path.display()))
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn validate(raw: RawConfig, path: &Path) -> anyhow::Result<Config> {
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();

    if !address::is_host_name(&raw.hostname) {
        bail!("hostname {:?} is not a valid host name", raw.hostname);
    }
    if raw.local_domains.is_empty() {
        bail!("local_domains is empty: list the domains this relay receives mail for");
    }
    let mut local_domains = Vec::new();
    for d in &raw.local_domains {
        if !address::is_host_name(d) {
            bail!("local_domains: {d:?} is not a valid domain");
        }
        local_domains.push(d.to_ascii_lowercase());
    }
    if raw.max_message_size == 0 {
        bail!("max_message_size must be positive");
    }
    if raw.max_recipients == 0 || raw.command_timeout_secs == 0 || raw.max_connections == 0 {
        bail!("max_recipients, command_timeout_secs and max_connections must be positive");
    }

    if raw.listeners.is_empty() {
        bail!("no [[listener]] configured");
    }
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let n = i + 1;
        for earlier in &listeners {
            if addresses_clash(earlier.address, l.address) {
                bail!(
                    "listener #{n} ({}) clashes with listener on {}: same port",
                    l.address,
                    earlier.address
                );
            }
        }
        let mut allow = l.allow;
        for gk in &l.allow_gatekeeper {
            let gk = resolve(&base, gk);
            allow.extend(
                load_gatekeeper_allow(&gk)
                    .with_context(|| format!("listener #{n} ({}): allow_gatekeeper", l.address))?,
            );
        }
        if allow.is_empty() {
            bail!(
                "listener #{n} ({}) admits no peer: set allow (e.g. [\"0.0.0.0/0\", \"::/0\"]) \
                 or allow_gatekeeper",
                l.address
            );
        }
        listeners.push(ListenerConfig {
            address: l.address,
            role: l.role,
            allow,
        });
    }

    let mut names = HashSet::new();
    let mut users = Vec::new();
    for u in raw.users {
        if u.name.is_empty()
            || u.name.len() > 256
            || u.name.chars().any(|c| c.is_control() || c == ' ')
        {
            bail!(
                "user name {:?} is empty, too long or has spaces/control characters",
                u.name
            );
        }
        if !names.insert(u.name.clone()) {
            bail!("user {:?} is defined twice", u.name);
        }
        crate::auth::check_hash(&u.password_hash)
            .with_context(|| format!("user {:?}: password_hash", u.name))?;
        let mut senders = Vec::new();
        for s in &u.senders {
            let plain = address::parse_mailbox(s)
                .ok()
                .and_then(|m| m.plain_form())
                .with_context(|| {
                    format!(
                        "user {:?}: sender {s:?} is not a plain local@domain address",
                        u.name
                    )
                })?;
            senders.push(plain);
        }
        users.push(UserConfig {
            name: u.name,
            password_hash: u.password_hash,
            senders,
        });
    }

    if users.is_empty()
        && let Some(l) = listeners.iter().find(|l| l.role.requires_auth())
    {
        bail!(
            "listener {} has role {} but no [[user]] is configured: nobody could send",
            l.address,
            l.role
        );
    }

    Ok(Config {
        path: path.to_owned(),
        hostname: raw.hostname,
        spool_dir: resolve(&base, &raw.spool_dir),
        local_domains,
        max_message_size: raw.max_message_size,
        max_recipients: raw.max_recipients,
        command_timeout: Duration::from_secs(raw.command_timeout_secs),
        max_connections: raw.max_connections,
        trusted_networks: raw.trusted_networks,
        tls_cert: resolve(&base, &raw.tls.cert),
        tls_key: resolve(&base, &raw.tls.key),
        listeners,
        users,
    })
}

/// Two listeners clash when binding both would fail: same port and the same
/// address, or a wildcard of the same family (IPv6 sockets are V6ONLY).
/// Port 0 (ephemeral) never clashes.
fn addresses_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

/// Reads the `[[allow]]` CIDRs from a gatekeeper config, ignoring its other
/// keys, so the relay admits exactly the peers the XDP filter admits.
pub fn load_gatekeeper_allow(path: &Path) -> anyhow::Result<Vec<IpNet>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading gatekeeper config {}", path.display()))?;
    let gk: GatekeeperFile = toml::from_str(&text)
        .with_context(|| format!("{}: invalid gatekeeper config", path.display()))?;
    Ok(gk.allow.into_iter().map(|a| a.cidr).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=16,t=1,p=1$c2FsdHNhbHQ$Hl5xgeqfV3fP1s/UVQcaVQ";

    fn good() -> String {
        format!(
            r#"
hostname = "mx.example.org"
spool_dir = "spool"
local_domains = ["Example.ORG"]
trusted_networks = []

[tls]
cert = "cert.pem"
key = "/etc/key.pem"

[[listener]]
address = "0.0.0.0:25"
role = "mta"
allow = ["0.0.0.0/0"]

[[listener]]
address = "[::]:25"
role = "mta"
allow = ["::/0"]

[[listener]]
address = "127.0.0.1:587"
role = "submission"
allow = ["127.0.0.0/8"]

[[user]]
name = "alice"
password_hash = "{HASH}"
senders = ["alice@Example.org"]
"#
        )
    }

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("/etc/smtp-relay/relay.toml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("config unexpectedly valid:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn good_config() {
        let c = parse(&good()).expect("valid");
        assert_eq!(c.local_domains, vec!["example.org"]);
        assert_eq!(c.spool_dir, Path::new("/etc/smtp-relay/spool"));
        assert_eq!(c.tls_cert, Path::new("/etc/smtp-relay/cert.pem"));
        assert_eq!(c.tls_key, Path::new("/etc/key.pem"));
        assert_eq!(c.listeners.len(), 3);
        assert_eq!(c.listeners[2].role, Role::Submission);
        assert_eq!(c.users[0].senders, vec!["alice@example.org"]);
        assert_eq!(c.max_message_size, 25 * 1024 * 1024);
        assert!(c.listeners[2].admits("127.0.0.9".parse().expect("ip")));
        assert!(!c.listeners[2].admits("192.0.2.1".parse().expect("ip")));
        // IPv4-mapped IPv6 peers match IPv4 ranges.
        assert!(c.listeners[2].admits("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!c.listeners[1].admits("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn unknown_key_is_refused_with_file_and_line() {
        let text = good().replace(
            "trusted_networks = []",
            "trusted_networks = []\nopen_relay = true",
        );
        let e = err(&text);
        assert!(e.contains("/etc/smtp-relay/relay.toml"), "{e}");
        assert!(e.contains("open_relay"), "{e}");
        assert!(e.contains("line 6"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            (
                "ESCAPE_HASH",
                "password_hash = \"plaintext\"",
                "password_hash",
            ),
            ("$argon2id$", "$argon2i$", "argon2id"),
            ("role = \"submission\"", "role = \"relay\"", "relay"),
            (
                "address = \"[::]:25\"",
                "address = \"0.0.0.0:25\"",
                "clashes",
            ),
            (
                "address = \"127.0.0.1:587\"",
                "address = \"0.0.0.0:587\"\n",
                "",
            ),
            ("[\"Example.ORG\"]", "[]", "local_domains"),
            ("[\"Example.ORG\"]", "[\"bad domain\"]", "local_domains"),
            (
                "hostname = \"mx.example.org\"",
                "hostname = \"\"",
                "hostname",
            ),
            ("allow = [\"127.0.0.0/8\"]", "", "admits no peer"),
            (
                "allow = [\"127.0.0.0/8\"]",
                "allow = [\"127.0.0.0/33\"]",
                "line",
            ),
            (
                "[\"alice@Example.org\"]",
                "[\"alice%x@example.org\"]",
                "plain",
            ),
            ("name = \"alice\"", "name = \"al ice\"", "user name"),
        ];
        for (from, to, needle) in cases {
            let text = if from == "ESCAPE_HASH" {
                good().replace(&format!("password_hash = \"{HASH}\""), to)
            } else {
                good().replacen(from, to, 1)
            };
            if needle.is_empty() {
                // Not every edit is an error: 0.0.0.0:587 does not clash.
                parse(&text).expect("still valid");
                continue;
            }
            let e = err(&text);
            assert!(e.contains(needle), "expected {needle:?} in: {e}");
            assert!(e.contains("relay.toml"), "{e}");
        }
    }

    #[test]
    fn submission_without_users_refused() {
        let text = good();
        let cut = text.find("[[user]]").expect("user section");
        assert!(err(&text[..cut]).contains("no [[user]]"));
        // An mta-only config needs no users.
        let mta_only = text[..cut].replace("role = \"submission\"", "role = \"mta\"");
        parse(&mta_only).expect("mta-only config without users is valid");
    }

    #[test]
    fn duplicate_user_refused() {
        let mut text = good();
        text.push_str(&format!(
            "\n[[user]]\nname = \"alice\"\npassword_hash = \"{HASH}\"\n"
        ));
        assert!(err(&text).contains("twice"));
    }

    #[test]
    fn clash_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(addresses_clash(a("0.0.0.0:25"), a("127.0.0.1:25")));
        assert!(addresses_clash(a("[::1]:25"), a("[::]:25")));
        assert!(!addresses_clash(a("0.0.0.0:25"), a("[::]:25")));
        assert!(!addresses_clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!addresses_clash(a("127.0.0.1:25"), a("127.0.0.1:587")));
    }

    #[test]
    fn gatekeeper_allowlist_is_read_and_other_keys_ignored() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-gk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let gk = dir.join("gatekeeper.toml");
        std::fs::write(
            &gk,
            r#"
interfaces = ["eth0"]
protected_ports = [25, 587]
xdp_mode = "native"

[[allow]]
cidr = "198.51.100.0/24"
comment = "partner MX"

[[allow]]
cidr = "2001:db8::/32"
"#,
        )
        .expect("write");
        let text = good().replace(
            "allow = [\"127.0.0.0/8\"]",
            "allow_gatekeeper = [\"gatekeeper.toml\"]",
        );
        let c = Config::parse(&text, &dir.join("relay.toml")).expect("valid");
        let l = &c.listeners[2];
        assert!(l.admits("198.51.100.7".parse().expect("ip")));
        assert!(l.admits("2001:db8::5".parse().expect("ip")));
        assert!(!l.admits("127.0.0.1".parse().expect("ip")));
        // A broken gatekeeper file is an error naming that file.
        std::fs::write(&gk, "[[allow]]\ncidr = \"nonsense\"\n").expect("write");
        let e = format!(
            "{:#}",
            Config::parse(&text, &dir.join("relay.toml")).expect_err("invalid")
        );
        assert!(e.contains("gatekeeper.toml"), "{e}");
        std::fs::remove_file(&gk).expect("rm");
        let e = format!(
            "{:#}",
            Config::parse(&text, &dir.join("relay.toml")).expect_err("missing")
        );
        assert!(e.contains("gatekeeper.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
