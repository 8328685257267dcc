//! The HELO sanity check, pure: is the name a stranger gives in EHLO/HELO a host name with a
//! dot or an address literal (RFC 5321 4.1.3), and is it not ours? Spam software often
//! greets with our own name or address, or with junk; a real mail server never does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::address;
use crate::check::CheckResult;

/// What we are, as a stranger could claim it.
pub struct Ours<'a> {
    pub hostname: &'a str,
    pub local_domains: &'a [String],
    /// The addresses the client connected to.
    pub addresses: &'a [IpAddr],
}

/// The address of `[192.0.2.1]` or `[IPv6:2001:db8::1]`; `None` for anything else.
fn address_literal(name: &str) -> Option<IpAddr> {
    let inner = name.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ => inner.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// A fully qualified LDH host name (a final dot allowed); its last label not all digits, so a
/// bare IPv4 address is not one (it must be written as a literal).
fn is_fqdn(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    address::is_host_name(name)
        && name.contains('.')
        && name
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// Judges `name`: [`CheckResult::Pass`], [`CheckResult::Invalid`] or [`CheckResult::Ours`].
pub fn judge(name: &str, ours: &Ours<'_>) -> CheckResult {
    if let Some(ip) = address_literal(name) {
        let ip = ip.to_canonical();
        return if ours.addresses.iter().any(|a| a.to_canonical() == ip) {
            CheckResult::Ours
        } else {
            CheckResult::Pass
        };
    }
    if !is_fqdn(name) {
        return CheckResult::Invalid;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let claimed = name.eq_ignore_ascii_case(ours.hostname)
        || ours
            .local_domains
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d));
    if claimed {
        CheckResult::Ours
    } else {
        CheckResult::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(name: &str) -> CheckResult {
        let domains = vec!["example.org".to_owned(), "example.net".to_owned()];
        let addresses: Vec<IpAddr> = vec![
            "192.0.2.25".parse().expect("ip"),
            "2001:db8::25".parse().expect("ip"),
        ];
        judge(
            name,
            &Ours {
                hostname: "mx.example.org",
                local_domains: &domains,
                addresses: &addresses,
            },
        )
    }

    #[test]
    fn good_names_and_literals_pass() {
        for name in [
            "mail.sender.example",
            "MAIL.Sender.Example.",
            "a-b.c1.example",
            "[198.51.100.7]",
            "[IPv6:2001:db8::7]",
            "[ipv6:2001:db8::7]",
            "sub.example.org",
        ] {
            assert_eq!(judged(name), CheckResult::Pass, "{name}");
        }
    }

    #[test]
    fn junk_is_invalid() {
        for name in [
            "localhost",
            "",
            "sender",
            "192.0.2.7",
            "[192.0.2.999]",
            "[2001:db8::7]",
            "[IPv6:192.0.2.7]",
            "under_score.example",
            "-lead.example",
            "a..b.example",
            "[tag:stuff]",
            "mail.example.com!",
        ] {
            assert_eq!(judged(name), CheckResult::Invalid, "{name:?}");
        }
    }

    #[test]
    fn our_name_domains_and_addresses_are_ours() {
        for name in [
            "mx.example.org",
            "MX.EXAMPLE.ORG.",
            "example.org",
            "Example.NET",
            "[192.0.2.25]",
            "[IPv6:2001:db8::25]",
            "[IPv6:::ffff:192.0.2.25]",
        ] {
            assert_eq!(judged(name), CheckResult::Ours, "{name}");
        }
    }
}
