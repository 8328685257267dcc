//! `cargo xtask bench flood`: a SYN flood from many denied sources against a protected host on a
//! veth, received four ways in the same run:
//!
//! - `xdp`: the gatekeeper program (native mode) drops it;
//! - `nftables`: an empty XDP_PASS program (so the veth receives exactly as in the other cases)
//!   and an nftables rule in the earliest hook nftables has, netdev ingress, dropping the same
//!   traffic with the same allowlist as an interval set;
//! - `none`: the empty XDP_PASS program alone; the kernel's TCP answers every SYN (a listener is
//!   on port 25, so with SYN-ACKs / SYN cookies);
//! - `floor`: an empty XDP_DROP program, the cheapest a receiver can discard.
//!
//! The flood comes from `FloodGenerator` (an XDP program run through BPF_PROG_TEST_RUN in
//! live-frames mode, XDP_TX into the attacker's veth), pinned to the last CPU. Each case runs in
//! two placements (see `Placement`): `shared`, where the veth's NAPI runs in softirq on the
//! generator's CPU and /proc/stat tells the receiver's time (softirq) from the generator's
//! (system), and `split`, where threaded NAPI runs on CPU 0 and the generator overruns the veth
//! ring as a flood overruns a NIC. While the flood runs, an allowed peer on the attacker's side of
//! the same link opens real TCP connections to port 25 and times them.
//!
//! Figures are ratios against the other cases of the same run. No timing is asserted anywhere.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::Ebpf;
use gatekeeper::{
    config::XdpMode,
    filter::{Filter, xdp_program},
    policy::{Mode, Policy},
};
use gatekeeper_bench_objects::{
    BASELINE_PROGRAM_NAME, BENCH_OBJECT, DROP_PROGRAM_NAME, FLOOD_OBJECT, FloodGenerator,
    load_program, syn_frame,
};
use gatekeeper_common::{Counter, Family};
use gatekeeper_tests::{
    addresses::{HOST_V4, PARTNER_V4},
    netns::{Link, Netns},
    tcp::BannerServer,
};
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};

const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
const SOURCES: u32 = 256;
const SMTP_PORT: u16 = 25;
const NFT_TABLE: &str = "gkbench";
/// Frames per BPF_PROG_TEST_RUN call: short enough to stop promptly.
const FRAMES_PER_CALL: u32 = 1 << 18;
/// Long enough for two SYN retransmissions (after 1 s and 3 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// `split` runs three kinds of threads SCHED_FIFO so that the other work on this shared machine
/// neither pauses the flood nor delays its receiver or the measurements: the generator (CPU 1),
/// the veth's NAPI thread (CPU 0), and above both this process's main thread with the probes it
/// starts (CPU 0; they sleep nearly all the time).
const GENERATOR_PRIORITY: i32 = 40;
const NAPI_PRIORITY: i32 = 50;
const MEASURE_PRIORITY: i32 = 60;
/// Frames per live-frames batch: the kernel's maximum, fewest flushes per frame.
const BATCH: u32 = 256;

struct Options {
    seconds: f64,
    rounds: usize,
    probes: usize,
    entries: usize,
    json: PathBuf,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        seconds: 3.0,
        rounds: 3,
        probes: 5,
        entries: 10_000,
        json: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/flood.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--seconds" => options.seconds = value("a number")?.parse()?,
            "--rounds" => options.rounds = value("a number")?.parse()?,
            "--probes" => options.probes = value("a number")?.parse()?,
            "--entries" => options.entries = value("a number")?.parse()?,
            "--json" => options.json = PathBuf::from(value("a path")?),
            "--quick" => {
                options.seconds = 1.0;
                options.rounds = 1;
                options.probes = 3;
            }
            "--bench" => {}
            other => bail!(
                "unknown argument {other} (use --seconds, --rounds, --probes, --entries, --quick, --json)"
            ),
        }
    }
    anyhow::ensure!(
        options.rounds > 0 && options.seconds > 0.0,
        "nothing to measure"
    );
    Ok(options)
}

/// Pins thread or process `pid` (0: the calling thread) to `cpu`.
fn pin(pid: i32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning {pid} to CPU {cpu}"));
        }
    }
    Ok(())
}

/// Gives thread `pid` (0: the caller) SCHED_FIFO at `priority`, or back SCHED_OTHER with 0.
fn realtime(pid: i32, priority: i32) -> anyhow::Result<()> {
    let policy = if priority > 0 {
        libc::SCHED_FIFO
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param for the policy.
    if unsafe { libc::sched_setscheduler(pid, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("scheduling policy of {pid}"));
    }
    Ok(())
}

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {name}");
    Ok(index)
}

/// Received packets of `iface` in `ns` (/proc/net/dev, as the namespace sees it).
fn rx_packets(ns: &Netns, iface: &str) -> anyhow::Result<u64> {
    let text = ns.on_this_thread(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':')
            && name.trim() == iface
        {
            return rest
                .split_whitespace()
                .nth(1)
                .context("short /proc/net/dev line")?
                .parse()
                .context("rx packets");
        }
    }
    bail!("{iface} not in /proc/net/dev")
}

/// The host's TCP counters that show what reached TCP: segments in, checksum errors, SYN
/// cookies sent (/proc/net/snmp and /proc/net/netstat as the namespace sees them).
fn tcp_counters(ns: &Netns) -> anyhow::Result<[u64; 3]> {
    let read = |file: &str| ns.on_this_thread(|| std::fs::read_to_string(file));
    let snmp = read("/proc/thread-self/net/snmp")??;
    let netstat = read("/proc/thread-self/net/netstat")??;
    let field = |text: &str, prefix: &str, name: &str| -> u64 {
        let mut lines = text.lines().filter(|l| l.starts_with(prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return 0;
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    Ok([
        field(&snmp, "Tcp:", "InSegs"),
        field(&snmp, "Tcp:", "InCsumErrors"),
        field(&netstat, "TcpExt:", "SyncookiesSent"),
    ])
}

/// Time `cpu` spent in system (process context, kernel) and in softirq, in nanoseconds
/// (/proc/stat; without IRQ_TIME_ACCOUNTING these are sampled at each tick).
fn cpu_times(cpu: usize) -> anyhow::Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} in /proc/stat"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ns = |i: usize| fields.get(i).copied().unwrap_or(0) * 1_000_000_000 / hz;
    Ok(CpuTimes {
        system: ns(2),
        softirq: ns(6),
    })
}

#[derive(Clone, Copy)]
struct CpuTimes {
    system: u64,
    softirq: u64,
}

/// The thread running `iface`'s NAPI poll (threaded NAPI), by its name `napi/<iface>-<id>`.
fn napi_thread(iface: &str) -> Option<i32> {
    let prefix: String = format!("napi/{iface}-").chars().take(15).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
            && comm.trim_end().starts_with(&prefix)
        {
            return Some(pid);
        }
    }
    None
}

/// Nanoseconds `pid` has run (first field of /proc/PID/schedstat).
fn run_time(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0)
}

/// The allowlist both filters get: the partner's /24, the flood's neighbours (every other /24
/// of 203.0.0.0/16, so a lookup for a flood source walks as deep as a /24 goes, not off a short
/// branch), then other /24s up to `entries`. None covers 203.0.113.0/24, where the flood comes
/// from. These are only list entries: no traffic uses them.
fn allowlist(entries: usize) -> Vec<String> {
    let mut nets = vec!["198.51.100.0/24".to_string()];
    nets.extend(
        (0..=255u32)
            .filter(|third| *third != 113)
            .map(|third| format!("203.0.{third}.0/24")),
    );
    let mut i = 0usize;
    while nets.len() < entries {
        nets.push(format!(
            "{}.{}.{}.0/24",
            10 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
        i += 1;
    }
    nets.truncate(entries.max(1));
    nets
}

/// The nftables table of case `nftables`, deleted on drop (the namespace goes too, anyway).
struct NftTable<'a> {
    ns: &'a Netns,
}

impl<'a> NftTable<'a> {
    fn install(ns: &'a Netns, iface: &str, allow: &[String]) -> anyhow::Result<NftTable<'a>> {
        let ruleset = format!(
            "table netdev {NFT_TABLE} {{\n  set allow4 {{\n    type ipv4_addr; flags interval;\n    elements = {{ {} }}\n  }}\n  chain ingress {{\n    type filter hook ingress device \"{iface}\" priority -500; policy accept;\n    tcp dport {SMTP_PORT} ip saddr != @allow4 counter drop\n  }}\n}}\n",
            allow.join(", ")
        );
        let path = std::env::temp_dir().join(format!("gk-flood-{}.nft", std::process::id()));
        std::fs::write(&path, ruleset)?;
        let out = ns
            .command(&["nft", "-f", &path.to_string_lossy()])
            .output()
            .context("running nft (install nftables: apt-get install nftables)");
        let _ = std::fs::remove_file(&path);
        let out = out?;
        if !out.status.success() {
            bail!(
                "nft -f failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(NftTable { ns })
    }

    /// Packets the rule dropped.
    fn dropped(&self) -> u64 {
        let out = self
            .ns
            .command(&["nft", "list", "chain", "netdev", NFT_TABLE, "ingress"])
            .output();
        let Ok(out) = out else { return 0 };
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command(&["nft", "delete", "table", "netdev", NFT_TABLE])
            .output();
    }
}

/// What is attached to the host veth for one case.
enum Receiver<'a> {
    Xdp(Box<Filter>),
    Nft(Ebpf, NftTable<'a>),
    Pass(Ebpf),
    Floor(Ebpf),
}

impl Receiver<'_> {
    fn detach(self) -> anyhow::Result<()> {
        match self {
            Receiver::Xdp(mut filter) => filter.detach_all(),
            // Dropping the object closes the program and its link: the veth is free again.
            Receiver::Nft(ebpf, table) => {
                drop(table);
                drop(ebpf);
                Ok(())
            }
            Receiver::Pass(ebpf) | Receiver::Floor(ebpf) => {
                drop(ebpf);
                Ok(())
            }
        }
    }

    /// The IPv4 lookup the gatekeeper program uses (xdp case only).
    fn lookup(&mut self) -> Option<&'static str> {
        match self {
            Receiver::Xdp(filter) => filter.maps().ipv4_lookup().ok(),
            _ => None,
        }
    }

    /// Frames the receiver itself counted as dropped (for the table's cross-check).
    fn dropped(&mut self) -> Option<u64> {
        match self {
            Receiver::Xdp(filter) => filter
                .maps()
                .counters(0)
                .ok()
                .map(|c| c.0[Family::Ipv4 as usize][Counter::Dropped as usize]),
            Receiver::Nft(_, table) => Some(table.dropped()),
            Receiver::Pass(_) | Receiver::Floor(_) => None,
        }
    }
}

fn attach_standalone(
    host: &Netns,
    iface: &str,
    mut ebpf: Ebpf,
    name: &str,
) -> anyhow::Result<Ebpf> {
    host.on_this_thread(|| -> anyhow::Result<()> {
        xdp_program(&mut ebpf, name)?
            .attach(iface, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface} in native mode"))?;
        Ok(())
    })??;
    Ok(ebpf)
}

fn receiver<'a>(
    case: &str,
    host: &'a Netns,
    iface: &str,
    allow: &[String],
) -> anyhow::Result<Receiver<'a>> {
    Ok(match case {
        "xdp" => {
            // Default options (IPv4 lookup `auto`, as the daemon's default config); the policy
            // goes in after the list, as the daemon does, so `auto` sees the list's size.
            let mut filter = Filter::load(None)?;
            for net in allow {
                filter.maps().insert(net.parse()?)?;
            }
            filter.maps().set_policy(&Policy {
                mode: Mode::Enforce,
                ports: vec![SMTP_PORT],
                event_rate: gatekeeper::config::DEFAULT_DROP_EVENT_RATE,
                event_burst: gatekeeper::config::DEFAULT_DROP_EVENT_BURST,
                ..Policy::default()
            })?;
            host.on_this_thread(|| filter.attach(iface, XdpMode::Native, 0))??;
            Receiver::Xdp(Box::new(filter))
        }
        "nftables" => {
            let ebpf = load_program(BENCH_OBJECT, BASELINE_PROGRAM_NAME)?;
            let ebpf = attach_standalone(host, iface, ebpf, BASELINE_PROGRAM_NAME)?;
            Receiver::Nft(ebpf, NftTable::install(host, iface, allow)?)
        }
        "none" => {
            let ebpf = load_program(BENCH_OBJECT, BASELINE_PROGRAM_NAME)?;
            Receiver::Pass(attach_standalone(host, iface, ebpf, BASELINE_PROGRAM_NAME)?)
        }
        "floor" => {
            let ebpf = load_program(FLOOD_OBJECT, DROP_PROGRAM_NAME)?;
            Receiver::Floor(attach_standalone(host, iface, ebpf, DROP_PROGRAM_NAME)?)
        }
        other => bail!("unknown case {other}"),
    })
}

/// One timed connect from the allowed partner to the host's port 25: latency in ms, or None.
fn probe(attacker: &Netns, timeout: Duration) -> Option<f64> {
    attacker
        .run(move || -> std::io::Result<f64> {
            let dest = SocketAddr::new(IpAddr::V4(HOST_V4), SMTP_PORT);
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.bind(&SocketAddr::new(IpAddr::V4(PARTNER_V4), 0).into())?;
            let started = Instant::now();
            socket.connect_timeout(&dest.into(), timeout)?;
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        })
        .ok()?
        .ok()
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Setup {
    link: Link,
    rx_cpu: usize,
    gen_cpu: usize,
    frame: Vec<u8>,
    attacker_ifindex: u32,
}

fn setup() -> anyhow::Result<Setup> {
    let link = Link::new("gf")?;
    let (attacker, host) = (&link.left, &link.right);
    attacker.add_addr(&link.left_if, &format!("{ATTACKER_V4}/24"))?;
    attacker.add_addr(&link.left_if, &format!("{PARTNER_V4}/32"))?;
    host.add_addr(&link.right_if, &format!("{HOST_V4}/24"))?;
    // Answers to every source (SYN-ACKs, RSTs, the partner's handshake) go back over the veth.
    host.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &ATTACKER_V4.to_string(),
    ])?;
    // Fixed neighbours both ways: no ARP has to get through the flood.
    let (host_mac, attacker_mac) = (host.mac(&link.right_if)?, attacker.mac(&link.left_if)?);
    let show = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    host.exec(&[
        "ip",
        "neigh",
        "replace",
        &ATTACKER_V4.to_string(),
        "lladdr",
        &show(attacker_mac),
        "dev",
        &link.right_if,
        "nud",
        "permanent",
    ])?;
    attacker.exec(&[
        "ip",
        "neigh",
        "replace",
        &HOST_V4.to_string(),
        "lladdr",
        &show(host_mac),
        "dev",
        &link.left_if,
        "nud",
        "permanent",
    ])?;
    let frame = syn_frame(host_mac, attacker_mac, FIRST_SOURCE, HOST_V4, SMTP_PORT);
    let attacker_ifindex = attacker.on_this_thread(|| ifindex(&link.left_if))??;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Setup {
        rx_cpu: 0,
        gen_cpu: cpus.saturating_sub(1),
        frame,
        attacker_ifindex,
        link,
    })
}

struct Window {
    pps: f64,
    offered_pps: f64,
    /// Receive-side CPU time per packet: softirq time of the shared CPU (`shared`), or the NAPI
    /// thread's run time (`split`).
    receive_ns: f64,
    /// Generator CPU time per frame offered (system time of its CPU), `shared` only.
    generator_ns: f64,
    /// Fraction of wall time the receive side was busy.
    receive_busy: f64,
}

/// How the receive work is placed. `Shared`: veth NAPI as the kernel does it by default, in
/// softirq on the CPU that scheduled it, i.e. the generator's; the generator then can never
/// outrun the receiver (every batch is received before the next is made) and the two are told
/// apart by /proc/stat: the generator runs in system time, the receiver in softirq time.
/// `Split`: threaded NAPI, its kernel thread pinned to another CPU (SCHED_FIFO); the generator
/// runs freely, the veth ring (256 frames) overflows as a NIC's ring does under overload.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    Shared,
    Split,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Shared => "shared",
            Placement::Split => "split",
        }
    }
}

fn measure_case(
    case: &str,
    placement: Placement,
    setup: &Setup,
    generator: &FloodGenerator,
    options: &Options,
    allow: &[String],
) -> anyhow::Result<Value> {
    let link = &setup.link;
    let (attacker, host) = (&link.left, &link.right);
    let mut receiver = receiver(case, host, &link.right_if, allow)?;
    let threaded = if placement == Placement::Split { 1 } else { 0 };
    host.exec(&[
        "sh",
        "-c",
        &format!(
            "echo {threaded} > /sys/class/net/{}/threaded",
            link.right_if
        ),
    ])?;
    let napi = if placement == Placement::Split {
        let pid = napi_thread(&link.right_if).context("no NAPI thread for the host veth")?;
        pin(pid, setup.rx_cpu)?;
        realtime(pid, NAPI_PRIORITY)?;
        Some(pid)
    } else {
        None
    };
    let dropped_before = receiver.dropped();
    let tcp_before = tcp_counters(host)?;
    let lookup = receiver.lookup();

    let stop = AtomicBool::new(false);
    let result = thread::scope(|scope| -> anyhow::Result<Value> {
        let flood = scope.spawn(|| -> anyhow::Result<()> {
            pin(0, setup.gen_cpu)?;
            if placement == Placement::Split {
                realtime(0, GENERATOR_PRIORITY)?;
            }
            attacker.on_this_thread(|| -> anyhow::Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    generator.send(setup.attacker_ifindex, &setup.frame, FRAMES_PER_CALL, BATCH)?;
                }
                Ok(())
            })?
        });
        let measured = (|| -> anyhow::Result<Value> {
            thread::sleep(Duration::from_millis(300));
            let mut windows = Vec::new();
            for _ in 0..options.rounds {
                let rx0 = rx_packets(host, &link.right_if)?;
                let gen0 = generator.produced()?;
                let c0 = cpu_times(setup.gen_cpu)?;
                let n0 = napi.map_or(0, run_time);
                let started = Instant::now();
                thread::sleep(Duration::from_secs_f64(options.seconds));
                let rx1 = rx_packets(host, &link.right_if)?;
                let gen1 = generator.produced()?;
                let c1 = cpu_times(setup.gen_cpu)?;
                let n1 = napi.map_or(0, run_time);
                let wall = started.elapsed().as_secs_f64();
                let packets = (rx1 - rx0).max(1) as f64;
                let frames = (gen1 - gen0).max(1) as f64;
                let receive = match placement {
                    Placement::Shared => (c1.softirq - c0.softirq) as f64,
                    Placement::Split => (n1 - n0) as f64,
                };
                windows.push(Window {
                    pps: (rx1 - rx0) as f64 / wall,
                    offered_pps: (gen1 - gen0) as f64 / wall,
                    receive_ns: receive / packets,
                    generator_ns: (c1.system - c0.system) as f64 / frames,
                    receive_busy: receive / (wall * 1e9),
                });
            }
            let mut latencies = Vec::new();
            // The floor drops every frame, the partner's too: nothing to connect to.
            let probes = if case == "floor" { 0 } else { options.probes };
            for _ in 0..probes {
                latencies.push(probe(attacker, PROBE_TIMEOUT));
                thread::sleep(Duration::from_millis(100));
            }
            let pick =
                |f: fn(&Window) -> f64| median(&mut windows.iter().map(f).collect::<Vec<_>>());
            let connected: Vec<f64> = latencies.iter().flatten().copied().collect();
            let receive_ns = pick(|w| w.receive_ns);
            Ok(json!({
                "pps": pick(|w| w.pps),
                "pps_samples": windows.iter().map(|w| w.pps).collect::<Vec<_>>(),
                "offered_pps": pick(|w| w.offered_pps),
                "receive_ns_per_packet": receive_ns,
                "receive_ns_samples": windows.iter().map(|w| w.receive_ns).collect::<Vec<_>>(),
                "generator_ns_per_frame": if placement == Placement::Shared { json!(pick(|w| w.generator_ns)) } else { Value::Null },
                "receive_busy": pick(|w| w.receive_busy),
                "receive_capacity_pps": 1e9 / receive_ns,
                "connects": latencies.len(),
                "connected": connected.len(),
                "connect_ms_median": if connected.is_empty() { Value::Null } else { json!(median(&mut connected.clone())) },
                "connect_ms": latencies,
            }))
        })();
        stop.store(true, Ordering::Relaxed);
        let flooded = flood
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
        let measured = measured?;
        flooded.context("flood generator")?;
        Ok(measured)
    });
    let mut result = result?;
    if let (Some(before), Some(after)) = (dropped_before, receiver.dropped()) {
        result["receiver_dropped"] = json!(after - before);
    }
    if let Some(lookup) = lookup {
        result["ipv4_lookup"] = json!(lookup);
    }
    let tcp_after = tcp_counters(host)?;
    result["host_tcp"] = json!({
        "in_segments": tcp_after[0] - tcp_before[0],
        "checksum_errors": tcp_after[1] - tcp_before[1],
        "syn_cookies_sent": tcp_after[2] - tcp_before[2],
    });
    result["case"] = json!(case);
    result["placement"] = json!(placement.name());
    receiver.detach()?;
    // Let the ring drain before the next case.
    thread::sleep(Duration::from_millis(200));
    Ok(result)
}

const CASES: [(&str, &str); 4] = [
    ("xdp", "gatekeeper XDP program drops"),
    (
        "nftables",
        "nftables netdev ingress drops (XDP_PASS attached)",
    ),
    (
        "none",
        "no filter: the kernel's TCP answers (XDP_PASS attached)",
    ),
    ("floor", "empty XDP_DROP program (floor)"),
];

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpu_model": model,
        "cpus": thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the flood benchmark needs root (`sudo -E cargo xtask bench flood`)");
    }
    if !Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("nft not found: `cargo xtask bench flood` installs it (apt-get install nftables)");
    }
    gatekeeper_tests::cleanup::on_interrupt_clean_up()?;
    let allow = allowlist(options.entries);
    let setup = setup()?;
    // This thread and the probes it starts stay off the generator's CPU (the generator thread
    // pins itself); in `split` they share CPU 0 with the NAPI thread, which preempts them.
    if setup.rx_cpu != setup.gen_cpu {
        pin(0, setup.rx_cpu)?;
    }
    let generator = FloodGenerator::load(FIRST_SOURCE, SOURCES)?;
    println!(
        "flood: generator on CPU {}, host veth NAPI thread on CPU {}, {} allowlist entries, {} s x {} rounds per case",
        setup.gen_cpu, setup.rx_cpu, options.entries, options.seconds, options.rounds
    );

    let listener = BannerServer::start(
        &setup.link.right,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), SMTP_PORT),
        "bench",
    )?;
    // Connect latency with no flood, for the ratio.
    let mut idle: Vec<f64> = (0..options.probes.max(3))
        .filter_map(|_| probe(&setup.link.left, Duration::from_secs(3)))
        .collect();
    let idle = median(&mut idle);
    println!("idle connect from the allowed peer: {idle:.3} ms");

    let mut cases = Vec::new();
    for placement in [Placement::Shared, Placement::Split] {
        if placement == Placement::Split && setup.rx_cpu != setup.gen_cpu {
            realtime(0, MEASURE_PRIORITY)?;
        }
        println!(
            "\n[{}] {:<10}{:>12}{:>12}{:>13}{:>9}{:>12}{:>12}",
            placement.name(),
            "case",
            "pps",
            "offered",
            "recv ns/pkt",
            "busy",
            "connects",
            "connect ms"
        );
        for (case, label) in CASES {
            let mut r = measure_case(case, placement, &setup, &generator, &options, &allow)
                .with_context(|| format!("case {case} ({})", placement.name()))?;
            println!(
                "[{}] {case:<10}{:>12.0}{:>12.0}{:>13.1}{:>8.0}%{:>9}/{:<2}{:>12.2}",
                placement.name(),
                r["pps"].as_f64().unwrap_or(0.0),
                r["offered_pps"].as_f64().unwrap_or(0.0),
                r["receive_ns_per_packet"].as_f64().unwrap_or(0.0),
                r["receive_busy"].as_f64().unwrap_or(0.0) * 100.0,
                r["connected"],
                r["connects"],
                r["connect_ms_median"].as_f64().unwrap_or(f64::NAN),
            );
            r["label"] = json!(label);
            cases.push(r);
        }
    }
    realtime(0, 0)?;
    drop(listener);

    let get = |placement: &str, name: &str, field: &str| {
        cases
            .iter()
            .find(|c| c["case"] == name && c["placement"] == placement)
            .and_then(|c| c[field].as_f64())
            .unwrap_or(f64::NAN)
    };
    let ratios = json!({
        "xdp_pps_over_nftables": get("shared", "xdp", "pps") / get("shared", "nftables", "pps"),
        "xdp_pps_over_none": get("shared", "xdp", "pps") / get("shared", "none", "pps"),
        "xdp_pps_over_floor": get("shared", "xdp", "pps") / get("shared", "floor", "pps"),
        "nftables_receive_ns_over_xdp": get("shared", "nftables", "receive_ns_per_packet") / get("shared", "xdp", "receive_ns_per_packet"),
        "none_receive_ns_over_xdp": get("shared", "none", "receive_ns_per_packet") / get("shared", "xdp", "receive_ns_per_packet"),
        "xdp_receive_ns_over_floor": get("shared", "xdp", "receive_ns_per_packet") / get("shared", "floor", "receive_ns_per_packet"),
        "split_xdp_pps_over_nftables": get("split", "xdp", "pps") / get("split", "nftables", "pps"),
        "split_xdp_connect_over_idle": get("split", "xdp", "connect_ms_median") / idle,
    });
    println!(
        "\nshared CPU: XDP drops {:.1}x the packets per second nftables drops, each dropped packet costs the receive side {:.1}x less CPU; XDP costs {:.2}x the floor (empty XDP_DROP) per packet",
        ratios["xdp_pps_over_nftables"].as_f64().unwrap_or(f64::NAN),
        ratios["nftables_receive_ns_over_xdp"]
            .as_f64()
            .unwrap_or(f64::NAN),
        ratios["xdp_receive_ns_over_floor"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    let report = json!({
        "benchmark": "flood",
        "machine": machine(),
        "generator": {
            "kind": "XDP program via BPF_PROG_TEST_RUN, live-frames mode, XDP_TX",
            "batch": BATCH,
            "sources": format!("{FIRST_SOURCE}/24 x source ports 1024-65535"),
            "cpu": setup.gen_cpu,
        },
        "split_receive_cpu": setup.rx_cpu,
        "allowlist_entries": options.entries,
        "allowlist": "198.51.100.0/24 (the allowed peer), every 203.0.X.0/24 but the flood's 203.0.113.0/24, then 10.X.Y.0/24s",
        "seconds": options.seconds,
        "rounds": options.rounds,
        "idle_connect_ms": idle,
        "cases": cases,
        "ratios": ratios,
    });
    if let Some(dir) = options.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.json, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", options.json.display());
    Ok(())
}
