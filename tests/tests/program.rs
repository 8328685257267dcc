//! The XDP program judged frame by frame through `BPF_PROG_TEST_RUN`: no interface involved, the
//! kernel runs the verified program on each crafted frame and returns its verdict. One case per
//! frame: the frame, then the verdict it must get.

use std::net::{Ipv4Addr, Ipv6Addr};

use gatekeeper::{filter::Filter, filter::LoadOptions, policy::Mode};
use gatekeeper_tests::{
    addresses::{
        HOST_V4, HOST_V6, PARTNER_NET_V4, PARTNER_NET_V6, PARTNER_V4, PARTNER_V6, STRANGER_V4,
        STRANGER_V6,
    },
    frames::*,
    kernel_tests_enabled,
    program::{XDP_DROP, XDP_PASS, loaded, verdict},
};
use rstest::rstest;

const TCP_ACK: u8 = 0x10;
const ETHERNET: usize = 14;
const IPV4: usize = 20;
const IPV6: usize = 40;

/// The program protecting port 25 and allowing the partners' networks.
fn protecting_25() -> Filter {
    let mut filter = loaded(&LoadOptions::default(), Mode::Enforce, &[25]);
    let maps = filter.maps();
    maps.insert(PARTNER_NET_V4.parse().expect("cidr"))
        .expect("allow v4");
    maps.insert(PARTNER_NET_V6.parse().expect("cidr"))
        .expect("allow v6");
    filter
}

/// The first `len` bytes of `frame`.
fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// More-fragments set, offset 0, only 2 bytes of TCP: it could be reassembled into a segment to
/// port 25.
fn first_fragment_too_short_for_the_port() -> Vec<u8> {
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(STRANGER_V4, HOST_V4, IPPROTO_TCP, 2, 0x2000));
    frame.extend_from_slice(&[0x9c, 0x40]);
    frame
}

/// Offset 185 * 8: no TCP header inside, nothing to judge.
fn later_fragment() -> Vec<u8> {
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(STRANGER_V4, HOST_V4, IPPROTO_TCP, 8, 185));
    frame.extend_from_slice(&[0, 25, 0, 25, 0, 0, 0, 0]);
    frame
}

#[rstest]
#[case::allowed_ipv4_syn_to_25_passes(tcp_v4(PARTNER_V4, HOST_V4, 25, TCP_SYN), XDP_PASS)]
#[case::denied_ipv4_syn_to_25_is_dropped(tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN), XDP_DROP)]
// Not only SYNs: any segment to the port from a stranger is dropped.
#[case::denied_ipv4_ack_to_25_is_dropped(tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_ACK), XDP_DROP)]
#[case::allowed_ipv6_syn_to_25_passes(tcp_v6(PARTNER_V6, HOST_V6, 25, TCP_SYN), XDP_PASS)]
#[case::denied_ipv6_syn_to_25_is_dropped(tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN), XDP_DROP)]
#[case::denied_ipv4_source_to_443_passes(tcp_v4(STRANGER_V4, HOST_V4, 443, TCP_SYN), XDP_PASS)]
#[case::denied_ipv6_source_to_443_passes(tcp_v6(STRANGER_V6, HOST_V6, 443, TCP_SYN), XDP_PASS)]
#[case::udp_to_25_passes(udp_v4(STRANGER_V4, HOST_V4, 25), XDP_PASS)]
#[case::arp_passes(arp_request(STRANGER_V4, HOST_V4), XDP_PASS)]
// Ethernet header plus 10 of the 20 IPv4 header bytes: the kernel discards it.
#[case::ipv4_frame_truncated_inside_ip_header_passes(
    truncated(tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN), ETHERNET + 10),
    XDP_PASS
)]
#[case::ipv6_frame_truncated_inside_ip_header_passes(
    truncated(tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN), ETHERNET + 30),
    XDP_PASS
)]
// Too short to hold the destination port, unfragmented: TCP discards it, so it passes.
#[case::ipv4_tcp_header_without_the_port_passes(
    truncated(tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN), ETHERNET + IPV4 + 3),
    XDP_PASS
)]
// The port is visible, the rest of the header is missing: still a stranger's segment to 25.
#[case::ipv4_tcp_header_cut_after_the_port_is_dropped(
    truncated(tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN), ETHERNET + IPV4 + 4),
    XDP_DROP
)]
#[case::ipv6_tcp_header_without_the_port_passes(
    truncated(tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN), ETHERNET + IPV6 + 3),
    XDP_PASS
)]
#[case::ipv6_tcp_header_cut_after_the_port_is_dropped(
    truncated(tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN), ETHERNET + IPV6 + 10),
    XDP_DROP
)]
// An allowed source's truncated segment is not dropped.
#[case::allowed_ipv4_tcp_header_cut_after_the_port_passes(
    truncated(tcp_v4(PARTNER_V4, HOST_V4, 25, TCP_SYN), ETHERNET + IPV4 + 4),
    XDP_PASS
)]
// It could be reassembled into a segment to port 25, so the filter fails closed.
#[case::first_fragment_too_short_for_the_port_is_dropped(
    first_fragment_too_short_for_the_port(),
    XDP_DROP
)]
#[case::later_fragments_pass(later_fragment(), XDP_PASS)]
// Prefix boundaries are exact.
#[case::last_address_of_the_ipv4_prefix_passes(
    tcp_v4(Ipv4Addr::new(198, 51, 100, 255), HOST_V4, 25, TCP_SYN),
    XDP_PASS
)]
#[case::first_address_after_the_ipv4_prefix_is_dropped(
    tcp_v4(Ipv4Addr::new(198, 51, 101, 0), HOST_V4, 25, TCP_SYN),
    XDP_DROP
)]
#[case::last_address_of_the_ipv6_prefix_passes(
    tcp_v6(
        Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff),
        HOST_V6,
        25,
        TCP_SYN
    ),
    XDP_PASS
)]
#[case::an_address_after_the_ipv6_prefix_is_dropped(
    tcp_v6(
        Ipv6Addr::new(0x2001, 0xdb8, 0x26, 0, 0, 0, 0, 1),
        HOST_V6,
        25,
        TCP_SYN
    ),
    XDP_DROP
)]
fn port_25_protected_for_the_partners(#[case] frame: Vec<u8>, #[case] expected: u32) {
    if !kernel_tests_enabled("port_25_protected_for_the_partners") {
        return;
    }
    let mut filter = protecting_25();
    assert_eq!(
        verdict(&mut filter, &frame),
        expected,
        "frame: {frame:02x?}"
    );
}

#[rstest]
#[case::unlisted_port_25_passes(25, XDP_PASS)]
#[case::listed_port_587_is_dropped(587, XDP_DROP)]
#[case::listed_port_465_is_dropped(465, XDP_DROP)]
fn only_configured_ports_are_protected(#[case] port: u16, #[case] expected: u32) {
    if !kernel_tests_enabled("only_configured_ports_are_protected") {
        return;
    }
    let mut filter = loaded(&LoadOptions::default(), Mode::Enforce, &[587, 465]);
    assert_eq!(
        verdict(&mut filter, &tcp_v4(STRANGER_V4, HOST_V4, port, TCP_SYN)),
        expected
    );
}
