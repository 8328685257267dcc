//! The relay's TOML config, parsed strictly (`deny_unknown_fields`) and
//! validated into typed values. Relative paths are taken relative to the
//! config file's directory. Every error names the file; TOML syntax errors
//! also carry line and column.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gatekeeper_support::gatekeeper_config;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::address;

pub mod bans;
pub mod directory;
pub mod dkim;
pub mod dns;
pub mod duration;
pub mod locate;
pub mod nets;
pub mod recipients;
pub mod screen;
pub mod sender_auth;

pub use bans::BansConfig;
pub use directory::DirectoryConfig;
pub use dkim::{DkimConfig, DkimKeyConfig};
pub use dns::DnsConfig;
pub use recipients::RecipientsConfig;
pub use screen::ScreenConfig;
pub use sender_auth::{DmarcPolicy, SenderAuthConfig};

pub use locate::{ConfigError, Invalid, KeyPath};

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

/// The file as written. A key left out takes the documented default of
/// `impl Default`; the keys that have none are `Option`s here and
/// [`validate`] requires them, with serde's own "missing field" message.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    spool_dir: Option<PathBuf>,
    local_domains: Option<Vec<String>>,
    max_message_size: u64,
    max_recipients: usize,
    #[serde(deserialize_with = "duration::secs")]
    command_timeout_secs: Duration,
    max_connections: usize,
    #[serde(deserialize_with = "nets::list")]
    trusted_networks: Vec<IpNet>,
    max_command_line: usize,
    max_text_line: usize,
    max_errors: u32,
    max_commands: u32,
    max_connections_per_client: usize,
    #[serde(deserialize_with = "duration::secs")]
    tls_handshake_timeout_secs: Duration,
    #[serde(deserialize_with = "duration::secs")]
    data_timeout_secs: Duration,
    #[serde(deserialize_with = "duration::millis")]
    auth_failure_delay_ms: Duration,
    auth_max_failures: u32,
    #[serde(deserialize_with = "duration::secs")]
    auth_failure_window_secs: Duration,
    tls: Option<RawTls>,
    #[serde(rename = "listener")]
    listeners: Option<Vec<RawListener>>,
    #[serde(rename = "user")]
    users: Vec<RawUser>,
    /// Prometheus text endpoint (`GET /metrics`), off when absent.
    metrics_listen: Option<SocketAddr>,
    delivery: Option<RawDelivery>,
    /// The gatekeeper's ban socket and the triggers; off when absent.
    bans: Option<bans::RawBans>,
    /// Nameservers for the checks (and delivery without its own); off when absent.
    dns: Option<dns::RawDns>,
    /// Recipient validation at RCPT time; every local part accepted when absent.
    recipients: Option<recipients::RawRecipients>,
    /// Connection-time screening (DNS lists, pre-greet, HELO); off when absent.
    screen: Option<screen::RawScreen>,
    /// SPF, DKIM, DMARC, ARC; off when absent.
    sender_auth: Option<sender_auth::RawSenderAuth>,
    /// The company directory (LDAP / Active Directory); off when absent.
    directory: Option<directory::RawDirectory>,
    /// DKIM signing keys; nothing is signed when absent.
    dkim: Option<dkim::RawDkim>,
}

/// The documented defaults (README, configuration reference), in one place.
impl Default for RawConfig {
    fn default() -> RawConfig {
        RawConfig {
            hostname: None,
            spool_dir: None,
            local_domains: None,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            command_timeout_secs: Duration::from_secs(300),
            max_connections: 200,
            trusted_networks: Vec::new(),
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 20,
            max_commands: 1000,
            max_connections_per_client: 20,
            tls_handshake_timeout_secs: Duration::from_secs(30),
            data_timeout_secs: Duration::from_secs(300),
            auth_failure_delay_ms: Duration::from_millis(500),
            auth_max_failures: 10,
            auth_failure_window_secs: Duration::from_secs(900),
            tls: None,
            listeners: None,
            users: Vec::new(),
            metrics_listen: None,
            delivery: None,
            bans: None,
            dns: None,
            recipients: None,
            screen: None,
            sender_auth: None,
            directory: None,
            dkim: None,
        }
    }
}

impl RawConfig {
    /// The protocol limits as written (checked by [`validate`]).
    fn limits(&self) -> Limits {
        Limits {
            command_line: self.max_command_line,
            text_line: self.max_text_line,
            errors: self.max_errors,
            commands: self.max_commands,
            per_client: self.max_connections_per_client,
            tls_handshake: self.tls_handshake_timeout_secs,
            data_timeout: self.data_timeout_secs,
            auth_delay: self.auth_failure_delay_ms,
            auth_max_failures: self.auth_max_failures,
            auth_window: self.auth_failure_window_secs,
        }
    }
}

/// The port of next hops and MX hosts unless the config says otherwise.
const SMTP_PORT: u16 = 25;

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
    /// The recipient domain's MTA-STS policy (RFC 8461): in `enforce` mode only the MX hosts
    /// it names, over TLS verified for the MX name, else deferred; `testing` and no policy
    /// are opportunistic. See `delivery::tls_policy`.
    #[serde(rename = "mta-sts")]
    #[strum(serialize = "mta-sts")]
    MtaSts,
    /// DANE (RFC 7672) for hosts with DNSSEC-validated TLSA records (mandatory TLS, the
    /// certificate checked against the records); the other hosts as `mta-sts`. The default
    /// of `mx_tls`.
    Dane,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the mode consults the recipient domain's published policies, which then decide
    /// the STARTTLS behaviour (`delivery::tls_policy`).
    pub fn is_policy(self) -> bool {
        matches!(self, TlsMode::MtaSts | TlsMode::Dane)
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
    mta_sts_port: u16,
    #[serde(deserialize_with = "duration::secs")]
    mta_sts_fetch_timeout_secs: Duration,
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
            mx_port: SMTP_PORT,
            mx_tls: TlsMode::Dane,
            ca_file: None,
            mta_sts_port: 443,
            mta_sts_fetch_timeout_secs: Duration::from_secs(10),
            connections_per_destination: 4,
            max_deliveries: 20,
            retry_initial_secs: Duration::from_secs(60),
            retry_max_secs: Duration::from_secs(3600),
            max_queue_lifetime_secs: Duration::from_secs(5 * 24 * 3600),
            connect_timeout_secs: Duration::from_secs(30),
            reply_timeout_secs: Duration::from_secs(300),
            connection_idle_secs: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHop {
    host: String,
    /// [`SMTP_PORT`] when left out.
    #[serde(default)]
    port: Option<u16>,
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
    /// [`SMTP_PORT`] when left out.
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    auth_user: Option<String>,
    #[serde(default)]
    auth_password_file: Option<PathBuf>,
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
    #[serde(default, deserialize_with = "nets::list")]
    allow: Vec<IpNet>,
    #[serde(default)]
    allow_gatekeeper: Vec<PathBuf>,
    #[serde(default)]
    dmarc_policy: DmarcPolicy,
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
    /// What a DMARC `p=reject` failure gets here (`honor` only on `mta`).
    pub dmarc_policy: DmarcPolicy,
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
    /// CA certificates for `tls = "required"`, replacing the platform's trust
    /// store (see `delivery::tls::roots`); MTA-STS policy fetches use the same.
    pub ca_file: Option<PathBuf>,
    /// The HTTPS port of `mta-sts.<domain>`: 443; other values are for tests and labs.
    pub mta_sts_port: u16,
    pub mta_sts_fetch_timeout: Duration,
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
    /// Plain-form addresses (domain lowercased) this user may use in MAIL,
    /// and `@domain` entries for any address of that domain.
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
    /// Commands per transaction (counted from the end of the previous one),
    /// so one connection may carry any number of messages.
    pub commands: u32,
    /// Concurrent sessions per client address.
    pub per_client: usize,
    pub tls_handshake: Duration,
    /// Each wait for message data (RFC 5321 4.5.3.2).
    pub data_timeout: Duration,
    /// AUTH brute-force throttle: base delay after a failure, failures
    /// (per client address, or per address and user) before `454 4.7.0`,
    /// and the window in which failures count. See [`crate::throttle`].
    pub auth_delay: Duration,
    pub auth_max_failures: u32,
    pub auth_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        RawConfig::default().limits()
    }
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for error messages.
    pub path: PathBuf,
    /// Its text, to locate errors found after loading ([`Config::error_at`]).
    source: Arc<str>,
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
    /// `None`: no `[bans]` table; the relay asks for no bans.
    pub bans: Option<BansConfig>,
    /// `None`: no `[dns]` table; no check may use DNS.
    pub dns: Option<DnsConfig>,
    /// `None`: no `[recipients]` table; every local recipient is accepted.
    pub recipients: Option<RecipientsConfig>,
    /// `None`: no `[screen]` table; no connection-time screening.
    pub screen: Option<ScreenConfig>,
    /// `None`: no `[sender_auth]` table; no SPF/DKIM/DMARC (forged results are still removed).
    pub sender_auth: Option<SenderAuthConfig>,
    /// `None`: no `[directory]` table; only `[[user]]` tables log in.
    pub directory: Option<DirectoryConfig>,
    /// `None`: no `[dkim]` table; outbound mail is not signed.
    pub dkim: Option<DkimConfig>,
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // A byte that is not UTF-8 is located like any other error (FILE:LINE:COLUMN).
        let text = gatekeeper_config::utf8_text(bytes).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::syntax(path, text, &e))?;
        let mut config = validate(raw, path).map_err(|e| ConfigError::invalid(path, text, e))?;
        config.source = text.into();
        Ok(config)
    }

    /// An error found after loading (a certificate that does not load, a
    /// CA file without certificates) about the value at `at`, located in
    /// the text this config was read from.
    pub fn error_at(&self, at: KeyPath, error: &anyhow::Error) -> ConfigError {
        ConfigError::invalid(&self.path, &self.source, Invalid::from_error(at, error))
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// `Ok` when `ok`, otherwise `message` about the value at `at`.
fn ensure(ok: bool, at: &KeyPath, message: impl Into<String>) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(at.clone(), message))
    }
}

/// A key without a default, as serde words its absence.
fn required<T>(value: Option<T>, key: &'static str) -> Result<T, Invalid> {
    value.ok_or_else(|| Invalid::new(KeyPath::root(), format!("missing field `{key}`")))
}

/// A count or duration that must not be zero.
fn positive<T: Default + PartialEq>(value: T, at: &KeyPath) -> Result<T, Invalid> {
    ensure(value != T::default(), at, "must be positive")?;
    Ok(value)
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, Invalid> {
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let root = KeyPath::root();
    let limits = raw.limits();
    // Missing keys first, as serde reported them before any other check.
    let hostname = required(raw.hostname, "hostname")?;
    let spool_dir = required(raw.spool_dir, "spool_dir")?;
    let raw_domains = required(raw.local_domains, "local_domains")?;
    let tls = required(raw.tls, "tls")?;
    let raw_listeners = required(raw.listeners, "listener")?;

    ensure(
        address::is_host_name(&hostname),
        &root.key("hostname"),
        "not a valid host name",
    )?;
    let at = root.key("local_domains");
    ensure(
        !raw_domains.is_empty(),
        &at,
        "empty: list the domains this relay receives mail for",
    )?;
    let mut local_domains = Vec::new();
    for (i, d) in raw_domains.iter().enumerate() {
        ensure(address::is_host_name(d), &at.index(i), "not a valid domain")?;
        local_domains.push(d.to_ascii_lowercase());
    }
    positive(raw.max_message_size, &root.key("max_message_size"))?;
    positive(raw.max_recipients, &root.key("max_recipients"))?;
    positive(raw.command_timeout_secs, &root.key("command_timeout_secs"))?;
    positive(raw.max_connections, &root.key("max_connections"))?;
    ensure(
        (512..=16_384).contains(&limits.command_line),
        &root.key("max_command_line"),
        "must be between 512 (RFC 5321) and 16384",
    )?;
    ensure(
        (1000..=16_384).contains(&limits.text_line),
        &root.key("max_text_line"),
        "must be between 1000 (RFC 5321) and 16384",
    )?;
    positive(limits.errors, &root.key("max_errors"))?;
    positive(limits.commands, &root.key("max_commands"))?;
    positive(limits.per_client, &root.key("max_connections_per_client"))?;
    positive(
        limits.tls_handshake,
        &root.key("tls_handshake_timeout_secs"),
    )?;
    positive(limits.data_timeout, &root.key("data_timeout_secs"))?;
    positive(limits.auth_max_failures, &root.key("auth_max_failures"))?;
    positive(limits.auth_window, &root.key("auth_failure_window_secs"))?;

    ensure(
        !raw_listeners.is_empty(),
        &root.key("listener"),
        "no [[listener]] configured",
    )?;
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, l) in raw_listeners.into_iter().enumerate() {
        let at = root.key("listener").index(i);
        if let Some(j) = listeners
            .iter()
            .position(|earlier| addresses_clash(earlier.address, l.address))
        {
            return Err(Invalid::new(
                at.key("address"),
                format!(
                    "clashes with listener[{j}] on {}: same port",
                    listeners[j].address
                ),
            ));
        }
        let mut allow = l.allow.clone();
        let mut gatekeeper_files = Vec::new();
        for (k, gk) in l.allow_gatekeeper.iter().enumerate() {
            let gk = resolve(&base, gk);
            gatekeeper_files.push(gk.clone());
            let ranges = load_gatekeeper_allow(&gk, l.address.port())
                .map_err(|e| Invalid::from_error(at.key("allow_gatekeeper").index(k), &e))?;
            allow.extend(ranges);
        }
        ensure(
            !allow.is_empty(),
            &at.key("allow"),
            "this listener admits no peer: set allow (e.g. [\"0.0.0.0/0\", \"::/0\"]) \
             or allow_gatekeeper",
        )?;
        ensure(
            l.dmarc_policy != DmarcPolicy::Honor || l.role == Role::Mta,
            &at.key("dmarc_policy"),
            "\"honor\" is only for role \"mta\" (clients elsewhere are authenticated)",
        )?;
        listeners.push(ListenerConfig {
            address: l.address,
            role: l.role,
            allow,
            fixed_allow: l.allow,
            gatekeeper_files,
            dmarc_policy: l.dmarc_policy,
        });
    }

    let mut names = HashSet::new();
    let mut users = Vec::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let at = root.key("user").index(i);
        ensure(
            !u.name.is_empty()
                && u.name.len() <= 256
                && !u.name.chars().any(|c| c.is_control() || c == ' '),
            &at.key("name"),
            "user name is empty, too long or has spaces/control characters",
        )?;
        ensure(
            names.insert(u.name.clone()),
            &at.key("name"),
            format!("user {:?} is defined twice", u.name),
        )?;
        crate::password::check_hash(&u.password_hash).map_err(|e| {
            Invalid::from_error(
                at.key("password_hash"),
                &e.context(format!("user {:?}: password_hash", u.name)),
            )
        })?;
        let mut senders = Vec::new();
        for (k, s) in u.senders.iter().enumerate() {
            let plain = sender_entry(s).ok_or_else(|| {
                Invalid::new(
                    at.key("senders").index(k),
                    format!(
                        "user {:?}: neither a plain local@domain address nor @domain",
                        u.name
                    ),
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

    let directory = raw
        .directory
        .map(|d| directory::validate(d, &base, &root.key("directory")))
        .transpose()?;
    if users.is_empty()
        && directory.is_none()
        && let Some(i) = listeners.iter().position(|l| l.role.requires_auth())
    {
        return Err(Invalid::new(
            root.key("listener").index(i).key("role"),
            format!(
                "listener {} needs AUTH but no [[user]] and no [directory] is configured: \
                 nobody could send",
                listeners[i].address
            ),
        ));
    }

    let dns = match raw.dns {
        Some(d) => Some(dns::validate(d, &root.key("dns"))?),
        None => None,
    };
    let shared_nameservers = dns.as_ref().map_or(&[][..], |d| &d.nameservers[..]);
    let delivery = match raw.delivery {
        Some(d) => Some(validate_delivery(
            d,
            shared_nameservers,
            &base,
            &root.key("delivery"),
        )?),
        None => None,
    };
    let bans = match raw.bans {
        Some(b) => Some(bans::validate(b, &base, &root.key("bans"))?),
        None => None,
    };
    let recipients = raw
        .recipients
        .map(|r| {
            let at = root.key("recipients");
            recipients::validate(
                r,
                &base,
                &at,
                &local_domains,
                delivery.as_ref(),
                directory.is_some(),
            )
        })
        .transpose()?;
    let screen = raw
        .screen
        .map(|s| screen::validate(s, dns.as_ref(), bans.as_ref(), &root.key("screen")))
        .transpose()?;
    let sender_auth = raw
        .sender_auth
        .map(|s| sender_auth::validate(s, &hostname, dns.is_some(), &root.key("sender_auth")))
        .transpose()?;
    let dkim = raw
        .dkim
        .map(|d| dkim::validate(d, &base, &root.key("dkim")))
        .transpose()?;

    Ok(Config {
        path: path.to_owned(),
        source: Arc::from(""),
        hostname,
        spool_dir: resolve(&base, &spool_dir),
        local_domains,
        max_message_size: raw.max_message_size,
        max_recipients: raw.max_recipients,
        command_timeout: raw.command_timeout_secs,
        max_connections: raw.max_connections,
        trusted_networks: raw.trusted_networks,
        limits,
        tls_cert: resolve(&base, &tls.cert),
        tls_key: resolve(&base, &tls.key),
        listeners,
        users,
        metrics_listen: raw.metrics_listen,
        delivery,
        bans,
        dns,
        recipients,
        screen,
        sender_auth,
        directory,
        dkim,
    })
}

/// A `senders` entry in its stored form: a plain `local@domain` address or
/// `@domain` (any address of that domain), domain lowercased; `None` for
/// anything else (relay tricks, address literals, a trailing dot).
fn sender_entry(entry: &str) -> Option<String> {
    match entry.strip_prefix('@') {
        Some(domain) => {
            address::is_host_name(domain).then(|| format!("@{}", domain.to_ascii_lowercase()))
        }
        None => address::parse_mailbox(entry)
            .ok()
            .and_then(|m| m.plain_form()),
    }
}

fn validate_hop(raw: RawHop, base: &Path, at: &KeyPath) -> Result<HopConfig, Invalid> {
    ensure(
        address::is_host_name(&raw.host) || raw.host.parse::<IpAddr>().is_ok(),
        &at.key("host"),
        "neither a host name nor an IP address",
    )?;
    let port = raw.port.unwrap_or(SMTP_PORT);
    ensure(port != 0, &at.key("port"), "must not be 0")?;
    let auth = match (raw.auth_user, raw.auth_password_file) {
        (None, None) => None,
        (Some(user), Some(file)) => {
            ensure(
                raw.tls == TlsMode::Required,
                &at.key("auth_user"),
                "auth_user needs tls = \"required\": the password travels only inside TLS",
            )?;
            let at = at.key("auth_password_file");
            let file = resolve(base, &file);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading auth_password_file {}", file.display()))
                .map_err(|e| Invalid::from_error(at.clone(), &e))?;
            let password = text.lines().next().unwrap_or("").to_owned();
            ensure(
                !password.is_empty(),
                &at,
                format!("auth_password_file {} is empty", file.display()),
            )?;
            Some((user, password))
        }
        (Some(_), None) => {
            return Err(Invalid::new(
                at.key("auth_user"),
                "auth_user and auth_password_file go together",
            ));
        }
        (None, Some(_)) => {
            return Err(Invalid::new(
                at.key("auth_password_file"),
                "auth_user and auth_password_file go together",
            ));
        }
    };
    Ok(HopConfig {
        host: raw.host,
        port,
        tls: raw.tls,
        auth,
    })
}

/// A `[delivery]` table that can send nothing anywhere: every message
/// would wait out `max_queue_lifetime_secs` (5 days) and then bounce.
const NO_WAY_TO_DELIVER: &str = "no way to deliver: no [[delivery.route]], no \
    [delivery.smarthost] and no nameservers for MX lookups ([delivery] or [dns]), so every message would wait in \
    the queue until it expires (max_queue_lifetime_secs) and bounce; add a route to your \
    mail store, a smarthost or nameservers (without a [delivery] table mail only queues)";

/// `shared_nameservers`: those of `[dns]`, which delivery asks when `[delivery]` names none.
fn validate_delivery(
    mut raw: RawDelivery,
    shared_nameservers: &[SocketAddr],
    base: &Path,
    at: &KeyPath,
) -> Result<DeliveryConfig, Invalid> {
    if raw.nameservers.is_empty() {
        raw.nameservers = shared_nameservers.to_vec();
    }
    let mut routes: Vec<(String, HopConfig)> = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let route = at.key("route").index(i);
        let domain = r.domain.to_ascii_lowercase();
        ensure(
            address::is_host_name(&domain),
            &route.key("domain"),
            "not a valid domain",
        )?;
        ensure(
            !routes.iter().any(|(d, _)| *d == domain),
            &route.key("domain"),
            format!("route for {domain:?} is defined twice"),
        )?;
        let raw_hop = RawHop {
            host: r.host,
            port: r.port,
            tls: r.tls,
            auth_user: r.auth_user,
            auth_password_file: r.auth_password_file,
        };
        routes.push((domain, validate_hop(raw_hop, base, &route)?));
    }
    let smarthost = match raw.smarthost {
        Some(h) => {
            // One smarthost carries every domain's mail: no recipient domain's policy fits it.
            ensure(
                h.tls != TlsMode::MtaSts,
                &at.key("smarthost").key("tls"),
                "tls = \"mta-sts\" applies to MX hosts and per-domain routes, not to a \
                 smarthost (use \"required\" with a certificate for its name)",
            )?;
            Some(validate_hop(h, base, &at.key("smarthost"))?)
        }
        None => None,
    };
    ensure(raw.mx_port != 0, &at.key("mx_port"), "must not be 0")?;
    ensure(
        raw.mta_sts_port != 0,
        &at.key("mta_sts_port"),
        "must not be 0",
    )?;
    let mta_sts_fetch_timeout = positive(
        raw.mta_sts_fetch_timeout_secs,
        &at.key("mta_sts_fetch_timeout_secs"),
    )?;
    positive(
        raw.connections_per_destination,
        &at.key("connections_per_destination"),
    )?;
    positive(raw.max_deliveries, &at.key("max_deliveries"))?;
    positive(
        raw.max_queue_lifetime_secs,
        &at.key("max_queue_lifetime_secs"),
    )?;
    positive(raw.connect_timeout_secs, &at.key("connect_timeout_secs"))?;
    positive(raw.reply_timeout_secs, &at.key("reply_timeout_secs"))?;
    let retry_initial = positive(raw.retry_initial_secs, &at.key("retry_initial_secs"))?;
    let retry_max = positive(raw.retry_max_secs, &at.key("retry_max_secs"))?;
    ensure(
        retry_max >= retry_initial,
        &at.key("retry_max_secs"),
        "smaller than retry_initial_secs",
    )?;
    let connection_idle = positive(raw.connection_idle_secs, &at.key("connection_idle_secs"))?;
    let ca_file = raw.ca_file.map(|p| resolve(base, &p));
    if let Some(ca) = &ca_file {
        std::fs::metadata(ca)
            .with_context(|| format!("ca_file {}", ca.display()))
            .map_err(|e| Invalid::from_error(at.key("ca_file"), &e))?;
    }
    // Checked last, so a wrong key in the table is named first. The nameservers of `[dns]`
    // count here too.
    ensure(
        !routes.is_empty() || smarthost.is_some() || !raw.nameservers.is_empty(),
        at,
        NO_WAY_TO_DELIVER,
    )?;
    Ok(DeliveryConfig {
        routes,
        smarthost,
        nameservers: raw.nameservers,
        mx_port: raw.mx_port,
        mx_tls: raw.mx_tls,
        ca_file,
        mta_sts_port: raw.mta_sts_port,
        mta_sts_fetch_timeout,
        connections_per_destination: raw.connections_per_destination,
        max_deliveries: raw.max_deliveries,
        retry_initial,
        retry_max,
        max_queue_lifetime: raw.max_queue_lifetime_secs,
        connect_timeout: raw.connect_timeout_secs,
        reply_timeout: raw.reply_timeout_secs,
        connection_idle,
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
/// The peers a gatekeeper config admits to `port`: its `[[allow]]` entries, or everyone when
/// the config makes that port `open` (its XDP filter then admits every source it has not denied,
/// banned or rate-limited, and the relay must not refuse what the filter lets through).
pub fn load_gatekeeper_allow(path: &Path, port: u16) -> anyhow::Result<Vec<IpNet>> {
    Ok(load_gatekeeper_admission(path, port)?.0)
}

/// [`load_gatekeeper_allow`], and the gatekeeper's derived-allow state file when the config has
/// DNS-derived entries (`spf`, `mx`, `a`): their networks are the ones the gatekeeper daemon
/// resolved and wrote there, so the relay admits exactly what the filter admits, and follows
/// that file's changes too.
pub fn load_gatekeeper_admission(
    path: &Path,
    port: u16,
) -> anyhow::Result<(Vec<IpNet>, Option<PathBuf>)> {
    let gk = gatekeeper_config::Config::load(path).context("invalid gatekeeper config")?;
    if gk.open_ports.contains(&port) {
        return Ok((
            vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
            None,
        ));
    }
    let mut nets = gk.allow.nets().to_vec();
    if gk.derived.is_empty() {
        return Ok((nets, None));
    }
    let sources: Vec<_> = gk.derived.iter().map(|e| e.source.clone()).collect();
    nets.extend(
        gatekeeper_support::derived::derived_networks(&gk.dns.state, &sources)
            .context("the gatekeeper's derived allow entries")?,
    );
    Ok((nets, Some(gk.dns.state)))
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

    fn parse(text: &str) -> Result<Config, ConfigError> {
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
    fn dkim_keys_are_validated() {
        let key = |d: &str, s: &str| {
            format!(
                "[[dkim.key]]\ndomain = \"{d}\"\nselector = \"{s}\"\nprivate_key = \"dkim/{s}.key\"\n"
            )
        };
        let c = parse(&format!(
            "{}\n{}{}",
            good(),
            key("Example.ORG", "ed1"),
            key("example.org", "rsa1")
        ))
        .expect("valid");
        let dkim = c.dkim.expect("[dkim]");
        assert_eq!(dkim.keys.len(), 2);
        assert_eq!(dkim.keys[0].domain, "example.org");
        assert_eq!(
            dkim.keys[0].private_key,
            Path::new("/etc/smtp-relay/dkim/ed1.key")
        );
        assert!(parse(&good()).expect("valid").dkim.is_none());
        for (text, want) in [
            (
                key("example.org", "a").repeat(2),
                "already has a key with this selector",
            ),
            (key("not a domain", "a"), "not a domain"),
            (key("example.org", "bad selector"), "not a selector"),
            ("[dkim]\n".to_owned(), "no [[dkim.key]]"),
        ] {
            let e = err(&format!("{}\n{text}", good()));
            assert!(e.contains(want), "{e}");
        }
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
        assert_eq!(
            d.mx_tls,
            TlsMode::Dane,
            "MX delivery follows DANE, then MTA-STS, by default"
        );
        assert_eq!(d.mta_sts_port, 443);
        let policy_modes = text
            .replacen("tls = \"none\"", "tls = \"dane\"", 1)
            .replacen(
                "mx_port = 2525",
                "mx_port = 2525\nmx_tls = \"mta-sts\"\nmta_sts_port = 8443",
                1,
            );
        let d = parse(&policy_modes)
            .expect("valid")
            .delivery
            .expect("delivery");
        assert_eq!(
            (d.routes[0].1.tls, d.mx_tls, d.mta_sts_port),
            (TlsMode::Dane, TlsMode::MtaSts, 8443)
        );
        for (from, to, needle) in [
            (
                "tls = \"required\"",
                "tls = \"mta-sts\"",
                "not to a smarthost",
            ),
            ("mx_port = 2525", "mta_sts_port = 0", "mta_sts_port"),
            (
                "mx_port = 2525",
                "mta_sts_fetch_timeout_secs = 0",
                "mta_sts_fetch_timeout_secs",
            ),
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

    /// `check` used to pass a `[delivery]` table that can send nowhere.
    #[test]
    fn delivery_with_no_way_to_deliver_is_refused() {
        let text = good() + "\n[delivery]\nretry_initial_secs = 1.0\n";
        let e = err(&text);
        assert_eq!(
            e,
            format!(
                "{}delivery: {NO_WAY_TO_DELIVER}",
                position(&text, "[delivery]")
            )
        );
        assert!(e.contains("no way to deliver"), "{e}");
        for way in [
            "nameservers = [\"192.0.2.53:53\"]\n",
            "[delivery.smarthost]\nhost = \"192.0.2.25\"\n",
            "[[delivery.route]]\ndomain = \"example.org\"\nhost = \"192.0.2.25\"\n",
        ] {
            let c = parse(&(text.clone() + way)).expect("one way is enough");
            assert!(c.delivery.is_some());
        }
        // Without [delivery] mail only queues, as documented: no error.
        assert!(parse(&good()).expect("valid").delivery.is_none());
    }

    #[test]
    fn durations_with_units_or_plain_numbers() {
        let text = good().replace(
            "trusted_networks = []",
            "trusted_networks = []\ncommand_timeout_secs = \"5m\"\nauth_failure_delay_ms = \"1s\"\n\
             data_timeout_secs = 120",
        ) + "\n[delivery]\nnameservers = [\"192.0.2.53:53\"]\nmax_queue_lifetime_secs = \"5d\"\n\
             retry_max_secs = \"1h30m\"\nconnection_idle_secs = 2.5\n";
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

    /// `relay.toml:LINE:COLUMN` of the first `needle` in `text`.
    fn position(text: &str, needle: &str) -> String {
        let offset = text.find(needle).expect("needle in text");
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("/etc/smtp-relay/relay.toml:{line}:{column}: ")
    }

    #[test]
    fn unknown_tls_mode_names_its_line_and_value() {
        let text = good() + "\n[delivery]\nmx_tls = \"sometimes\"\n";
        let e = err(&text);
        assert!(e.starts_with(&position(&text, "\"sometimes\"")), "{e}");
        assert!(e.contains("mx_tls = \"sometimes\""), "{e}");
        assert!(e.contains("unknown variant `sometimes`"), "{e}");
    }

    #[test]
    fn missing_tls_table_is_a_missing_field() {
        let text = good();
        let cut = text.find("[tls]").expect("tls");
        let end = text.find("[[listener]]").expect("listener");
        let text = format!("{}{}", &text[..cut], &text[end..]);
        let e = err(&text);
        assert_eq!(
            e, "/etc/smtp-relay/relay.toml:1:1: missing field `tls`",
            "{e}"
        );
    }

    #[test]
    fn certificate_errors_point_at_the_tls_table() {
        let text = good();
        let c = parse(&text).expect("valid");
        let e = c
            .error_at(
                KeyPath::root().key("tls"),
                &anyhow::anyhow!("reading TLS certificate cert.pem"),
            )
            .to_string();
        assert!(e.starts_with(&position(&text, "[tls]")), "{e}");
        assert!(e.contains("tls: reading TLS certificate cert.pem"), "{e}");
    }

    #[test]
    fn bad_hash_names_the_user_but_never_the_hash() {
        let text = good().replace(HASH, "$argon2id$v=19$nonsense-hunter2");
        let e = err(&text);
        assert!(e.starts_with(&position(&text, "\"$argon2id$v=19$n")), "{e}");
        assert!(e.contains("user[0].password_hash: "), "{e}");
        assert!(e.contains("user \"alice\""), "{e}");
        assert!(!e.contains("hunter2"), "a secret in an error: {e}");
    }

    #[test]
    fn bad_cidr_in_trusted_networks_names_its_line_and_value() {
        let text = good().replace(
            "trusted_networks = []",
            "trusted_networks = [\"10.0.0.0/8\", \"10.0.0.0/40\"]",
        );
        let e = err(&text);
        assert!(e.starts_with(&position(&text, "\"10.0.0.0/40\"")), "{e}");
        assert!(
            e.contains("trusted_networks = [\"10.0.0.0/8\", \"10.0.0.0/40\"]"),
            "{e}"
        );
    }

    /// `allow = ["127.0.0.1"]` works as in the gatekeeper (it used to fail
    /// with "invalid IP address syntax"); host bits are refused there and here.
    #[test]
    fn networks_take_bare_addresses_and_refuse_host_bits_like_the_gatekeeper() {
        let text = good()
            .replace(
                "trusted_networks = []",
                "trusted_networks = [\"192.0.2.7\", \"2001:db8::7\"]",
            )
            .replace("allow = [\"127.0.0.0/8\"]", "allow = [\"127.0.0.1\"]");
        let c = parse(&text).expect("bare addresses are valid");
        let net = |s: &str| s.parse::<IpNet>().expect("net");
        assert_eq!(
            c.trusted_networks,
            vec![net("192.0.2.7/32"), net("2001:db8::7/128")]
        );
        assert!(c.listeners[2].admits("127.0.0.1".parse().expect("ip")));
        assert!(!c.listeners[2].admits("127.0.0.2".parse().expect("ip")));
        for (from, to, bad) in [
            (
                "allow = [\"127.0.0.0/8\"]",
                "allow = [\"127.0.0.1/8\"]",
                "\"127.0.0.1/8\"",
            ),
            (
                "trusted_networks = []",
                "trusted_networks = [\"192.0.2.0/24\", \"192.0.2.7/24\"]",
                "\"192.0.2.7/24\"",
            ),
        ] {
            let text = good().replacen(from, to, 1);
            let e = err(&text);
            assert!(e.starts_with(&position(&text, bad)), "{e}");
            assert!(
                e.contains(&format!("{bad} has host bits set; the network is")),
                "{e}"
            );
        }
    }

    #[test]
    fn durations_out_of_range_name_key_and_value() {
        let text = good() + "\n[delivery]\nretry_max_secs = \"0s\"\n";
        let e = err(&text);
        assert_eq!(
            e,
            format!(
                "{}delivery.retry_max_secs = \"0s\": must be positive",
                position(&text, "\"0s\"")
            )
        );
        let text = good() + "\n[delivery]\nretry_initial_secs = \"2h\"\nretry_max_secs = \"1h\"\n";
        let e = err(&text);
        assert_eq!(
            e,
            format!(
                "{}delivery.retry_max_secs = \"1h\": smaller than retry_initial_secs",
                position(&text, "\"1h\"")
            )
        );
        let text = good().replace(
            "trusted_networks = []",
            "trusted_networks = []\ndata_timeout_secs = 0",
        );
        let e = err(&text);
        assert!(
            e.starts_with(&position(&text, "0\n"))
                && e.contains("data_timeout_secs = 0: must be positive"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_name_file_line_column_key_and_value() {
        let cases = [
            // (edit, text the error points at, expected after FILE:LINE:COL)
            (
                ("hostname = \"mx.example.org\"", "hostname = \"mx example\""),
                "\"mx example\"",
                "hostname = \"mx example\": not a valid host name",
            ),
            (
                ("address = \"[::]:25\"", "address = \"0.0.0.0:25\""),
                "\"0.0.0.0:25\"\nrole = \"mta\"\nallow = [\"::/0\"]",
                "listener[1].address = \"0.0.0.0:25\": clashes with listener[0] on 0.0.0.0:25",
            ),
            (
                ("allow = [\"127.0.0.0/8\"]", ""),
                "[[listener]]\naddress = \"127.0.0.1:587\"",
                "listener[2].allow: this listener admits no peer",
            ),
            (
                ("[\"alice@Example.org\"]", "[\"alice%x@example.org\"]"),
                "\"alice%x@example.org\"",
                "user[0].senders[0] = \"alice%x@example.org\": user \"alice\": neither a plain",
            ),
        ];
        for ((from, to), at, expected) in cases {
            let text = good().replacen(from, to, 1);
            let e = err(&text);
            assert!(e.starts_with(&position(&text, at)), "{e}");
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
        let text = good().replace(
            "trusted_networks = []",
            "trusted_networks = []\nmax_text_line = 999",
        );
        assert!(
            err(&text).starts_with(&position(&text, "999")),
            "{}",
            err(&text)
        );
    }

    #[test]
    fn bans_table_and_its_triggers() {
        let c = parse(&good()).expect("valid");
        assert_eq!(c.bans, None, "no [bans]: no bans");
        let c = parse(&(good() + "\n[bans]\n")).expect("valid");
        let b = c.bans.expect("bans");
        assert_eq!(b.socket, Path::new(bans::DEFAULT_SOCKET));
        assert_eq!(b.request_timeout, Duration::from_secs(2));
        assert_eq!(
            (b.auth_failures, b.connections, b.smuggling, b.pre_greet),
            (None, None, None, None),
            "every trigger off unless written"
        );
        let text = good()
            + r#"
[bans]
socket = "run/ban.sock"
request_timeout_ms = 500
auth_failures = { count = 10, within_secs = 600, ban_secs = 3600 }
connections = { count = 50, within_secs = "1m", ban_secs = "10m" }
smuggling = { ban_secs = "1d" }
pre_greet = { delay_ms = 2000, ban_secs = 3600 }
"#;
        let b = parse(&text).expect("valid").bans.expect("bans");
        assert_eq!(b.socket, Path::new("/etc/smtp-relay/run/ban.sock"));
        assert_eq!(b.request_timeout, Duration::from_millis(500));
        let s = Duration::from_secs;
        assert_eq!(
            b.auth_failures,
            Some(bans::CountTrigger {
                count: 10,
                within: s(600),
                ban: s(3600)
            })
        );
        assert_eq!(
            b.connections.map(|t| (t.within, t.ban)),
            Some((s(60), s(600)))
        );
        assert_eq!(b.smuggling, Some(s(86_400)));
        assert_eq!(
            b.pre_greet,
            Some(bans::PreGreet {
                delay: s(2),
                ban: s(3600)
            })
        );
        for (from, to, expected) in [
            (
                "count = 10,",
                "count = 0,",
                "bans.auth_failures.count = 0: must be positive",
            ),
            (
                "ban_secs = \"1d\"",
                "ban_secs = 0.5",
                "bans.smuggling.ban_secs = 0.5: must be at least 1 second",
            ),
            ("delay_ms = 2000", "delay_ms = \"1m\"", "at most 30 s"),
            ("within_secs = 600, ", "", "missing field `within_secs`"),
            ("smuggling = {", "smugling = {", "unknown field `smugling`"),
        ] {
            let e = err(&text.replacen(from, to, 1));
            assert!(e.contains(expected), "expected {expected:?} in: {e}");
        }
    }

    /// `senders` could not say "any address of this domain".
    #[test]
    fn senders_take_a_whole_domain() {
        let text = good().replace(
            "senders = [\"alice@Example.org\"]",
            "senders = [\"alice@Example.org\", \"@Example.NET\"]",
        );
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.users[0].senders,
            vec!["alice@example.org", "@example.net"]
        );
        for bad in [
            "@",
            "@[192.0.2.1]",
            "@example.net.",
            "@@example.net",
            "@a b",
        ] {
            let text = good().replace(
                "senders = [\"alice@Example.org\"]",
                &format!("senders = [{bad:?}]"),
            );
            let e = err(&text);
            assert!(
                e.contains("user[0].senders[0]") && e.contains("nor @domain"),
                "{bad}: {e}"
            );
        }
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
    fn a_byte_that_is_not_utf8_is_refused_with_its_position() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("relay.toml");
        let text = good().replace(
            "hostname = \"mx.example.org\"",
            "hostname = \"mx.example.org\" # caf\u{e9} MARK",
        );
        let mark = text.find("MARK").expect("mark");
        let mut bytes = text.into_bytes();
        bytes[mark] = 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let e = Config::load(&path).expect_err("not UTF-8").to_string();
        assert_eq!(
            e,
            format!(
                "{}:2:36: invalid config: byte 0xff is not UTF-8: the config file must be UTF-8 text",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
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
