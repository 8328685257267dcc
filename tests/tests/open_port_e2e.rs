//! An Internet-facing port end to end (issue 18): the real daemon, two namespaces joined by a veth,
//! real TCP. A port made `open` admits strangers; a `[[deny]]` entry drops one (even a partner);
//! a source over its SYN rate is dropped while another source connects; a ban written through the
//! rules module into the pinned maps drops its source and ends at its deadline with the daemon
//! stopped.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use gatekeeper::rules::{Rules, clock};
use gatekeeper_tests::{
    addresses::{LINK_PARTNER_V4 as PARTNER_V4, LINK_STRANGER_V4 as STRANGER_V4},
    gk::{MailHost, stop_cleanly},
    kernel_tests_enabled,
    process::Daemon,
    tcp::Outcome,
};

/// Long enough for a SYN/SYN-ACK on a veth.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// For connections expected to time out (a dropped SYN is retried only after a second).
const PROBE: Duration = Duration::from_millis(500);
/// A second and a third stranger on the Internet side.
const FLOODER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const DENIED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 88);

fn setup(tag: &str) -> MailHost {
    let host = MailHost::new(tag);
    for addr in [FLOODER, DENIED] {
        host.client()
            .add_addr(&host.link.right_if, &format!("{addr}/24"))
            .expect("client address");
    }
    host
}

/// Port 25 open (one SYN a second per source, bursts of 3), the partner allowlisted, `deny`
/// entries, and `extra` keys.
fn config(host: &MailHost, extra: &str, deny: &[&str]) -> String {
    let mut text = format!(
        "interfaces = [\"{}\"]\npin_dir = \"{}\"\nsyn_rate = 1\nsyn_burst = 3\n{extra}\n[[port]]\nnumber = 25\npolicy = \"open\"\n",
        host.link.left_if,
        host.pins.path().display()
    );
    for cidr in deny {
        text.push_str(&format!("\n[[deny]]\ncidr = \"{cidr}\"\n"));
    }
    text.push_str(&format!("\n[[allow]]\ncidr = \"{PARTNER_V4}/32\"\n"));
    text
}

fn reload(daemon: &Daemon) {
    let before = daemon.log().matches("config reloaded").count();
    let pid = libc::pid_t::try_from(daemon.pid().expect("daemon running")).expect("pid");
    // SAFETY: signalling the daemon this test started, by its PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let started = Instant::now();
    while daemon.log().matches("config reloaded").count() <= before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reload:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn banner(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Banner(_))
}

#[test]
fn an_open_port_admits_strangers_except_denied_and_over_rate_ones() {
    if !kernel_tests_enabled("an_open_port_admits_strangers_except_denied_and_over_rate_ones") {
        return;
    }
    let host = setup("gk-open");
    host.write_config(&config(&host, "", &[]));
    let mut daemon = host.start_daemon("gatekeeper-run");

    // Open: a stranger no list names connects.
    let outcome = host.connect(IpAddr::V4(DENIED), TIMEOUT);
    assert!(banner(&outcome), "a stranger on an open port: {outcome:?}");

    // A [[deny]] entry drops it from the next reload on; deny wins over the allowlist too.
    host.write_config(&config(
        &host,
        "",
        &[&format!("{DENIED}/32"), &format!("{PARTNER_V4}/32")],
    ));
    reload(&daemon);
    assert_eq!(host.connect(IpAddr::V4(DENIED), PROBE), Outcome::TimedOut);
    assert_eq!(
        host.connect(IpAddr::V4(PARTNER_V4), PROBE),
        Outcome::TimedOut
    );
    let stats = host.stats();
    assert!(host.counter(&stats, "ipv4", "denied_list") >= 2, "{stats}");
    daemon
        .wait_for_log(
            &format!("dropped SYN from a source in the deny list source={DENIED} dest_port=25"),
            Duration::from_secs(5),
        )
        .expect("a drop event naming the deny list");
    // Taken out again: the partner connects as before.
    host.write_config(&config(&host, "", &[&format!("{DENIED}/32")]));
    reload(&daemon);
    let outcome = host.connect(IpAddr::V4(PARTNER_V4), TIMEOUT);
    assert!(
        banner(&outcome),
        "the partner after its deny entry went: {outcome:?}"
    );

    // The flooder spends its burst of 3 SYNs and is dropped; another stranger, and the partner,
    // still connect on the same port meanwhile.
    let mut limited = false;
    for _ in 0..6 {
        if host.connect(IpAddr::V4(FLOODER), PROBE) == Outcome::TimedOut {
            limited = true;
            break;
        }
    }
    assert!(limited, "the flooder was never rate-limited");
    let outcome = host.connect(IpAddr::V4(STRANGER_V4), TIMEOUT);
    assert!(
        banner(&outcome),
        "another stranger while the flooder is limited: {outcome:?}"
    );
    let outcome = host.connect(IpAddr::V4(PARTNER_V4), TIMEOUT);
    assert!(
        banner(&outcome),
        "the partner is never limited: {outcome:?}"
    );
    let stats = host.stats();
    assert!(host.counter(&stats, "ipv4", "rate_limited") >= 1, "{stats}");
    assert!(host.counter(&stats, "ipv4", "passed_open") >= 4, "{stats}");
    daemon
        .wait_for_log("rule=rate_limited", Duration::from_secs(5))
        .expect("a drop event naming the rate limit");
    stop_cleanly(&mut daemon);
}

#[test]
fn a_ban_in_the_pinned_maps_ends_at_its_deadline_with_the_daemon_stopped() {
    if !kernel_tests_enabled(
        "a_ban_in_the_pinned_maps_ends_at_its_deadline_with_the_daemon_stopped",
    ) {
        return;
    }
    let host = setup("gk-ban");
    host.write_config(&config(&host, "keep_attached_on_exit = true", &[]));
    let mut daemon = host.start_daemon("gatekeeper-run");
    stop_cleanly(&mut daemon);
    drop(daemon);

    // No daemon: the pinned program enforces alone. A ban written into its pinned maps drops
    // the stranger until the deadline, then nothing does.
    let mut rules = Rules::open_pinned(host.pins.path(), 64).expect("open the pinned rules");
    let deadline = clock::deadline_after(Duration::from_secs(3));
    rules
        .bans
        .ban(IpAddr::V4(STRANGER_V4), deadline)
        .expect("ban");
    assert_eq!(
        host.connect(IpAddr::V4(STRANGER_V4), PROBE),
        Outcome::TimedOut
    );
    let outcome = host.connect(IpAddr::V4(FLOODER), TIMEOUT);
    assert!(banner(&outcome), "an unbanned stranger: {outcome:?}");
    std::thread::sleep(clock::remaining(deadline) + Duration::from_millis(200));
    let outcome = host.connect(IpAddr::V4(STRANGER_V4), TIMEOUT);
    assert!(banner(&outcome), "the ban's deadline passed: {outcome:?}");
    let ban = rules
        .bans
        .get(IpAddr::V4(STRANGER_V4))
        .expect("read")
        .expect("the expired ban stays until swept");
    assert!(ban.hits >= 1, "{ban:?}");
    host.cli_ok(&["detach"]);
}
