//! The XDP program on a real veth: VLAN and QinQ traffic, monitor mode, drop events and their
//! in-kernel rate limit. The daemon is the real binary; connections are real TCP.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use gatekeeper_tests::{
    addresses::{HOST_V4, LINK_STRANGER_V4, PARTNER_NET_V4},
    frames::{TCP_SYN, tcp_v4},
    gk::Attached,
    kernel_tests_enabled,
    raw::{push_vlan, send_frames},
    tcp::{BannerServer, connect},
};

const TIMEOUT: Duration = Duration::from_millis(1500);

/// VLAN-tagged frames on the real veth path. This kernel has no 802.1Q devices
/// (CONFIG_VLAN_8021Q is off), so the frames are written tag and all with an AF_PACKET socket and
/// the counters show how the attached program judged each one.
#[test]
fn vlan_and_qinq_frames_are_judged_on_the_wire() {
    if !kernel_tests_enabled("vlan_and_qinq_frames_are_judged_on_the_wire") {
        return;
    }
    let gk = Attached::start("gkv", "", &[PARTNER_NET_V4]);

    let stranger = tcp_v4(Ipv4Addr::new(203, 0, 113, 9), HOST_V4, 25, TCP_SYN);
    let partner = tcp_v4(Ipv4Addr::new(198, 51, 100, 9), HOST_V4, 25, TCP_SYN);
    let other_port = tcp_v4(Ipv4Addr::new(203, 0, 113, 9), HOST_V4, 80, TCP_SYN);
    let q = |f: &[u8]| push_vlan(f, 0x8100, 100);
    let qinq = |f: &[u8]| push_vlan(&push_vlan(f, 0x8100, 20), 0x88a8, 10);
    let frames = vec![
        q(&stranger),
        qinq(&stranger),
        push_vlan(&qinq(&stranger), 0x9100, 7), // a third tag: beyond the bound, fail closed
        q(&partner),
        qinq(&partner),
        q(&other_port),
        qinq(&other_port),
    ];
    let bed = &gk.bed;
    let before = bed.stats();
    send_frames(bed.client(), &bed.link.right_if, frames).expect("send the tagged frames");
    std::thread::sleep(Duration::from_millis(200));
    let after = bed.stats();
    let delta = |family: &str, name: &str| {
        bed.counter(&after, family, name) - bed.counter(&before, family, name)
    };
    assert_eq!(delta("ipv4", "dropped"), 2, "{after:#}");
    assert_eq!(delta("other", "unjudgeable_dropped"), 1, "{after:#}");
    assert_eq!(delta("ipv4", "allowed"), 2, "{after:#}");
    assert_eq!(delta("ipv4", "passed_other_port"), 2, "{after:#}");
}

#[test]
fn monitor_mode_counts_and_passes() {
    if !kernel_tests_enabled("monitor_mode_counts_and_passes") {
        return;
    }
    let mut gk = Attached::start("gkm", "mode = \"monitor\"", &[PARTNER_NET_V4]);
    let bed = &gk.bed;
    bed.client()
        .add_addr(&bed.link.right_if, &format!("{LINK_STRANGER_V4}/24"))
        .expect("stranger address");
    let smtp = BannerServer::start(bed.host(), "0.0.0.0:25".parse().expect("addr"), "mail")
        .expect("SMTP banner server");
    let dest = SocketAddr::new(IpAddr::V4(HOST_V4), smtp.addr().port());

    // A stranger gets the banner in monitor mode; the counter and the log show what would happen.
    let outcome = connect(bed.client(), IpAddr::V4(LINK_STRANGER_V4), dest, TIMEOUT);
    assert!(outcome.is_banner(), "{outcome:?}");
    let stats = bed.stats();
    assert!(bed.counter(&stats, "ipv4", "would_drop") >= 1, "{stats:#}");
    assert_eq!(bed.counter(&stats, "ipv4", "dropped"), 0, "{stats:#}");
    gk.daemon
        .wait_for_log(
            "would drop SYN from a source outside the allowlist (monitor mode, passed) source=192.0.2.66 dest_port=25",
            Duration::from_secs(5),
        )
        .expect("the would-drop event logged");
}

#[test]
fn drop_events_are_logged_and_rate_limited_in_the_kernel() {
    if !kernel_tests_enabled("drop_events_are_logged_and_rate_limited_in_the_kernel") {
        return;
    }
    let mut gk = Attached::start(
        "gke",
        "drop_event_rate = 1\ndrop_event_burst = 5",
        &[PARTNER_NET_V4],
    );
    let bed = &gk.bed;
    bed.client()
        .add_addr(&bed.link.right_if, &format!("{LINK_STRANGER_V4}/24"))
        .expect("stranger address");

    // A flood of 2,000 SYNs from 2,000 sources in a fraction of a second.
    let frames: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| {
            let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(203, 0, 113, 0)) + (i % 250) + 1);
            tcp_v4(source, HOST_V4, 25, TCP_SYN)
        })
        .collect();
    send_frames(bed.client(), &bed.link.right_if, frames).expect("send the flood");
    gk.daemon
        .wait_for_log(
            "dropped SYN from a source outside the allowlist source=203.0.113.",
            Duration::from_secs(5),
        )
        .expect("a drop event logged");
    std::thread::sleep(Duration::from_millis(300));

    let bed = &gk.bed;
    let stats = bed.stats();
    let dropped = bed.counter(&stats, "ipv4", "dropped");
    let sent = bed.counter(&stats, "ipv4", "events_sent");
    let suppressed = bed.counter(&stats, "ipv4", "events_suppressed");
    assert!(dropped >= 2000, "{stats:#}");
    // Each CPU may send its burst plus what the rate earns while the flood lasts (≈ 1 s at most).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        sent >= 5 && sent <= cpus * (5 + 3),
        "events sent {sent} on {cpus} CPUs: {stats:#}"
    );
    assert_eq!(
        sent + suppressed,
        dropped,
        "every dropped SYN is either reported or counted as suppressed"
    );
    let logged = gk
        .daemon
        .log()
        .matches("dropped SYN from a source outside the allowlist")
        .count() as u64;
    assert!(
        logged <= sent,
        "the daemon logged {logged} events but the kernel sent {sent}"
    );
}
