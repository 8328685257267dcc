//! The XDP program judged frame by frame through `BPF_PROG_TEST_RUN`: no interface involved, the
//! kernel runs the verified program on each crafted frame and returns its verdict.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use gatekeeper::{
    filter::Filter,
    policy::{Mode, Policy},
};
use gatekeeper_tests::{frames::*, kernel_tests_enabled};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
const HOST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 25);
const ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 7);
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x66, 0, 0, 0, 0, 66);
const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 25);

/// A loaded filter protecting port 25 and allowing 198.51.100.0/24 and 2001:db8:25::/48.
fn filter() -> Filter {
    let mut filter = loaded(&[25]);
    let maps = filter.maps();
    maps.insert("198.51.100.0/24".parse().expect("cidr"))
        .expect("allow v4");
    maps.insert("2001:db8:25::/48".parse().expect("cidr"))
        .expect("allow v6");
    filter
}

/// A filter enforcing on `ports` with an empty allowlist.
fn loaded(ports: &[u16]) -> Filter {
    let mut filter = Filter::load(None).expect("load the XDP program");
    let policy = Policy {
        mode: Mode::Enforce,
        ports: ports.to_vec(),
        event_rate: 0,
        event_burst: 0,
    };
    filter.maps().set_policy(&policy).expect("policy");
    filter
}

fn verdict(filter: &mut Filter, frame: &[u8]) -> u32 {
    let program = filter.program_mut().expect("program");
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    };
    program
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

macro_rules! kernel_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            if !kernel_tests_enabled(stringify!($name)) {
                return;
            }
            let mut filter = filter();
            let f: &dyn Fn(&mut Filter) = &$body;
            f(&mut filter);
        }
    };
}

kernel_test!(allowed_ipv4_syn_to_25_passes, |f| {
    assert_eq!(
        verdict(f, &tcp_v4(ALLOWED_V4, HOST_V4, 25, TCP_SYN)),
        XDP_PASS
    );
});

kernel_test!(denied_ipv4_syn_to_25_is_dropped, |f| {
    assert_eq!(
        verdict(f, &tcp_v4(DENIED_V4, HOST_V4, 25, TCP_SYN)),
        XDP_DROP
    );
    // Not only SYNs: any segment to the port from a stranger is dropped.
    assert_eq!(verdict(f, &tcp_v4(DENIED_V4, HOST_V4, 25, 0x10)), XDP_DROP);
});

kernel_test!(allowed_ipv6_syn_to_25_passes, |f| {
    assert_eq!(
        verdict(f, &tcp_v6(ALLOWED_V6, HOST_V6, 25, TCP_SYN)),
        XDP_PASS
    );
});

kernel_test!(denied_ipv6_syn_to_25_is_dropped, |f| {
    assert_eq!(
        verdict(f, &tcp_v6(DENIED_V6, HOST_V6, 25, TCP_SYN)),
        XDP_DROP
    );
});

kernel_test!(denied_source_to_443_passes, |f| {
    assert_eq!(
        verdict(f, &tcp_v4(DENIED_V4, HOST_V4, 443, TCP_SYN)),
        XDP_PASS
    );
    assert_eq!(
        verdict(f, &tcp_v6(DENIED_V6, HOST_V6, 443, TCP_SYN)),
        XDP_PASS
    );
});

kernel_test!(udp_to_25_passes, |f| {
    assert_eq!(verdict(f, &udp_v4(DENIED_V4, HOST_V4, 25)), XDP_PASS);
});

kernel_test!(arp_passes, |f| {
    assert_eq!(verdict(f, &arp_request(DENIED_V4, HOST_V4)), XDP_PASS);
});

kernel_test!(frame_truncated_inside_ip_header_passes, |f| {
    let frame = tcp_v4(DENIED_V4, HOST_V4, 25, TCP_SYN);
    // Ethernet header plus 10 of the 20 IPv4 header bytes: the kernel discards it.
    assert_eq!(verdict(f, &frame[..14 + 10]), XDP_PASS);
    let frame = tcp_v6(DENIED_V6, HOST_V6, 25, TCP_SYN);
    assert_eq!(verdict(f, &frame[..14 + 30]), XDP_PASS);
});

kernel_test!(frame_truncated_inside_tcp_header, |f| {
    let frame = tcp_v4(DENIED_V4, HOST_V4, 25, TCP_SYN);
    // Too short to hold the destination port, unfragmented: TCP discards it, so it passes.
    assert_eq!(verdict(f, &frame[..14 + 20 + 3]), XDP_PASS);
    // The port is visible, the rest of the header is missing: still a stranger's segment to 25.
    assert_eq!(verdict(f, &frame[..14 + 20 + 4]), XDP_DROP);
    let frame = tcp_v6(DENIED_V6, HOST_V6, 25, TCP_SYN);
    assert_eq!(verdict(f, &frame[..14 + 40 + 3]), XDP_PASS);
    assert_eq!(verdict(f, &frame[..14 + 40 + 10]), XDP_DROP);
    // An allowed source's truncated segment is not dropped.
    let frame = tcp_v4(ALLOWED_V4, HOST_V4, 25, TCP_SYN);
    assert_eq!(verdict(f, &frame[..14 + 20 + 4]), XDP_PASS);
});

kernel_test!(first_fragment_too_short_for_the_port_is_dropped, |f| {
    // More-fragments set, offset 0, only 2 bytes of TCP: it could be reassembled into a segment
    // to port 25, so the filter fails closed.
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(DENIED_V4, HOST_V4, IPPROTO_TCP, 2, 0x2000));
    frame.extend_from_slice(&[0x9c, 0x40]);
    assert_eq!(verdict(f, &frame), XDP_DROP);
});

kernel_test!(later_fragments_pass, |f| {
    // Offset 185 * 8: no TCP header inside, nothing to judge.
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(DENIED_V4, HOST_V4, IPPROTO_TCP, 8, 185));
    frame.extend_from_slice(&[0, 25, 0, 25, 0, 0, 0, 0]);
    assert_eq!(verdict(f, &frame), XDP_PASS);
});

kernel_test!(prefix_boundaries_are_exact, |f| {
    let inside_last = Ipv4Addr::new(198, 51, 100, 255);
    let outside = Ipv4Addr::new(198, 51, 101, 0);
    assert_eq!(
        verdict(f, &tcp_v4(inside_last, HOST_V4, 25, TCP_SYN)),
        XDP_PASS
    );
    assert_eq!(verdict(f, &tcp_v4(outside, HOST_V4, 25, TCP_SYN)), XDP_DROP);
    let inside_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff);
    let outside_v6 = Ipv6Addr::new(0x2001, 0xdb8, 0x26, 0, 0, 0, 0, 1);
    assert_eq!(
        verdict(f, &tcp_v6(inside_v6, HOST_V6, 25, TCP_SYN)),
        XDP_PASS
    );
    assert_eq!(
        verdict(f, &tcp_v6(outside_v6, HOST_V6, 25, TCP_SYN)),
        XDP_DROP
    );
});

#[test]
fn only_configured_ports_are_protected() {
    if !kernel_tests_enabled("only_configured_ports_are_protected") {
        return;
    }
    let mut filter = loaded(&[587, 465]);
    assert_eq!(
        verdict(&mut filter, &tcp_v4(DENIED_V4, HOST_V4, 25, TCP_SYN)),
        XDP_PASS
    );
    assert_eq!(
        verdict(&mut filter, &tcp_v4(DENIED_V4, HOST_V4, 587, TCP_SYN)),
        XDP_DROP
    );
    assert_eq!(
        verdict(&mut filter, &tcp_v4(DENIED_V4, HOST_V4, 465, TCP_SYN)),
        XDP_DROP
    );
}
