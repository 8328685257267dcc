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

const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// An IPv6 frame from `source` whose destination-options headers are `units` 8-byte units long
/// beyond their first 8 bytes (each `(units + 1) * 8` bytes), then `protocol` with `l4`.
fn ipv6_options_chain(source: Ipv6Addr, units: &[u8], protocol: u8, l4: Vec<u8>) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, len) in units.iter().enumerate() {
        let next = if i + 1 < units.len() {
            IPPROTO_DSTOPTS
        } else {
            protocol
        };
        chain.push(next);
        chain.push(*len);
        // Pad1 options filling the rest of the header.
        chain.extend(std::iter::repeat_n(0u8, (usize::from(*len) + 1) * 8 - 2));
    }
    let mut frame = ethernet(ETH_P_IPV6);
    frame.extend(ipv6_header(
        source,
        HOST_V6,
        units.first().map_or(protocol, |_| IPPROTO_DSTOPTS),
        chain.len() + l4.len(),
    ));
    frame.extend(chain);
    frame.extend(l4);
    frame
}

/// Two headers: 968 bytes, then 88 starting at byte 1022, so the chain ends at byte 1110, past
/// the program's 1024-byte reach for the start of a header.
const ENDS_PAST_1024: [u8; 2] = [120, 10];
/// Two 1024-byte headers: the second starts at byte 1078.
const SECOND_STARTS_PAST_1024: [u8; 2] = [127, 127];

fn icmpv6_echo() -> Vec<u8> {
    vec![128, 0, 0, 0, 0, 1, 0, 1]
}

/// A TCP header to `port` behind an IPv4 header whose total length (`total`) is smaller than its
/// 20 bytes.
fn ipv4_total_length_below_header(source: Ipv4Addr, total: u16) -> Vec<u8> {
    let mut frame = tcp_v4(source, HOST_V4, 25, TCP_SYN);
    frame[ETHERNET + 2..ETHERNET + 4].copy_from_slice(&total.to_be_bytes());
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
// An IPv6 chain that ends past byte 1024 is judged by what it ends in.
#[case::udp_after_extension_headers_ending_past_1024_passes(
    ipv6_options_chain(STRANGER_V6, &ENDS_PAST_1024, IPPROTO_UDP, udp_header(5353, 25)),
    XDP_PASS
)]
#[case::icmpv6_after_extension_headers_ending_past_1024_passes(
    ipv6_options_chain(STRANGER_V6, &ENDS_PAST_1024, IPPROTO_ICMPV6, icmpv6_echo()),
    XDP_PASS
)]
#[case::tcp_to_443_after_extension_headers_ending_past_1024_passes(
    ipv6_options_chain(STRANGER_V6, &ENDS_PAST_1024, IPPROTO_TCP, tcp_header(40000, 443, TCP_SYN)),
    XDP_PASS
)]
#[case::strangers_tcp_to_25_after_extension_headers_ending_past_1024_is_dropped(
    ipv6_options_chain(STRANGER_V6, &ENDS_PAST_1024, IPPROTO_TCP, tcp_header(40000, 25, TCP_SYN)),
    XDP_DROP
)]
#[case::partners_tcp_to_25_after_extension_headers_ending_past_1024_passes(
    ipv6_options_chain(PARTNER_V6, &ENDS_PAST_1024, IPPROTO_TCP, tcp_header(40000, 25, TCP_SYN)),
    XDP_PASS
)]
// A header starting past byte 1024 is not read: the chain could end in TCP to 25, fail closed.
#[case::an_extension_header_starting_past_1024_is_dropped(
    ipv6_options_chain(PARTNER_V6, &SECOND_STARTS_PAST_1024, IPPROTO_UDP, udp_header(5353, 53)),
    XDP_DROP
)]
// A 2 KiB header in a short frame is broken, not a long chain: it passes.
#[case::an_extension_header_running_past_the_frame_passes(
    {
        let mut frame = ipv6_options_chain(STRANGER_V6, &[1], IPPROTO_TCP, tcp_header(40000, 25, TCP_SYN));
        frame[ETHERNET + IPV6 + 1] = 255;
        frame
    },
    XDP_PASS
)]
// A total length below the header length: broken, the TCP segment behind it is not judged.
#[case::ipv4_total_length_below_the_header_length_passes(
    ipv4_total_length_below_header(STRANGER_V4, 19),
    XDP_PASS
)]
#[case::ipv4_total_length_zero_passes(ipv4_total_length_below_header(STRANGER_V4, 0), XDP_PASS)]
// Equal to the header length (no payload counted): not broken, still judged.
#[case::ipv4_total_length_equal_to_the_header_length_is_judged(
    ipv4_total_length_below_header(STRANGER_V4, 20),
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

/// Broken frames pass and land in the `malformed` counter of their family, not in a verdict
/// counter: the TCP header behind them is never judged.
#[test]
fn broken_ip_headers_are_counted_malformed() {
    if !kernel_tests_enabled("broken_ip_headers_are_counted_malformed") {
        return;
    }
    use gatekeeper_common::{Counter, Family};
    let mut filter = protecting_25();
    let mut overlong = ipv6_options_chain(
        STRANGER_V6,
        &[1],
        IPPROTO_TCP,
        tcp_header(40000, 25, TCP_SYN),
    );
    overlong[ETHERNET + IPV6 + 1] = 255;
    let frames = [
        (
            ipv4_total_length_below_header(STRANGER_V4, 19),
            Family::Ipv4,
        ),
        (overlong, Family::Ipv6),
    ];
    for (frame, _) in &frames {
        assert_eq!(verdict(&mut filter, frame), XDP_PASS, "{frame:02x?}");
    }
    let counters = filter.maps().counters(0).expect("counters");
    for family in [Family::Ipv4, Family::Ipv6] {
        let row = counters.0[family as usize];
        assert_eq!(row[Counter::Malformed as usize], 1, "{family:?}: {row:?}");
        for judged in [Counter::Dropped, Counter::Allowed, Counter::Unjudgeable] {
            assert_eq!(row[judged as usize], 0, "{family:?} {judged:?}: {row:?}");
        }
    }
}
