//! The documentation addresses (RFC 5737, RFC 3849) the tests and benches use, named by role.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The mail host: the side the filter protects.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 25);
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 25);

// Peers on the host's own subnets (192.0.2.0/24, 2001:db8::/64), for real TCP over a veth, where
// a client address must be on-link.
pub const LINK_PARTNER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const LINK_STRANGER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
pub const LINK_PARTNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const LINK_STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x66);

// Remote peers for crafted frames: partners inside the allowed networks, strangers outside.
pub const PARTNER_NET_V4: &str = "198.51.100.0/24";
pub const PARTNER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
pub const PARTNER_NET_V6: &str = "2001:db8:25::/48";
pub const PARTNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 7);
pub const STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 66);
