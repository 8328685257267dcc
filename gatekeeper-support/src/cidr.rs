//! CIDR-or-address parsing with the allowlist's rules: a network without host bits, or a bare
//! address standing for its /32 or /128. A CIDR with host bits set is refused rather than
//! silently widened, since `198.51.100.7/24` usually means the admin meant one host. An
//! IPv4-mapped IPv6 address (`::ffff:198.51.100.1`) is refused with its IPv4 spelling: IPv4
//! packets arrive as IPv4, so the mapped form would never match one.

use std::{net::IpAddr, str::FromStr as _};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Text that is not a network the allowlist can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("\"{0}\" is not an IPv4 or IPv6 address or CIDR")]
    Unparsable(String),
    #[error("\"{given}\" has host bits set; the network is {network}")]
    HostBits { given: String, network: IpNet },
    #[error(
        "\"{given}\" is an IPv4-mapped IPv6 address, which never matches: IPv4 packets arrive as IPv4; write {ipv4}"
    )]
    Ipv4Mapped { given: String, ipv4: String },
}

/// `::ffff:0:0/96`, where IPv4 addresses are mapped into IPv6.
const MAPPED_PREFIX: u8 = 96;

/// The IPv4 network `net` spells as IPv4-mapped IPv6 (a prefix of /96 or longer inside
/// `::ffff:0:0/96`), shown as the admin should write it: a bare address for a single host.
fn ipv4_spelling(net: &Ipv6Net) -> Option<String> {
    let v4 = net.addr().to_ipv4_mapped()?;
    let len = net.prefix_len().checked_sub(MAPPED_PREFIX)?;
    let v4 = Ipv4Net::new(v4, len).ok()?.trunc();
    Some(if len == 32 {
        v4.addr().to_string()
    } else {
        v4.to_string()
    })
}

/// Parses a CIDR without host bits, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    let text = text.trim();
    let net = match IpNet::from_str(text) {
        Ok(net) => net,
        Err(_) => match IpAddr::from_str(text) {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(CidrError::Unparsable(text.to_string())),
        },
    };
    if let IpNet::V6(v6) = &net
        && let Some(ipv4) = ipv4_spelling(v6)
    {
        return Err(CidrError::Ipv4Mapped {
            given: text.to_string(),
            ipv4,
        });
    }
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: text.to_string(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn parse_cidr_accepts_bare_addresses_and_refuses_host_bits() {
        assert_eq!(parse_cidr("192.0.2.1"), Ok(net("192.0.2.1/32")));
        assert_eq!(parse_cidr("2001:db8::1"), Ok(net("2001:db8::1/128")));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(net("0.0.0.0/0")));
        assert!(matches!(
            parse_cidr("2001:db8::1/64"),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(
            parse_cidr("mail.example"),
            Err(CidrError::Unparsable(_))
        ));
    }

    #[test]
    fn ipv4_mapped_addresses_are_refused_with_their_ipv4_spelling() {
        let err = parse_cidr("::ffff:198.51.100.1").expect_err("mapped");
        assert_eq!(
            err.to_string(),
            "\"::ffff:198.51.100.1\" is an IPv4-mapped IPv6 address, which never matches: IPv4 packets arrive as IPv4; write 198.51.100.1"
        );
        let err = parse_cidr("::ffff:198.51.100.0/120").expect_err("mapped net");
        assert!(err.to_string().ends_with("write 198.51.100.0/24"), "{err}");
        let err = parse_cidr("::ffff:0:0/96").expect_err("all of IPv4, mapped");
        assert!(err.to_string().ends_with("write 0.0.0.0/0"), "{err}");
        // Host bits or not, the advice is the IPv4 network.
        let err = parse_cidr("::ffff:198.51.100.7/120").expect_err("mapped, host bits");
        assert!(err.to_string().ends_with("write 198.51.100.0/24"), "{err}");
        // Shorter prefixes are not IPv4-only; other IPv6 forms are fine.
        assert_eq!(parse_cidr("::/64"), Ok(net("::/64")));
        assert_eq!(parse_cidr("::fffe:0:0/95"), Ok(net("::fffe:0:0/95")));
        assert_eq!(parse_cidr("::198.51.100.1"), Ok(net("::c633:6401/128")));
        assert_eq!(
            parse_cidr("64:ff9b::c633:6401"),
            Ok(net("64:ff9b::c633:6401/128"))
        );
    }

    #[test]
    fn host_bits_error_names_the_network() {
        let err = parse_cidr(" 198.51.100.7/24 ").expect_err("host bits");
        assert_eq!(
            err.to_string(),
            "\"198.51.100.7/24\" has host bits set; the network is 198.51.100.0/24"
        );
        assert_eq!(parse_cidr(" 198.51.100.0/24\n"), Ok(net("198.51.100.0/24")));
        let err = parse_cidr("2001:db8::/129").expect_err("prefix too long");
        assert_eq!(
            err.to_string(),
            "\"2001:db8::/129\" is not an IPv4 or IPv6 address or CIDR"
        );
    }
}
