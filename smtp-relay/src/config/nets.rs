//! Lists of networks in the config (`[[listener]] allow`, `trusted_networks`), read with the
//! gatekeeper's own rules ([`gatekeeper_support::cidr::parse_cidr`]): a bare address is its
//! /32 or /128, a network with host bits set is refused (`192.0.2.7/24` usually means one
//! host), and so is an IPv4-mapped IPv6 form, which never matches (peers are compared as
//! IPv4). So an entry copied from `gatekeeper.toml` means the same here.
//!
//! Each entry is parsed inside its own value, so toml's error points at that entry (line,
//! column and the entry itself), with the reason `parse_cidr` gives.
//!
//! Use with `#[serde(deserialize_with = "nets::list")]`.

use std::fmt;

use gatekeeper_support::cidr::parse_cidr;
use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A list of networks, each a CIDR without host bits or a bare address.
pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let nets = Vec::<Net>::deserialize(deserializer)?;
    Ok(nets.into_iter().map(|n| n.0).collect())
}

/// One entry of a list.
struct Net(IpNet);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Net, D::Error> {
        deserializer.deserialize_str(NetVisitor)
    }
}

struct NetVisitor;

impl Visitor<'_> for NetVisitor {
    type Value = Net;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CIDR (\"192.0.2.0/24\") or an address (\"192.0.2.7\")")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Net, E> {
        parse_cidr(text).map(Net).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "list")]
        allow: Vec<IpNet>,
    }

    fn parse(text: &str) -> Result<Vec<IpNet>, String> {
        toml::from_str::<T>(text)
            .map(|t| t.allow)
            .map_err(|e| e.to_string())
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn bare_addresses_are_single_hosts() {
        assert_eq!(
            parse(r#"allow = ["127.0.0.1", "2001:db8::1", "198.51.100.0/24", "::/0"]"#),
            Ok(vec![
                net("127.0.0.1/32"),
                net("2001:db8::1/128"),
                net("198.51.100.0/24"),
                net("::/0"),
            ])
        );
    }

    #[test]
    fn refusals_name_the_entry_and_where_it_is() {
        let e = parse("allow = [\"127.0.0.0/8\", \"127.0.0.1/8\"]").expect_err("host bits");
        assert!(e.contains("line 1, column 25"), "{e}");
        assert!(
            e.contains("\"127.0.0.1/8\" has host bits set; the network is 127.0.0.0/8"),
            "{e}"
        );
        let e = parse("allow = [\"mx.example.org\"]").expect_err("a name");
        assert!(
            e.contains("\"mx.example.org\" is not an IPv4 or IPv6 address or CIDR"),
            "{e}"
        );
        let e = parse("allow = [\"::ffff:192.0.2.1\"]").expect_err("mapped");
        assert!(e.contains("write 192.0.2.1"), "{e}");
        let e = parse("allow = [25]").expect_err("a number");
        assert!(e.contains("a CIDR"), "{e}");
    }
}
