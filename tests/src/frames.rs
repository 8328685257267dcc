//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`: TCP/UDP over IPv4 and IPv6, ARP, and the
//! malformed shapes the program must survive.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An Ethernet header with `ethertype`.
pub fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// A 20-byte TCP header with only `flags` set.
pub fn tcp_header(source_port: u16, dest_port: u16, flags: u8) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&dest_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp
}

/// An 8-byte UDP header.
pub fn udp_header(source_port: u16, dest_port: u16) -> Vec<u8> {
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&source_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dest_port.to_be_bytes());
    udp[4..6].copy_from_slice(&8u16.to_be_bytes());
    udp
}

/// An IPv4 header (no options) carrying `payload_len` bytes of `protocol`, with the given
/// flags-and-fragment-offset field.
pub fn ipv4_header(
    source: Ipv4Addr,
    dest: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    flags_fragment: u16,
) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&source.octets());
    ip[16..20].copy_from_slice(&dest.octets());
    let checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    ip
}

/// A fixed IPv6 header carrying `payload_len` bytes with first next-header `next_header`.
pub fn ipv6_header(
    source: Ipv6Addr,
    dest: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    let len = u16::try_from(payload_len).unwrap_or(u16::MAX);
    ip[4..6].copy_from_slice(&len.to_be_bytes());
    ip[6] = next_header;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&source.octets());
    ip[24..40].copy_from_slice(&dest.octets());
    ip
}

/// A complete Ethernet/IPv4/TCP frame.
pub fn tcp_v4(source: Ipv4Addr, dest: Ipv4Addr, dest_port: u16, flags: u8) -> Vec<u8> {
    let tcp = tcp_header(40000, dest_port, flags);
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(source, dest, IPPROTO_TCP, tcp.len(), 0x4000));
    frame.extend(tcp);
    frame
}

/// A complete Ethernet/IPv6/TCP frame.
pub fn tcp_v6(source: Ipv6Addr, dest: Ipv6Addr, dest_port: u16, flags: u8) -> Vec<u8> {
    let tcp = tcp_header(40000, dest_port, flags);
    let mut frame = ethernet(ETH_P_IPV6);
    frame.extend(ipv6_header(source, dest, IPPROTO_TCP, tcp.len()));
    frame.extend(tcp);
    frame
}

/// A complete Ethernet/IPv4/UDP frame.
pub fn udp_v4(source: Ipv4Addr, dest: Ipv4Addr, dest_port: u16) -> Vec<u8> {
    let udp = udp_header(40000, dest_port);
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(source, dest, IPPROTO_UDP, udp.len(), 0));
    frame.extend(udp);
    frame
}

/// An ARP request (who has `target`? tell `sender`).
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = ethernet(ETH_P_ARP);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&sender.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

/// RFC 1071 checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
