//! The benchmark's flood generator (`cargo xtask bench flood`) still delivers: a few hundred
//! frames made by the live-frames XDP generator cross a real veth and are all dropped by the
//! gatekeeper program attached on the other side. Keeps the generator from rotting unseen; no
//! timing is asserted.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use gatekeeper::{config::XdpMode, filter::Filter, filter::LoadOptions, policy::Mode};
use gatekeeper_bench_objects::{DEFAULT_BATCH, FloodGenerator, syn_frame};
use gatekeeper_common::{Counter, Family};
use gatekeeper_tests::{
    addresses::{HOST_V4, PARTNER_NET_V4},
    kernel_tests_enabled,
    netns::Link,
    program::loaded,
};

const FRAMES: u32 = 300;
/// The generator's first source address; its 256 sources are all strangers.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);

fn dropped(filter: &mut Filter) -> u64 {
    let counters = filter.maps().counters(0).expect("read the counters");
    counters.0[Family::Ipv4 as usize][Counter::Dropped as usize]
}

#[test]
fn flood_generator_frames_reach_the_gatekeeper_and_are_dropped() {
    if !kernel_tests_enabled("flood_generator_frames_reach_the_gatekeeper_and_are_dropped") {
        return;
    }
    let link = Link::new("gkf").expect("namespaces and veth");
    let (attacker, host) = (&link.left, &link.right);
    host.add_addr(&link.right_if, &format!("{HOST_V4}/24"))
        .expect("host address");
    let mut filter = loaded(&LoadOptions::default(), Mode::Enforce, &[25]);
    filter
        .maps()
        .insert(PARTNER_NET_V4.parse().expect("cidr"))
        .expect("allow the partners");
    // The filter stays on this thread; only the attach (an interface name lookup) needs the
    // host's namespace.
    host.on_this_thread(|| filter.attach(&link.right_if, XdpMode::Native, 0))
        .expect("enter the host namespace")
        .expect("attach the filter natively");

    let frame = syn_frame(
        host.mac(&link.right_if).expect("host MAC"),
        attacker.mac(&link.left_if).expect("attacker MAC"),
        FIRST_SOURCE,
        HOST_V4,
        25,
    );
    let generator = FloodGenerator::load(FIRST_SOURCE, 256).expect("load the flood generator");
    let attacker_if = link.left_if.clone();
    let generator = attacker
        .run(move || -> anyhow::Result<FloodGenerator> {
            let name = std::ffi::CString::new(attacker_if)?;
            // SAFETY: NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            anyhow::ensure!(ifindex != 0, "no attacker interface");
            generator.send(ifindex, &frame, FRAMES, DEFAULT_BATCH)?;
            Ok(generator)
        })
        .expect("enter the attacker namespace")
        .expect("send the flood");
    assert_eq!(
        generator.produced().expect("frames produced"),
        u64::from(FRAMES)
    );

    // The veth hands frames over through NAPI: give it a moment, without asserting any timing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped(&mut filter) < u64::from(FRAMES) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let counters = filter.maps().counters(0).expect("read the counters");
    assert_eq!(
        counters.0[Family::Ipv4 as usize][Counter::Dropped as usize],
        u64::from(FRAMES),
        "every generated SYN from 203.0.113.0/24 must be dropped: {counters:?}"
    );
    assert_eq!(
        counters.0[Family::Ipv4 as usize][Counter::Allowed as usize],
        0
    );
    filter.detach_all().expect("detach");
}
