//! The relay's TOML config, parsed strictly (`deny_unknown_fields`) and
//! validated into typed values. Relative paths are taken relative to the
//! config file's directory. Every error names the file; TOML syntax errors
//! also carry line and column.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use gatekeeper_support::gatekeeper_config;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::address;

pub mod duration;

/// What a listener is for. The names (config, envelope, logs) come from the
/// variant names, lowercased, for serde and strum alike.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Deserialize,
    Serialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
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
        self.into()
    }

    /// Whether MAIL needs an authenticated session.
    pub fn requires_auth(self) -> bool {
        !matches!(self, Role::Mta)
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
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "duration::secs"
    )]
    command_timeout_secs: Duration,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    trusted_networks: Vec<IpNet>,
    #[serde(default = "default_command_line")]
    max_command_line: usize,
    #[serde(default = "default_text_line")]
    max_text_line: usize,
    #[serde(default = "default_max_errors")]
    max_errors: u32,
    #[serde(default = "default_max_commands")]
    max_commands: u32,
    #[serde(default = "default_per_client")]
    max_connections_per_client: usize,
    #[serde(default = "default_handshake", deserialize_with = "duration::secs")]
    tls_handshake_timeout_secs: Duration,
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "duration::secs"
    )]
    data_timeout_secs: Duration,
    #[serde(default = "default_auth_delay", deserialize_with = "duration::millis")]
    auth_failure_delay_ms: Duration,
    #[serde(default = "default_auth_max")]
    auth_max_failures: u32,
    #[serde(default = "default_auth_window", deserialize_with = "duration::secs")]
    auth_failure_window_secs: Duration,
    tls: RawTls,
    #[serde(rename = "listener")]
    listeners: Vec<RawListener>,
    #[serde(default, rename = "user")]
    users: Vec<RawUser>,
    /// Prometheus text endpoint (`GET /metrics`), off when absent.
    #[serde(default)]
    metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    delivery: Option<RawDelivery>,
}

/// TLS towards a next hop.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, strum::Display, strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS when the next hop offers it, certificate not verified
    /// (RFC 7435); plaintext when it is not offered or the handshake fails.
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and the certificate must verify against
    /// `ca_file` for the next hop's name; otherwise the attempt is deferred.
    Required,
    /// Never STARTTLS.
    None,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDelivery {
    smarthost: Option<RawHop>,
    #[serde(rename = "route")]
    routes: Vec<RawRoute>,
    nameservers: Vec<SocketAddr>,
    mx_port: u16,
    mx_tls: TlsMode,
    ca_file: Option<PathBuf>,
    connections_per_destination: usize,
    max_deliveries: usize,
    #[serde(deserialize_with = "duration::secs")]
    retry_initial_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    retry_max_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    max_queue_lifetime_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    connect_timeout_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    reply_timeout_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    connection_idle_secs: Duration,
}

/// The documented defaults of `[delivery]`.
impl Default for RawDelivery {
    fn default() -> RawDelivery {
        RawDelivery {
            smarthost: None,
            routes: Vec::new(),
            nameservers: Vec::new(),
            mx_port: default_mx_port(),
            mx_tls: TlsMode::default(),
            ca_file: None,
            connections_per_destination: 4,
            max_deliveries: 20,
            retry_initial_secs: Duration::from_secs(60),
            retry_max_secs: Duration::from_secs(3600),
            max_queue_lifetime_secs: Duration::from_secs(5 * 24 * 3600),
            connect_timeout_secs: Duration::from_secs(30),
            reply_timeout_secs: default_command_timeout(),
            connection_idle_secs: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHop {
    host: String,
    #[serde(default = "default_mx_port")]
    port: u16,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    auth_user: Option<String>,
    #[serde(default)]
    auth_password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: String,
    host: String,
    #[serde(default = "default_mx_port")]
    port: u16,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    auth_user: Option<String>,
    #[serde(default)]
    auth_password_file: Option<PathBuf>,
}

fn default_mx_port() -> u16 {
    25
}
fn default_max_message_size() -> u64 {
    25 * 1024 * 1024
}
fn default_max_recipients() -> usize {
    100
}
fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_connections() -> usize {
    200
}
fn default_command_line() -> usize {
    512
}
fn default_text_line() -> usize {
    1000
}
fn default_max_errors() -> u32 {
    20
}
fn default_max_commands() -> u32 {
    1000
}
fn default_per_client() -> usize {
    20
}
fn default_handshake() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_delay() -> Duration {
    Duration::from_millis(500)
}
fn default_auth_max() -> u32 {
    10
}
fn default_auth_window() -> Duration {
    Duration::from_secs(900)
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

/// A validated listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub role: Role,
    /// Admitted peer ranges at load: `allow` plus every gatekeeper file's
    /// `[[allow]]`. The running server follows the files' changes with
    /// [`crate::admission::Admission`].
    pub allow: Vec<IpNet>,
    /// The listener's own `allow` CIDRs.
    pub fixed_allow: Vec<IpNet>,
    /// The gatekeeper configs named in `allow_gatekeeper`, resolved.
    pub gatekeeper_files: Vec<PathBuf>,
}

impl ListenerConfig {
    /// Whether `peer` is in the ranges read at load. IPv4-mapped IPv6 peers
    /// are matched as IPv4, so a v4 range also covers them.
    pub fn admits(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// A validated next hop: a host name or IP literal and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// AUTH PLAIN credentials (user, password) for this hop, sent only
    /// inside TLS.
    pub auth: Option<(String, String)>,
}

/// Where mail goes, and how hard we try.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Per-domain routes (domain lowercased).
    pub routes: Vec<(String, HopConfig)>,
    /// Everything without a route, when set; otherwise MX lookup.
    pub smarthost: Option<HopConfig>,
    /// DNS servers for MX and address lookups (never the system resolver
    /// when set).
    pub nameservers: Vec<SocketAddr>,
    /// Port used for MX hosts: 25; other values are for tests and labs.
    pub mx_port: u16,
    pub mx_tls: TlsMode,
    /// CA certificates for `tls = "required"`; default the system bundle.
    pub ca_file: Option<PathBuf>,
    pub connections_per_destination: usize,
    pub max_deliveries: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub max_queue_lifetime: Duration,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub connection_idle: Duration,
}

/// A validated user.
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
    /// Plain-form addresses (domain lowercased) this user may use in MAIL.
    pub senders: Vec<String>,
}

/// Protocol limits beyond size and recipients (see the README table).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Command line, CRLF included (RFC 5321 4.5.3.1.4: at least 512).
    pub command_line: usize,
    /// Text line in DATA, CRLF included (RFC 5321 4.5.3.1.6: at least 1000).
    pub text_line: usize,
    /// Error replies before the session is closed.
    pub errors: u32,
    /// Commands per session.
    pub commands: u32,
    /// Concurrent sessions per client address.
    pub per_client: usize,
    pub tls_handshake: Duration,
    /// Each wait for message data (RFC 5321 4.5.3.2).
    pub data_timeout: Duration,
    /// AUTH brute-force throttle: base delay after a failure, failures
    /// (per client address or per user) before `454 4.7.0`, and the window
    /// in which failures count.
    pub auth_delay: Duration,
    pub auth_max_failures: u32,
    pub auth_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            command_line: default_command_line(),
            text_line: default_text_line(),
            errors: default_max_errors(),
            commands: default_max_commands(),
            per_client: default_per_client(),
            tls_handshake: default_handshake(),
            data_timeout: default_command_timeout(),
            auth_delay: default_auth_delay(),
            auth_max_failures: default_auth_max(),
            auth_window: default_auth_window(),
        }
    }
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
    pub limits: Limits,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub users: Vec<UserConfig>,
    pub metrics_listen: Option<SocketAddr>,
    /// `None`: no `[delivery]` table; mail is held in the spool.
    pub delivery: Option<DeliveryConfig>,
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
    if raw.max_recipients == 0 || raw.command_timeout_secs.is_zero() || raw.max_connections == 0 {
        bail!("max_recipients, command_timeout_secs and max_connections must be positive");
    }

    if !(512..=16_384).contains(&raw.max_command_line) {
        bail!("max_command_line must be between 512 (RFC 5321) and 16384");
    }
    if !(1000..=16_384).contains(&raw.max_text_line) {
        bail!("max_text_line must be between 1000 (RFC 5321) and 16384");
    }
    if raw.max_errors == 0
        || raw.max_commands == 0
        || raw.max_connections_per_client == 0
        || raw.tls_handshake_timeout_secs.is_zero()
        || raw.data_timeout_secs.is_zero()
        || raw.auth_max_failures == 0
        || raw.auth_failure_window_secs.is_zero()
    {
        bail!(
            "max_errors, max_commands, max_connections_per_client, tls_handshake_timeout_secs, \
             data_timeout_secs, auth_max_failures and auth_failure_window_secs must be positive"
        );
    }
    let limits = Limits {
        command_line: raw.max_command_line,
        text_line: raw.max_text_line,
        errors: raw.max_errors,
        commands: raw.max_commands,
        per_client: raw.max_connections_per_client,
        tls_handshake: raw.tls_handshake_timeout_secs,
        data_timeout: raw.data_timeout_secs,
        auth_delay: raw.auth_failure_delay_ms,
        auth_max_failures: raw.auth_max_failures,
        auth_window: raw.auth_failure_window_secs,
    };

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
        let mut allow = l.allow.clone();
        let mut gatekeeper_files = Vec::new();
        for gk in &l.allow_gatekeeper {
            let gk = resolve(&base, gk);
            gatekeeper_files.push(gk.clone());
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
            fixed_allow: l.allow,
            gatekeeper_files,
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
        crate::password::check_hash(&u.password_hash)
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

    let delivery = match raw.delivery {
        Some(d) => Some(validate_delivery(d, &base).context("[delivery]")?),
        None => None,
    };

    Ok(Config {
        path: path.to_owned(),
        hostname: raw.hostname,
        spool_dir: resolve(&base, &raw.spool_dir),
        local_domains,
        max_message_size: raw.max_message_size,
        max_recipients: raw.max_recipients,
        command_timeout: raw.command_timeout_secs,
        max_connections: raw.max_connections,
        trusted_networks: raw.trusted_networks,
        limits,
        tls_cert: resolve(&base, &raw.tls.cert),
        tls_key: resolve(&base, &raw.tls.key),
        listeners,
        users,
        metrics_listen: raw.metrics_listen,
        delivery,
    })
}

/// A duration that must not be zero.
fn positive(name: &str, d: Duration) -> anyhow::Result<Duration> {
    if d.is_zero() {
        bail!("{name} must be a positive duration");
    }
    Ok(d)
}

fn validate_hop(raw: RawHop, base: &Path) -> anyhow::Result<HopConfig> {
    let host_ok = address::is_host_name(&raw.host) || raw.host.parse::<IpAddr>().is_ok();
    if !host_ok {
        bail!(
            "host {:?} is neither a host name nor an IP address",
            raw.host
        );
    }
    if raw.port == 0 {
        bail!("port must not be 0");
    }
    let auth = match (raw.auth_user, raw.auth_password_file) {
        (None, None) => None,
        (Some(user), Some(file)) => {
            if raw.tls != TlsMode::Required {
                bail!("auth_user needs tls = \"required\": the password travels only inside TLS");
            }
            let file = resolve(base, &file);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading auth_password_file {}", file.display()))?;
            let password = text.lines().next().unwrap_or("").to_owned();
            if password.is_empty() {
                bail!("auth_password_file {} is empty", file.display());
            }
            Some((user, password))
        }
        _ => bail!("auth_user and auth_password_file go together"),
    };
    Ok(HopConfig {
        host: raw.host,
        port: raw.port,
        tls: raw.tls,
        auth,
    })
}

fn validate_delivery(raw: RawDelivery, base: &Path) -> anyhow::Result<DeliveryConfig> {
    let mut routes: Vec<(String, HopConfig)> = Vec::new();
    for r in raw.routes {
        let domain = r.domain.to_ascii_lowercase();
        if !address::is_host_name(&domain) {
            bail!("route: {:?} is not a valid domain", r.domain);
        }
        if routes.iter().any(|(d, _)| *d == domain) {
            bail!("route for {domain:?} is defined twice");
        }
        let raw_hop = RawHop {
            host: r.host,
            port: r.port,
            tls: r.tls,
            auth_user: r.auth_user,
            auth_password_file: r.auth_password_file,
        };
        let hop = validate_hop(raw_hop, base).with_context(|| format!("route {domain:?}"))?;
        routes.push((domain, hop));
    }
    let smarthost = match raw.smarthost {
        Some(h) => Some(validate_hop(h, base).context("smarthost")?),
        None => None,
    };
    if raw.mx_port == 0 {
        bail!("mx_port must not be 0");
    }
    if raw.connections_per_destination == 0 || raw.max_deliveries == 0 {
        bail!("connections_per_destination and max_deliveries must be positive");
    }
    if raw.max_queue_lifetime_secs.is_zero()
        || raw.connect_timeout_secs.is_zero()
        || raw.reply_timeout_secs.is_zero()
    {
        bail!(
            "max_queue_lifetime_secs, connect_timeout_secs and reply_timeout_secs must be positive"
        );
    }
    let retry_initial = positive("retry_initial_secs", raw.retry_initial_secs)?;
    let retry_max = positive("retry_max_secs", raw.retry_max_secs)?;
    if retry_max < retry_initial {
        bail!("retry_max_secs is smaller than retry_initial_secs");
    }
    let ca_file = raw.ca_file.map(|p| resolve(base, &p));
    if let Some(ca) = &ca_file {
        std::fs::metadata(ca).with_context(|| format!("ca_file {}", ca.display()))?;
    }
    Ok(DeliveryConfig {
        routes,
        smarthost,
        nameservers: raw.nameservers,
        mx_port: raw.mx_port,
        mx_tls: raw.mx_tls,
        ca_file,
        connections_per_destination: raw.connections_per_destination,
        max_deliveries: raw.max_deliveries,
        retry_initial,
        retry_max,
        max_queue_lifetime: raw.max_queue_lifetime_secs,
        connect_timeout: raw.connect_timeout_secs,
        reply_timeout: raw.reply_timeout_secs,
        connection_idle: positive("connection_idle_secs", raw.connection_idle_secs)?,
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

/// Reads the `[[allow]]` networks of a gatekeeper config through the
/// gatekeeper's own schema, so the relay admits exactly the peers the XDP
/// filter admits and refuses the files the gatekeeper refuses.
pub fn load_gatekeeper_allow(path: &Path) -> anyhow::Result<Vec<IpNet>> {
    let gk = gatekeeper_config::Config::load(path).context("invalid gatekeeper config")?;
    Ok(gk.allow.into_iter().map(|entry| entry.net).collect())
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
    fn delivery_section() {
        let mut text = good();
        text.push_str(
            r#"
[delivery]
nameservers = ["127.0.0.1:5353"]
mx_port = 2525
retry_initial_secs = 0.5

[delivery.smarthost]
host = "relay.internal"
port = 587
tls = "required"

[[delivery.route]]
domain = "Example.ORG"
host = "127.0.0.1"
port = 10025
tls = "none"
"#,
        );
        let c = parse(&text).expect("valid");
        let d = c.delivery.expect("delivery");
        assert_eq!(d.routes[0].0, "example.org");
        assert_eq!(d.routes[0].1.tls, TlsMode::None);
        assert_eq!(d.smarthost.as_ref().map(|h| h.port), Some(587));
        assert_eq!(d.retry_initial, Duration::from_millis(500));
        assert_eq!(d.max_queue_lifetime, Duration::from_secs(432_000));
        for (from, to, needle) in [
            ("tls = \"none\"", "tls = \"sometimes\"", "sometimes"),
            ("port = 10025", "port = 0", "port"),
            (
                "retry_initial_secs = 0.5",
                "retry_initial_secs = -1.0",
                "retry_initial",
            ),
            ("host = \"127.0.0.1\"", "host = \"bad host\"", "host"),
            (
                "tls = \"required\"",
                "tls = \"required\"\nauth_user = \"u\"",
                "auth_password_file",
            ),
            ("mx_port = 2525", "mx_port = 2525\nbogus = 1", "bogus"),
        ] {
            let e = err(&text.replacen(from, to, 1));
            assert!(e.contains(needle), "expected {needle:?} in: {e}");
        }
    }

    #[test]
    fn durations_with_units_or_plain_numbers() {
        let text = good().replace(
            "trusted_networks = []",
            "trusted_networks = []\ncommand_timeout_secs = \"5m\"\nauth_failure_delay_ms = \"1s\"\n\
             data_timeout_secs = 120",
        ) + "\n[delivery]\nmax_queue_lifetime_secs = \"5d\"\nretry_max_secs = \"1h30m\"\n\
             connection_idle_secs = 2.5\n";
        let c = parse(&text).expect("valid");
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert_eq!(c.limits.auth_delay, Duration::from_secs(1));
        assert_eq!(c.limits.data_timeout, Duration::from_secs(120));
        let d = c.delivery.expect("delivery");
        assert_eq!(d.max_queue_lifetime, Duration::from_secs(432_000));
        assert_eq!(d.retry_max, Duration::from_secs(5400));
        assert_eq!(d.connection_idle, Duration::from_millis(2500));
        assert_eq!(d.retry_initial, Duration::from_secs(60));
        let e = err(&text.replace("\"5m\"", "\"5 minutes\""));
        assert!(
            e.contains("command_timeout_secs") && e.contains("line"),
            "{e}"
        );
        let e = err(&text.replace("\"1h30m\"", "\"0s\""));
        assert!(e.contains("retry_max_secs"), "{e}");
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

[[allow]]
cidr = "203.0.113.25"
comment = "a bare address, as the gatekeeper accepts"
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
        assert!(l.admits("203.0.113.25".parse().expect("ip")));
        assert!(!l.admits("203.0.113.26".parse().expect("ip")));
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
