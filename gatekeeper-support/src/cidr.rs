//! CIDR-or-address parsing with the allowlist's rules: a network without host bits, or a bare
//! address standing for its /32 or /128. A CIDR with host bits set is refused rather than
//! silently widened, since `198.51.100.7/24` usually means the admin meant one host.

use std::{net::IpAddr, str::FromStr as _};

use ipnet::IpNet;

/// Text that is not a network the allowlist can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("\"{0}\" is not an IPv4 or IPv6 address or CIDR")]
    Unparsable(String),
    #[error("\"{given}\" has host bits set; the network is {network}")]
    HostBits { given: String, network: IpNet },
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
