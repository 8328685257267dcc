//! `cargo xtask bench xdp`, control-plane rows: the real `gatekeeper` binary (release build, from
//! `GATEKEEPER_BIN`) with large allowlists. Per list size and shape: how long `gatekeeper run`
//! takes from spawn to "enforcing", the daemon's RSS then (VmHWM and VmRSS), and the wall time
//! and peak RSS of `status`, `allow list --json` and `allow add` against it.
//!
//! Shapes: *clustered* (/32s, 64 to a /24, so few DIR-24-8 blocks) and *spread* (every /32 in a
//! random /24 of its own: the DIR-24-8 worst case while each took a block; now none). The daemon attaches to a
//! veth in namespaces this benchmark creates; the testbed (namespaces, temp dir, pins, daemon) is
//! removed when it drops, also on failure or Ctrl-C.

use std::{
    net::Ipv4Addr,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gatekeeper_tests::{generate::Rng, gk::Testbed, process::Daemon};
use serde_json::json;

/// How long a daemon may take to load a list and attach (the 1M spread list on a loaded machine).
const START_TIMEOUT: Duration = Duration::from_secs(180);

struct Options {
    sizes: Vec<usize>,
    /// Runs of `status` and `allow list --json` per case (median).
    reads: usize,
    /// `allow add` runs per case (median; each adds a new entry).
    adds: usize,
    json: PathBuf,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        sizes: vec![10_000, 100_000, 1_000_000],
        reads: 3,
        adds: 5,
        json: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/control.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                let list = args
                    .next()
                    .context("--sizes needs a list like 10000,100000")?;
                options.sizes = list
                    .split(',')
                    .map(|s| s.trim().parse().context("--sizes takes numbers"))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--quick" => {
                options.reads = 1;
                options.adds = 3;
            }
            "--json" => options.json = PathBuf::from(args.next().context("--json needs a path")?),
            "--bench" => {}
            other => bail!("unknown argument {other} (use --sizes, --quick, --json)"),
        }
    }
    Ok(options)
}

#[derive(Clone, Copy)]
enum Shape {
    Clustered,
    Spread,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Clustered => "clustered",
            Shape::Spread => "spread",
        }
    }
}

/// `count` distinct /32s in 1.0.0.0-99.255.255.255 (far from the documentation ranges the
/// testbed uses), in the file's order.
fn entries(shape: Shape, count: usize, seed: u64) -> Vec<Ipv4Addr> {
    let mut rng = Rng::new(seed);
    match shape {
        // 64 hosts in each /24, the /24s consecutive from 1.0.0.0.
        Shape::Clustered => (0..count as u32)
            .map(|i| Ipv4Addr::from(0x0100_0000 + ((i / 64) << 8) + (i % 64) * 4))
            .collect(),
        Shape::Spread => {
            let mut slots = std::collections::HashSet::with_capacity(count);
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                let slot = 0x01_0000 + (rng.next_u64() as u32) % (99 << 16);
                if slots.insert(slot) {
                    out.push(Ipv4Addr::from((slot << 8) | (rng.next_u64() as u32 & 0xff)));
                }
            }
            out
        }
    }
}

/// Wall time and peak RSS of one finished CLI run.
struct Run {
    seconds: f64,
    peak_rss_kib: u64,
    status: ExitStatus,
}

/// Runs `cmd` (stdout discarded, stderr to `stderr`) and measures it with wait4: the child's
/// own peak RSS, not that of everything this process ever waited for.
fn measured(mut cmd: Command, stderr: &std::path::Path) -> anyhow::Result<Run> {
    let stderr = std::fs::File::create(stderr).context("creating the CLI's stderr file")?;
    // A spawned child starts from this process's memory (vfork, or a copy until exec), and its
    // peak RSS keeps that memory's high-water mark: reset it to this process's current RSS (a
    // few MB), or every CLI would be charged with the generated list's peak.
    std::fs::write("/proc/self/clear_refs", "5").context("resetting this process's peak RSS")?;
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("spawning the gatekeeper CLI")?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, which nothing else reaps (the Child handle is dropped
    // without a wait); the pointers are to live locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if waited != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok(Run {
        seconds,
        peak_rss_kib: usage.ru_maxrss as u64,
        status: ExitStatus::from_raw(status),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `VmHWM` and `VmRSS` of `pid` (a daemon's, or this process's), in KiB.
fn daemon_rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// Waits until the daemon's log holds `needle` `count` times.
fn wait_for_count(daemon: &Daemon, needle: &str, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if daemon.log().matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn case(shape: Shape, size: usize, options: &Options) -> anyhow::Result<serde_json::Value> {
    let bed = Testbed::new("gkcp");
    let list = entries(shape, size, 0xc0_47 ^ size as u64);
    let mut text = bed.config_text("", &[]);
    text.reserve(size * 32);
    for addr in &list {
        text.push_str("\n[[allow]]\ncidr = \"");
        text.push_str(&addr.to_string());
        text.push_str("/32\"\n");
    }
    bed.write_config(&text);
    drop(text);
    drop(list);
    // The floor under the CLI's peak RSS figures (see `measured`).
    let (_, bench_rss_kib) = daemon_rss(std::process::id())?;

    let mut cmd = bed.host().nsenter();
    cmd.arg(gatekeeper_tests::workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&bed.config);
    let log = bed.dir.path().join("gatekeeper-run.log");
    let started = Instant::now();
    let mut daemon = Daemon::start("gatekeeper run", cmd, &log)?;
    daemon.wait_for_log("enforcing", START_TIMEOUT)?;
    let start_seconds = started.elapsed().as_secs_f64();
    let pid = daemon.pid().context("daemon pid")?;
    let (hwm_kib, rss_kib) = daemon_rss(pid)?;

    let cli = |args: &[&str]| -> anyhow::Result<Run> {
        let stderr = bed.dir.path().join("cli.stderr");
        let run = measured(bed.cli_command(args), &stderr)?;
        if !run.status.success() {
            bail!(
                "gatekeeper {args:?} failed ({}):\n{}",
                run.status,
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        Ok(run)
    };
    let reads = |args: &[&str]| -> anyhow::Result<(f64, u64)> {
        let runs = (0..options.reads)
            .map(|_| cli(args))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let peak = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        Ok((median(runs.iter().map(|r| r.seconds).collect()), peak))
    };
    let (status_seconds, status_rss) = reads(&["status"])?;
    let (list_seconds, list_rss) = reads(&["allow", "list", "--json"])?;

    // Each add a new /32 in 100.64.0.0/10 (in no generated list). The daemon reloads after each
    // change of the file; the next add waits for that, so no add competes with a reload.
    let mut adds = Vec::new();
    let mut add_rss = 0;
    for i in 0..options.adds {
        let reloads = daemon.log().matches("config reloaded").count();
        let net = format!("100.64.{}.{}/32", i / 256, i % 256);
        let run = cli(&["allow", "add", &net])?;
        adds.push(run.seconds);
        add_rss = add_rss.max(run.peak_rss_kib);
        if !wait_for_count(&daemon, "config reloaded", reloads + 1, START_TIMEOUT) {
            bail!("the daemon did not reload after `allow add {net}`");
        }
    }
    let add_seconds = median(adds);
    daemon.stop_with(libc::SIGTERM, Duration::from_secs(60))?;

    println!(
        "{:<10}{size:>10}{start_seconds:>9.2}{:>9.1}{:>9.1}{:>10.3}{:>8.1}{:>10.3}{:>10.3}{:>8.1}",
        shape.name(),
        hwm_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0,
        add_seconds,
        add_rss as f64 / 1024.0,
        status_seconds,
        list_seconds,
        list_rss as f64 / 1024.0,
    );
    Ok(json!({
        "shape": shape.name(), "entries": size, "start_seconds": start_seconds,
        "daemon_hwm_kib": hwm_kib, "daemon_rss_kib": rss_kib,
        "add_seconds": add_seconds, "add_peak_rss_kib": add_rss,
        "status_seconds": status_seconds, "status_peak_rss_kib": status_rss,
        "list_json_seconds": list_seconds, "list_json_peak_rss_kib": list_rss,
        "bench_rss_kib": bench_rss_kib,
    }))
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the control-plane benchmark attaches XDP in namespaces: run it as root");
    }
    gatekeeper_tests::cleanup::on_interrupt_clean_up()?;
    let binary = gatekeeper_tests::workspace_binary("gatekeeper");
    println!("gatekeeper binary: {}", binary.display());
    println!(
        "\n{:<10}{:>10}{:>9}{:>9}{:>9}{:>10}{:>8}{:>10}{:>10}{:>8}",
        "shape",
        "entries",
        "start s",
        "HWM MB",
        "RSS MB",
        "add s",
        "add MB",
        "status s",
        "list s",
        "list MB"
    );
    let mut results = Vec::new();
    for &size in &options.sizes {
        for shape in [Shape::Clustered, Shape::Spread] {
            results.push(case(shape, size, &options)?);
        }
    }
    let report = json!({
        "benchmark": "control",
        "binary": binary.display().to_string(),
        "reads": options.reads,
        "adds": options.adds,
        "results": results,
    });
    if let Some(dir) = options.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", options.json.display());
    Ok(())
}
