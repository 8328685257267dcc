//! `cargo xtask demo`: the whole story in network namespaces, told step by step.
//!
//! Two namespaces stand for the mail host in the DMZ and the Internet. On the Internet side a
//! partner mail server (198.51.100.10) and a stranger (203.0.113.66) both try to open an SMTP
//! session to the mail host (192.0.2.25). The gatekeeper admits the partner and drops the
//! stranger's SYNs at XDP, without touching any other traffic.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use gatekeeper_tests::{
    cleanup,
    netns::Link,
    process::{Daemon, TempDir},
    tcp::{BannerServer, Outcome, connect},
};

use crate::shell::{self, step};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the namespaces up afterwards for exploring (`ip netns exec gk-demo-dmz ...`).
    #[arg(long)]
    pub keep: bool,
}

const DMZ_NS: &str = "gk-demo-dmz";
const NET_NS: &str = "gk-demo-inet";
const DMZ_IF: &str = "gkdemo-dmz";
const NET_IF: &str = "gkdemo-inet";
const MAIL_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 25);
const PARTNER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const STRANGER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// The demo's own pin directory, so it never touches a real gatekeeper's state.
const PIN_DIR: &str = "/sys/fs/bpf/gatekeeper-demo";
const TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!(
            "the demo creates network namespaces and attaches an XDP program: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    crate::setup::run()?;
    crate::build::build_binaries(false)?;
    cleanup::on_interrupt_clean_up()?;

    step(&format!(
        "demo 1/7: two network namespaces joined by a veth cable: {DMZ_NS} (the mail host, {MAIL_HOST}) and {NET_NS} (the Internet: partner {PARTNER}, stranger {STRANGER})"
    ));
    let link = Link::create(DMZ_NS, DMZ_IF, NET_NS, NET_IF)?;
    link.left.add_addr(DMZ_IF, &format!("{MAIL_HOST}/24"))?;
    link.right.add_addr(NET_IF, &format!("{PARTNER}/24"))?;
    link.right.add_addr(NET_IF, &format!("{STRANGER}/24"))?;
    link.left
        .exec(&["ip", "route", "add", "198.51.100.0/24", "dev", DMZ_IF])?;
    link.left
        .exec(&["ip", "route", "add", "203.0.113.0/24", "dev", DMZ_IF])?;
    link.right
        .exec(&["ip", "route", "add", "192.0.2.0/24", "dev", NET_IF])?;

    step(
        "demo 2/7: an SMTP listener on the mail host, port 25 (and a web server on 8080 for contrast)",
    );
    let smtp = BannerServer::start(&link.left, "0.0.0.0:25".parse()?, "mail.example.org")?;
    let web = BannerServer::start(&link.left, "0.0.0.0:8080".parse()?, "web")?;
    let smtp_addr = SocketAddr::new(IpAddr::V4(MAIL_HOST), smtp.addr().port());
    let web_addr = SocketAddr::new(IpAddr::V4(MAIL_HOST), web.addr().port());
    expect_banner("without a filter, the stranger", STRANGER, smtp_addr, &link)?;

    let dir = TempDir::new("demo")?;
    let config = dir.path().join("gatekeeper.toml");
    let config_text = format!(
        "# Who may open SMTP sessions to this host.\ninterfaces = [\"{DMZ_IF}\"]\nxdp_mode = \"native\"\nprotected_ports = [25]\npin_dir = \"{PIN_DIR}\"\n\n[[allow]]\ncidr = \"198.51.100.0/24\"\ncomment = \"partner relays\"\n"
    );
    std::fs::write(&config, &config_text).context("writing the demo config")?;
    step(&format!("demo 3/7: the allowlist, {}:", config.display()));
    for line in config_text.lines() {
        println!("      | {line}");
    }
    let gatekeeper = gatekeeper_tests::workspace_binary("gatekeeper");
    shell::run(
        Command::new(&gatekeeper)
            .args(["check", "--config"])
            .arg(&config),
    )?;

    step(&format!(
        "demo 4/7: `gatekeeper run` inside {DMZ_NS} attaches the XDP program to {DMZ_IF}"
    ));
    let mut cmd = link.left.nsenter();
    cmd.arg(&gatekeeper).args(["run", "--config"]).arg(&config);
    let mut daemon = Daemon::start("gatekeeper run", cmd, &dir.path().join("gatekeeper.log"))?;
    daemon.wait_for_log("enforcing", Duration::from_secs(15))?;
    for line in daemon.log().lines() {
        println!("      gatekeeper: {line}");
    }

    step("demo 5/7: the partner connects to port 25 and the stranger tries the same");
    expect_banner("the partner", PARTNER, smtp_addr, &link)?;
    let outcome = connect(&link.right, IpAddr::V4(STRANGER), smtp_addr, TIMEOUT);
    ensure!(
        outcome == Outcome::TimedOut,
        "the stranger should have been dropped, got {outcome:?}"
    );
    println!(
        "    ok: the stranger's SYNs to port 25 were dropped at XDP: no answer within {TIMEOUT:?}, no socket, no log spam on the mail host"
    );
    daemon.wait_for_log("dropped SYN", Duration::from_secs(5))?;
    for line in daemon
        .log()
        .lines()
        .filter(|l| l.contains("dropped SYN"))
        .take(1)
    {
        println!("      gatekeeper: {line}");
    }
    expect_banner("the stranger, on port 8080,", STRANGER, web_addr, &link)?;
    println!("    (only TCP to the protected ports is judged; everything else passes untouched)");
    println!("    the counters, summed over CPUs (`gatekeeper stats`):");
    shell::run(
        Command::new(&gatekeeper)
            .args(["stats", "--config"])
            .arg(&config),
    )?;

    step("demo 6/7: stopping the daemon detaches the filter");
    ensure!(
        daemon.stop_with(libc::SIGTERM, Duration::from_secs(10))?,
        "gatekeeper did not exit cleanly:\n{}",
        daemon.log()
    );
    expect_banner(
        "with the filter gone, the stranger",
        STRANGER,
        smtp_addr,
        &link,
    )?;

    if args.keep {
        step("demo 7/7: keeping the namespaces for you to explore");
        println!("    ip netns exec {DMZ_NS} ip -d link show {DMZ_IF}");
        println!("    ip netns exec {NET_NS} ping -c1 {MAIL_HOST}");
        println!("    clean up with: ip netns del {DMZ_NS}; ip netns del {NET_NS}");
        link.keep();
    } else {
        step("demo 7/7: cleaning up the namespaces");
        drop(link);
    }
    println!("\nDemo complete: every step behaved as expected.");
    Ok(())
}

fn expect_banner(who: &str, source: Ipv4Addr, dest: SocketAddr, link: &Link) -> anyhow::Result<()> {
    match connect(&link.right, IpAddr::V4(source), dest, TIMEOUT) {
        Outcome::Banner(line) if line.starts_with("220 ") => {
            println!("    ok: {who} ({source}) connected to {dest} and got the banner: {line:?}");
            Ok(())
        }
        other => bail!("{who} ({source}) should have reached {dest}, got {other:?}"),
    }
}
