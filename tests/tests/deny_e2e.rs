//! Deny lists end to end (issue 18): the real daemon and CLI in two namespaces joined by a veth,
//! real TCP to an open port. A deny feed replaced by rename is in force within a second (and a
//! network taken out of it is admitted again), a bad feed line is reported with FILE:LINE while
//! the rest applies, and `gatekeeper deny add|remove` take effect through the running daemon.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    addresses::{LINK_PARTNER_V4 as PARTNER_V4, LINK_STRANGER_V4 as STRANGER_V4},
    gk::MailHost,
    kernel_tests_enabled,
    tcp::Outcome,
};

const TIMEOUT: Duration = Duration::from_millis(1500);
/// For probes that are expected to time out.
const PROBE: Duration = Duration::from_millis(400);
/// The promise for a feed renamed into place.
const FEED_DEADLINE: Duration = Duration::from_secs(1);

/// The mail host with port 25 open (everyone but denied sources), the partner allowlisted, and
/// one deny feed in the test's directory.
fn setup(tag: &str, feed_text: &str) -> MailHost {
    let host = MailHost::new(tag);
    let feed = feed_path(&host);
    std::fs::write(&feed, feed_text).expect("write the feed");
    let keys = format!(
        "deny_feeds = [\"{}\"]\nban_state = \"{}\"\n\n[[port]]\nnumber = 25\npolicy = \"open\"\n",
        feed.display(),
        host.dir.path().join("bans.json").display(),
    );
    host.write_config(&host.config_text(&keys, &[&format!("{PARTNER_V4}")]));
    host
}

fn feed_path(host: &MailHost) -> std::path::PathBuf {
    host.dir.path().join("drop.txt")
}

/// Replaces the feed the way the example timer does: a temporary file in the same directory,
/// renamed into place.
fn replace_feed(feed: &Path, text: &str) {
    let tmp = feed.with_extension("txt.part");
    std::fs::write(&tmp, text).expect("write the new feed");
    std::fs::rename(&tmp, feed).expect("rename the feed into place");
}

fn stranger(host: &MailHost, timeout: Duration) -> Outcome {
    host.connect(IpAddr::V4(STRANGER_V4), timeout)
}

/// Probes `source` until the outcome is (or is not, `dropped` false) a timeout, for up to
/// `deadline`; how long that took.
fn until(host: &MailHost, source: IpAddr, dropped: bool, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let outcome = host.connect(source, if dropped { PROBE } else { TIMEOUT });
        if (outcome == Outcome::TimedOut) == dropped {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_feed_renamed_into_place_is_in_force_within_a_second_and_bad_lines_are_skipped() {
    if !kernel_tests_enabled(
        "a_feed_renamed_into_place_is_in_force_within_a_second_and_bad_lines_are_skipped",
    ) {
        return;
    }
    let host = setup("gdf", "; an empty drop list\n");
    let daemon = host.start_daemon("gatekeeper-run");
    assert!(
        stranger(&host, TIMEOUT).is_banner(),
        "port 25 is open: a stranger connects"
    );
    let feed = feed_path(&host);

    // The feed now lists the stranger, with a bad line before it.
    replace_feed(
        &feed,
        &format!(
            "; DROP list\n203.0.113.0/24 ; SBL1\nnot-a-network ; SBL2\n{STRANGER_V4}/32 ; SBL3\n"
        ),
    );
    std::thread::sleep(FEED_DEADLINE);
    assert_eq!(
        stranger(&host, PROBE),
        Outcome::TimedOut,
        "a second after the rename the feed is in force: the stranger's SYN is dropped\n{}",
        daemon.log()
    );
    let stats = host.stats();
    assert!(host.counter(&stats, "ipv4", "denied_list") > 0, "{stats}");
    assert!(
        host.connect(IpAddr::V4(PARTNER_V4), TIMEOUT).is_banner(),
        "the partner is not in the feed"
    );
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("{}:3: skipped", feed.display()))),
        "the bad line is reported with FILE:LINE:\n{log}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["status", "--json"])).expect("status json");
    let reported = &status["deny"]["feeds"][0];
    assert_eq!(reported["entries"], 2, "{status}");
    assert_eq!(reported["bad_lines"], 1, "{status}");
    assert_eq!(status["deny"]["in_sync"], true, "{status}");

    // Out of the feed again: admitted.
    replace_feed(&feed, "; DROP list\n203.0.113.0/24 ; SBL1\n");
    std::thread::sleep(FEED_DEADLINE);
    assert!(
        stranger(&host, TIMEOUT).is_banner(),
        "taken out of the feed, the stranger connects again\n{}",
        daemon.log()
    );

    // A missing feed is empty, not fatal: the daemon keeps running.
    std::fs::remove_file(&feed).expect("remove the feed");
    std::thread::sleep(FEED_DEADLINE);
    let log = daemon.log();
    assert!(log.contains("deny feed unreadable"), "{log}");
    let status: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["status", "--json"])).expect("status json");
    assert_eq!(status["deny"]["live_entries"], 0, "{status}");
}

#[test]
fn deny_add_and_remove_take_effect_through_the_running_daemon() {
    if !kernel_tests_enabled("deny_add_and_remove_take_effect_through_the_running_daemon") {
        return;
    }
    let host = setup("gdc", "");
    let daemon = host.start_daemon("gatekeeper-run");
    let source = IpAddr::V4(STRANGER_V4);
    assert!(stranger(&host, TIMEOUT).is_banner(), "open port");

    let out = host.cli(&[
        "deny",
        "add",
        "192.0.2.64/27",
        "--comment",
        "hijacked netblock",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = until(&host, source, true, Duration::from_secs(3));
    assert!(
        took.is_some(),
        "deny add takes effect through the daemon's reload\n{}",
        daemon.log()
    );
    let text = host.read_config();
    assert!(
        text.contains("[[deny]]\ncidr = \"192.0.2.64/27\"\ncomment = \"hijacked netblock\"\n"),
        "{text}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["deny", "list", "--json"])).expect("json");
    let entry = &list["entries"][0];
    assert_eq!(entry["cidr"], "192.0.2.64/27", "{list}");
    assert_eq!(entry["live"], true, "{list}");
    assert!(entry["hits"].as_u64().is_some_and(|h| h > 0), "{list}");

    // Deny wins over allow: the partner's own address denied warns and drops it.
    let out = host.cli(&["deny", "add", &PARTNER_V4.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deny wins over allow"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        until(&host, IpAddr::V4(PARTNER_V4), true, Duration::from_secs(3)).is_some(),
        "a denied partner is dropped although allowlisted"
    );
    // And `allow add` warns about a deny entry over the new entry.
    let out = host.cli(&["allow", "add", "192.0.2.70"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overlaps the deny entry 192.0.2.64/27"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    host.cli_ok(&["deny", "remove", "192.0.2.64/27"]);
    host.cli_ok(&["deny", "remove", &format!("{PARTNER_V4}/32")]);
    assert!(
        until(&host, source, false, Duration::from_secs(3)).is_some(),
        "deny remove takes effect: the stranger connects again\n{}",
        daemon.log()
    );
    assert!(host.connect(IpAddr::V4(PARTNER_V4), TIMEOUT).is_banner());
    assert!(!host.read_config().contains("[[deny]]"));
}
