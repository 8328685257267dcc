//! Seeded generation of frames for the differential tests: valid frames of every shape the
//! program parses, with VLAN tags, IPv4 options and fragments, IPv6 extension chains, and then
//! mutated or truncated ones. Also random allowlists with nested prefixes of every length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::frames::{TCP_SYN, ethernet, internet_checksum};

/// splitmix64: small, fast, and reproducible from a seed printed by the test.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What the generator knows about a frame it built and did not mutate.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// TCP to one of the protected ports.
    pub tcp_to_protected: bool,
    /// The source address (meaningful when `tcp_to_protected`).
    pub source: IpAddr,
    /// Within the program's bounds (VLAN depth, extension headers, fragment holding the port).
    pub judgeable: bool,
}

/// A generated frame; `shape` is `None` once it was mutated or truncated.
pub struct Generated {
    pub frame: Vec<u8>,
    pub shape: Option<Shape>,
}

/// Builds frames whose sources come from `allow` about half of the time.
pub struct FrameGen<'a> {
    pub rng: &'a mut Rng,
    pub protected: &'a [u16],
    pub allow: &'a [IpNet],
}

impl FrameGen<'_> {
    pub fn frame(&mut self) -> Generated {
        let mut shape = Shape {
            tcp_to_protected: false,
            source: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            judgeable: true,
        };
        let tags = match self.rng.below(20) {
            0..=13 => 0,
            14..=16 => 1,
            17..=18 => 2,
            _ => 3,
        };
        if tags > 2 {
            shape.judgeable = false;
        }
        let l3_kind = self.rng.below(10);
        let ethertype = match l3_kind {
            0..=4 => 0x0800,
            5..=8 => 0x86dd,
            _ => *self.rng.pick(&[0x0806u16, 0x88cc, 0x8847, 0x1234]),
        };
        let mut frame = ethernet(0);
        frame.truncate(12);
        for _ in 0..tags {
            frame.extend_from_slice(&self.rng.pick(&[0x8100u16, 0x88a8, 0x9100]).to_be_bytes());
            frame.extend_from_slice(&(self.rng.below(4095) as u16 + 1).to_be_bytes());
        }
        frame.extend_from_slice(&ethertype.to_be_bytes());
        match ethertype {
            0x0800 => self.ipv4(&mut frame, &mut shape),
            0x86dd => self.ipv6(&mut frame, &mut shape),
            _ => frame.extend((0..28).map(|_| self.rng.byte())),
        }
        let mut generated = Generated {
            frame,
            shape: Some(shape),
        };
        if self.rng.chance(30) {
            self.mutate(&mut generated);
        }
        generated
    }

    fn mutate(&mut self, generated: &mut Generated) {
        generated.shape = None;
        let frame = &mut generated.frame;
        if self.rng.chance(50) {
            // Truncate anywhere past the Ethernet header (the kernel's minimum for a test run).
            let keep = 14 + self.rng.below(frame.len().saturating_sub(14) + 1);
            frame.truncate(keep);
        } else {
            for _ in 0..=self.rng.below(3) {
                let at = self.rng.below(frame.len());
                frame[at] = self.rng.byte();
            }
        }
    }

    fn source_v4(&mut self) -> Ipv4Addr {
        let v4: Vec<Ipv4Net> = self
            .allow
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(*n),
                IpNet::V6(_) => None,
            })
            .collect();
        if !v4.is_empty() && self.rng.chance(50) {
            let net = *self.rng.pick(&v4);
            if self.rng.chance(50) {
                // A neighbour: in the entry's /24 or /20, maybe outside the entry, where the
                // program's summary says "look further" and the table must judge.
                let around = if self.rng.chance(70) { 24 } else { 20 };
                let near = Ipv4Net::new(net.network(), net.prefix_len().min(around))
                    .map_or(net, |n| n.trunc());
                return random_in_v4(self.rng, near);
            }
            return random_in_v4(self.rng, net);
        }
        Ipv4Addr::from(self.rng.next_u64() as u32)
    }

    fn source_v6(&mut self) -> Ipv6Addr {
        let v6: Vec<Ipv6Net> = self
            .allow
            .iter()
            .filter_map(|n| match n {
                IpNet::V6(n) => Some(*n),
                IpNet::V4(_) => None,
            })
            .collect();
        if !v6.is_empty() && self.rng.chance(50) {
            let net = *self.rng.pick(&v6);
            return random_in_v6(self.rng, net);
        }
        let hi = u128::from(self.rng.next_u64()) << 64;
        Ipv6Addr::from(hi | u128::from(self.rng.next_u64()))
    }

    /// A transport header: TCP (mostly), UDP or ICMP; returns (protocol, bytes, tcp port).
    fn l4(&mut self) -> (u8, Vec<u8>, Option<u16>) {
        match self.rng.below(10) {
            0..=6 => {
                let port = if self.rng.chance(60) {
                    *self.rng.pick(self.protected)
                } else {
                    *self.rng.pick(&[80u16, 443, 22, 2525, 26, 24, 0, 65535])
                };
                let flags = *self
                    .rng
                    .pick(&[TCP_SYN, TCP_SYN, 0x12, 0x10, 0x18, 0x11, 0x04]);
                let mut tcp = crate::frames::tcp_header(self.rng.below(65535) as u16, port, flags);
                tcp.extend((0..self.rng.below(16)).map(|_| self.rng.byte()));
                (6, tcp, Some(port))
            }
            7..=8 => {
                let port = *self.rng.pick(&[25u16, 53, 587]);
                (17, crate::frames::udp_header(5353, port), None)
            }
            _ => (1, vec![8, 0, 0, 0, 0, 1, 0, 1], None),
        }
    }

    fn ipv4(&mut self, frame: &mut Vec<u8>, shape: &mut Shape) {
        let source = self.source_v4();
        let (protocol, mut l4, port) = self.l4();
        let option_words = if self.rng.chance(20) {
            self.rng.below(11)
        } else {
            0
        };
        let ihl = 5 + option_words;
        let (flags_fragment, later_fragment, first_fragment) = match self.rng.below(10) {
            0 => (0x2000u16, false, true),
            1 => (self.rng.below(0x1fff) as u16 + 1, true, false),
            _ => (0x4000, false, false),
        };
        if first_fragment && protocol == 6 && self.rng.chance(50) {
            // A first fragment cut inside the TCP ports.
            l4.truncate(self.rng.below(4));
        }
        let mut ip = vec![0u8; ihl * 4];
        ip[0] = 0x40 | ihl as u8;
        // Now and then a total length shorter than the header: a broken packet, never judged.
        let broken_length = self.rng.chance(4);
        let total = if broken_length {
            self.rng.below(ihl * 4) as u16
        } else {
            (ihl * 4 + l4.len()) as u16
        };
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
        ip[8] = 64;
        ip[9] = protocol;
        ip[12..16].copy_from_slice(&source.octets());
        ip[16..20].copy_from_slice(&[192, 0, 2, 25]);
        for b in ip.iter_mut().skip(20) {
            *b = 1; // NOP options
        }
        let checksum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend(ip);
        let port_visible = l4.len() >= 4;
        frame.extend(l4);
        if protocol == 6 && !later_fragment && !broken_length {
            shape.source = IpAddr::V4(source);
            if let Some(port) = port {
                shape.tcp_to_protected = port_visible && self.protected.contains(&port);
            }
            if first_fragment && !port_visible {
                shape.judgeable = false;
            }
        }
    }

    fn ipv6(&mut self, frame: &mut Vec<u8>, shape: &mut Shape) {
        let source = self.source_v6();
        let (protocol, l4, port) = self.l4();
        let mut chain: Vec<u8> = Vec::new();
        let mut next_headers: Vec<u8> = Vec::new();
        let ext_count = if self.rng.chance(30) {
            self.rng.below(11)
        } else {
            0
        };
        // Position in the chain of the first fragment header with a non-zero offset.
        let mut later_fragment_at: Option<usize> = None;
        for _ in 0..ext_count {
            let kind = *self.rng.pick(&[0u8, 43, 60, 44, 51, 135]);
            next_headers.push(kind);
        }
        // A long chain: options headers of hundreds of bytes, so that the chain ends (or another
        // header starts) past the program's 1024-byte reach.
        let long_chain = self.rng.chance(30);
        // Where each header starts in the frame.
        let l3 = frame.len();
        let mut starts: Vec<usize> = Vec::with_capacity(next_headers.len());
        // Serialize the chain: each header names the next one.
        for (i, kind) in next_headers.iter().enumerate() {
            starts.push(l3 + 40 + chain.len());
            let next = next_headers.get(i + 1).copied().unwrap_or(protocol);
            match kind {
                44 => {
                    let offset_units: u16 = if self.rng.chance(25) {
                        later_fragment_at.get_or_insert(i);
                        self.rng.below(100) as u16 + 1
                    } else {
                        0
                    };
                    let more = u16::from(self.rng.chance(70));
                    chain.extend_from_slice(&[next, 0]);
                    chain.extend_from_slice(&((offset_units << 3) | more).to_be_bytes());
                    chain.extend_from_slice(&self.rng.next_u64().to_be_bytes()[..4]);
                }
                51 => {
                    // AH: length in 4-byte units minus 2; payload 12 + 4k bytes.
                    let len_units = 1 + self.rng.below(3) as u8;
                    let total = (usize::from(len_units) + 2) * 4;
                    chain.push(next);
                    chain.push(len_units);
                    chain.extend(std::iter::repeat_n(0u8, total - 2));
                }
                _ => {
                    let len_units = if long_chain && chain.len() < 1100 {
                        40 + self.rng.below(100) as u8
                    } else {
                        self.rng.below(3) as u8
                    };
                    let total = (usize::from(len_units) + 1) * 8;
                    chain.push(next);
                    chain.push(len_units);
                    chain.extend(std::iter::repeat_n(0u8, total - 2));
                }
            }
        }
        let first_next = next_headers.first().copied().unwrap_or(protocol);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
        ip[6] = first_next;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&source.octets());
        ip[24..40].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 25).octets());
        // Now and then a first options header claiming more bytes than the frame has (2 KiB):
        // a broken frame, which passes whatever follows.
        let overlong = !long_chain
            && next_headers
                .first()
                .is_some_and(|kind| !matches!(kind, 44 | 51))
            && self.rng.chance(15);
        if overlong {
            chain[1] = 255;
        }
        frame.extend(ip);
        frame.extend(chain);
        frame.extend(l4);
        if overlong {
            return;
        }
        // The program walks at most 8 extension headers and reads none starting past byte
        // 1024: a chain going on past either bound is unjudgeable, unless a later fragment
        // header ends the walk first.
        let walked = ext_count.min(8);
        let stop = (0..walked).find(|&i| starts[i] > 1024 || later_fragment_at == Some(i));
        shape.judgeable &= match stop {
            Some(i) => later_fragment_at == Some(i) && starts[i] <= 1024,
            None => ext_count <= 8,
        };
        if protocol == 6 && later_fragment_at.is_none() {
            shape.source = IpAddr::V6(source);
            if let Some(port) = port {
                shape.tcp_to_protected = self.protected.contains(&port);
            }
        }
    }
}

/// A random address inside `net`.
pub fn random_in_v4(rng: &mut Rng, net: Ipv4Net) -> Ipv4Addr {
    let host_bits = 32 - u32::from(net.prefix_len());
    let mask = if host_bits == 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    Ipv4Addr::from(u32::from(net.network()) | (rng.next_u64() as u32 & mask))
}

/// A random address inside `net`.
pub fn random_in_v6(rng: &mut Rng, net: Ipv6Net) -> Ipv6Addr {
    let host_bits = 128 - u32::from(net.prefix_len());
    let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    let mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Ipv6Addr::from(u128::from(net.network()) | (random & mask))
}

/// A random IPv4 prefix: every length from /1 to /32 (and /0 when `allow_default`), nested under
/// an existing entry a third of the time.
pub fn random_v4_net(rng: &mut Rng, existing: &[IpNet], allow_default: bool) -> IpNet {
    let parents: Vec<Ipv4Net> = existing
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) if n.prefix_len() < 32 => Some(*n),
            _ => None,
        })
        .collect();
    if !parents.is_empty() && rng.chance(33) {
        let parent = *rng.pick(&parents);
        let len = parent.prefix_len() + 1 + rng.below(usize::from(32 - parent.prefix_len())) as u8;
        let addr = random_in_v4(rng, parent);
        return IpNet::V4(Ipv4Net::new(addr, len).map(|n| n.trunc()).unwrap_or(parent));
    }
    let min = if allow_default { 0 } else { 1 };
    let len = min + rng.below(33 - usize::from(min)) as u8;
    let addr = Ipv4Addr::from(rng.next_u64() as u32);
    IpNet::V4(
        Ipv4Net::new(addr, len)
            .map(|n| n.trunc())
            .unwrap_or_default(),
    )
}

/// A random IPv6 prefix from /16 to /128 inside 2001:db8::/32 or anywhere.
pub fn random_v6_net(rng: &mut Rng) -> IpNet {
    let len = 16 + rng.below(113) as u8;
    let hi = u128::from(rng.next_u64()) << 64;
    let addr = Ipv6Addr::from(hi | u128::from(rng.next_u64()));
    IpNet::V6(
        Ipv6Net::new(addr, len)
            .map(|n| n.trunc())
            .unwrap_or_default(),
    )
}
