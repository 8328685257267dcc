//! The benchmark's flood generator (`cargo xtask bench flood`) still delivers: a few hundred
//! frames made by the live-frames XDP generator cross a real veth and are all dropped by the
//! gatekeeper program attached on the other side. Keeps the generator from rotting unseen; no
//! timing is asserted.

use std::net::Ipv4Addr;

use gatekeeper::{
    filter::Filter,
    policy::{Mode, Policy},
};
use gatekeeper_bench_objects::{DEFAULT_BATCH, FloodGenerator, syn_frame};
use gatekeeper_common::{Counter, Family};
use gatekeeper_tests::{
    kernel_tests_enabled,
    netns::{Link, Netns},
};

const FRAMES: u32 = 300;

fn mac(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns
        .command(&["cat", &format!("/sys/class/net/{iface}/address")])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("odd MAC address {text:?}"))
}

/// Runs `f` on this thread inside `ns`, then returns the thread to its own namespace.
fn in_netns<T>(ns: &Netns, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd as _;
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    let target = std::fs::File::open(format!("/run/netns/{}", ns.name()))?;
    let enter = |file: &std::fs::File| -> anyhow::Result<()> {
        // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    };
    enter(&target)?;
    let result = f();
    enter(&home)?;
    Ok(result)
}

#[test]
fn flood_generator_frames_reach_the_gatekeeper_and_are_dropped() -> anyhow::Result<()> {
    if !kernel_tests_enabled("flood_generator_frames_reach_the_gatekeeper_and_are_dropped") {
        return Ok(());
    }
    let link = Link::new("gkf")?;
    let (attacker, host) = (&link.left, &link.right);
    host.add_addr(&link.right_if, "192.0.2.25/24")?;
    let mut filter = Filter::load(None)?;
    filter.maps().set_policy(&Policy {
        mode: Mode::Enforce,
        ports: vec![25],
        event_rate: 0,
        event_burst: 0,
    })?;
    filter.maps().insert("198.51.100.0/24".parse()?)?;
    // The filter stays on this thread; only the attach (an interface name lookup) needs the
    // host's namespace.
    in_netns(host, || {
        filter.attach(&link.right_if, gatekeeper::config::XdpMode::Native, 0)
    })??;

    let frame = syn_frame(
        mac(host, &link.right_if)?,
        mac(attacker, &link.left_if)?,
        Ipv4Addr::new(203, 0, 113, 0),
        Ipv4Addr::new(192, 0, 2, 25),
        25,
    );
    let generator = FloodGenerator::load(Ipv4Addr::new(203, 0, 113, 0), 256)?;
    let attacker_if = link.left_if.clone();
    let generator = attacker.run(move || -> anyhow::Result<FloodGenerator> {
        let name = std::ffi::CString::new(attacker_if)?;
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no attacker interface");
        generator.send(ifindex, &frame, FRAMES, DEFAULT_BATCH)?;
        Ok(generator)
    })??;
    assert_eq!(generator.produced()?, u64::from(FRAMES));

    // The veth hands frames over through NAPI: give it a moment, without asserting any timing.
    let dropped = |filter: &mut Filter| -> anyhow::Result<u64> {
        Ok(filter.maps().counters(0)?.0[Family::Ipv4 as usize][Counter::Dropped as usize])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dropped(&mut filter)? < u64::from(FRAMES) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let counters = filter.maps().counters(0)?;
    assert_eq!(
        counters.0[Family::Ipv4 as usize][Counter::Dropped as usize],
        u64::from(FRAMES),
        "every generated SYN from 203.0.113.0/24 must be dropped: {counters:?}"
    );
    assert_eq!(
        counters.0[Family::Ipv4 as usize][Counter::Allowed as usize],
        0
    );
    filter.detach_all()?;
    Ok(())
}
