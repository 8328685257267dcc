//! `cargo xtask bench xdp`: the filter's cost per packet through `BPF_PROG_TEST_RUN`, as ratios
//! against an empty XDP program measured in the same run.
//!
//! Hot: one frame run many times (caches warm, as for one busy peer). Spread: every run gets a new
//! source address (a benchmark-only twin of the program rewrites it), as in a flood that comes
//! from everywhere; its baseline is an empty program doing the same rewrite.
//!
//! Two list shapes: *routed* (shaped like a routing table: mostly /24s, a third shorter, a few
//! longer) and *spread* (every entry its own random /24, the worst case for the IPv4 summary:
//! entries in as many /16s and /24s as possible). For the spread shape a second twin draws sources
//! only from /24s the list leaves out ("many sources, denied", a flood from everywhere nobody
//! listed), compared with the hot denied SYN of the same run.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use gatekeeper::{
    filter::{Filter, Ipv4Lookup, LoadOptions, xdp_program},
    policy::{Mode, Policy},
    rules::clock,
};
use gatekeeper_bench_objects::{
    BASELINE_PROGRAM_NAME, BASELINE_SPREAD_PROGRAM_NAME, BENCH_OBJECT, BENCH_SPREAD_PROGRAM_NAME,
    BENCH_SPREAD_UNLISTED_PROGRAM_NAME, load_program,
};
use gatekeeper_tests::{
    addresses::{HOST_V4, HOST_V6, PARTNER_V4, PARTNER_V6, STRANGER_V4, STRANGER_V6},
    frames::{TCP_SYN, arp_request, tcp_v4, tcp_v6, udp_v4},
    generate::Rng,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::json;

/// Second-level DIR-24-8 blocks for the benchmark lists (3% of 1,000,000 prefixes are longer than
/// /24 and need one block each): 64 MiB.
const DIR24_BLOCKS: u32 = 1 << 16;

struct Options {
    sizes: Vec<usize>,
    shapes: Vec<Shape>,
    repeat: u32,
    rounds: usize,
    json: PathBuf,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        sizes: vec![10, 10_000, 100_000, 1_000_000],
        shapes: vec![Shape::Routed, Shape::Spread],
        repeat: 200_000,
        rounds: 5,
        json: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/xdp.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                let list = args.next().context("--sizes needs a list like 10,10000")?;
                // `none`: only the open-port rows.
                options.sizes = if list == "none" {
                    Vec::new()
                } else {
                    list.split(',')
                        .map(|s| s.trim().parse().context("--sizes takes numbers"))
                        .collect::<anyhow::Result<_>>()?
                };
            }
            "--shapes" => {
                let list = args
                    .next()
                    .context("--shapes needs a list like routed,spread")?;
                options.shapes = list
                    .split(',')
                    .map(|s| match s.trim() {
                        "routed" => Ok(Shape::Routed),
                        "spread" => Ok(Shape::Spread),
                        other => anyhow::bail!("unknown list shape {other} (routed, spread)"),
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--quick" => {
                options.repeat = 20_000;
                options.rounds = 3;
            }
            "--json" => options.json = PathBuf::from(args.next().context("--json needs a path")?),
            // cargo bench passes --bench; nothing else is ours.
            "--bench" => {}
            other => {
                anyhow::bail!("unknown argument {other} (use --sizes, --shapes, --quick, --json)")
            }
        }
    }
    Ok(options)
}

/// Median of `rounds` runs of `frame`, each `repeat` times: ns per run as the kernel measured it.
fn measure(program: &Xdp, frame: &[u8], repeat: u32, rounds: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        };
        let result = program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        samples.push(result.duration.as_nanos() as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// `count` IPv4 prefixes shaped like a routing table (65% /24, 32% /16-/23, 3% /25-/32), none
/// covering the stranger's address, plus the partner's /24.
fn allowlist_v4(rng: &mut Rng, count: usize) -> Vec<IpNet> {
    let mut nets = vec![IpNet::V4(
        Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24).expect("net"),
    )];
    let stranger = std::net::IpAddr::V4(STRANGER_V4);
    let mut seen = std::collections::HashSet::new();
    seen.insert(nets[0]);
    while nets.len() < count {
        let len = match rng.below(100) {
            0..=64 => 24,
            65..=96 => 16 + rng.below(8) as u8,
            _ => 25 + rng.below(8) as u8,
        };
        let addr = Ipv4Addr::from(rng.next_u64() as u32);
        let Ok(net) = Ipv4Net::new(addr, len) else {
            continue;
        };
        let net = IpNet::V4(net.trunc());
        if net.contains(&stranger) || !seen.insert(net) {
            continue;
        }
        nets.push(net);
    }
    nets
}

/// How the benchmark's IPv4 lists are made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// [`allowlist_v4`]: like a routing table.
    Routed,
    /// [`allowlist_spread`]: every entry its own random /24.
    Spread,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Routed => "routed",
            Shape::Spread => "spread",
        }
    }

    fn allowlist(self, rng: &mut Rng, count: usize) -> Vec<IpNet> {
        match self {
            Shape::Routed => allowlist_v4(rng, count),
            Shape::Spread => allowlist_spread(rng, count),
        }
    }
}

/// `count` distinct random /24s with an even third octet (the partner's 198.51.100.0/24 first):
/// the sources of `BENCH_SPREAD_UNLISTED_PROGRAM_NAME` (odd third octet) and the stranger
/// (203.0.113.66) are never listed, while the list reaches into as many /16s and bitmap words as
/// random /24s do.
fn allowlist_spread(rng: &mut Rng, count: usize) -> Vec<IpNet> {
    let partner = Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24).expect("net");
    let mut seen = std::collections::HashSet::new();
    seen.insert(u32::from(partner.network()) >> 8);
    let mut nets = vec![IpNet::V4(partner)];
    while nets.len() < count {
        let slot = (rng.next_u64() as u32 >> 8) & !1;
        if seen.insert(slot) {
            let net = Ipv4Net::new(Ipv4Addr::from(slot << 8), 24).expect("net");
            nets.push(IpNet::V4(net));
        }
    }
    nets
}

fn allowlist_v6() -> Vec<IpNet> {
    (0..10u16)
        .map(|i| {
            IpNet::V6(
                Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0x25 + i, 0, 0, 0, 0, 0), 48)
                    .expect("net"),
            )
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the XDP benchmark loads BPF programs: run it as root (`sudo -E cargo xtask bench xdp`)"
        );
    }
    let mut baseline = load_program(BENCH_OBJECT, BASELINE_PROGRAM_NAME)?;
    let mut baseline_spread = load_program(BENCH_OBJECT, BASELINE_SPREAD_PROGRAM_NAME)?;
    let baseline = xdp_program(&mut baseline, BASELINE_PROGRAM_NAME)?;
    let baseline_spread = xdp_program(&mut baseline_spread, BASELINE_SPREAD_PROGRAM_NAME)?;

    let classes: Vec<(&str, Vec<u8>)> = vec![
        ("not IP (ARP)", arp_request(STRANGER_V4, HOST_V4)),
        ("UDP", udp_v4(STRANGER_V4, HOST_V4, 53)),
        (
            "TCP, other port",
            tcp_v4(STRANGER_V4, HOST_V4, 443, TCP_SYN),
        ),
        (
            "SMTP SYN, allowed, IPv4",
            tcp_v4(PARTNER_V4, HOST_V4, 25, TCP_SYN),
        ),
        (
            "SMTP SYN, denied, IPv4",
            tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN),
        ),
        (
            "SMTP SYN, allowed, IPv6",
            tcp_v6(PARTNER_V6, HOST_V6, 25, TCP_SYN),
        ),
        (
            "SMTP SYN, denied, IPv6",
            tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN),
        ),
    ];
    let base_ns = measure(baseline, &classes[0].1, options.repeat, options.rounds)?;
    let spread_frame = tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN);
    let spread_frame_v6 = tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN);
    let base_spread_ns = measure(
        baseline_spread,
        &spread_frame,
        options.repeat,
        options.rounds,
    )?;
    println!(
        "empty XDP program: {base_ns:.1} ns/packet (hot), {base_spread_ns:.1} ns/packet with source rewrite (spread)"
    );

    let mut results = Vec::new();
    let mut loads = Vec::new();
    println!(
        "\n{:<38}{:>8}{:>8}{:>10}{:>10}{:>9}",
        "class", "shape", "lookup", "entries", "ns", "ratio"
    );
    for (&shape, &size) in options
        .shapes
        .iter()
        .flat_map(|shape| options.sizes.iter().map(move |size| (shape, size)))
    {
        // The same list for both lookups.
        let v4 = shape.allowlist(&mut Rng::new(0x5eed ^ size as u64), size);
        let shape_name = shape.name();

        for lookup in [Ipv4Lookup::Trie, Ipv4Lookup::Dir24] {
            // The benchmark object's build of the filter, so its cold-lookup twin shares the maps.
            let mut filter = Filter::load_with(&LoadOptions {
                object: BENCH_OBJECT,
                ipv4_lookup: lookup,
                dir24_blocks: DIR24_BLOCKS,
                ..LoadOptions::default()
            })?;
            filter.maps().set_policy(&Policy {
                mode: Mode::Enforce,
                ports: vec![25],
                event_rate: gatekeeper::config::DEFAULT_DROP_EVENT_RATE,
                event_burst: gatekeeper::config::DEFAULT_DROP_EVENT_BURST,
                ..Policy::default()
            })?;
            let started = Instant::now();
            for net in v4.iter().chain(allowlist_v6().iter()) {
                filter.maps().insert(*net)?;
            }
            let load_seconds = started.elapsed().as_secs_f64();
            let memory = filter.maps().kernel_memory()?;
            let total: u64 = memory.iter().map(|(_, b)| b).sum();
            let allowlist: u64 = memory
                .iter()
                .filter(|(n, _)| {
                    ["ALLOW", "DIR24", "ENTRY", "SUMMARY"]
                        .iter()
                        .any(|part| n.contains(part))
                })
                .map(|(_, b)| b)
                .sum();
            loads.push(json!({
                "entries": size, "shape": shape_name, "lookup": lookup.to_string(), "load_seconds": load_seconds,
                "kernel_memory_bytes": total, "allowlist_memory_bytes": allowlist,
            }));

            let program = filter.program_mut()?;
            let (mut hot_denied_ns, mut hot_denied_v6_ns) = (f64::NAN, f64::NAN);
            for (name, frame) in &classes {
                let ns = measure(program, frame, options.repeat, options.rounds)?;
                match *name {
                    "SMTP SYN, denied, IPv4" => hot_denied_ns = ns,
                    "SMTP SYN, denied, IPv6" => hot_denied_v6_ns = ns,
                    _ => {}
                }
                println!(
                    "{name:<38}{shape_name:>8}{:>8}{size:>10}{ns:>10.1}{:>8.2}x",
                    lookup.to_string(),
                    ns / base_ns
                );
                results.push(json!({"class": name, "mode": "hot", "shape": shape_name, "lookup": lookup.to_string(), "entries": size, "ns": ns, "baseline_ns": base_ns, "ratio": ns / base_ns}));
            }
            let mut twins = vec![(
                BENCH_SPREAD_PROGRAM_NAME,
                "SMTP SYN, many sources, IPv4",
                &spread_frame,
                hot_denied_ns,
            )];
            if shape == Shape::Spread {
                twins.push((
                    BENCH_SPREAD_UNLISTED_PROGRAM_NAME,
                    "SMTP SYN, many sources, denied, IPv4",
                    &spread_frame,
                    hot_denied_ns,
                ));
            }
            // The twin rewrites the top 32 bits of an IPv6 source: a new /32 every run, all denied.
            twins.push((
                BENCH_SPREAD_PROGRAM_NAME,
                "SMTP SYN, many sources, IPv6",
                &spread_frame_v6,
                hot_denied_v6_ns,
            ));
            for (program, name, frame, hot_denied_ns) in twins {
                let spread = filter.sibling_program(program)?;
                let ns = measure(spread, frame, options.repeat, options.rounds)?;
                // The target: a flood from everywhere against one hot denied source.
                let vs_hot = ns / hot_denied_ns;
                println!(
                    "{name:<38}{shape_name:>8}{:>8}{size:>10}{ns:>10.1}{:>8.2}x  ({vs_hot:.2}x the hot denied SYN)",
                    lookup.to_string(),
                    ns / base_spread_ns
                );
                results.push(json!({"class": name, "mode": "spread", "shape": shape_name, "lookup": lookup.to_string(), "entries": size, "ns": ns, "baseline_ns": base_spread_ns, "ratio": ns / base_spread_ns, "hot_denied_ns": hot_denied_ns, "vs_hot_denied": vs_hot}));
            }
            println!(
                "{:<38}{shape_name:>8}{:>8}{size:>10}  filled in {load_seconds:.2} s; allowlist structures {:.1} MiB of kernel memory",
                "load",
                lookup.to_string(),
                allowlist as f64 / 1048576.0,
            );
        }
    }

    let mut open_port = Vec::new();
    open_port_rows(&options, base_ns, base_spread_ns, &mut open_port)?;

    let report = json!({
        "benchmark": "xdp",
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "repeat": options.repeat,
        "rounds": options.rounds,
        "dir24_blocks": DIR24_BLOCKS,
        "baseline_ns": base_ns,
        "baseline_spread_ns": base_spread_ns,
        "results": results,
        "loads": loads,
        "open_port": open_port,
    });
    if let Some(dir) = options.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", options.json.display());
    Ok(())
}

/// Deny entries, bans and the SYN limit behind the open-port rows (the figures).
const OPEN_DENY_ENTRIES: usize = 100_000;
const OPEN_BANS: usize = 10_000;

/// An open port 25 with 100,000 deny entries, 10,000 bans and the SYN rate limiter on, beside an
/// allowlist port 587 with the same rules: what each verdict costs against the empty program.
/// The limiter's rate is high enough that the measured stranger stays within it, except for the
/// source the benchmark first pushes over it.
fn open_port_rows(
    options: &Options,
    base_ns: f64,
    base_spread_ns: f64,
    results: &mut Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let mut filter = Filter::load_with(&LoadOptions {
        object: BENCH_OBJECT,
        ipv4_lookup: Ipv4Lookup::Dir24,
        dir24_blocks: DIR24_BLOCKS,
        ..LoadOptions::default()
    })?;
    // 10,000 SYNs a second with a burst of 2,000,000: a source stays within its rate for a whole
    // measurement unless pushed over first.
    filter.maps().set_policy(&Policy {
        mode: Mode::Enforce,
        ports: vec![25, 587],
        open_ports: vec![25],
        syn_rate: 10_000,
        syn_burst: 2_000_000,
        event_rate: gatekeeper::config::DEFAULT_DROP_EVENT_RATE,
        event_burst: gatekeeper::config::DEFAULT_DROP_EVENT_BURST,
        ..Policy::default()
    })?;
    for net in allowlist_v4(&mut Rng::new(0x0be5), 10_000)
        .iter()
        .chain(allowlist_v6().iter())
    {
        filter.maps().insert(*net)?;
    }
    // The measured sources: a stranger whose /24 nothing touches, one sharing its /24 with a ban
    // and a deny entry (the bitmap says "look further"), a banned one, a denied one, one pushed
    // over its rate.
    let clear = Ipv4Addr::new(203, 0, 113, 66);
    let neighbour = Ipv4Addr::new(192, 0, 2, 66);
    let banned = Ipv4Addr::new(192, 0, 2, 9);
    let denied = Ipv4Addr::new(192, 0, 2, 200);
    let limited = Ipv4Addr::new(203, 0, 113, 77);
    // 3fff::/20 is documentation space too (RFC 9637), in another /24 region than 2001:db8::.
    let banned_v6 = Ipv6Addr::new(0x3fff, 0, 0xbad, 0, 0, 0, 0, 9);
    let neighbour_v6 = Ipv6Addr::new(0x3fff, 0, 0x66, 0, 0, 0, 0, 66);
    let started = Instant::now();
    let mut rng = Rng::new(0xde17);
    let rules = filter.rules();
    rules.deny.insert("192.0.2.192/26".parse()?)?;
    let mut denied_count = 1;
    while denied_count < OPEN_DENY_ENTRIES {
        // Routed-like prefixes from /16 to /28, away from the measured sources' /24s.
        let len = 16 + rng.below(13) as u8;
        let addr = Ipv4Addr::from(rng.next_u64() as u32);
        let net = Ipv4Net::new(addr, len)?.trunc();
        let touches = [clear, neighbour, limited, PARTNER_V4, STRANGER_V4]
            .iter()
            .any(|a| {
                net.contains(a) || Ipv4Net::new(*a, 24).is_ok_and(|n| net.contains(&n.network()))
            });
        if !touches && rules.deny.insert(IpNet::V4(net))? {
            denied_count += 1;
        }
    }
    let until = clock::deadline_after(std::time::Duration::from_secs(3600));
    rules.bans.ban(banned.into(), until)?;
    rules.bans.ban(banned_v6.into(), until)?;
    // One ban per family in the overflow hash map (as if both its buckets were full), so the
    // fallback's cost stays measured: the two bucket probes, then the hash lookup.
    let banned_hash = Ipv4Addr::new(192, 0, 2, 10);
    let banned_hash_v6 = Ipv6Addr::new(0x3fff, 0, 0xbad, 1, 0, 0, 0, 9);
    rules.bans.set_force_overflow(true);
    rules.bans.ban(banned_hash.into(), until)?;
    rules.bans.ban(banned_hash_v6.into(), until)?;
    rules.bans.set_force_overflow(false);
    let mut bans = 4;
    while bans < OPEN_BANS {
        let addr = if bans % 10 == 0 {
            std::net::IpAddr::V6(Ipv6Addr::from(u128::from(rng.next_u64()) << 64))
        } else {
            std::net::IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
        };
        if rules.bans.ban(addr, until)?.new {
            bans += 1;
        }
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let program = filter.program_mut()?;
    // Push `limited` over its rate: more SYNs at once than its burst.
    let over = tcp_v4(limited, HOST_V4, 25, TCP_SYN);
    program
        .test_run(TestRunOptions {
            data_in: Some(&over),
            repeat: 2_100_000,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    println!(
        "\nopen port 25 (allowlist port 587) with {OPEN_DENY_ENTRIES} deny entries, {OPEN_BANS} bans, SYN limit on; filled in {fill_seconds:.1} s"
    );
    let rows: [(&str, Vec<u8>); 12] = [
        (
            "open port, SYN, passed, IPv4",
            tcp_v4(clear, HOST_V4, 25, TCP_SYN),
        ),
        (
            "open port, SYN, passed, /24 of a ban",
            tcp_v4(neighbour, HOST_V4, 25, TCP_SYN),
        ),
        (
            "open port, SYN, allowlisted, IPv4",
            tcp_v4(PARTNER_V4, HOST_V4, 25, TCP_SYN),
        ),
        (
            "open port, SYN, banned, IPv4",
            tcp_v4(banned, HOST_V4, 25, TCP_SYN),
        ),
        (
            "open port, SYN, banned (overflow hash), IPv4",
            tcp_v4(banned_hash, HOST_V4, 25, TCP_SYN),
        ),
        (
            "open port, SYN, denied, IPv4",
            tcp_v4(denied, HOST_V4, 25, TCP_SYN),
        ),
        ("open port, SYN, rate-limited, IPv4", over.clone()),
        (
            "open port, SYN, passed, IPv6",
            tcp_v6(STRANGER_V6, HOST_V6, 25, TCP_SYN),
        ),
        (
            "open port, SYN, passed, IPv6 /24 of a ban",
            tcp_v6(neighbour_v6, HOST_V6, 25, TCP_SYN),
        ),
        (
            "open port, SYN, banned, IPv6",
            tcp_v6(banned_v6, HOST_V6, 25, TCP_SYN),
        ),
        (
            "open port, SYN, banned (overflow hash), IPv6",
            tcp_v6(banned_hash_v6, HOST_V6, 25, TCP_SYN),
        ),
        (
            "allowlist port, SYN, allowed, IPv4",
            tcp_v4(PARTNER_V4, HOST_V4, 587, TCP_SYN),
        ),
    ];
    println!("{:<44}{:>10}{:>9}", "class", "ns", "ratio");
    for (name, frame) in &rows {
        let ns = measure(program, frame, options.repeat, options.rounds)?;
        println!("{name:<44}{ns:>10.1}{:>8.2}x", ns / base_ns);
        results.push(json!({"class": name, "mode": "hot", "shape": "open", "lookup": "dir24", "entries": 10_000, "deny_entries": OPEN_DENY_ENTRIES, "bans": OPEN_BANS, "ns": ns, "baseline_ns": base_ns, "ratio": ns / base_ns}));
    }
    // Every run a new source: a new bucket in the LRU map each SYN (evicting when full).
    let spread = filter.sibling_program(BENCH_SPREAD_PROGRAM_NAME)?;
    let frame = tcp_v4(STRANGER_V4, HOST_V4, 25, TCP_SYN);
    let ns = measure(spread, &frame, options.repeat, options.rounds)?;
    let name = "open port, SYN, many sources, IPv4";
    println!("{name:<44}{ns:>10.1}{:>8.2}x", ns / base_spread_ns);
    results.push(json!({"class": name, "mode": "spread", "shape": "open", "lookup": "dir24", "entries": 10_000, "deny_entries": OPEN_DENY_ENTRIES, "bans": OPEN_BANS, "ns": ns, "baseline_ns": base_spread_ns, "ratio": ns / base_spread_ns}));
    Ok(())
}
