//! The benchmark report: `target/bench/{xdp,control,flood,relay}.json` gathered into one Markdown file
//! with tables and hand-written SVG bar charts, plus the combined JSON beside it. Every figure is a
//! ratio against a baseline measured in the same run; the machine is recorded with it.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::shell::{step, workspace_root};

/// The command that produces the published report.
pub const REPRODUCE: &str = "sudo -E cargo xtask bench all --publish";

/// One report: its Markdown and charts (file name, SVG).
struct Report {
    markdown: String,
    charts: Vec<(String, String)>,
}

/// Reads the JSON results, writes `target/bench/report.{md,json}` and charts; with `publish`,
/// also `docs/benchmarks.md` and `docs/bench-*.svg`.
pub fn write(publish: bool) -> anyhow::Result<()> {
    let dir = workspace_root().join("target/bench");
    step(&format!("bench report: gathering {}", dir.display()));
    let xdp = read(&dir.join("xdp.json"))?;
    let flood = read(&dir.join("flood.json"))?;
    let relay = read(&dir.join("relay.json"))?;
    let control = read(&dir.join("control.json"))?;
    let machine = machine();
    let results = Results {
        xdp: xdp.as_ref(),
        control: control.as_ref(),
        flood: flood.as_ref(),
        relay: relay.as_ref(),
    };
    let report = render(&machine, &results, "");
    save(&dir, &report)?;
    let combined = json!({
        "machine": machine,
        "generated_utc": utc_now(),
        "xdp": xdp,
        "control": control,
        "flood": flood,
        "relay": relay,
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&combined)?,
    )?;
    std::fs::write(dir.join("report.md"), &report.markdown)?;
    println!("    wrote {}", dir.join("report.md").display());
    if publish {
        let docs = workspace_root().join("docs");
        let report = render(&machine, &results, "bench-");
        save(&docs, &report)?;
        std::fs::write(docs.join("benchmarks.md"), &report.markdown)?;
        println!("    wrote {}", docs.join("benchmarks.md").display());
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(dir: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, svg) in &report.charts {
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cpu_model": model, "cpus": cores, "kernel": kernel.trim()})
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

/// 1234567 -> "1,234,567".
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

fn fixed(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "–".into()
    }
}

/// The JSON results the report is made of (each absent when not measured).
#[derive(Default)]
struct Results<'a> {
    xdp: Option<&'a Value>,
    control: Option<&'a Value>,
    flood: Option<&'a Value>,
    relay: Option<&'a Value>,
}

fn render(machine: &Value, results: &Results, chart_prefix: &str) -> Report {
    let mut md = String::new();
    let mut charts = Vec::new();
    let _ = writeln!(md, "# Gatekeeper benchmarks\n");
    let _ = writeln!(
        md,
        "Generated {}. Reproduce with `{REPRODUCE}` (plain `cargo xtask bench` writes the same report to \
         `target/bench/report.md` without touching `docs/`).\n",
        utc_now()
    );
    let _ = writeln!(
        md,
        "Machine: **{}**, {} CPUs, Linux {}. The machine is shared with other builds, so \
         absolute figures are noisy; each figure is compared only with baselines measured in \
         the same run, and repeated windows are reduced to their median.\n",
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
    );
    flood_section(&mut md, &mut charts, results.flood, chart_prefix);
    xdp_section(&mut md, &mut charts, results.xdp, chart_prefix);
    open_port_section(&mut md, results.xdp);
    control_section(&mut md, results.control);
    relay_section(&mut md, results.relay);
    Report {
        markdown: md,
        charts,
    }
}

fn flood_section(
    md: &mut String,
    charts: &mut Vec<(String, String)>,
    flood: Option<&Value>,
    prefix: &str,
) {
    let _ = writeln!(md, "## Why XDP: a SYN flood (`cargo xtask bench flood`)\n");
    let Some(flood) = flood else {
        let _ = writeln!(md, "Not measured in this run.\n");
        return;
    };
    let cases = flood["cases"].as_array().cloned().unwrap_or_default();
    let pick = |placement: &str| -> Vec<&Value> {
        cases
            .iter()
            .filter(|c| c["placement"] == placement)
            .collect()
    };
    let shared = pick("shared");
    let split = pick("split");
    let find = |rows: &[&Value], case: &str, field: &str| {
        rows.iter()
            .find(|c| c["case"] == case)
            .map_or(f64::NAN, |c| f(&c[field]))
    };
    let nft_ns = find(&shared, "nftables", "receive_ns_per_packet");
    let xdp_ns = find(&shared, "xdp", "receive_ns_per_packet");
    let floor_ns = find(&shared, "floor", "receive_ns_per_packet");
    let nft_pps = find(&shared, "nftables", "pps");
    let _ = writeln!(
        md,
        "A flood of TCP SYNs to port 25 from {} (a new source port each pass, so every SYN is a \
         new connection) crosses a veth pair between two network namespaces into a protected \
         host whose allowlist holds {} prefixes, the same list in both filters ({}). Four \
         receivers, measured in the same run:\n",
        flood["generator"]["sources"]
            .as_str()
            .unwrap_or("many denied sources"),
        thousands(f(&flood["allowlist_entries"])),
        flood["allowlist"].as_str().unwrap_or("see flood.json"),
    );
    let _ = writeln!(
        md,
        "- **xdp**: the gatekeeper's XDP program (`Filter::load` with default options, enforce \
         mode, port 25; IPv4 lookup: {}), attached in native mode to the host's veth.\n\
         - **nftables**: an empty XDP_PASS program on the veth (so the frames become socket buffers \
         as without XDP) and the equivalent nftables rule in the earliest hook nftables offers, \
         `netdev` ingress on that veth: `tcp dport 25 ip saddr != @allow4 drop` with the allowlist \
         as an interval set.\n\
         - **none**: the empty XDP_PASS program alone; the kernel's TCP answers each SYN (a \
         listener is on port 25 for the allowed peer, so the answers are SYN-ACKs with SYN \
         cookies rather than RSTs).\n\
         - **floor**: an empty XDP_DROP program, the least a receiver can do per frame.\n",
        cases
            .iter()
            .find_map(|c| c["ipv4_lookup"].as_str())
            .unwrap_or("not recorded"),
    );
    let _ = writeln!(
        md,
        "**The generator** is an XDP program in the project (`gatekeeper-ebpf-bench/src/flood.rs`) run \
         through `BPF_PROG_TEST_RUN` in live-frames mode (batches of {}): per frame it rewrites the \
         source address and port from a per-CPU counter, patches the IPv4 and TCP checksums and \
         returns XDP_TX, which hands the frame to the veth's peer like a NIC hands frames to \
         XDP, with no socket buffer on the sending side. Its thread is pinned to CPU {} with \
         `sched_setaffinity` (XDP test runs accept no `BPF_F_TEST_RUN_ON_CPU`; the kernel runs \
         them on the calling thread's CPU).\n",
        flood["generator"]["batch"], flood["generator"]["cpu"],
    );
    let _ = writeln!(
        md,
        "**Where the receive side runs.** A veth receives through NAPI, which runs in softirq on \
         the CPU that scheduled it: the generator's. Two placements are measured:\n\n\
         - **shared** (the kernel's default): the receive work runs on the generator's CPU right \
         after each batch, so the generator can never outrun the receiver and no frame is lost \
         between them. `/proc/stat` tells the two apart: the generator runs in *system* time \
         (inside the `bpf()` call), the receiver in *softirq* time (this kernel has no \
         IRQ_TIME_ACCOUNTING, so each tick is charged to the context it interrupts). **Receive \
         CPU per packet** = softirq time of that CPU ÷ packets the host veth received \
         (`/proc/net/dev` in the host namespace, which counts every frame the veth's NAPI \
         handled, dropped or not). **Capacity** = 1 s ÷ that: the packets per second one core \
         can receive that way. This is the fair \"same core\" comparison; the sustained pps of \
         this placement also includes the generator's own cost on the same core.\n\
         - **split**: threaded NAPI, its kernel thread pinned to CPU {} and the generator on \
         the other CPU, both SCHED_FIFO (so that the builds sharing this machine neither pause \
         the flood nor delay its receiver, as they could not delay softirq); the benchmark's own \
         measuring thread and probes run SCHED_FIFO above both and sleep nearly all the time. \
         The generator runs freely and overruns the veth's 256-frame ring as a flood overruns a \
         NIC's ring. Receive CPU = the NAPI thread's run time (`/proc/PID/schedstat`). Measured \
         here: the NAPI thread does not reach 100% busy even while its ring overflows (the \
         veth's hand-over of 256-frame batches and thread wake-ups limit it before the CPU \
         does); so this placement shows the \
         flood overrunning the link and what the allowed peer sees meanwhile, and the per-core \
         capacities come from the shared placement.\n",
        flood["split_receive_cpu"],
    );
    let _ = writeln!(
        md,
        "While each case floods, an allowed peer (198.51.100.7, on the attacker's side of the \
         same link) opens real TCP connections to port 25 on the host (timeout 5 s, so two SYN \
         retransmissions fit); the idle latency, measured before the flood in the same run, was \
         **{} ms**. The floor drops the peer's SYNs too, so it has no connect figure.\n",
        fixed(f(&flood["idle_connect_ms"]), 3)
    );

    let _ = writeln!(
        md,
        "### Shared placement: receive cost per packet ({} s windows, median of {})\n",
        flood["seconds"], flood["rounds"]
    );
    let _ = writeln!(
        md,
        "| case | packets/s (sustained, generator on the same core) | receive CPU ns/packet | capacity, packets/s per core | capacity vs nftables | receive cost vs floor | generator ns/frame | allowed peer connects | connect ms (median) | connect vs idle |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let idle = f(&flood["idle_connect_ms"]);
    let mut capacity_bars = Vec::new();
    let mut cost_bars = Vec::new();
    for c in &shared {
        let ns = f(&c["receive_ns_per_packet"]);
        let case = c["case"].as_str().unwrap_or("?");
        let _ = writeln!(
            md,
            "| {case} | {} | {} | {} | {}x | {}x | {} | {} | {} | {} |",
            thousands(f(&c["pps"])),
            fixed(ns, 1),
            thousands(1e9 / ns),
            fixed(nft_ns / ns, 1),
            fixed(ns / floor_ns, 2),
            fixed(f(&c["generator_ns_per_frame"]), 0),
            connects(c),
            c["connect_ms_median"]
                .as_f64()
                .map_or("–".into(), |v| fixed(v, 2)),
            c["connect_ms_median"]
                .as_f64()
                .map_or("–".into(), |v| format!("{}x", fixed(v / idle, 1))),
        );
        capacity_bars.push((
            case.to_string(),
            1e9 / ns,
            format!(
                "{} /s, {}x nftables",
                thousands(1e9 / ns),
                fixed(nft_ns / ns, 1)
            ),
        ));
        cost_bars.push((case.to_string(), ns, format!("{} ns", fixed(ns, 0))));
    }
    let _ = writeln!(
        md,
        "\n**XDP vs nftables on the same core: {}x the packets per second** (capacity, from the \
         receive CPU per packet; target ≥ 5x). Sustained with the generator sharing that core: \
         {}x ({} vs {} packets/s). The gatekeeper's program costs {}x the empty XDP_DROP per \
         packet; letting the flood reach TCP costs {}x XDP.\n",
        fixed(nft_ns / xdp_ns, 1),
        fixed(find(&shared, "xdp", "pps") / nft_pps, 1),
        thousands(find(&shared, "xdp", "pps")),
        thousands(nft_pps),
        fixed(xdp_ns / floor_ns, 2),
        fixed(find(&shared, "none", "receive_ns_per_packet") / xdp_ns, 1),
    );
    let _ = writeln!(
        md,
        "Why capacity rather than the sustained rate: the sustained rate of this placement is \
         what one CPU does running both the generator and the receiver, and that CPU is shared \
         with other work on this machine, whose share changes from window to window; the CPU \
         time per packet does not depend on that share. The generator's own time per frame \
         (system time of that CPU ÷ frames) is shown for completeness: where it is higher in \
         the nftables and none cases, that is work the socket buffers cause (their pages leave \
         the live-frames page pool's fast recycling) counted on the generator's side, so the \
         capacity ratios never overstate XDP's advantage. On a shared machine the figures move \
         from run to run; compare them within one report.\n"
    );
    if let Some(none) = shared.iter().find(|c| c["case"] == "none") {
        let tcp = &none["host_tcp"];
        if tcp.is_object() {
            let _ = writeln!(
                md,
                "The flood's frames are valid SYNs: in the none case the host's TCP took in {} \
                 segments during the case ({} checksum errors) and answered with {} SYN \
                 cookies; with XDP or nftables dropping, TCP saw {} and {} segments (the allowed \
                 peer's).\n",
                thousands(f(&tcp["in_segments"])),
                thousands(f(&tcp["checksum_errors"])),
                thousands(f(&tcp["syn_cookies_sent"])),
                thousands(
                    shared
                        .iter()
                        .find(|c| c["case"] == "xdp")
                        .map_or(f64::NAN, |c| f(&c["host_tcp"]["in_segments"]))
                ),
                thousands(
                    shared
                        .iter()
                        .find(|c| c["case"] == "nftables")
                        .map_or(f64::NAN, |c| f(&c["host_tcp"]["in_segments"]))
                ),
            );
        }
    }
    let name = format!("{prefix}flood-capacity.svg");
    charts.push((
        name.clone(),
        bar_chart(
            "SYN flood: packets per second one core can receive (shared placement)",
            &capacity_bars,
        ),
    ));
    let _ = writeln!(md, "![capacity per core]({name})\n");
    let name = format!("{prefix}flood-cost.svg");
    charts.push((
        name.clone(),
        bar_chart(
            "Receive CPU time per flood packet, ns (lower is better)",
            &cost_bars,
        ),
    ));
    let _ = writeln!(md, "![receive CPU per packet]({name})\n");

    let _ = writeln!(
        md,
        "### Split placement: flood overrunning the link, allowed peer during the flood\n"
    );
    let _ = writeln!(
        md,
        "Here the generator runs on its own CPU and offers more than the receivers take; the \
         excess is lost at the veth's ring before any filter sees it (the veth counts these as \
         `xdp_xmit_errors` on the sending side). The allowed peer's packets share that ring with \
         the flood, so its SYN can be lost there too, and TCP sends it again after 1 s (then \
         after 3 s more): a connect of about a second or more means a lost SYN or SYN-ACK. No \
         filter can save a frame lost before it runs; what XDP changes is how large a flood the \
         host absorbs before that happens (the capacities above), and that what it does receive \
         costs little.\n"
    );
    let _ = writeln!(
        md,
        "| case | offered packets/s | received packets/s | lost before the receiver | NAPI thread busy | allowed peer connects | connect ms (median) | connect ms (each) |\n|---|---:|---:|---:|---:|---:|---:|---|"
    );
    for c in &split {
        let offered = f(&c["offered_pps"]);
        let received = f(&c["pps"]);
        let each = c["connect_ms"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|v| v.as_f64().map_or("failed".into(), |v| fixed(v, 2)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}% | {}% | {} | {} | {} |",
            c["case"].as_str().unwrap_or("?"),
            thousands(offered),
            thousands(received),
            fixed((1.0 - received / offered).max(0.0) * 100.0, 0),
            fixed(f(&c["receive_busy"]) * 100.0, 0),
            connects(c),
            c["connect_ms_median"]
                .as_f64()
                .map_or("–".into(), |v| fixed(v, 2)),
            if each.is_empty() { "–".into() } else { each },
        );
    }
    let split_ratio = find(&split, "xdp", "pps") / find(&split, "nftables", "pps");
    let _ = writeln!(
        md,
        "\n**With the generator on its own CPU, the host received {}x the packets per second \
         with XDP dropping the flood ({} /s) as with nftables dropping it ({} /s)**; the allowed \
         peer connected in a median {} ms with XDP and {} ms with nftables.\n",
        fixed(split_ratio, 1),
        thousands(find(&split, "xdp", "pps")),
        thousands(find(&split, "nftables", "pps")),
        fixed(find(&split, "xdp", "connect_ms_median"), 2),
        fixed(find(&split, "nftables", "connect_ms_median"), 2),
    );
}

fn connects(case: &Value) -> String {
    if case["connects"].as_u64() == Some(0) {
        return "n/a".into();
    }
    format!("{}/{}", case["connected"], case["connects"])
}

fn xdp_section(
    md: &mut String,
    charts: &mut Vec<(String, String)>,
    xdp: Option<&Value>,
    prefix: &str,
) {
    let _ = writeln!(md, "## Allowlist scale (`cargo xtask bench xdp`)\n");
    let Some(xdp) = xdp else {
        let _ = writeln!(md, "Not measured in this run.\n");
        return;
    };
    let _ = writeln!(
        md,
        "The gatekeeper program run through `BPF_PROG_TEST_RUN` on crafted frames ({} runs per \
         measurement, median of {}), as a ratio against an empty XDP program measured in the same \
         run ({} ns hot, {} ns with the per-run source rewrite of the many-sources twin). *hot*: \
         one frame again and again (one busy peer); *spread*: a new source address every run (a \
         flood from everywhere, cold lookups). List shapes: *routed* (like a routing table: 65% \
         /24s, 32% /16–/23, 3% /25–/32) and *spread* (every entry its own random /24, the most \
         /16s and /24s a list of that size can touch).\n",
        xdp["repeat"],
        xdp["rounds"],
        fixed(f(&xdp["baseline_ns"]), 1),
        fixed(f(&xdp["baseline_spread_ns"]), 1),
    );
    let results = xdp["results"].as_array().cloned().unwrap_or_default();
    let mut sizes: Vec<u64> = results
        .iter()
        .filter_map(|r| r["entries"].as_u64())
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    // Results may also differ by IPv4 lookup structure (`lookup`); older files have none.
    let text = |r: &Value, key: &str| r[key].as_str().unwrap_or("").to_string();
    // ... and by list shape (`shape`); older files have none either.
    let mut classes: Vec<(String, String, String, String)> = Vec::new();
    for r in &results {
        let key = (
            text(r, "class"),
            text(r, "mode"),
            text(r, "shape"),
            text(r, "lookup"),
        );
        if !classes.contains(&key) {
            classes.push(key);
        }
    }
    let _ = write!(md, "| class | mode | list | lookup |");
    for s in &sizes {
        let _ = write!(md, " {} entries |", thousands(*s as f64));
    }
    let _ = write!(md, "\n|---|---|---|---|");
    for _ in &sizes {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md);
    let mut bars = Vec::new();
    for (class, mode, shape, lookup) in &classes {
        let dash = |s: &str| {
            if s.is_empty() {
                "–".to_string()
            } else {
                s.to_string()
            }
        };
        let _ = write!(
            md,
            "| {class} | {mode} | {} | {} |",
            dash(shape),
            dash(lookup)
        );
        for s in &sizes {
            let cell = results.iter().find(|r| {
                text(r, "class") == *class
                    && text(r, "mode") == *mode
                    && text(r, "shape") == *shape
                    && text(r, "lookup") == *lookup
                    && r["entries"].as_u64() == Some(*s)
            });
            match cell {
                Some(r) => {
                    let _ = write!(
                        md,
                        " {}x ({} ns) |",
                        fixed(f(&r["ratio"]), 2),
                        fixed(f(&r["ns"]), 1)
                    );
                    if class.contains("denied, IPv4") || mode == "spread" {
                        let lookup = [shape.as_str(), lookup.as_str()]
                            .iter()
                            .filter(|s| !s.is_empty())
                            .map(|s| format!("{s}, "))
                            .collect::<String>();
                        bars.push((
                            format!(
                                "{} entries, {lookup}{}",
                                thousands(*s as f64),
                                short(class, mode)
                            ),
                            f(&r["ratio"]),
                            format!("{}x", fixed(f(&r["ratio"]), 2)),
                        ));
                    }
                }
                None => {
                    let _ = write!(md, " – |");
                }
            }
        }
        let _ = writeln!(md);
    }
    let name = format!("{prefix}xdp-scale.svg");
    charts.push((
        name.clone(),
        bar_chart(
            "Denied IPv4 SYN: cost vs the empty XDP program, by allowlist size",
            &bars,
        ),
    ));
    let _ = writeln!(md, "\n![allowlist scale]({name})\n");
    summary_section(md, &results, &sizes);
    if let Some(loads) = xdp["loads"].as_array() {
        let _ = writeln!(
            md,
            "| allowlist entries | list | lookup | filled in (s) | allowlist maps, kernel memory | all maps |\n|---:|---|---|---:|---:|---:|"
        );
        for l in loads {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} MiB | {} MiB |",
                thousands(f(&l["entries"])),
                l["shape"].as_str().unwrap_or("–"),
                l["lookup"].as_str().unwrap_or("–"),
                fixed(f(&l["load_seconds"]), 2),
                fixed(f(&l["allowlist_memory_bytes"]) / 1048576.0, 1),
                fixed(f(&l["kernel_memory_bytes"]) / 1048576.0, 1),
            );
        }
        let _ = writeln!(md);
    }
}

/// The open-port rows of `bench xdp`: port 25 open with 100,000 deny entries, 10,000 bans and the
/// SYN limiter on.
fn open_port_section(md: &mut String, xdp: Option<&Value>) {
    let Some(rows) = xdp.and_then(|x| x["open_port"].as_array()) else {
        return;
    };
    let Some(first) = rows.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "### An open port: deny list, bans, SYN limit

Port 25 `open` (587 `allowlist`) with {}          deny entries, {} bans and the SYN rate limiter on, 10,000 allowlist entries (dir24), as          ratios against the empty program of the same run. Targets: a SYN passed on the open port          ≤ 2.5x, a banned SYN ≤ 3x.

| class | mode | ns | ratio |
|---|---|---:|---:|",
        thousands(f(&first["deny_entries"])),
        thousands(f(&first["bans"])),
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}x |",
            r["class"].as_str().unwrap_or("–"),
            r["mode"].as_str().unwrap_or("–"),
            fixed(f(&r["ns"]), 1),
            fixed(f(&r["ratio"]), 2),
        );
    }
    let _ = writeln!(md);
}

/// The control-plane rows of `bench xdp` (tests/benches/control.rs).
fn control_section(md: &mut String, control: Option<&Value>) {
    let _ = writeln!(
        md,
        "## Control plane at scale (`cargo xtask bench xdp`, control-plane rows)\n"
    );
    let Some(control) = control else {
        let _ = writeln!(
            md,
            "Not measured in this run (`target/bench/control.json` was not there).\n"
        );
        return;
    };
    let _ = writeln!(
        md,
        "`sudo -E cargo xtask bench xdp` also runs these rows (`--control-sizes 10000,100000` \
         leaves out the 1,000,000 rows, which take about a minute; `none` all of them). \
         The release `gatekeeper` binary with IPv4 allowlists of /32s in two shapes: *clustered* \
         (64 entries to a /24, so few DIR-24-8 blocks) and *spread* (every entry in a random /24 \
         of its own: the DIR-24-8 worst case before a lone /32 needed no block). Default settings \
         (`ipv4_lookup = \"auto\"`). The daemon attaches to a veth in namespaces the benchmark \
         creates. *start*: from spawning `gatekeeper run` to its \"enforcing\" line; daemon RSS \
         then, peak (VmHWM) and current (VmRSS); `allow add` of a new entry while the daemon \
         runs (median of {} adds; the next add waits for the daemon's reload), wall time and the \
         CLI's peak RSS (which cannot be below the benchmark process's own RSS at the spawn, \
         {} MB: a child starts from its parent's memory); `status` and `allow list --json` \
         (stdout to /dev/null), median of {}. \
         Targets at 1,000,000 entries: start ≤ 3 s, daemon RSS ≤ 150 MB, `allow add` ≤ 100 ms \
         and ≤ 50 MB, `status` ≤ 0.5 s, `allow list --json` ≤ 3 s.\n",
        control["adds"],
        fixed(
            control["results"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| f(&r["bench_rss_kib"]) / 1024.0)
                .fold(f64::NAN, f64::max),
            0
        ),
        control["reads"],
    );
    let _ = writeln!(
        md,
        "| shape | entries | start (s) | daemon peak RSS (MB) | daemon RSS (MB) | `allow add` (ms) | `allow add` peak RSS (MB) | `status` (s) | `allow list --json` (s) | `allow list --json` peak RSS (MB) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mb = |kib: &Value| fixed(f(kib) / 1024.0, 1);
    for row in control["results"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row["shape"].as_str().unwrap_or("–"),
            thousands(f(&row["entries"])),
            fixed(f(&row["start_seconds"]), 2),
            mb(&row["daemon_hwm_kib"]),
            mb(&row["daemon_rss_kib"]),
            fixed(f(&row["add_seconds"]) * 1000.0, 0),
            mb(&row["add_peak_rss_kib"]),
            fixed(f(&row["status_seconds"]), 2),
            fixed(f(&row["list_json_seconds"]), 2),
            mb(&row["list_json_peak_rss_kib"]),
        );
    }
    let _ = writeln!(md);
}

/// The IPv4 summary's measurements: its target, from this run, and the choice of its levels.
fn summary_section(md: &mut String, results: &[Value], sizes: &[u64]) {
    let denied: Vec<&Value> = results
        .iter()
        .filter(|r| r["vs_hot_denied"].is_number() && r["class"].as_str() == Some(SPREAD_DENIED))
        .collect();
    let _ = writeln!(md, "### Sources nobody listed: the IPv4 summary\n");
    let _ = writeln!(
        md,
        "In front of both IPv4 lookups the program reads a summary of the list: one bit per /20 \
         (128 KiB) and per /24 (2 MiB) of the address space, set while an entry covers part of \
         that region (without the DIR-24-8 tables, the trie-only load: one bit per /16, 8 KiB). \
         A source under a clear bit is denied without touching the 64 MiB table or walking the \
         trie; a set bit only means \"look it up\". The controller sets bits before an entry \
         goes in and clears them after it came out, only where no other entry covers the region \
         (per-/16 reference counts in the map; the DIR-24-8 first level for /20 and /24), so the \
         summary never denies a listed source (`tests/tests/dir24.rs` and \
         `tests/tests/differential.rs` check its bits against a recomputation and its verdicts \
         through the program).\n\n\
         *SMTP SYN, many sources, denied*: the spread-shape list (even /24s), sources from a new \
         random odd /24 each run — a flood from everywhere that nobody listed — against the hot \
         denied SYN of the same list, lookup and run (targets: at most 1.5x up to 100,000 \
         entries, 2x at 1,000,000). Both figures include the drop and its counter; the spread \
         one also the per-run source rewrite.\n"
    );
    if denied.is_empty() {
        let _ = writeln!(md, "Not measured in this run (`--shapes spread`).\n");
    } else {
        let _ = write!(md, "| lookup |");
        for s in sizes {
            let _ = write!(md, " {} entries |", thousands(*s as f64));
        }
        let _ = write!(md, "\n|---|");
        for _ in sizes {
            let _ = write!(md, "---:|");
        }
        let _ = writeln!(md);
        let mut lookups: Vec<&str> = Vec::new();
        for lookup in denied.iter().filter_map(|r| r["lookup"].as_str()) {
            if !lookups.contains(&lookup) {
                lookups.push(lookup);
            }
        }
        for lookup in lookups {
            let _ = write!(md, "| {lookup} |");
            for s in sizes {
                match denied.iter().find(|r| {
                    r["lookup"].as_str() == Some(lookup) && r["entries"].as_u64() == Some(*s)
                }) {
                    Some(r) => {
                        let _ = write!(
                            md,
                            " {}x ({} vs {} ns) |",
                            fixed(f(&r["vs_hot_denied"]), 2),
                            fixed(f(&r["ns"]), 0),
                            fixed(f(&r["hot_denied_ns"]), 0)
                        );
                    }
                    None => {
                        let _ = write!(md, " – |");
                    }
                }
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(
            md,
            "\nThe trie-only load has only the /16 level: it helps short lists (most of the \
             address space has no entry in its /16) and fades as lists grow (a list of 100,000 \
             random /24s touches 78% of all /16s); long lists are what DIR-24-8 (`auto` above \
             1,024 entries) is for.\n"
        );
    }
    let _ = writeln!(md, "{SUMMARY_CHOICE}");
}

const SPREAD_DENIED: &str = "SMTP SYN, many sources, denied, IPv4";

/// How the summary's levels were chosen: a one-off measurement (not regenerated by the bench),
/// kept here so the published report carries it.
const SUMMARY_CHOICE: &str = "\
**Choosing the levels** (measured 2026-11-29 on this machine, DIR-24-8 lookup, spread shape, \
ns per denied SYN from many unlisted sources, median of 3 runs of `cargo xtask bench xdp` with \
one benchmark twin per variant, all in the same runs; the hot denied SYN took 60–64 ns). Share of \
regions a list of random /24s touches: 10,000 entries: 14% of /16s, 0.95% of /20s, 0.06% of /24s; \
100,000: 78%, 9.1%, 0.6%; 1,000,000: 100%, 61%, 5.8%.

| levels the program reads | 10 entries | 10,000 | 100,000 | 1,000,000 |
|---|---:|---:|---:|---:|
| none (before the summary) | 176 | 197 | 198 | 189 |
| /16 (8 KiB) | 63 | 92 | 179 | 190 |
| /16, /20 | 63 | 72 | 91 | 162 |
| /24 (2 MiB) | 71 | 87 | 92 | 91 |
| /16, /24 | 64 | 77 | 85 | 90 |
| **/20, /24 (kept)** | 64 | **65** | **73** | **91** |
| /16, /20, /24 | 64 | 70 | 82 | 88 |

The /24 level is what makes long lists cheap (at 1,000,000 random /24s it is the only level that \
still says no for 94% of sources); in front of it the /20 bitmap (128 KiB, stays in the 512 KiB \
L2) answers most sources of lists up to a few hundred thousand entries without reaching the 2 MiB \
level, and beats the /16 bitmap there, which a list of 100,000 random /24s has mostly set. A third \
level costs more instructions than it saves. The price: a listed source reads two bitmap words \
before the table, about 3 ns on the allowed SYN with DIR-24-8 (41 → 44 ns, same run, the \
program built with and without the summary).

IPv6 has no summary: a flood of IPv6 sources from a new /32 every run (*SMTP SYN, many sources, \
IPv6*) costs about what the hot denied IPv6 SYN does (1.0–1.1x above: the IPv6 list is short and \
its trie stays in the cache), so there is nothing for a summary to save; a bitmap by /32 would \
take 512 MiB and a hash set costs a lookup like the trie's.
";

fn short(class: &str, mode: &str) -> String {
    let sources = if mode == "spread" {
        "many sources"
    } else {
        "one source"
    };
    let family = if class.contains("IPv6") { ", IPv6" } else { "" };
    format!("{sources}{family}")
}

fn relay_section(md: &mut String, relay: Option<&Value>) {
    let _ = writeln!(md, "## SMTP relay throughput (`cargo xtask bench relay`)\n");
    let Some(relay) = relay else {
        let _ = writeln!(
            md,
            "Not measured in this run (`target/bench/relay.json` was not there).\n"
        );
        return;
    };
    let ours = &relay["smtp_relay"];
    let postfix = &relay["postfix"];
    let _ = writeln!(
        md,
        "The same client against `smtp-relay` and against {} on loopback: one 4 KB message per \
         connection, each MTA relaying to the same sink; messages per second accepted, and the \
         time from the end of DATA to the `250` (the queue file is synced before it).\n",
        postfix["name"].as_str().map_or(
            "Postfix (not installed: no baseline)".to_string(),
            |n| format!("{n} (Debian package)")
        )
    );
    let _ = writeln!(
        md,
        "| clients | smtp-relay msg/s | p50 | p99 | Postfix msg/s | p50 | p99 | smtp-relay / Postfix |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let phases = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let baseline = phases(postfix, "phases");
    for phase in phases(ours, "phases") {
        let clients = phase["clients"].as_u64().unwrap_or(0);
        let other = baseline
            .iter()
            .find(|p| p["clients"].as_u64() == Some(clients));
        let num = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        let (rate, base) = (
            num(&phase, "messages_per_second"),
            other.map_or(f64::NAN, |p| num(p, "messages_per_second")),
        );
        let ms = |v: Option<&Value>, key: &str| {
            v.map_or("–".to_string(), |v| format!("{:.1} ms", num(v, key)))
        };
        let _ = writeln!(
            md,
            "| {clients} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(rate),
            ms(Some(&phase), "p50_ms"),
            ms(Some(&phase), "p99_ms"),
            thousands(base),
            ms(other, "p50_ms"),
            ms(other, "p99_ms"),
            if base.is_finite() && base > 0.0 {
                format!("**{:.1}x**", rate / base)
            } else {
                "–".to_string()
            }
        );
    }
    let checked = ours["sender_auth"]["phases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !checked.is_empty() {
        let _ = writeln!(
            md,
            "\nWith the open-MX checks on (`[sender_auth]` SPF, DKIM, DMARC and a `[screen]` DNSBL; \
             answers from NSD on loopback; every message DKIM-signed with Ed25519), same client \
             and sink, against the plain figures above (target: at least 1.5x Postfix's plain \
             figure):\n\n| clients | msg/s | p50 | p99 | / plain smtp-relay | / plain Postfix |\n\
             |---:|---:|---:|---:|---:|---:|"
        );
        for phase in checked {
            let num = |key: &str| phase[key].as_f64().unwrap_or(f64::NAN);
            let clients = phase["clients"].as_u64().unwrap_or(0);
            let postfix_rate = baseline
                .iter()
                .find(|p| p["clients"].as_u64() == Some(clients))
                .and_then(|p| p["messages_per_second"].as_f64());
            let _ = writeln!(
                md,
                "| {clients} | {} | {:.1} ms | {:.1} ms | {:.2}x | {} |",
                thousands(num("messages_per_second")),
                num("p50_ms"),
                num("p99_ms"),
                num("ratio_to_plain"),
                postfix_rate
                    .filter(|b| *b > 0.0)
                    .map_or("–".to_string(), |b| {
                        format!("**{:.2}x**", num("messages_per_second") / b)
                    }),
            );
        }
    }
    dkim_rows(md, &ours["dkim_signing"], &baseline);
    let sessions = &ours["sessions"];
    if let Some(open) = sessions["open"].as_u64() {
        let _ = writeln!(
            md,
            "\n{open} SMTP sessions open at once: {} errors, relay RSS {:.1} MB with all open, peak {:.1} MB.",
            sessions["errors"].as_u64().unwrap_or(0),
            sessions["rss_mb"].as_f64().unwrap_or(f64::NAN),
            sessions["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        );
    }
    directory_rows(md, &ours["directory"]);
    let _ = writeln!(md);
}

/// The relay end to end, unsigned and then DKIM-signing every message (Ed25519, then
/// Ed25519 + RSA-2048): accepted and end-to-end rates against the plain figures, the relay's
/// CPU per message, and the signing cost per message.
fn dkim_rows(md: &mut String, dkim: &Value, postfix: &[Value]) {
    let Some(phases) = dkim["phases"].as_array() else {
        return;
    };
    let _ = writeln!(
        md,
        "\nEnd to end, unsigned (keys `none`: the delivery pipeline alone), then with DKIM signing \
         on (every message signed at delivery with an Ed25519 key, then with an Ed25519 and an \
         RSA-2048 key: dual signatures; the client is in `trusted_networks`), same client and \
         sink. End to end: the messages over the time until the sink had them all (signing \
         happens after the `250`); relay CPU: the relay's user + system time per message. \
         Target: end to end at least 1.5x Postfix's plain figure:\n\n\
         | keys | clients | accepted msg/s | end-to-end msg/s | p50 | p99 | relay CPU | end to end / plain smtp-relay | end to end / plain Postfix |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for phase in phases {
        let num = |key: &str| phase[key].as_f64().unwrap_or(f64::NAN);
        let clients = phase["clients"].as_u64().unwrap_or(0);
        let postfix_rate = postfix
            .iter()
            .find(|p| p["clients"].as_u64() == Some(clients))
            .and_then(|p| p["messages_per_second"].as_f64())
            .filter(|b| *b > 0.0);
        let _ = writeln!(
            md,
            "| {} | {clients} | {} | {} | {:.1} ms | {:.1} ms | {} | {:.2}x | {} |",
            phase["keys"].as_str().unwrap_or("?"),
            thousands(num("messages_per_second")),
            thousands(num("end_to_end_per_second")),
            num("p50_ms"),
            num("p99_ms"),
            phase["relay_cpu_us_per_message"]
                .as_f64()
                .map_or("–".to_string(), |us| format!("{us:.0} µs")),
            num("ratio_to_plain"),
            postfix_rate.map_or("–".to_string(), |b| format!(
                "**{:.2}x**",
                num("end_to_end_per_second") / b
            )),
        );
    }
    let us = |key: &str| dkim["sign_us"][key].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        md,
        "\nSigning one 4 KB message with the relay's signer (mail-auth, ring), one core: Ed25519 \
         {:.0} µs, RSA-2048 {:.0} µs, both {:.0} µs.",
        us("ed25519"),
        us("rsa2048"),
        us("both")
    );
}

/// AUTH against the company directory (OpenLDAP slapd on loopback): the rate held, the
/// login latency and the relay's memory.
fn directory_rows(md: &mut String, d: &Value) {
    let Some(offered) = d["offered_per_second"].as_u64() else {
        return;
    };
    let num = |key: &str| d[key].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        md,
        "\nAUTH against the company directory (`[directory]`, OpenLDAP slapd over ldaps on loopback, \
         {} users, one session per login):\n\n\
         | offered | sustained | logins | errors | AUTH→235 p50 | p99 | relay RSS | peak RSS |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {offered}/s | {:.1}/s | {} | {} | {:.1} ms | {:.1} ms | {:.1} MB | {:.1} MB |",
        d["users"].as_u64().unwrap_or(0),
        num("logins_per_second"),
        d["logins"].as_u64().unwrap_or(0),
        d["errors"].as_u64().unwrap_or(0),
        num("p50_ms"),
        num("p99_ms"),
        num("rss_mb"),
        num("peak_rss_mb"),
    );
}

/// A horizontal bar chart: one bar per (label, value, annotation), scaled to the largest value.
fn bar_chart(title: &str, bars: &[(String, f64, String)]) -> String {
    const WIDTH: f64 = 760.0;
    const LABEL: f64 = 230.0;
    const ROW: f64 = 26.0;
    const TOP: f64 = 40.0;
    let plot = WIDTH - LABEL - 150.0;
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let height = TOP + ROW * bars.len() as f64 + 16.0;
    let palette = ["#2b6cb0", "#c05621", "#718096", "#2f855a", "#6b46c1"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    for (i, (label, value, note)) in bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let w = if value.is_finite() {
            (value / max * plot).max(1.0)
        } else {
            0.0
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{LABEL}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            LABEL - 8.0,
            y + 15.0,
            escape(label),
            y + 2.0,
            ROW - 6.0,
            palette[i % palette.len()],
            LABEL + w + 6.0,
            y + 15.0,
            escape(note),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_without_any_results() {
        let report = render(&machine(), &Results::default(), "");
        assert!(report.markdown.contains("Not measured in this run"));
        assert!(report.charts.is_empty());
    }

    #[test]
    fn relay_table_compares_with_postfix() {
        let phase = |clients: u64, rate: f64| json!({"clients": clients, "messages": 3000, "messages_per_second": rate, "p50_ms": 2.0, "p99_ms": 4.0});
        let relay = json!({
            "smtp_relay": {"name": "smtp-relay", "phases": [phase(10, 2000.0), phase(50, 2200.0)],
                "sessions": {"open": 1000, "errors": 0, "rss_mb": 23.3, "peak_rss_mb": 42.3},
                "directory": {"users": 100, "offered_per_second": 200, "logins": 3000,
                    "errors": 0, "logins_per_second": 199.5, "p50_ms": 3.2, "p99_ms": 9.87,
                    "rss_mb": 20.0, "peak_rss_mb": 30.5}},
            "postfix": {"name": "postfix 3.7.11", "phases": [phase(10, 500.0), phase(50, 550.0)]},
        });
        let mut md = String::new();
        relay_section(&mut md, Some(&relay));
        assert!(md.contains("postfix 3.7.11 (Debian package)"), "{md}");
        assert!(
            md.contains("| 10 | 2,000 | 2.0 ms | 4.0 ms | 500 | 2.0 ms | 4.0 ms | **4.0x** |"),
            "{md}"
        );
        assert!(
            md.contains("1000 SMTP sessions open at once: 0 errors"),
            "{md}"
        );
        assert!(
            md.contains("| 200/s | 199.5/s | 3000 | 0 | 3.2 ms | 9.9 ms | 20.0 MB | 30.5 MB |"),
            "{md}"
        );
        let mut signing = relay.clone();
        signing["smtp_relay"]["dkim_signing"] = json!({"phases": [{"keys": "ed25519", "clients": 10,
            "messages_per_second": 1900.0, "end_to_end_per_second": 1500.0, "p50_ms": 2.5,
            "p99_ms": 5.0, "ratio_to_plain": 0.75, "relay_cpu_us_per_message": 812.4}],
            "sign_us": {"ed25519": 41.0, "rsa2048": 1204.4, "both": 1250.0}});
        let mut md = String::new();
        relay_section(&mut md, Some(&signing));
        assert!(
            md.contains(
                "| ed25519 | 10 | 1,900 | 1,500 | 2.5 ms | 5.0 ms | 812 µs | 0.75x | **3.00x** |"
            ),
            "{md}"
        );
        assert!(
            md.contains("Ed25519 41 µs, RSA-2048 1204 µs, both 1250 µs."),
            "{md}"
        );
        let without = json!({"smtp_relay": relay["smtp_relay"].clone(), "postfix": null});
        let mut md = String::new();
        relay_section(&mut md, Some(&without));
        assert!(
            md.contains("| 50 | 2,200 | 2.0 ms | 4.0 ms | – | – | – | – |"),
            "{md}"
        );
    }

    #[test]
    fn control_rows_in_milliseconds_and_megabytes() {
        let control = json!({"reads": 3, "adds": 5, "results": [{
            "shape": "spread", "entries": 1000000, "start_seconds": 2.5, "daemon_hwm_kib": 71680,
            "daemon_rss_kib": 40960, "add_seconds": 0.0421, "add_peak_rss_kib": 15360,
            "status_seconds": 0.31, "status_peak_rss_kib": 1, "list_json_seconds": 2.0,
            "list_json_peak_rss_kib": 20480}]});
        let mut md = String::new();
        control_section(&mut md, Some(&control));
        assert!(
            md.contains(
                "| spread | 1,000,000 | 2.50 | 70.0 | 40.0 | 42 | 15.0 | 0.31 | 2.00 | 20.0 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(thousands(f64::NAN), "–");
    }

    #[test]
    fn chart_is_svg_with_one_bar_per_row() {
        let svg = bar_chart(
            "t <x>",
            &[("a".into(), 1.0, "1".into()), ("b".into(), 2.0, "2".into())],
        );
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("t &lt;x&gt;"));
    }
}
