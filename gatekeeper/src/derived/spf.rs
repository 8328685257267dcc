//! The set of networks a name authorises: its SPF record walked the way RFC 7208's `check_host`
//! would walk it, collecting instead of matching one address; and the addresses of its MX hosts
//! or of the name itself.
//!
//! mail-auth (the relay's SPF verifier) answers "does this address pass"; an allowlist needs the
//! set of networks that would pass, which it does not expose, so the walk is here:
//! - `ip4`, `ip6`, `a[/cidr]`, `mx[/cidr]`, `include`, `redirect` are followed;
//! - terms are evaluated in order: a network a non-pass term (`-ip4:`, `~a`, `?include:`...)
//!   matched first is taken out of every later pass term, and only pass (`+`) terms admit;
//! - terms after `all` are never reached, and `redirect` is used only without `all`;
//! - RFC 7208 4.6.4's limits: at most 10 DNS-querying terms (`include`, `a`, `mx`, `ptr`,
//!   `exists`, `redirect`) over the whole walk, at most 2 void lookups, at most 10 MX hosts per
//!   `mx`; and a name that includes itself, directly or not, is a loop. Each is an error: the
//!   caller keeps the last good set;
//! - `ptr`, `exists`, macros (`%{i}`...) and `+all`/`?all` cannot be turned into networks:
//!   skipped, with a warning;
//! - networks wider than /8 (IPv4) or /16 (IPv6) are skipped with a warning: a partner's record
//!   must not open the filter to a continent, and IPv4-mapped IPv6 networks never match.

use std::{future::Future, net::IpAddr, pin::Pin};

use gatekeeper_support::derived::{DerivedSource, DnsKind};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::dns::{Answer, Dns, DnsFailure, Rdata, Rtype};

/// RFC 7208 4.6.4.
pub const MAX_LOOKUPS: usize = 10;
pub const MAX_VOID_LOOKUPS: usize = 2;
pub const MAX_MX_HOSTS: usize = 10;
/// The widest networks a derived entry may admit.
pub const MIN_V4_PREFIX: u8 = 8;
pub const MIN_V6_PREFIX: u8 = 16;

/// The networks a source authorises.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Sorted, without duplicates.
    pub nets: Vec<IpNet>,
    /// The lowest TTL of the records they came from.
    pub ttl: u32,
    /// What was skipped, and why.
    pub warnings: Vec<String>,
    /// DNS-querying terms counted.
    pub lookups: usize,
}

/// Why a source could not be resolved; the last good set stays in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// SERVFAIL, REFUSED, a timeout.
    #[error("DNS failure: {0}")]
    Dns(#[from] DnsFailure),
    #[error("SPF loop: {0}")]
    Loop(String),
    #[error(
        "too many DNS lookups: more than {MAX_LOOKUPS} DNS-querying terms (RFC 7208 4.6.4), the 11th at {0}"
    )]
    TooManyLookups(String),
    #[error(
        "too many void lookups: more than {MAX_VOID_LOOKUPS} terms found no records (RFC 7208 4.6.4), the last at {0}"
    )]
    TooManyVoidLookups(String),
    #[error("{domain}: {why}")]
    Record { domain: String, why: String },
}

/// Resolves one derived source.
pub async fn resolve(dns: &impl Dns, source: &DerivedSource) -> Result<Resolution, WalkError> {
    let mut walk = Walk {
        dns,
        lookups: 0,
        voids: 0,
        ttl: u32::MAX,
        warnings: Vec::new(),
        path: Vec::new(),
    };
    let name = source.name.as_str();
    let nets = match source.kind {
        // The top record's own TXT query is not a counted term.
        DnsKind::Spf => walk.check(name.to_string()).await?,
        DnsKind::Mx => {
            let nets = walk.mx_hosts(name, 32, 128).await?;
            if nets.is_empty() {
                return Err(WalkError::Record {
                    domain: name.into(),
                    why: "no MX host with an address".into(),
                });
            }
            nets
        }
        DnsKind::A => {
            let nets = walk.addresses(name, 32, 128).await?;
            if nets.is_empty() {
                return Err(WalkError::Record {
                    domain: name.into(),
                    why: "no A or AAAA record".into(),
                });
            }
            nets
        }
    };
    let mut kept = Vec::with_capacity(nets.len());
    for net in nets {
        if let Some(why) = unusable(net) {
            walk.warnings.push(format!("{net} skipped: {why}"));
        } else {
            kept.push(net.trunc());
        }
    }
    kept.sort_unstable();
    kept.dedup();
    Ok(Resolution {
        nets: kept,
        ttl: if walk.ttl == u32::MAX { 0 } else { walk.ttl },
        warnings: walk.warnings,
        lookups: walk.lookups,
    })
}

/// Why a network cannot be an allow entry.
fn unusable(net: IpNet) -> Option<&'static str> {
    match net {
        IpNet::V4(n) if n.prefix_len() < MIN_V4_PREFIX => {
            Some("wider than /8: too wide for an allowlist")
        }
        IpNet::V6(n) if n.prefix_len() < MIN_V6_PREFIX => {
            Some("wider than /16: too wide for an allowlist")
        }
        IpNet::V6(n) if n.addr().to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 network never matches (IPv4 arrives as IPv4)")
        }
        _ => None,
    }
}

struct Walk<'d, D> {
    dns: &'d D,
    lookups: usize,
    voids: usize,
    ttl: u32,
    warnings: Vec<String>,
    /// The include/redirect chain to the record being walked, for loop detection.
    path: Vec<String>,
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One term of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Mechanism(Qualifier, Mechanism),
    Redirect(String),
    /// `exp=` and unknown modifiers: no effect on the set.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr,
    Exists,
    Ip(IpNet),
}

impl<D: Dns> Walk<'_, D> {
    async fn ask(&mut self, name: &str, rtype: Rtype) -> Result<Answer, WalkError> {
        let answer = self.dns.lookup(name, rtype).await?;
        if !answer.records.is_empty() {
            self.ttl = self.ttl.min(answer.ttl);
        }
        Ok(answer)
    }

    /// Counts a DNS-querying term.
    fn count(&mut self, at: &str) -> Result<(), WalkError> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(WalkError::TooManyLookups(at.to_string()));
        }
        Ok(())
    }

    fn void(&mut self, at: &str) -> Result<(), WalkError> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(WalkError::TooManyVoidLookups(at.to_string()));
        }
        Ok(())
    }

    /// The networks `domain`'s SPF record passes.
    fn check(&mut self, domain: String) -> Boxed<'_, Result<Vec<IpNet>, WalkError>> {
        Box::pin(async move {
            if self.path.contains(&domain) {
                let mut chain = self.path.join(" -> ");
                chain.push_str(" -> ");
                chain.push_str(&domain);
                return Err(WalkError::Loop(chain));
            }
            let record = self.record(&domain).await?;
            let terms = parse(&record).map_err(|why| WalkError::Record {
                domain: domain.clone(),
                why,
            })?;
            self.path.push(domain.clone());
            let result = self.walk_terms(&domain, terms).await;
            self.path.pop();
            result
        })
    }

    /// The one `v=spf1` TXT record of `domain`.
    async fn record(&mut self, domain: &str) -> Result<String, WalkError> {
        let answer = self.ask(domain, Rtype::Txt).await?;
        let mut records = answer.records.into_iter().filter_map(|r| match r {
            Rdata::Txt(text) if is_spf(&text) => Some(text),
            _ => None,
        });
        let record = records.next().ok_or_else(|| WalkError::Record {
            domain: domain.to_string(),
            why: "no SPF record".into(),
        })?;
        if records.next().is_some() {
            return Err(WalkError::Record {
                domain: domain.to_string(),
                why: "more than one SPF record (RFC 7208 4.5)".into(),
            });
        }
        Ok(record)
    }

    async fn walk_terms(
        &mut self,
        domain: &str,
        terms: Vec<Term>,
    ) -> Result<Vec<IpNet>, WalkError> {
        let mut pass: Vec<IpNet> = Vec::new();
        let mut taken: Vec<IpNet> = Vec::new();
        let mut redirect = None;
        let mut saw_all = false;
        for term in terms {
            let (qualifier, mechanism) = match term {
                Term::Mechanism(q, m) => (q, m),
                Term::Redirect(target) => {
                    redirect = Some(target);
                    continue;
                }
                Term::Other => continue,
            };
            let at = format!("{domain} ({})", describe(&mechanism));
            let nets = match mechanism {
                Mechanism::All => {
                    if matches!(qualifier, Qualifier::Pass | Qualifier::Neutral) {
                        self.warnings.push(format!(
                            "{domain}: \"{}all\" passes every address: not usable for an allowlist, skipped",
                            if qualifier == Qualifier::Pass { "+" } else { "?" }
                        ));
                    }
                    saw_all = true;
                    break;
                }
                Mechanism::Ip(net) => vec![net],
                Mechanism::Include(target) => {
                    self.count(&at)?;
                    if is_macro(&target) {
                        self.skip_macro(domain, &target);
                        continue;
                    }
                    self.check(target).await?
                }
                Mechanism::A(target, v4, v6) => {
                    self.count(&at)?;
                    let target = target.unwrap_or_else(|| domain.to_string());
                    if is_macro(&target) {
                        self.skip_macro(domain, &target);
                        continue;
                    }
                    let nets = self.addresses(&target, v4, v6).await?;
                    if nets.is_empty() {
                        self.void(&at)?;
                    }
                    nets
                }
                Mechanism::Mx(target, v4, v6) => {
                    self.count(&at)?;
                    let target = target.unwrap_or_else(|| domain.to_string());
                    if is_macro(&target) {
                        self.skip_macro(domain, &target);
                        continue;
                    }
                    self.mx_hosts(&target, v4, v6).await?
                }
                Mechanism::Ptr | Mechanism::Exists => {
                    // Counted: a record over the limit fails for every receiver, whatever we
                    // skip.
                    self.count(&at)?;
                    let name = if mechanism == Mechanism::Ptr {
                        "ptr"
                    } else {
                        "exists"
                    };
                    self.warnings.push(format!(
                        "{domain}: \"{name}\" depends on the connecting address: not usable for an allowlist, skipped"
                    ));
                    continue;
                }
            };
            if qualifier == Qualifier::Pass {
                pass.extend(nets.iter().flat_map(|net| subtract(*net, &taken)));
            } else {
                // What this term matched is decided here (not a pass): later terms no longer
                // see it. (What a pass term matched may pass again later: no difference.)
                taken.extend(nets);
            }
        }
        if !saw_all && let Some(target) = redirect {
            let at = format!("{domain} (redirect={target})");
            self.count(&at)?;
            if is_macro(&target) {
                self.skip_macro(domain, &target);
            } else {
                let nets = self.check(target).await?;
                pass.extend(nets.iter().flat_map(|net| subtract(*net, &taken)));
            }
        }
        Ok(pass)
    }

    fn skip_macro(&mut self, domain: &str, target: &str) {
        self.warnings.push(format!(
            "{domain}: \"{target}\" is a macro, expanded per connection: not usable for an allowlist, skipped"
        ));
    }

    /// `name`'s A and AAAA records as networks of `v4`/`v6` bits (empty: both void).
    async fn addresses(&mut self, name: &str, v4: u8, v6: u8) -> Result<Vec<IpNet>, WalkError> {
        let mut nets = Vec::new();
        for rtype in [Rtype::A, Rtype::Aaaa] {
            for record in self.ask(name, rtype).await?.records {
                if let Rdata::Ip(ip) = record {
                    nets.push(ip_net(ip, v4, v6));
                }
            }
        }
        Ok(nets)
    }

    /// The addresses of `name`'s MX hosts.
    async fn mx_hosts(&mut self, name: &str, v4: u8, v6: u8) -> Result<Vec<IpNet>, WalkError> {
        let answer = self.ask(name, Rtype::Mx).await?;
        let hosts: Vec<String> = answer
            .records
            .into_iter()
            .filter_map(|r| match r {
                // The null MX (RFC 7505) names the root: no host.
                Rdata::Mx(host) if !host.is_empty() => Some(host),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            self.void(&format!("{name} (mx)"))?;
            return Ok(Vec::new());
        }
        if hosts.len() > MAX_MX_HOSTS {
            return Err(WalkError::Record {
                domain: name.to_string(),
                why: format!(
                    "{} MX hosts, more than {MAX_MX_HOSTS} (RFC 7208 4.6.4)",
                    hosts.len()
                ),
            });
        }
        let mut nets = Vec::new();
        for host in hosts {
            nets.extend(self.addresses(&host, v4, v6).await?);
        }
        Ok(nets)
    }
}

fn ip_net(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    match ip {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, v4).unwrap_or_default().trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, v6).unwrap_or_default().trunc()),
    }
}

fn describe(mechanism: &Mechanism) -> String {
    match mechanism {
        Mechanism::All => "all".into(),
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A(d, ..) => d.as_ref().map_or("a".into(), |d| format!("a:{d}")),
        Mechanism::Mx(d, ..) => d.as_ref().map_or("mx".into(), |d| format!("mx:{d}")),
        Mechanism::Ptr => "ptr".into(),
        Mechanism::Exists => "exists".into(),
        Mechanism::Ip(net) => net.to_string(),
    }
}

/// A TXT record that is an SPF record: `v=spf1` alone or followed by a space.
fn is_spf(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 6
        && bytes[..6].eq_ignore_ascii_case(b"v=spf1")
        && (bytes.len() == 6 || bytes[6] == b' ')
}

fn is_macro(domain: &str) -> bool {
    domain.contains('%')
}

/// `net` without every network of `taken` (the parts of it no earlier term decided).
pub fn subtract(net: IpNet, taken: &[IpNet]) -> Vec<IpNet> {
    let mut parts = vec![net];
    for cut in taken {
        parts = parts
            .into_iter()
            .flat_map(|part| subtract_one(part, *cut))
            .collect();
        if parts.is_empty() {
            break;
        }
    }
    parts
}

fn subtract_one(net: IpNet, cut: IpNet) -> Vec<IpNet> {
    if cut.contains(&net) {
        return Vec::new();
    }
    if !net.contains(&cut) {
        return vec![net];
    }
    // `cut` is strictly inside: keep the half without it, split the half with it.
    let mut out = Vec::new();
    let mut rest = net;
    while rest.prefix_len() < cut.prefix_len() {
        let Ok(mut halves) = rest.subnets(rest.prefix_len() + 1) else {
            break;
        };
        let (Some(low), Some(high)) = (halves.next(), halves.next()) else {
            break;
        };
        let (inside, outside) = if low.contains(&cut) {
            (low, high)
        } else {
            (high, low)
        };
        out.push(outside);
        rest = inside;
    }
    out
}

/// The terms of an SPF record (after `v=spf1`), or why it is not valid (RFC 7208 4.6.1, 12).
fn parse(record: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    let mut redirect_seen = false;
    for token in record.split_ascii_whitespace().skip(1) {
        // A modifier: NAME=VALUE, NAME alphanumeric (and -_.), before any ':' or '/'.
        if let Some((name, value)) = token.split_once('=')
            && !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            if name.eq_ignore_ascii_case("redirect") {
                if redirect_seen {
                    return Err("redirect= given twice".into());
                }
                redirect_seen = true;
                terms.push(Term::Redirect(domain_spec(value, token)?));
            } else {
                terms.push(Term::Other);
            }
            continue;
        }
        let (qualifier, rest) = match token.as_bytes().first() {
            Some(b'+') => (Qualifier::Pass, &token[1..]),
            Some(b'-') => (Qualifier::Fail, &token[1..]),
            Some(b'~') => (Qualifier::SoftFail, &token[1..]),
            Some(b'?') => (Qualifier::Neutral, &token[1..]),
            _ => (Qualifier::Pass, token),
        };
        let end = rest.find([':', '/']).unwrap_or(rest.len());
        let (name, arg) = rest.split_at(end);
        let mechanism = match name.to_ascii_lowercase().as_str() {
            "all" if arg.is_empty() => Mechanism::All,
            "include" => Mechanism::Include(domain_spec(required(arg, token)?, token)?),
            "a" | "mx" => {
                let (domain, v4, v6) = domain_and_cidrs(arg, token)?;
                if name.eq_ignore_ascii_case("a") {
                    Mechanism::A(domain, v4, v6)
                } else {
                    Mechanism::Mx(domain, v4, v6)
                }
            }
            "ptr" => Mechanism::Ptr,
            "exists" => {
                required(arg, token)?;
                Mechanism::Exists
            }
            "ip4" | "ip6" => Mechanism::Ip(ip_arg(name, required(arg, token)?, token)?),
            _ => return Err(format!("\"{token}\" is not an SPF term")),
        };
        terms.push(Term::Mechanism(qualifier, mechanism));
    }
    Ok(terms)
}

/// The value after `:` of a mechanism that needs one.
fn required<'a>(arg: &'a str, token: &str) -> Result<&'a str, String> {
    arg.strip_prefix(':')
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("\"{token}\" needs a value after ':'"))
}

/// A domain-spec, lower case, without a final dot (macros are kept as written).
fn domain_spec(value: &str, token: &str) -> Result<String, String> {
    let value = value.trim_end_matches('.');
    if value.is_empty() || value.contains(['/', ' ']) {
        return Err(format!("\"{token}\" has no valid domain"));
    }
    Ok(value.to_ascii_lowercase())
}

/// `[:domain][/v4][//v6]` of `a` and `mx`.
fn domain_and_cidrs(arg: &str, token: &str) -> Result<(Option<String>, u8, u8), String> {
    let (domain, cidrs) = match arg.strip_prefix(':') {
        Some(rest) => {
            let end = rest.find('/').unwrap_or(rest.len());
            (Some(domain_spec(&rest[..end], token)?), &rest[end..])
        }
        None => (None, arg),
    };
    let bad = || format!("\"{token}\" has an invalid prefix length");
    let (v4, v6) = match cidrs.split_once("//") {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (cidrs, None),
    };
    let v4 = match v4 {
        "" => 32,
        v => v
            .strip_prefix('/')
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| *n <= 32)
            .ok_or_else(bad)?,
    };
    let v6 = match v6 {
        None => 128,
        Some(n) => n.parse::<u8>().ok().filter(|n| *n <= 128).ok_or_else(bad)?,
    };
    Ok((domain, v4, v6))
}

fn ip_arg(kind: &str, value: &str, token: &str) -> Result<IpNet, String> {
    let bad = || format!("\"{token}\" is not a valid {kind} network");
    let (addr, len) = match value.split_once('/') {
        Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
        None => (value, None),
    };
    let net = if kind.eq_ignore_ascii_case("ip4") {
        let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
        IpNet::V4(Ipv4Net::new(addr, len.unwrap_or(32)).map_err(|_| bad())?)
    } else {
        let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| bad())?;
        IpNet::V6(Ipv6Net::new(addr, len.unwrap_or(128)).map_err(|_| bad())?)
    };
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// DNS from a table: (name, type) -> records; a missing entry is NXDOMAIN, "SERVFAIL" fails.
    #[derive(Default)]
    struct Table(HashMap<(String, Rtype), Vec<Rdata>>);

    impl Table {
        fn txt(mut self, name: &str, text: &str) -> Table {
            self.0
                .entry((name.into(), Rtype::Txt))
                .or_default()
                .push(Rdata::Txt(text.into()));
            self
        }
        fn ip(mut self, name: &str, ip: &str) -> Table {
            let ip: IpAddr = ip.parse().expect("ip");
            let rtype = if ip.is_ipv4() { Rtype::A } else { Rtype::Aaaa };
            self.0
                .entry((name.into(), rtype))
                .or_default()
                .push(Rdata::Ip(ip));
            self
        }
        fn mx(mut self, name: &str, host: &str) -> Table {
            self.0
                .entry((name.into(), Rtype::Mx))
                .or_default()
                .push(Rdata::Mx(host.into()));
            self
        }
    }

    impl Dns for Table {
        async fn lookup(&self, name: &str, rtype: Rtype) -> Result<Answer, DnsFailure> {
            let records = self
                .0
                .get(&(name.to_string(), rtype))
                .cloned()
                .unwrap_or_default();
            if records.iter().any(|r| *r == Rdata::Txt("SERVFAIL".into())) {
                return Err(DnsFailure {
                    name: name.into(),
                    rtype,
                    reason: "SERVFAIL".into(),
                });
            }
            Ok(Answer { records, ttl: 300 })
        }
    }

    fn spf(name: &str) -> DerivedSource {
        DerivedSource {
            kind: DnsKind::Spf,
            name: name.into(),
        }
    }

    fn run(table: &Table, source: &DerivedSource) -> Result<Resolution, WalkError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(resolve(table, source))
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = list.iter().map(|s| s.parse().expect("net")).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn parses_terms_and_refuses_bad_ones() {
        let terms = parse("v=spf1 ip4:192.0.2.1/24 -ip6:2001:DB8::/32 a/24//64 mx:Mail.Example. ~all exp=x.example redirect=other.example").expect("valid");
        assert_eq!(terms.len(), 7);
        assert_eq!(
            terms[0],
            Term::Mechanism(
                Qualifier::Pass,
                Mechanism::Ip("192.0.2.0/24".parse().unwrap())
            )
        );
        assert_eq!(
            terms[2],
            Term::Mechanism(Qualifier::Pass, Mechanism::A(None, 24, 64))
        );
        assert_eq!(
            terms[3],
            Term::Mechanism(
                Qualifier::Pass,
                Mechanism::Mx(Some("mail.example".into()), 32, 128)
            )
        );
        assert_eq!(terms[6], Term::Redirect("other.example".into()));
        for bad in [
            "v=spf1 ip4:192.0.2.300",
            "v=spf1 ip4:192.0.2.1/33",
            "v=spf1 include",
            "v=spf1 foo:bar",
            "v=spf1 a/33",
            "v=spf1 redirect=a.example redirect=b.example",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(is_spf("v=spf1") && is_spf("V=SPF1 -all") && !is_spf("v=spf10"));
    }

    #[test]
    fn subtract_cuts_networks_out() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            subtract(n("192.0.2.0/24"), &[n("192.0.2.0/26")]),
            [n("192.0.2.128/25"), n("192.0.2.64/26")]
        );
        assert!(subtract(n("192.0.2.7/32"), &[n("192.0.2.0/24")]).is_empty());
        assert_eq!(
            subtract(n("192.0.2.0/24"), &[n("198.51.100.0/24")]),
            [n("192.0.2.0/24")]
        );
        assert_eq!(
            subtract(n("192.0.2.0/31"), &[n("192.0.2.1/32")]),
            [n("192.0.2.0/32")]
        );
    }

    #[test]
    fn include_redirect_a_and_mx_are_followed() {
        let table = Table::default()
            .txt("partner.example", "v=spf1 include:_spf.partner.example mx a:out.partner.example/30 redirect=ignored.example -all")
            .txt("_spf.partner.example", "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8:25::/48 ~all")
            .mx("partner.example", "mx1.partner.example")
            .ip("mx1.partner.example", "203.0.113.10")
            .ip("mx1.partner.example", "2001:db8:26::10")
            .ip("out.partner.example", "203.0.113.21")
            .txt("other.example", "v=spf1 redirect=partner.example");
        let r = run(&table, &spf("partner.example")).expect("resolves");
        assert_eq!(
            r.nets,
            nets(&[
                "198.51.100.0/24",
                "2001:db8:25::/48",
                "203.0.113.10/32",
                "2001:db8:26::10/128",
                "203.0.113.20/30"
            ])
        );
        assert_eq!(r.ttl, 300);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(
            r.lookups, 3,
            "include, mx, a (redirect is not used with all)"
        );
        let r = run(&table, &spf("other.example")).expect("redirect");
        assert_eq!(r.nets.len(), 5);
    }

    #[test]
    fn non_pass_terms_take_their_networks_out_of_later_ones() {
        let table = Table::default().txt(
            "p.example",
            "v=spf1 -ip4:192.0.2.7 ~ip4:192.0.2.128/25 ip4:192.0.2.0/24 ?include:n.example ip4:198.51.100.0/24 -all ip4:203.0.113.0/24",
        ).txt("n.example", "v=spf1 ip4:198.51.100.0/25");
        let r = run(&table, &spf("p.example")).expect("resolves");
        assert_eq!(
            r.nets,
            nets(&[
                "192.0.2.0/30",
                "192.0.2.4/31",
                "192.0.2.6/32",
                "192.0.2.8/29",
                "192.0.2.16/28",
                "192.0.2.32/27",
                "192.0.2.64/26",
                "198.51.100.128/25"
            ])
        );
    }

    #[test]
    fn unusable_terms_are_skipped_with_warnings() {
        let table = Table::default().txt(
            "p.example",
            "v=spf1 ptr exists:%{i}.x.example include:%{d}.y.example ip4:0.0.0.0/0 ip6:::ffff:192.0.2.0/120 ip4:192.0.2.1 +all",
        );
        let r = run(&table, &spf("p.example")).expect("resolves");
        assert_eq!(r.nets, nets(&["192.0.2.1/32"]));
        assert_eq!(r.warnings.len(), 6, "{:#?}", r.warnings);
        assert!(r.warnings.iter().any(|w| w.contains("\"ptr\"")));
        assert!(r.warnings.iter().any(|w| w.contains("\"exists\"")));
        assert!(r.warnings.iter().any(|w| w.contains("macro")));
        assert!(r.warnings.iter().any(|w| w.contains("\"+all\"")));
        assert!(r.warnings.iter().any(|w| w.contains("0.0.0.0/0 skipped")));
    }

    #[test]
    fn the_limits_and_loops_are_errors() {
        // 11 includes.
        let mut table = Table::default();
        let mut record = "v=spf1".to_string();
        for i in 0..11 {
            record.push_str(&format!(" include:i{i}.example"));
            table = table.txt(&format!("i{i}.example"), &format!("v=spf1 ip4:192.0.2.{i}"));
        }
        table = table.txt("many.example", &record);
        let e = run(&table, &spf("many.example")).expect_err("too many");
        assert!(matches!(e, WalkError::TooManyLookups(_)), "{e}");
        assert!(e.to_string().contains("i10.example"), "{e}");

        let table = Table::default()
            .txt("a.example", "v=spf1 include:b.example")
            .txt("b.example", "v=spf1 redirect=a.example");
        let e = run(&table, &spf("a.example")).expect_err("loop");
        assert_eq!(
            e.to_string(),
            "SPF loop: a.example -> b.example -> a.example"
        );

        let table = Table::default().txt("v.example", "v=spf1 a:x.example a:y.example a:z.example");
        let e = run(&table, &spf("v.example")).expect_err("voids");
        assert!(matches!(e, WalkError::TooManyVoidLookups(_)), "{e}");

        let table = Table::default()
            .txt("s.example", "v=spf1 ip4:192.0.2.1 include:f.example")
            .txt("f.example", "SERVFAIL");
        let e = run(&table, &spf("s.example")).expect_err("servfail");
        assert!(matches!(e, WalkError::Dns(_)), "{e}");

        let table = Table::default()
            .txt("two.example", "v=spf1 -all")
            .txt("two.example", "v=spf1 +all");
        assert!(run(&table, &spf("two.example")).is_err());
        assert!(run(&Table::default(), &spf("none.example")).is_err());
        let table = Table::default().txt("empty.example", "v=spf1 -all");
        assert_eq!(run(&table, &spf("empty.example")).expect("empty").nets, []);
    }

    #[test]
    fn mx_and_a_sources() {
        let table = Table::default()
            .mx("p.example", "mx1.p.example")
            .mx("p.example", "mx2.p.example")
            .ip("mx1.p.example", "192.0.2.1")
            .ip("mx2.p.example", "192.0.2.2")
            .ip("host.p.example", "2001:db8::1");
        let mx = DerivedSource {
            kind: DnsKind::Mx,
            name: "p.example".into(),
        };
        assert_eq!(
            run(&table, &mx).expect("mx").nets,
            nets(&["192.0.2.1/32", "192.0.2.2/32"])
        );
        let a = DerivedSource {
            kind: DnsKind::A,
            name: "host.p.example".into(),
        };
        assert_eq!(run(&table, &a).expect("a").nets, nets(&["2001:db8::1/128"]));
        let none = DerivedSource {
            kind: DnsKind::A,
            name: "gone.p.example".into(),
        };
        assert!(run(&table, &none).is_err());
    }
}
