//! The reference classifier: the XDP program's rules in plain Rust, written from the rules in the
//! README rather than from the eBPF code, as the oracle for the differential tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// What the program must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
}

/// Which counter a frame lands in, named as in `gatekeeper_common::Counter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    PassNotIp,
    PassNotTcp,
    PassOtherPort,
    PassFragment,
    Allowed,
    Dropped,
    WouldDrop,
    Unjudgeable,
    Malformed,
    Banned,
    DeniedList,
    RateLimited,
    PassedOpen,
}

/// Address family of the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fam {
    Other,
    V4,
    V6,
}

/// The verdict and the counter the reference expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub action: Action,
    pub family: Fam,
    pub class: Class,
    /// A SYN without ACK to a protected port from a stranger (a drop event candidate).
    pub syn_only: bool,
}

/// The policy and lists the reference judges by.
pub struct Rules<'a> {
    /// Every judged port.
    pub ports: &'a [u16],
    /// The judged ports with policy "open" (the others are "allowlist" ports).
    pub open: &'a [u16],
    pub monitor: bool,
    pub allow: &'a [IpNet],
    pub deny: &'a [IpNet],
    /// Sources whose ban is in force now (expired bans are left out by the caller).
    pub banned: &'a [IpNet],
    /// Whether a SYN to an open port from a source outside the allowlist is over its rate (the
    /// caller's bucket model decides; `|_| false` without a limiter).
    pub over_rate: &'a dyn Fn(IpAddr) -> bool,
}

/// Every source is within its rate (no limiter).
pub fn no_limit(_: IpAddr) -> bool {
    false
}

/// The per-source SYN token bucket of open ports, in nanoseconds of credit, as the README states
/// it: a source starts with a full bucket of `burst` SYNs; elapsed time refills it up to `burst`
/// SYNs' worth; a SYN costs `1e9 / rate` ns of credit and is over the rate when less is left.
#[derive(Clone, Copy, Debug)]
pub struct SynBucket {
    interval_ns: u64,
    capacity_ns: u64,
    tokens_ns: u64,
    last_ns: Option<u64>,
}

impl SynBucket {
    pub fn new(rate: u32, burst: u32) -> SynBucket {
        let interval_ns = 1_000_000_000 / u64::from(rate);
        SynBucket {
            interval_ns,
            capacity_ns: u64::from(burst) * interval_ns,
            tokens_ns: 0,
            last_ns: None,
        }
    }

    /// Spends one SYN at `now_ns`; false when it is over the rate.
    pub fn spend(&mut self, now_ns: u64) -> bool {
        let tokens = match self.last_ns {
            None => self.capacity_ns,
            Some(last) => (self.tokens_ns + now_ns.saturating_sub(last)).min(self.capacity_ns),
        };
        self.last_ns = Some(now_ns);
        if tokens < self.interval_ns {
            self.tokens_ns = tokens;
            return false;
        }
        self.tokens_ns = tokens - self.interval_ns;
        true
    }
}

const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT_HEADERS: usize = 8;
const MAX_L4_OFFSET: usize = 1024;

enum Parsed {
    Pass(Fam, Class),
    Unjudgeable(Fam),
    Segment {
        family: Fam,
        source: IpAddr,
        port: u16,
        syn_only: bool,
    },
}

impl Rules<'_> {
    pub fn judge(&self, frame: &[u8]) -> Expected {
        let parsed = self.parse(frame);
        let enforce = !self.monitor;
        let (family, class, syn_only) = match parsed {
            Parsed::Pass(f, c) => (f, c, false),
            Parsed::Unjudgeable(f) => (f, Class::Unjudgeable, false),
            Parsed::Segment {
                family,
                source,
                port,
                syn_only,
            } => {
                // Bans, then deny entries, win over the allowlist on every judged port; an open
                // port admits everyone else, up to the SYN rate for sources outside the allowlist.
                let listed = |list: &[IpNet]| list.iter().any(|net| net.contains(&source));
                let class = if listed(self.banned) {
                    Class::Banned
                } else if listed(self.deny) {
                    Class::DeniedList
                } else if listed(self.allow) {
                    Class::Allowed
                } else if !self.open.contains(&port) {
                    if enforce {
                        Class::Dropped
                    } else {
                        Class::WouldDrop
                    }
                } else if syn_only && (self.over_rate)(source) {
                    Class::RateLimited
                } else {
                    Class::PassedOpen
                };
                let refused = !matches!(class, Class::Allowed | Class::PassedOpen);
                (family, class, syn_only && refused)
            }
        };
        let action = match class {
            Class::Dropped | Class::Banned | Class::DeniedList | Class::RateLimited if enforce => {
                Action::Drop
            }
            Class::Unjudgeable if enforce => Action::Drop,
            _ => Action::Pass,
        };
        Expected {
            action,
            family,
            class,
            syn_only,
        }
    }

    fn parse(&self, f: &[u8]) -> Parsed {
        let Some(mut ethertype) = be16(f, 12) else {
            return Parsed::Pass(Fam::Other, Class::Malformed);
        };
        let mut l3 = 14;
        let is_vlan = |t: u16| matches!(t, 0x8100 | 0x88a8 | 0x9100);
        for _ in 0..MAX_VLAN_TAGS {
            if !is_vlan(ethertype) {
                break;
            }
            let Some(inner) = be16(f, l3 + 2) else {
                return Parsed::Pass(Fam::Other, Class::Malformed);
            };
            ethertype = inner;
            l3 += 4;
        }
        match ethertype {
            0x0800 => self.ipv4(f, l3),
            0x86dd => self.ipv6(f, l3),
            t if is_vlan(t) => Parsed::Unjudgeable(Fam::Other),
            _ => Parsed::Pass(Fam::Other, Class::PassNotIp),
        }
    }

    fn ipv4(&self, f: &[u8], l3: usize) -> Parsed {
        let malformed = Parsed::Pass(Fam::V4, Class::Malformed);
        let Some(h) = f.get(l3..l3 + 20) else {
            return malformed;
        };
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return malformed;
        }
        // A total length shorter than the header: broken, whatever the protocol.
        if usize::from(u16::from_be_bytes([h[2], h[3]])) < ihl {
            return malformed;
        }
        if h[9] != 6 {
            return Parsed::Pass(Fam::V4, Class::PassNotTcp);
        }
        if f.len() < l3 + ihl {
            return malformed;
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        if frag & 0x1fff != 0 {
            return Parsed::Pass(Fam::V4, Class::PassFragment);
        }
        let source = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
        self.tcp(f, l3 + ihl, Fam::V4, source, frag & 0x2000 != 0)
    }

    fn ipv6(&self, f: &[u8], l3: usize) -> Parsed {
        let Some(h) = f.get(l3..l3 + 40) else {
            return Parsed::Pass(Fam::V6, Class::Malformed);
        };
        if h[0] >> 4 != 6 {
            return Parsed::Pass(Fam::V6, Class::Malformed);
        }
        let mut src = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        let source = IpAddr::V6(Ipv6Addr::from(src));
        let mut next = h[6];
        let mut offset = l3 + 40;
        let mut first_fragment = false;
        let truncated = |first_fragment: bool| {
            if first_fragment {
                Parsed::Unjudgeable(Fam::V6)
            } else {
                Parsed::Pass(Fam::V6, Class::Malformed)
            }
        };
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            if next == 6 {
                break;
            }
            if !matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140) {
                return Parsed::Pass(Fam::V6, Class::PassNotTcp);
            }
            let Some(ext) = f.get(offset..offset + 8) else {
                return truncated(first_fragment);
            };
            // An extension header starting past the walk's reach: the chain could still end in
            // TCP to a protected port. A last header ending past it is still followed.
            if offset > MAX_L4_OFFSET {
                return Parsed::Unjudgeable(Fam::V6);
            }
            let len = match next {
                44 => {
                    let frag = u16::from_be_bytes([ext[2], ext[3]]);
                    if frag >> 3 != 0 {
                        return Parsed::Pass(Fam::V6, Class::PassFragment);
                    }
                    first_fragment |= frag & 1 != 0;
                    8
                }
                51 => (usize::from(ext[1]) + 2) * 4,
                _ => (usize::from(ext[1]) + 1) * 8,
            };
            next = ext[0];
            offset += len;
            // The header claims more bytes than the frame has: a broken frame.
            if offset > f.len() {
                return truncated(first_fragment);
            }
        }
        match next {
            6 => {}
            0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 => return Parsed::Unjudgeable(Fam::V6),
            _ => return Parsed::Pass(Fam::V6, Class::PassNotTcp),
        }
        self.tcp(f, offset, Fam::V6, source, first_fragment)
    }

    fn tcp(&self, f: &[u8], l4: usize, family: Fam, source: IpAddr, fragmented: bool) -> Parsed {
        let Some(port) = be16(f, l4 + 2) else {
            return if fragmented {
                Parsed::Unjudgeable(family)
            } else {
                Parsed::Pass(family, Class::Malformed)
            };
        };
        if !self.ports.contains(&port) {
            return Parsed::Pass(family, Class::PassOtherPort);
        }
        let syn_only = f.get(l4 + 13).is_some_and(|flags| flags & 0x12 == 0x02);
        Parsed::Segment {
            family,
            source,
            port,
            syn_only,
        }
    }
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}
