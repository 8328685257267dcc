//! One DNS list asked about one client address: the query name, the lookup through the relay's
//! resolver, and what the answer means. NXDOMAIN is "not listed"; only 127.0.0.0/8 answers are
//! listings, and not the big lists' error codes 127.255.255.252–255 ("you asked through a
//! public resolver", "over quota"): those are logged and count 0, as does a server failure or a
//! timeout (temperror). A list problem must never refuse mail.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

/// The name to look up for `ip` in `zone` (absolute, with the final dot): IPv4 as its octets
/// reversed, IPv6 as its 32 nibbles reversed; an IPv4-mapped IPv6 address is its IPv4 address.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let mut name = String::with_capacity(80);
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let _ = write!(name, "{d}.{c}.{b}.{a}.");
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone.trim_end_matches('.'));
    name.push('.');
    name
}

/// What one zone said about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswer {
    /// Listing codes: addresses in 127.0.0.0/8 other than the error codes.
    Codes(Vec<Ipv4Addr>),
    /// NXDOMAIN or no address.
    NotListed,
    /// No usable answer (timeout, SERVFAIL, REFUSED, ...).
    Temperror(String),
    /// Only answers that are not listings (error codes, addresses outside 127.0.0.0/8).
    Ignored(Vec<Ipv4Addr>),
}

/// The lists' own error codes (Spamhaus: 127.255.255.252 typo, .254 public resolver,
/// .255 excessive queries): a query problem, not a listing.
fn is_error_code(a: Ipv4Addr) -> bool {
    let [x, y, z, w] = a.octets();
    (x, y, z) == (127, 255, 255) && w >= 252
}

/// Sorts the addresses of an answer into listing codes and the rest.
pub fn classify(addresses: &[Ipv4Addr]) -> ZoneAnswer {
    if addresses.is_empty() {
        return ZoneAnswer::NotListed;
    }
    let codes: Vec<Ipv4Addr> = addresses
        .iter()
        .copied()
        .filter(|a| a.octets()[0] == 127 && !is_error_code(*a))
        .collect();
    if codes.is_empty() {
        ZoneAnswer::Ignored(addresses.to_vec())
    } else {
        ZoneAnswer::Codes(codes)
    }
}

/// Asks `zone` about `ip`. The caller bounds the time.
pub async fn lookup(resolver: &TokioResolver, ip: IpAddr, zone: &str) -> ZoneAnswer {
    match resolver
        .lookup(query_name(ip, zone).as_str(), RecordType::A)
        .await
    {
        Ok(answer) => {
            let addresses: Vec<Ipv4Addr> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            classify(&addresses)
        }
        Err(e) if e.is_no_records_found() => ZoneAnswer::NotListed,
        Err(e) => ZoneAnswer::Temperror(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv4_octets_are_reversed() {
        assert_eq!(
            query_name(ip("192.0.2.99"), "bl.test"),
            "99.2.0.192.bl.test."
        );
        assert_eq!(
            query_name(ip("127.0.0.1"), "bl.test."),
            "1.0.0.127.bl.test."
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_asked_as_ipv4() {
        assert_eq!(
            query_name(ip("::ffff:198.51.100.7"), "bl.test"),
            "7.100.51.198.bl.test."
        );
    }

    #[test]
    fn ipv6_is_32_nibbles_reversed() {
        // The example of RFC 5782 2.4.
        let name = query_name(ip("2001:db8:1:2:3:4:567:89ab"), "ugly.example.com");
        assert_eq!(
            name,
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
        let n = query_name(ip("2001:db8::1"), "bl.test");
        assert_eq!(n.split('.').count(), 32 + 2 + 1, "{n}");
    }

    #[test]
    fn only_127_8_answers_are_listings_and_error_codes_are_not() {
        assert_eq!(classify(&[]), ZoneAnswer::NotListed);
        assert_eq!(
            classify(&[v4("127.0.0.2"), v4("127.0.0.10")]),
            ZoneAnswer::Codes(vec![v4("127.0.0.2"), v4("127.0.0.10")])
        );
        for error in ["127.255.255.252", "127.255.255.254", "127.255.255.255"] {
            assert_eq!(
                classify(&[v4(error)]),
                ZoneAnswer::Ignored(vec![v4(error)]),
                "{error}"
            );
        }
        // 127.255.255.251 is an ordinary code; an address outside 127/8 is no listing.
        assert!(matches!(
            classify(&[v4("127.255.255.251")]),
            ZoneAnswer::Codes(_)
        ));
        assert!(matches!(
            classify(&[v4("192.0.2.1")]),
            ZoneAnswer::Ignored(_)
        ));
        // A listing next to junk still counts.
        assert_eq!(
            classify(&[v4("192.0.2.1"), v4("127.0.0.4")]),
            ZoneAnswer::Codes(vec![v4("127.0.0.4")])
        );
    }
}
