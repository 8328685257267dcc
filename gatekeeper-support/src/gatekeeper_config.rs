//! `gatekeeper.toml`: the source of truth for what the filter enforces, and the file the relay's
//! `allow_gatekeeper` follows, so both read it through this one schema and admit the same peers.
//!
//! Parsing keeps the position of every value so that a bad entry is reported as
//! `FILE:LINE:COLUMN: message`, the way compilers do, and nothing is attached.

use std::{
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr as _,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::allowlist::{self, ScannedAllow, ScannedDerived};
pub use crate::cidr::{CidrError, parse_cidr};
use crate::derived::{self, DerivedEntry, DerivedSource, DnsKind, DnsSettings};

/// Where the daemon and the CLI look for the config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gatekeeper/gatekeeper.toml";

/// The SMTP port, protected when the config names no ports.
pub const DEFAULT_PORT: u16 = 25;

/// Where the daemon pins the program's maps (and links) on bpffs.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gatekeeper";

/// Upper bound for `ipv4_dir24_blocks` (1 GiB of second-level blocks).
pub const MAX_DIR24_BLOCKS: u32 = 1 << 20;

/// Drop events each CPU may report per second, and in a burst, unless the config says otherwise.
pub const DEFAULT_DROP_EVENT_RATE: u32 = 10;
pub const DEFAULT_DROP_EVENT_BURST: u32 = 20;

/// Where bans are kept across reboots when the config does not say.
pub const DEFAULT_BAN_STATE: &str = "/var/lib/gatekeeper/bans.json";

/// The longest ban a ban-socket request may ask for (a week), unless `ban_max_secs` says.
pub const DEFAULT_BAN_MAX_SECS: u64 = 7 * 86_400;

/// Ban-socket requests taken per minute, unless `ban_requests_per_minute` says.
pub const DEFAULT_BAN_REQUESTS_PER_MINUTE: u32 = 600;

/// The bans' control side: the state file, the ban socket and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanControl {
    /// The JSON file that brings bans back after a reboot.
    pub state: PathBuf,
    /// The Unix socket the relay asks for bans on; off when `None`.
    pub socket: Option<PathBuf>,
    /// The group the socket belongs to (mode 0660): who may ask; root only when `None`.
    pub socket_group: Option<String>,
    /// Requests asking for longer get this.
    pub max_secs: u64,
    pub requests_per_minute: u32,
    /// Ranges never banned through the socket (the site's own networks), besides the allowlist.
    pub never_ban: Vec<IpNet>,
}

/// Default and bounds of the open-port rules (see `gatekeeper_common` for the map sizes).
pub const DEFAULT_MAX_BANS: u32 = gatekeeper_common::DEFAULT_MAX_BANS;
pub const DEFAULT_RATE_LIMIT_SOURCES: u32 = gatekeeper_common::DEFAULT_RATE_LIMIT_SOURCES;
pub const DEFAULT_BAN_IPV6_PREFIX: u8 = 64;
/// Upper bound of `max_bans` and `rate_limit_sources` (entries per family).
pub const MAX_TABLE_ENTRIES: u32 = 1 << 24;
/// Upper bound of `syn_rate` (SYNs per second per source) and `syn_burst`.
pub const MAX_SYN_RATE: u32 = 10_000;
pub const MAX_SYN_BURST: u32 = 1_000_000;

/// What a judged port admits (`[[port]] policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortPolicy {
    /// Only allowlisted sources (today's behaviour; every `protected_ports` port).
    #[default]
    Allowlist,
    /// Every source except denied, banned and over-rate ones (an Internet-facing MX).
    Open,
}

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before any socket buffer exists; the fast path. Fails if the driver lacks it.
    #[default]
    Native,
    /// Generic XDP in the kernel stack: works everywhere, much slower.
    Skb,
    /// Native where the driver supports it, otherwise skb with a loud warning.
    Auto,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Auto => "auto",
        })
    }
}

/// Whether the program has the interface to itself or shares it through libxdp's dispatcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    /// The program is the interface's only XDP program (attached through a pinned BPF link);
    /// another program there is refused, naming it.
    #[default]
    Exclusive,
    /// The program runs as one component of libxdp's dispatcher (`xdp-loader`, `xdp-filter`,
    /// bpfman), beside other programs.
    Dispatcher,
    /// `dispatcher` where libxdp's dispatcher already runs on the interface or xdp-tools'
    /// dispatcher object is installed, `exclusive` otherwise, and also where the kernel refuses
    /// the dispatcher's freplace components.
    Auto,
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttach::Exclusive => "exclusive",
            XdpAttach::Dispatcher => "dispatcher",
            XdpAttach::Auto => "auto",
        })
    }
}

/// Drop what the allowlist refuses, or only count it: the program's own enum.
pub use gatekeeper_common::Mode;

/// How the IPv4 allowlist is looked up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4Lookup {
    /// Both structures kept; the trie serves short lists (it stays in cache), DIR-24-8 longer
    /// ones (the threshold is the gatekeeper's `maps::AUTO_DIR24_THRESHOLD`).
    #[default]
    Auto,
    /// DIR-24-8: constant cost per packet, about 64 MiB + 1 KiB per long block of kernel memory.
    Dir24,
    /// The kernel LPM trie: no fixed memory, cost grows with the list.
    Trie,
}

impl fmt::Display for Ipv4Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ipv4Lookup::Auto => "auto",
            Ipv4Lookup::Dir24 => "dir24",
            Ipv4Lookup::Trie => "trie",
        })
    }
}

/// The allowlist, compact (tens of bytes per entry), and one entry of it.
pub use crate::allowlist::{AllowEntry, Allowlist};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub xdp_attach: XdpAttach,
    pub mode: Mode,
    pub protected_ports: Vec<u16>,
    pub pin_dir: PathBuf,
    pub drop_event_rate: u32,
    pub drop_event_burst: u32,
    /// On SIGTERM/SIGINT, leave the pinned program attached (enforcing) instead of detaching it,
    /// so a restarted daemon adopts it without a moment unfiltered.
    pub keep_attached_on_exit: bool,
    /// Where the daemon serves Prometheus metrics (`GET /metrics`); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    pub ipv4_lookup: Ipv4Lookup,
    /// The most DIR-24-8 second-level blocks the daemon may create (`None`: up to
    /// [`MAX_DIR24_BLOCKS`]); the pool is sized from the list, with headroom, and grows with it.
    pub ipv4_dir24_blocks: Option<u32>,
    /// Drop-list files (`CIDR ; comment` a line) whose networks are denied like `[[deny]]`.
    pub deny_feeds: Vec<PathBuf>,
    pub bans: BanControl,
    /// The judged ports with policy "open" (a subset of `protected_ports`, sorted).
    pub open_ports: Vec<u16>,
    /// SYNs per second each source may send to an open port (0: no limit).
    pub syn_rate: u32,
    /// SYNs a source may send in a burst before `syn_rate` applies.
    pub syn_burst: u32,
    /// Sources whose SYN rate is tracked at once, per family (the LRU map's size).
    pub rate_limit_sources: u32,
    /// Bans each family's table holds at most.
    pub max_bans: u32,
    /// Leading bits of an IPv6 source that a ban (and the SYN rate) applies to.
    pub ban_ipv6_prefix: u8,
    /// `[[deny]]` entries: dropped on every judged port, whatever the allowlist says.
    pub deny: Allowlist,
    /// The `[[allow]]` entries with a `cidr`.
    pub allow: Allowlist,
    /// The `[[allow]]` entries with `spf`, `mx` or `a`: networks the daemon resolves (see
    /// [`crate::derived`]), in file order.
    pub derived: Vec<DerivedEntry>,
    /// `[dns]`: how the derived entries are resolved and where their state is kept.
    pub dns: DnsSettings,
    /// `[fleet]`: the etcd cluster this host shares allow entries, deny entries and bans with.
    pub fleet: Option<crate::fleet_config::FleetConfig>,
}

/// A config that could not be read or is invalid, with the position of the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The io::Error is part of the message and deliberately not a `source`, so `{:#}` does not
    // print it twice.
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    xdp_mode: XdpMode,
    #[serde(default)]
    xdp_attach: XdpAttach,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    protected_ports: Option<Spanned<Vec<Spanned<u32>>>>,
    #[serde(default)]
    pin_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    drop_event_rate: Option<u32>,
    #[serde(default)]
    drop_event_burst: Option<u32>,
    #[serde(default)]
    keep_attached_on_exit: bool,
    #[serde(default)]
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    ipv4_lookup: Ipv4Lookup,
    #[serde(default)]
    ipv4_dir24_blocks: Option<Spanned<u32>>,
    #[serde(default)]
    deny_feeds: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    ban_state: Option<Spanned<PathBuf>>,
    #[serde(default)]
    ban_socket: Option<Spanned<PathBuf>>,
    #[serde(default)]
    ban_socket_group: Option<Spanned<String>>,
    #[serde(default)]
    ban_max_secs: Option<Spanned<u64>>,
    #[serde(default)]
    ban_requests_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    never_ban: Vec<Spanned<String>>,
    #[serde(default)]
    port: Vec<RawPort>,
    #[serde(default)]
    syn_rate: Option<Spanned<u32>>,
    #[serde(default)]
    syn_burst: Option<Spanned<u32>>,
    #[serde(default)]
    rate_limit_sources: Option<Spanned<u32>>,
    #[serde(default)]
    max_bans: Option<Spanned<u32>>,
    #[serde(default)]
    ban_ipv6_prefix: Option<Spanned<u32>>,
    #[serde(default)]
    deny: Vec<RawAllow>,
    #[serde(default)]
    dns: Option<RawDns>,
    /// Empty when the `[[allow]]` tables were read by the allowlist scanner.
    #[serde(default)]
    allow: Option<Vec<RawAllowEntry>>,
    #[serde(default)]
    fleet: Option<crate::fleet_config::RawFleet>,
}

/// An `[[allow]]` table: a `cidr`, or a DNS name to follow (`spf`, `mx`, `a`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowEntry {
    #[serde(default)]
    cidr: Option<Spanned<String>>,
    #[serde(default)]
    spf: Option<Spanned<String>>,
    #[serde(default)]
    mx: Option<Spanned<String>>,
    #[serde(default)]
    a: Option<Spanned<String>>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    attempts: Option<Spanned<u32>>,
    #[serde(default)]
    min_refresh_secs: Option<Spanned<u64>>,
    #[serde(default)]
    max_refresh_secs: Option<Spanned<u64>>,
    #[serde(default)]
    state: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    cidr: Spanned<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    number: Spanned<u32>,
    #[serde(default)]
    policy: PortPolicy,
}

/// The warning for an entry that admits a whole address family.
fn everything_warning(net: IpNet) -> String {
    let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
    format!(
        "allow entry {net}: this entry admits every {family} source: the filter protects nothing on that family"
    )
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path, path)?;
        Config::parse(&text, path)
    }

    /// What a valid config may still get wrong, one sentence each: the daemon logs them as WARN
    /// at every load, `gatekeeper check` and `gatekeeper allow` print them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.allow.is_empty() && self.derived.is_empty() && self.has_allowlist_port() {
            warnings.push(self.empty_warning());
        }
        for entry in self.allow.iter().filter(|e| e.net.prefix_len() == 0) {
            warnings.push(everything_warning(entry.net));
        }
        if self.syn_rate != 0 && self.open_ports.is_empty() {
            warnings.push(
                "syn_rate is set but no [[port]] has policy \"open\": the SYN rate limit applies to open ports only".into(),
            );
        }
        warnings
    }

    /// [`Config::warnings`] after an edit that streamed the file without reading its entries
    /// (this config holds its settings only): the new file has `entries` entries, and `added`
    /// is the entry the edit added, if any.
    pub fn warnings_after_edit(&self, entries: usize, added: Option<IpNet>) -> Vec<String> {
        let mut warnings = Vec::new();
        if entries == 0 && self.has_allowlist_port() {
            warnings.push(self.empty_warning());
        }
        if let Some(net) = added.filter(|n| n.prefix_len() == 0) {
            warnings.push(everything_warning(net));
        }
        warnings
    }

    /// Whether some judged port has the "allowlist" policy.
    pub fn has_allowlist_port(&self) -> bool {
        self.protected_ports
            .iter()
            .any(|p| !self.open_ports.contains(p))
    }

    fn empty_warning(&self) -> String {
        format!(
            "the allowlist is empty: every SMTP peer is refused{}",
            match self.mode {
                Mode::Enforce => "",
                Mode::Monitor => " (monitor mode only counts them)",
            }
        )
    }

    /// Parses and validates config text; `path` only names the file in errors.
    ///
    /// The `[[allow]]` tables, which may number a million, are read by the allowlist scanner
    /// without a TOML document tree; the rest of the file (a few lines) by the TOML parser. A
    /// file the scanner does not fully understand is parsed whole by the TOML parser, as before.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |span: Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let toml_error = |e: toml::de::Error| at(e.span().unwrap_or(0..0), e.message().to_string());
        let scanned = allowlist::allow_section_start(text).and_then(|start| {
            let head = &text[..start];
            let tail = allowlist::scan_allow_section(&text[start..], start).ok()?;
            // The head alone must be valid TOML without an `allow` key of its own; otherwise
            // the split was not where the file's structure is, and the TOML parser decides.
            let raw: RawConfig = toml::from_str(head).ok()?;
            raw.allow.is_none().then_some((raw, tail))
        });
        let (raw, scanned) = match scanned {
            Some((raw, tail)) => (raw, tail),
            None => {
                let mut raw: RawConfig = toml::from_str(text).map_err(toml_error)?;
                let scanned = from_raw_allow(raw.allow.take().unwrap_or_default())
                    .map_err(|(s, m)| at(s, m))?;
                (raw, scanned)
            }
        };

        let interfaces = validate_interfaces(&raw.interfaces).map_err(|(s, m)| at(s, m))?;
        let (protected_ports, open_ports) =
            port_policies(&raw.protected_ports, &raw.port).map_err(|(s, m)| at(s, m))?;
        let open = open_rules(&raw).map_err(|(s, m)| at(s, m))?;
        let deny = deny_entries(raw.deny.as_slice()).map_err(|(s, m)| at(s, m))?;
        if let Some((offset, err)) = scanned.first_invalid {
            return Err(at(offset..offset, format!("allow entry {err}")));
        }
        let allow = scanned.list;
        if let Some((index, net)) = allow.first_duplicate() {
            let offset = scanned.cidr_at.get(index).map_or(0, |&o| o as usize);
            return Err(at(
                offset..offset,
                format!("allow entry \"{net}\" is listed twice"),
            ));
        }
        let derived = derived_entries(scanned.derived).map_err(|(s, m)| at(s, m))?;
        let dns = dns_settings(raw.dns.as_ref(), !derived.is_empty()).map_err(|(s, m)| at(s, m))?;
        let bans = ban_control(&raw).map_err(|(s, m)| at(s, m))?;
        let fleet = raw
            .fleet
            .as_ref()
            .map(crate::fleet_config::RawFleet::validate)
            .transpose()
            .map_err(|(s, m)| at(s, m))?;
        let deny_feeds = raw
            .deny_feeds
            .iter()
            .map(|feed| absolute("deny_feeds entry", feed))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(s, m)| at(s, m))?;
        let ipv4_dir24_blocks = match raw.ipv4_dir24_blocks {
            None => None,
            Some(blocks) if (1..=MAX_DIR24_BLOCKS).contains(blocks.get_ref()) => {
                Some(blocks.into_inner())
            }
            Some(blocks) => {
                return Err(at(
                    blocks.span(),
                    format!(
                        "ipv4_dir24_blocks {} is out of range (1-{MAX_DIR24_BLOCKS}; each block is 1 KiB of kernel memory)",
                        blocks.get_ref()
                    ),
                ));
            }
        };
        let pin_dir = match raw.pin_dir {
            None => PathBuf::from(DEFAULT_PIN_DIR),
            Some(dir) if dir.get_ref().is_absolute() => dir.into_inner(),
            Some(dir) => {
                return Err(at(
                    dir.span(),
                    format!(
                        "pin_dir \"{}\" must be an absolute path on bpffs",
                        dir.get_ref().display()
                    ),
                ));
            }
        };
        let metrics_listen = match &raw.metrics_listen {
            None => None,
            Some(addr) => Some(SocketAddr::from_str(addr.get_ref().trim()).map_err(|_| {
                at(
                    addr.span(),
                    format!(
                        "metrics_listen \"{}\" is not an address and port (e.g. \"127.0.0.1:9725\")",
                        addr.get_ref()
                    ),
                )
            })?),
        };
        Ok(Config {
            interfaces,
            xdp_mode: raw.xdp_mode,
            xdp_attach: raw.xdp_attach,
            mode: raw.mode,
            protected_ports,
            pin_dir,
            drop_event_rate: raw.drop_event_rate.unwrap_or(DEFAULT_DROP_EVENT_RATE),
            drop_event_burst: raw.drop_event_burst.unwrap_or(DEFAULT_DROP_EVENT_BURST),
            keep_attached_on_exit: raw.keep_attached_on_exit,
            metrics_listen,
            ipv4_lookup: raw.ipv4_lookup,
            ipv4_dir24_blocks,
            deny_feeds,
            bans,
            open_ports,
            syn_rate: open.syn_rate,
            syn_burst: open.syn_burst,
            rate_limit_sources: open.rate_limit_sources,
            max_bans: open.max_bans,
            ban_ipv6_prefix: open.ban_ipv6_prefix,
            deny,
            allow,
            derived,
            dns,
            fleet,
        })
    }
}

/// The derived entries, names checked; a source given twice is an error at its second name.
fn derived_entries(scanned: Vec<ScannedDerived>) -> Result<Vec<DerivedEntry>, SpannedError> {
    let mut entries: Vec<DerivedEntry> = Vec::with_capacity(scanned.len());
    for entry in scanned {
        let span = entry.at..entry.at;
        let name = derived::normalize_name(&entry.name)
            .map_err(|e| (span.clone(), format!("allow entry {e}")))?;
        let source = DerivedSource {
            kind: entry.kind,
            name,
        };
        if entries.iter().any(|e| e.source == source) {
            return Err((span, format!("allow entry {source} is listed twice")));
        }
        entries.push(DerivedEntry {
            source,
            comment: entry.comment,
        });
    }
    Ok(entries)
}

/// `[dns]`, validated; nameservers are required when the config has derived entries.
fn dns_settings(raw: Option<&RawDns>, needed: bool) -> Result<DnsSettings, SpannedError> {
    let mut dns = DnsSettings::default();
    let Some(raw) = raw else {
        if needed {
            return Err((
                0..0,
                "the [[allow]] entries with spf, mx or a need a [dns] table with nameservers (the daemon never asks the system resolver)".into(),
            ));
        }
        return Ok(dns);
    };
    let listed = raw
        .nameservers
        .as_ref()
        .map_or(&[][..], |l| l.get_ref().as_slice());
    for ns in listed {
        let addr = SocketAddr::from_str(ns.get_ref().trim()).map_err(|_| {
            (
                ns.span(),
                format!(
                    "nameserver \"{}\" is not an address and port (e.g. \"127.0.0.1:53\")",
                    ns.get_ref()
                ),
            )
        })?;
        dns.nameservers.push(addr);
    }
    if needed && dns.nameservers.is_empty() {
        return Err((
            raw.nameservers.as_ref().map_or(0..0, Spanned::span),
            "[dns] nameservers is empty: the [[allow]] entries with spf, mx or a need at least one (the daemon never asks the system resolver)".into(),
        ));
    }
    let positive = |value: &Option<Spanned<u64>>, name: &str, default: u64| match value {
        Some(v) if *v.get_ref() == 0 => Err((v.span(), format!("[dns] {name} must be at least 1"))),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    };
    dns.timeout = Duration::from_millis(positive(
        &raw.timeout_ms,
        "timeout_ms",
        derived::DEFAULT_TIMEOUT_MS,
    )?);
    if let Some(attempts) = &raw.attempts {
        if !(1..=10).contains(attempts.get_ref()) {
            return Err((
                attempts.span(),
                "[dns] attempts is out of range (1-10)".into(),
            ));
        }
        dns.attempts = *attempts.get_ref() as usize;
    }
    let min = positive(
        &raw.min_refresh_secs,
        "min_refresh_secs",
        derived::DEFAULT_MIN_REFRESH_SECS,
    )?;
    let max = positive(
        &raw.max_refresh_secs,
        "max_refresh_secs",
        derived::DEFAULT_MAX_REFRESH_SECS.max(min),
    )?;
    if max < min {
        let span = raw.max_refresh_secs.as_ref().map_or(0..0, Spanned::span);
        return Err((
            span,
            format!("[dns] max_refresh_secs {max} is below min_refresh_secs {min}"),
        ));
    }
    dns.min_refresh = Duration::from_secs(min);
    dns.max_refresh = Duration::from_secs(max);
    if let Some(state) = &raw.state {
        dns.state = absolute("[dns] state", state)?;
    }
    Ok(dns)
}

/// The judged ports and which of them are open: `protected_ports` (all "allowlist") and the
/// `[[port]]` tables; a port in both, or twice, is an error. Neither given: port 25, allowlist.
fn port_policies(
    protected: &Option<Spanned<Vec<Spanned<u32>>>>,
    tables: &[RawPort],
) -> Result<(Vec<u16>, Vec<u16>), SpannedError> {
    let mut ports = match protected {
        None if tables.is_empty() => vec![DEFAULT_PORT],
        None => Vec::new(),
        Some(ports) => validate_ports(ports)?,
    };
    let listed = ports.len();
    let mut open = Vec::new();
    for table in tables {
        let value = *table.number.get_ref();
        let port = match u16::try_from(value) {
            Ok(p) if p != 0 => p,
            _ => {
                return Err((
                    table.number.span(),
                    format!("port {value} is not a TCP port (1-65535)"),
                ));
            }
        };
        if ports[..listed].contains(&port) {
            return Err((
                table.number.span(),
                format!(
                    "port {port} is in protected_ports and has a [[port]] table: give it in one place (protected_ports means policy \"allowlist\")"
                ),
            ));
        }
        if ports.contains(&port) {
            return Err((
                table.number.span(),
                format!("port {port} has two [[port]] tables"),
            ));
        }
        ports.push(port);
        if table.policy == PortPolicy::Open {
            open.push(port);
        }
    }
    open.sort_unstable();
    Ok((ports, open))
}

/// The open-port rules' settings, validated.
struct OpenRules {
    syn_rate: u32,
    syn_burst: u32,
    rate_limit_sources: u32,
    max_bans: u32,
    ban_ipv6_prefix: u8,
}

fn open_rules(raw: &RawConfig) -> Result<OpenRules, SpannedError> {
    let in_range = |value: &Option<Spanned<u32>>,
                    name: &str,
                    range: std::ops::RangeInclusive<u32>,
                    default: u32,
                    why: &str|
     -> Result<u32, SpannedError> {
        match value {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err((
                v.span(),
                format!(
                    "{name} {} is out of range ({}-{}{why})",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    };
    let syn_rate = in_range(
        &raw.syn_rate,
        "syn_rate",
        0..=MAX_SYN_RATE,
        0,
        "; 0 turns the limit off",
    )?;
    let syn_burst = in_range(
        &raw.syn_burst,
        "syn_burst",
        1..=MAX_SYN_BURST,
        syn_rate.max(1),
        "",
    )?;
    let rate_limit_sources = in_range(
        &raw.rate_limit_sources,
        "rate_limit_sources",
        1..=MAX_TABLE_ENTRIES,
        DEFAULT_RATE_LIMIT_SOURCES,
        "",
    )?;
    let max_bans = in_range(
        &raw.max_bans,
        "max_bans",
        1..=MAX_TABLE_ENTRIES,
        DEFAULT_MAX_BANS,
        "",
    )?;
    let ban_ipv6_prefix = in_range(
        &raw.ban_ipv6_prefix,
        "ban_ipv6_prefix",
        32..=128,
        u32::from(DEFAULT_BAN_IPV6_PREFIX),
        "",
    )?;
    Ok(OpenRules {
        syn_rate,
        syn_burst,
        rate_limit_sources,
        max_bans,
        ban_ipv6_prefix: u8::try_from(ban_ipv6_prefix).unwrap_or(DEFAULT_BAN_IPV6_PREFIX),
    })
}

/// The `[[deny]]` tables as a compact list; a bad or repeated network is an error at its `cidr`.
fn deny_entries(raw: &[RawAllow]) -> Result<Allowlist, SpannedError> {
    let mut list = Allowlist::default();
    for entry in raw {
        let net = parse_cidr(entry.cidr.get_ref())
            .map_err(|e| (entry.cidr.span(), format!("deny entry {e}")))?;
        list.push(net, entry.comment.as_deref());
    }
    if let Some((index, net)) = list.first_duplicate() {
        let span = raw.get(index).map_or(0..0, |e| e.cidr.span());
        return Err((span, format!("deny entry \"{net}\" is listed twice")));
    }
    Ok(list)
}

/// An absolute path setting, or where it is not.
fn absolute(what: &str, path: &Spanned<PathBuf>) -> Result<PathBuf, SpannedError> {
    if path.get_ref().is_absolute() {
        Ok(path.get_ref().clone())
    } else {
        Err((
            path.span(),
            format!(
                "{what} \"{}\" must be an absolute path",
                path.get_ref().display()
            ),
        ))
    }
}

/// The ban state file, socket and limits, validated.
fn ban_control(raw: &RawConfig) -> Result<BanControl, SpannedError> {
    let state = match &raw.ban_state {
        Some(path) => absolute("ban_state", path)?,
        None => PathBuf::from(DEFAULT_BAN_STATE),
    };
    let socket = raw
        .ban_socket
        .as_ref()
        .map(|path| absolute("ban_socket", path))
        .transpose()?;
    let socket_group = match &raw.ban_socket_group {
        Some(group) if group.get_ref().trim().is_empty() => {
            return Err((group.span(), "ban_socket_group is empty".into()));
        }
        Some(group) => Some(group.get_ref().trim().to_string()),
        None => None,
    };
    let max_secs = match &raw.ban_max_secs {
        Some(secs) if *secs.get_ref() == 0 => {
            return Err((secs.span(), "ban_max_secs must be at least 1".into()));
        }
        Some(secs) => *secs.get_ref(),
        None => DEFAULT_BAN_MAX_SECS,
    };
    let requests_per_minute = match &raw.ban_requests_per_minute {
        Some(rate) if *rate.get_ref() == 0 => {
            return Err((
                rate.span(),
                "ban_requests_per_minute must be at least 1 (leave ban_socket out to turn the socket off)".into(),
            ));
        }
        Some(rate) => *rate.get_ref(),
        None => DEFAULT_BAN_REQUESTS_PER_MINUTE,
    };
    let never_ban = raw
        .never_ban
        .iter()
        .map(|entry| {
            parse_cidr(entry.get_ref()).map_err(|e| (entry.span(), format!("never_ban entry {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BanControl {
        state,
        socket,
        socket_group,
        max_secs,
        requests_per_minute,
        never_ban,
    })
}

/// The entries the TOML parser read, as the scanner would have returned them. A table needs
/// exactly one of `cidr`, `spf`, `mx` and `a`.
fn from_raw_allow(raw: Vec<RawAllowEntry>) -> Result<ScannedAllow, SpannedError> {
    let mut scanned = ScannedAllow::default();
    for entry in raw {
        let names = [
            (DnsKind::Spf, &entry.spf),
            (DnsKind::Mx, &entry.mx),
            (DnsKind::A, &entry.a),
        ];
        let mut given = names
            .iter()
            .filter_map(|(kind, v)| Some((*kind, (*v).as_ref()?)));
        let dns = given.next();
        if let Some((_, second)) = given.next() {
            return Err((
                second.span(),
                "an [[allow]] table takes one of cidr, spf, mx and a".into(),
            ));
        }
        let cidr = match (entry.cidr, dns) {
            (Some(cidr), None) => cidr,
            (None, Some((kind, name))) => {
                scanned.derived.push(ScannedDerived {
                    kind,
                    name: name.get_ref().clone(),
                    comment: entry.comment,
                    at: name.span().start,
                });
                continue;
            }
            (Some(_), Some((_, name))) => {
                return Err((
                    name.span(),
                    "an [[allow]] table takes one of cidr, spf, mx and a".into(),
                ));
            }
            (None, None) => {
                return Err((
                    0..0,
                    "an [[allow]] table needs cidr (a network) or spf, mx or a (a DNS name to follow)".into(),
                ));
            }
        };
        let at = cidr.span().start;
        let net = match parse_cidr(cidr.get_ref()) {
            Ok(net) => net,
            Err(err) => {
                if scanned.first_invalid.is_none() {
                    scanned.first_invalid = Some((at, err));
                }
                IpNet::default()
            }
        };
        scanned.list.push(net, entry.comment.as_deref());
        scanned.cidr_at.push(u32::try_from(at).unwrap_or(u32::MAX));
    }
    Ok(scanned)
}

/// Config text must be UTF-8: where the first byte that is not sits, for FILE:LINE:COLUMN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUtf8 {
    pub line: usize,
    pub column: usize,
    pub byte: u8,
}

impl fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "byte 0x{:02x} is not UTF-8: the config file must be UTF-8 text",
            self.byte
        )
    }
}

/// `bytes` as text, or where it stops being UTF-8.
pub fn utf8_text(bytes: Vec<u8>) -> Result<String, NotUtf8> {
    String::from_utf8(bytes).map_err(|err| {
        let bytes = err.as_bytes();
        let at = err.utf8_error().valid_up_to();
        // The prefix up to `at` is valid UTF-8 by definition.
        let valid = std::str::from_utf8(&bytes[..at]).unwrap_or("");
        let (line, column) = line_column(valid, at);
        NotUtf8 {
            line,
            column,
            byte: bytes.get(at).copied().unwrap_or(0),
        }
    })
}

/// Reads the config text at `read_from`, naming `path` in errors (a symlink's own name).
pub fn read_text(read_from: &Path, path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(read_from).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    utf8_text(bytes).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: e.line,
        column: e.column,
        message: e.to_string(),
    })
}

type SpannedError = (Range<usize>, String);

fn validate_interfaces(list: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>, SpannedError> {
    if list.get_ref().is_empty() {
        return Err((
            list.span(),
            "interfaces is empty: name at least one interface to protect".into(),
        ));
    }
    let mut names = Vec::new();
    for name in list.get_ref() {
        let value = name.get_ref();
        // IFNAMSIZ is 16 including the terminating NUL.
        let valid = !value.is_empty()
            && value.len() <= 15
            && !value
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
        if !valid {
            return Err((
                name.span(),
                format!("interface \"{value}\" is not a valid interface name"),
            ));
        }
        if names.contains(value) {
            return Err((
                name.span(),
                format!("interface \"{value}\" is listed twice"),
            ));
        }
        names.push(value.clone());
    }
    Ok(names)
}

fn validate_ports(list: &Spanned<Vec<Spanned<u32>>>) -> Result<Vec<u16>, SpannedError> {
    if list.get_ref().is_empty() {
        return Err((
            list.span(),
            "protected_ports is empty: the filter would protect nothing (remove the key for the default, 25)".into(),
        ));
    }
    let mut ports = Vec::new();
    for port in list.get_ref() {
        let value = *port.get_ref();
        let port_u16 = match u16::try_from(value) {
            Ok(p) if p != 0 => p,
            _ => {
                return Err((
                    port.span(),
                    format!("protected port {value} is not a TCP port (1-65535)"),
                ));
            }
        };
        if ports.contains(&port_u16) {
            return Err((
                port.span(),
                format!("protected port {value} is listed twice"),
            ));
        }
        ports.push(port_u16);
    }
    Ok(ports)
}

/// 1-based line and column (in characters) of byte `offset` in `text`: how both daemons' config
/// errors name a position (FILE:LINE:COLUMN).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gk.toml"))
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_config_parses() {
        let config = parse(
            r#"
# DMZ mail host
interfaces = ["eth0", "eth1"]
xdp_mode = "auto"
xdp_attach = "dispatcher"
protected_ports = [25, 587]

[[allow]]
cidr = "198.51.100.0/24"
comment = "partner relay"

[[allow]]
cidr = "2001:db8:25::/48"

[[allow]]
cidr = "203.0.113.7"
"#,
        )
        .expect("valid config");
        assert_eq!(config.interfaces, ["eth0", "eth1"]);
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.xdp_attach, XdpAttach::Dispatcher);
        assert_eq!(config.protected_ports, [25, 587]);
        assert_eq!(config.allow.len(), 3);
        assert_eq!(
            config.allow.nets()[0],
            "198.51.100.0/24".parse::<IpNet>().unwrap()
        );
        assert_eq!(config.allow.comment(0), Some("partner relay"));
        assert_eq!(
            config.allow.nets()[1],
            "2001:db8:25::/48".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            config.allow.nets()[2],
            "203.0.113.7/32".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn defaults_are_native_enforce_port_25_and_pinned() {
        let config = parse("interfaces = [\"eth0\"]\n").expect("valid config");
        assert_eq!(config.xdp_mode, XdpMode::Native);
        assert_eq!(config.xdp_attach, XdpAttach::Exclusive);
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.protected_ports, [25]);
        assert_eq!(config.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(config.drop_event_rate, DEFAULT_DROP_EVENT_RATE);
        assert_eq!(config.ipv4_lookup, Ipv4Lookup::Auto);
        assert!(config.allow.is_empty());
    }

    #[test]
    fn keep_attached_and_metrics_listen() {
        let config = parse("interfaces = [\"eth0\"]\n").expect("valid config");
        assert!(!config.keep_attached_on_exit);
        assert_eq!(config.metrics_listen, None);
        let config = parse(
            "interfaces = [\"eth0\"]\nkeep_attached_on_exit = true\nmetrics_listen = \"127.0.0.1:9725\"\n",
        )
        .expect("valid config");
        assert!(config.keep_attached_on_exit);
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9725".parse().unwrap())
        );
        let e = error("interfaces = [\"eth0\"]\nmetrics_listen = \"localhost\"\n");
        assert!(
            e.starts_with("gk.toml:2:18: metrics_listen \"localhost\" is not an address"),
            "{e}"
        );
    }

    #[test]
    fn ban_control_and_deny_feeds() {
        let config = parse("interfaces = [\"eth0\"]\n").expect("valid config");
        assert_eq!(config.bans.state, Path::new(DEFAULT_BAN_STATE));
        assert_eq!(config.bans.socket, None);
        assert_eq!(config.bans.max_secs, DEFAULT_BAN_MAX_SECS);
        assert_eq!(
            config.bans.requests_per_minute,
            DEFAULT_BAN_REQUESTS_PER_MINUTE
        );
        assert!(config.deny_feeds.is_empty() && config.bans.never_ban.is_empty());
        let config = parse(
            "interfaces = [\"eth0\"]\nban_socket = \"/run/gatekeeper/ban.sock\"\nban_socket_group = \"smtp-relay\"\nban_max_secs = 3600\nban_requests_per_minute = 60\nnever_ban = [\"192.0.2.0/24\", \"2001:db8::/32\"]\nban_state = \"/var/lib/gk/bans.json\"\ndeny_feeds = [\"/var/lib/gatekeeper/feeds/drop.txt\"]\n",
        )
        .expect("valid config");
        assert_eq!(
            config.bans.socket.as_deref(),
            Some(Path::new("/run/gatekeeper/ban.sock"))
        );
        assert_eq!(config.bans.socket_group.as_deref(), Some("smtp-relay"));
        assert_eq!(config.bans.max_secs, 3600);
        assert_eq!(config.bans.requests_per_minute, 60);
        assert_eq!(config.bans.never_ban.len(), 2);
        assert_eq!(config.bans.state, Path::new("/var/lib/gk/bans.json"));
        assert_eq!(
            config.deny_feeds,
            [Path::new("/var/lib/gatekeeper/feeds/drop.txt")]
        );
        let e = error("interfaces = [\"eth0\"]\nnever_ban = [\"192.0.2.1/24\"]\n");
        assert!(
            e.starts_with("gk.toml:2:14: never_ban entry \"192.0.2.1/24\" has host bits"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\ndeny_feeds = [\"drop.txt\"]\n");
        assert!(
            e.contains("deny_feeds entry \"drop.txt\" must be an absolute path"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\nban_max_secs = 0\n");
        assert!(e.contains("ban_max_secs must be at least 1"), "{e}");
    }

    #[test]
    fn port_policies_rate_limits_bans_and_deny_entries() {
        let config = parse(
            "interfaces = [\"eth0\"]\nprotected_ports = [587]\nsyn_rate = 20\nsyn_burst = 40\nrate_limit_sources = 1000\nmax_bans = 500\nban_ipv6_prefix = 56\n[[port]]\nnumber = 25\npolicy = \"open\"\n[[port]]\nnumber = 465\npolicy = \"allowlist\"\n[[deny]]\ncidr = \"203.0.113.0/28\"\ncomment = \"hijacked netblock\"\n[[deny]]\ncidr = \"2001:db8:bad::/48\"\n[[allow]]\ncidr = \"198.51.100.0/24\"\n",
        )
        .expect("valid config");
        assert_eq!(config.protected_ports, [587, 25, 465]);
        assert_eq!(config.open_ports, [25]);
        assert_eq!((config.syn_rate, config.syn_burst), (20, 40));
        assert_eq!((config.rate_limit_sources, config.max_bans), (1000, 500));
        assert_eq!(config.ban_ipv6_prefix, 56);
        assert_eq!(config.deny.len(), 2);
        assert_eq!(config.deny.comment(0), Some("hijacked netblock"));
        assert_eq!(config.allow.len(), 1);

        let config = parse("interfaces = [\"eth0\"]\n[[port]]\nnumber = 25\npolicy = \"open\"\n")
            .expect("valid config");
        assert_eq!(
            (
                config.protected_ports.as_slice(),
                config.open_ports.as_slice()
            ),
            (&[25][..], &[25][..])
        );
        assert_eq!(
            (config.syn_rate, config.max_bans, config.ban_ipv6_prefix),
            (0, DEFAULT_MAX_BANS, 64)
        );
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());

        let e = error(
            "interfaces = [\"eth0\"]\nprotected_ports = [25]\n[[port]]\nnumber = 25\npolicy = \"open\"\n",
        );
        assert!(
            e.starts_with("gk.toml:4:10: port 25 is in protected_ports and has a [[port]] table"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\n[[port]]\nnumber = 25\n[[port]]\nnumber = 25\n");
        assert!(
            e.starts_with("gk.toml:5:10: port 25 has two [[port]] tables"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\n[[port]]\nnumber = 25\npolicy = \"closed\"\n");
        assert!(e.starts_with("gk.toml:4:10: "), "{e}");
        let e = error("interfaces = [\"eth0\"]\nban_ipv6_prefix = 16\n");
        assert!(
            e.starts_with("gk.toml:2:19: ban_ipv6_prefix 16 is out of range (32-128)"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\nsyn_burst = 0\n");
        assert!(
            e.starts_with("gk.toml:2:13: syn_burst 0 is out of range"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\n[[deny]]\ncidr = \"203.0.113.1/24\"\n");
        assert!(
            e.starts_with("gk.toml:3:8: deny entry \"203.0.113.1/24\" has host bits"),
            "{e}"
        );
        let e = error(
            "interfaces = [\"eth0\"]\n[[deny]]\ncidr = \"203.0.113.0/24\"\n[[deny]]\ncidr = \"203.0.113.0/24\"\n",
        );
        assert!(
            e.starts_with("gk.toml:5:8: deny entry \"203.0.113.0/24\" is listed twice"),
            "{e}"
        );
        let config = parse("interfaces = [\"eth0\"]\nsyn_rate = 5\n").expect("valid");
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("syn_rate is set"))
        );
    }

    #[test]
    fn derived_entries_need_dns_and_are_read_by_both_paths() {
        let text = "interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:5353\"]\nmin_refresh_secs = 2\n\n[[allow]]\ncidr = \"192.0.2.0/24\"\n\n[[allow]]\nspf = \"Partner.Example.\"\ncomment = \"partner\"\n\n[[allow]]\nmx = \"partner.example\"\n\n[[allow]]\na = \"host.partner.example\"\n";
        let config = parse(text).expect("valid");
        assert_eq!(config.allow.len(), 1);
        let sources: Vec<String> = config
            .derived
            .iter()
            .map(|e| e.source.to_string())
            .collect();
        assert_eq!(
            sources,
            [
                "spf:partner.example",
                "mx:partner.example",
                "a:host.partner.example"
            ]
        );
        assert_eq!(config.derived[0].comment.as_deref(), Some("partner"));
        assert_eq!(config.dns.nameservers, ["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(config.dns.min_refresh, Duration::from_secs(2));
        assert_eq!(config.dns.state, Path::new(derived::DEFAULT_STATE));
        // The TOML parser's path (an odd line makes the scanner hand the file over) reads the same.
        let odd = format!("{text}[[allow]]\ncidr = \"198.51.100.0/24\" # x\n\"comment\" = \"y\"\n");
        let same = parse(&odd).expect("valid");
        assert_eq!(same.derived, config.derived);
        assert_eq!(same.allow.len(), 2);
        // Only derived entries: the list is not "empty".
        let config = parse("interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n[[allow]]\nspf = \"p.example\"\n").expect("valid");
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());

        let e = error("interfaces = [\"eth0\"]\n[[allow]]\nspf = \"p.example\"\n");
        assert!(e.contains("need a [dns] table with nameservers"), "{e}");
        let e = error(
            "interfaces = [\"eth0\"]\n[dns]\nnameservers = []\n[[allow]]\nspf = \"p.example\"\n",
        );
        assert!(
            e.starts_with("gk.toml:3:15: [dns] nameservers is empty"),
            "{e}"
        );
        let e = error(
            "interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n[[allow]]\nspf = \"p example\"\n",
        );
        assert!(
            e.starts_with("gk.toml:5:7: allow entry \"p example\" is not a DNS name"),
            "{e}"
        );
        let e = error(
            "interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n[[allow]]\nspf = \"p.example\"\ncidr = \"192.0.2.1\"\n",
        );
        assert!(e.contains("takes one of cidr, spf, mx and a"), "{e}");
        let e = error(
            "interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n[[allow]]\nspf = \"p.example\"\n[[allow]]\nspf = \"P.example\"\n",
        );
        assert!(
            e.starts_with("gk.toml:7:7: allow entry spf:p.example is listed twice"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"localhost\"]\n");
        assert!(
            e.contains("nameserver \"localhost\" is not an address and port"),
            "{e}"
        );
        let e =
            error("interfaces = [\"eth0\"]\n[dns]\nmin_refresh_secs = 60\nmax_refresh_secs = 10\n");
        assert!(
            e.contains("max_refresh_secs 10 is below min_refresh_secs 60"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\n[[deny]]\nspf = \"p.example\"\n");
        assert!(e.contains("unknown field `spf`"), "{e}");
    }

    #[test]
    fn host_bits_are_refused_with_position_and_network() {
        let e = error("interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"198.51.100.7/24\"\n");
        assert_eq!(
            e,
            "gk.toml:3:8: allow entry \"198.51.100.7/24\" has host bits set; the network is 198.51.100.0/24"
        );
    }

    #[test]
    fn unparsable_address_is_refused() {
        let e = error("interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"198.51.100.300/24\"\n");
        assert!(e.starts_with("gk.toml:3:8: "), "{e}");
        assert!(
            e.contains("\"198.51.100.300/24\" is not an IPv4 or IPv6"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"2001:db8::/129\"\n");
        assert!(e.contains("2001:db8::/129"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_with_position() {
        let e = error("interfaces = [\"eth0\"]\nprotected_port = [25]\n");
        assert!(e.starts_with("gk.toml:2:1: "), "{e}");
        assert!(e.contains("unknown field `protected_port`"), "{e}");
        let e = error(
            "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"192.0.2.0/24\"\ncomentary = \"x\"\n",
        );
        assert!(e.starts_with("gk.toml:4:1: "), "{e}");
        assert!(e.contains("unknown field `comentary`"), "{e}");
    }

    #[test]
    fn port_zero_and_out_of_range_ports_are_refused() {
        let e = error("interfaces = [\"eth0\"]\nprotected_ports = [25, 0]\n");
        assert_eq!(
            e,
            "gk.toml:2:24: protected port 0 is not a TCP port (1-65535)"
        );
        let e = error("interfaces = [\"eth0\"]\nprotected_ports = [65536]\n");
        assert!(e.contains("protected port 65536 is not a TCP port"), "{e}");
        let e = error("interfaces = [\"eth0\"]\nprotected_ports = []\n");
        assert!(e.contains("protected_ports is empty"), "{e}");
        let e = error("interfaces = [\"eth0\"]\nprotected_ports = [25, 25]\n");
        assert!(e.contains("protected port 25 is listed twice"), "{e}");
    }

    #[test]
    fn empty_or_bad_interface_list_is_refused() {
        let e = error("interfaces = []\n");
        assert!(e.starts_with("gk.toml:1:14: interfaces is empty"), "{e}");
        let e = error("xdp_mode = \"skb\"\n");
        assert!(e.contains("missing field `interfaces`"), "{e}");
        let e = error("interfaces = [\"a-very-long-interface\"]\n");
        assert!(e.contains("not a valid interface name"), "{e}");
        let e = error("interfaces = [\"eth0\", \"eth0\"]\n");
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn bad_mode_and_duplicate_entries_are_refused() {
        let e = error("interfaces = [\"eth0\"]\nxdp_mode = \"turbo\"\n");
        assert!(e.starts_with("gk.toml:2:12: "), "{e}");
        let e = error("interfaces = [\"eth0\"]\nxdp_attach = \"shared\"\n");
        assert!(e.starts_with("gk.toml:2:14: "), "{e}");
        assert!(e.contains("exclusive") && e.contains("dispatcher"), "{e}");
        let e = error(
            "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"192.0.2.0/24\"\n[[allow]]\ncidr = \"192.0.2.0/24\"\n",
        );
        assert_eq!(
            e,
            "gk.toml:5:8: allow entry \"192.0.2.0/24\" is listed twice"
        );
    }

    #[test]
    fn toml_syntax_error_has_position() {
        let e = error("interfaces = [\"eth0\"\n");
        assert!(e.starts_with("gk.toml:"), "{e}");
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_refused_with_its_position() {
        let dir = std::env::temp_dir().join(format!("gk-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("gatekeeper.toml");
        std::fs::write(
            &path,
            b"interfaces = [\"eth0\"]\n[[allow]]\ncomment = \"caf\xc3\xa9 \xff\"\n",
        )
        .expect("write");
        let err = Config::load(&path).expect_err("not UTF-8");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3:17: byte 0xff is not UTF-8: the config file must be UTF-8 text",
                path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn everyone_admitted_or_nobody_admitted_is_warned_about() {
        let config = parse("interfaces = [\"eth0\"]\n").expect("valid");
        assert_eq!(
            config.warnings(),
            ["the allowlist is empty: every SMTP peer is refused"]
        );
        let config = parse(
            "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"0.0.0.0/0\"\n[[allow]]\ncidr = \"::/0\"\n[[allow]]\ncidr = \"192.0.2.0/24\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.warnings(),
            [
                "allow entry 0.0.0.0/0: this entry admits every IPv4 source: the filter protects nothing on that family",
                "allow entry ::/0: this entry admits every IPv6 source: the filter protects nothing on that family",
            ]
        );
        let config =
            parse("interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"192.0.2.0/24\"\n").expect("valid");
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn an_ipv4_mapped_entry_is_refused_with_position() {
        let e = error("interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"::ffff:198.51.100.1\"\n");
        assert_eq!(
            e,
            "gk.toml:3:8: allow entry \"::ffff:198.51.100.1\" is an IPv4-mapped IPv6 address, which never matches: IPv4 packets arrive as IPv4; write 198.51.100.1"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/gatekeeper.toml")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/gatekeeper.toml: cannot read")
        );
    }
}
