//! The controller end to end: the admin CLI against a live filter, reloads without a gap, a killed
//! daemon leaving the filter enforcing and its successor adopting it, bad reloads refused. Two
//! namespaces joined by a veth, real TCP, the real binary.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    ops::Deref,
    path::Path,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    addresses::{HOST_V4, LINK_PARTNER_V4 as PARTNER_V4, LINK_STRANGER_V4 as STRANGER_V4},
    gk::{MailHost, stop_cleanly},
    kernel_tests_enabled,
    process::Daemon,
    tcp::Outcome,
    unique_name, workspace_binary,
};

/// Long enough for a SYN/SYN-ACK on a veth, short enough to keep the tests quick.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// For probes that are expected to time out.
const PROBE: Duration = Duration::from_millis(300);
const METRICS_PORT: u16 = 9725;

/// The mail host with its banner server, a partner and a stranger on the Internet side; the
/// config allows the partner.
struct Setup(MailHost);

impl Deref for Setup {
    type Target = MailHost;

    fn deref(&self) -> &MailHost {
        &self.0
    }
}

impl Setup {
    fn new(tag: &str, extra_config: &str) -> Setup {
        let setup = Setup(MailHost::new(tag));
        setup.write_config(&setup.commented_config(extra_config, &[]));
        setup
    }

    /// A commented config allowing the partner and `extra` entries.
    fn commented_config(&self, extra_keys: &str, extra: &[String]) -> String {
        let mut text = format!(
            "# Gatekeeper test config: keep this comment.\n\
             interfaces = [\"{}\"] # the veth\n\
             pin_dir = \"{}\"\n\
             {extra_keys}\n\
             # Partners.\n\
             [[allow]]\n\
             cidr = \"{PARTNER_V4}/32\"\n\
             comment = \"partner\"\n",
            self.link.left_if,
            self.pins.path().display()
        );
        for cidr in extra {
            text.push_str(&format!("\n[[allow]]\ncidr = \"{cidr}\"\n"));
        }
        text
    }

    /// A connection from `source` (on the Internet side) to the mail host's port 25.
    fn connect(&self, source: impl ToString, timeout: Duration) -> Outcome {
        let source: IpAddr = source.to_string().parse().expect("test address");
        self.0.connect(source, timeout)
    }

    /// `status --json`, checking that its exit status says what its `health` says.
    fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "gatekeeper status ({}) printed no JSON ({err}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let expected = match report["health"].as_str() {
            Some("as_configured") => 0,
            Some("differs") => 2,
            Some("not_loaded") => 3,
            other => panic!("unknown health {other:?}: {report}"),
        };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "status exited {} for {report}",
            out.status
        );
        report
    }
}

fn signal(daemon: &Daemon, signal: i32) {
    let pid = daemon.pid().expect("daemon running");
    let pid = libc::pid_t::try_from(pid).expect("pid in range");
    // SAFETY: signalling a child this test started, by its PID.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

fn wait_for_count(daemon: &Daemon, needle: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&daemon.log(), needle) < at_least {
        assert!(
            Instant::now() <= deadline,
            "daemon did not log {needle:?} {at_least} times:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn allow_add_admits_a_stranger_and_remove_blocks_it_again() {
    if !kernel_tests_enabled("allow_add_admits_a_stranger_and_remove_blocks_it_again") {
        return;
    }
    let setup = Setup::new(
        "gca",
        &format!("metrics_listen = \"127.0.0.1:{METRICS_PORT}\""),
    );
    let _daemon = setup.start_daemon("gatekeeper-run");
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);

    let before = setup.read_config();
    let out = setup.cli_ok(&[
        "allow",
        "add",
        &STRANGER_V4.to_string(),
        "--comment",
        "new relay (ticket 42)",
    ]);
    assert!(out.contains("and to the live filter"), "{out}");
    let admitted = setup.connect(STRANGER_V4, TIMEOUT);
    assert!(admitted.is_banner(), "after allow add: {admitted:?}");
    let after = setup.read_config();
    assert!(
        after.starts_with(&before),
        "earlier content changed:\n{after}"
    );
    assert!(after.contains("# Gatekeeper test config: keep this comment.\n"));
    assert!(after.contains("] # the veth\n"));
    assert!(
        after.ends_with(&format!(
            "\n[[allow]]\ncidr = \"{STRANGER_V4}/32\"\ncomment = \"new relay (ticket 42)\"\n"
        )),
        "{after}"
    );

    // Hit counters come from the live maps.
    let list: serde_json::Value =
        serde_json::from_str(&setup.cli_ok(&["allow", "list", "--json"])).expect("allow list JSON");
    let entry = list["entries"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|x| x["cidr"] == format!("{STRANGER_V4}/32").as_str())
        })
        .cloned()
        .expect("the new entry listed");
    assert_eq!(entry["comment"], "new relay (ticket 42)");
    assert!(entry["hits"].as_u64().unwrap_or(0) >= 1, "{entry}");

    // Refused edits: a clear message, a non-zero exit, nothing changed.
    let stranger = STRANGER_V4.to_string();
    for (args, message) in [
        (
            vec!["allow", "add", &stranger],
            "is already in the allowlist",
        ),
        (vec!["allow", "add", "192.0.2.66/24"], "has host bits set"),
        (
            vec!["allow", "add", "mail.example"],
            "is not an IPv4 or IPv6",
        ),
        (
            vec!["allow", "remove", "203.0.113.9"],
            "is not in the allowlist",
        ),
    ] {
        let out = setup.cli(&args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(setup.read_config(), after, "{args:?} changed the file");
    }

    let status = setup.status();
    assert_eq!(status["in_sync"], true, "{status}");
    assert_eq!(status["health"], "as_configured", "{status}");
    assert_eq!(status["daemon_running"], true, "{status}");
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
    assert_eq!(status["interfaces"][0]["mode"], "native", "{status}");

    // Metrics, from inside the host namespace.
    let metrics = setup
        .host()
        .run(|| {
            let mut stream =
                TcpStream::connect(("127.0.0.1", METRICS_PORT)).expect("connect to metrics");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send the request");
            let mut body = String::new();
            stream.read_to_string(&mut body).expect("read the metrics");
            body
        })
        .expect("enter the host namespace");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains("gatekeeper_allowlist_entries{family=\"ipv4\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "gatekeeper_frames_total{{interface=\"{}\",family=\"ipv4\",verdict=\"dropped\"}}",
            setup.link.left_if
        )),
        "{metrics}"
    );

    // A config that cannot be written: the live change is undone, both stay as they were.
    setup.cli_ok(&["allow", "add", "198.51.100.99", "--comment", "undone"]);
    let before_failed_edits = setup.read_config();
    for args in [
        ["allow", "add", "203.0.113.7"],
        ["allow", "remove", "198.51.100.99"],
    ] {
        let out = read_only_config_dir(&setup, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded on a read-only directory"
        );
        assert!(stderr.contains("not changed"), "{args:?}: {stderr}");
        assert_eq!(setup.read_config(), before_failed_edits);
        let status = setup.status();
        assert_eq!(status["in_sync"], true, "{args:?}: {status}");
    }
    setup.cli_ok(&["allow", "remove", "198.51.100.99"]);

    let out = setup.cli_ok(&["allow", "remove", &STRANGER_V4.to_string()]);
    assert!(out.contains("from the live filter"), "{out}");
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    assert_eq!(setup.read_config(), before);
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
}

#[test]
fn concurrent_admins_do_not_lose_each_others_edits() {
    if !kernel_tests_enabled("concurrent_admins_do_not_lose_each_others_edits") {
        return;
    }
    let setup = Setup::new("gcp", "");
    let _daemon = setup.start_daemon("gatekeeper-run");
    let children = (1..=8)
        .map(|i| {
            setup
                .host()
                .nsenter()
                .arg(workspace_binary("gatekeeper"))
                .args(["allow", "add", &format!("198.51.100.{i}"), "--comment"])
                .arg(format!("admin {i}"))
                .arg("--config")
                .arg(&setup.config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("start eight admins");
    for child in children {
        let out = child.wait_with_output().expect("admin finished");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = setup.read_config();
    for i in 1..=8 {
        assert!(
            text.contains(&format!(
                "cidr = \"198.51.100.{i}/32\"\ncomment = \"admin {i}\"\n"
            )),
            "{text}"
        );
    }
    assert!(text.starts_with("# Gatekeeper test config: keep this comment.\n"));
    let status = setup.status();
    assert_eq!(status["in_sync"], true, "{status}");
    assert_eq!(status["live_entries"]["ipv4"], 9, "{status}");
}

#[test]
fn cli_and_daemon_edits_share_the_ipv4_tables() {
    if !kernel_tests_enabled("cli_and_daemon_edits_share_the_ipv4_tables") {
        return;
    }
    // The partner's /32 makes the daemon take a second-level DIR-24-8 block at start-up; the CLI
    // takes another for 203.0.113.7/32; a reload then needs a third for 198.51.100.7/32. Each must
    // get its own block, or one /24's lookups land in another's.
    let setup = Setup::new("gct", "");
    let (cli_peer, reload_peer) = ("203.0.113.7", "198.51.100.7");
    for (addr, net) in [
        (cli_peer, "203.0.113.0/24"),
        (reload_peer, "198.51.100.0/24"),
    ] {
        setup
            .client()
            .add_addr(&setup.link.right_if, &format!("{addr}/24"))
            .expect("peer address");
        setup
            .host()
            .exec(&["ip", "route", "add", net, "dev", &setup.link.left_if])
            .expect("route to the peer");
    }
    let daemon = setup.start_daemon("gatekeeper-run");
    assert_eq!(setup.connect(cli_peer, PROBE), Outcome::TimedOut);
    setup.cli_ok(&["allow", "add", cli_peer]);
    assert!(setup.connect(cli_peer, TIMEOUT).is_banner());

    let text = setup.read_config() + &format!("\n[[allow]]\ncidr = \"{reload_peer}/32\"\n");
    setup.write_config(&text);
    signal(&daemon, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.connect(reload_peer, PROBE).is_banner() {
        assert!(
            Instant::now() < deadline,
            "reload never admitted {reload_peer}:\n{}",
            daemon.log()
        );
    }
    let hits_before = hits(&setup, reload_peer);
    assert!(setup.connect(cli_peer, TIMEOUT).is_banner());
    assert_eq!(
        hits(&setup, reload_peer),
        hits_before,
        "{cli_peer}'s connection was counted for {reload_peer}: the two /24s share a block"
    );
    setup.cli_ok(&["allow", "remove", cli_peer]);
    assert_eq!(setup.connect(cli_peer, PROBE), Outcome::TimedOut);
    assert!(setup.connect(reload_peer, TIMEOUT).is_banner());
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
}

/// The live hit counter of the allowlist entry for `addr`/32.
fn hits(setup: &Setup, addr: &str) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&setup.cli_ok(&["allow", "list", "--json"])).expect("allow list JSON");
    list["entries"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|x| x["cidr"] == format!("{addr}/32").as_str())
        })
        .and_then(|x| x["hits"].as_u64())
        .unwrap_or_else(|| panic!("no live entry for {addr}: {list}"))
}

/// Runs `gatekeeper ARGS --config FILE` in a private mount namespace where the config's
/// directory is bind-mounted read-only (so writing the file fails, even for root).
fn read_only_config_dir(setup: &Setup, args: &[&str]) -> std::process::Output {
    let script = "mount --bind -o ro \"$0\" \"$0\" && shift && exec \"$@\"";
    std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .arg(setup.dir.path())
        .arg("unused")
        .arg(workspace_binary("gatekeeper"))
        .args(args)
        .arg("--config")
        .arg(&setup.config)
        .output()
        .expect("run gatekeeper with a read-only config directory")
}

/// Sets its flag when dropped, also while a panic unwinds, so that the probing threads of a
/// `thread::scope` stop and the scope can end.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const DIR24: &str = "ipv4_lookup = \"dir24\"";

/// Connects from the partner in a loop while `work` runs (and 200 ms after, for the last
/// change to be probed): the number of connections and the ones that got no banner.
fn probe_partner_while(setup: &Setup, work: impl FnOnce()) -> (usize, Vec<Outcome>) {
    let stop = AtomicBool::new(false);
    let attempts = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let outcome = setup.connect(PARTNER_V4, TIMEOUT);
                attempts.fetch_add(1, Ordering::Relaxed);
                if !outcome.is_banner()
                    && let Ok(mut f) = failures.lock()
                {
                    f.push(outcome);
                }
            }
        });
        let _stop = StopOnDrop(&stop);
        work();
        std::thread::sleep(Duration::from_millis(200));
    });
    (
        attempts.into_inner(),
        failures.into_inner().unwrap_or_default(),
    )
}

#[test]
fn a_hundred_reloads_leave_no_gap_for_an_allowed_peer() {
    if !kernel_tests_enabled("a_hundred_reloads_leave_no_gap_for_an_allowed_peer") {
        return;
    }
    // DIR-24-8 explicitly (a short list would get the trie): the /32s around the partner's share
    // its /24's second-level block, so reloads rewrite, retire and reallocate blocks under load.
    let setup = Setup::new("gcr", DIR24);
    let daemon = setup.start_daemon("gatekeeper-run");
    let (attempts, failures) = probe_partner_while(&setup, || {
        for round in 0..100usize {
            // Entries come and go around the partner's; ports switch between [25] and [25, 587].
            let extra: Vec<String> = (0..3)
                .map(|k| format!("198.51.100.{}/32", (round * 3 + k) % 250))
                .chain((round % 2 == 0).then(|| "203.0.113.0/24".to_string()))
                .collect();
            let ports = if round % 2 == 0 { "[25]" } else { "[587, 25]" };
            let text =
                setup.commented_config(&format!("{DIR24}\nprotected_ports = {ports}"), &extra);
            setup.write_config(&text);
            let before = count(&daemon.log(), "config reloaded");
            signal(&daemon, libc::SIGHUP);
            wait_for_count(&daemon, "config reloaded", before + 1);
        }
    });
    let log = daemon.log();
    assert!(count(&log, "config reloaded") >= 100, "{log}");
    assert!(!log.contains("reload refused"), "{log}");
    eprintln!(
        "100 reloads: {attempts} connections, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {attempts} connections failed: {failures:?}",
        failures.len()
    );
    assert!(
        attempts >= 20,
        "only {attempts} connections during the reloads"
    );
    // The last config is in force (its SIGHUP reload may still be under way).
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.status()["in_sync"] != true {
        assert!(Instant::now() < deadline, "never in sync:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
}

#[test]
fn a_killed_daemon_leaves_the_filter_enforcing_and_its_successor_adopts_it() {
    if !kernel_tests_enabled(
        "a_killed_daemon_leaves_the_filter_enforcing_and_its_successor_adopts_it",
    ) {
        return;
    }
    let setup = Setup::new("gck", "");
    let mut first = setup.start_daemon("gatekeeper-run-1");
    let stop = AtomicBool::new(false);
    let partner = (AtomicUsize::new(0), std::sync::Mutex::new(Vec::new()));
    let stranger = (AtomicUsize::new(0), std::sync::Mutex::new(Vec::new()));
    let second = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let outcome = setup.connect(PARTNER_V4, TIMEOUT);
                partner.0.fetch_add(1, Ordering::Relaxed);
                if !outcome.is_banner()
                    && let Ok(mut f) = partner.1.lock()
                {
                    f.push(outcome);
                }
            }
        });
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let outcome = setup.connect(STRANGER_V4, PROBE);
                stranger.0.fetch_add(1, Ordering::Relaxed);
                if outcome != Outcome::TimedOut
                    && let Ok(mut f) = stranger.1.lock()
                {
                    f.push(outcome);
                }
            }
        });
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(500));
        first
            .stop_with(libc::SIGKILL, Duration::from_secs(5))
            .expect("SIGKILL the first daemon");
        // Nobody runs the filter now; the pins keep it enforcing.
        std::thread::sleep(Duration::from_secs(1));
        let link_pin = setup
            .pins
            .path()
            .join(format!("link-{}", setup.link.left_if));
        assert!(
            link_pin.exists(),
            "{} missing after SIGKILL",
            link_pin.display()
        );
        let status = setup.status();
        assert_eq!(status["daemon_running"], false, "{status}");
        assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
        let second = setup.start_daemon("gatekeeper-run-2");
        assert!(
            second.log().contains("adopted the pinned link"),
            "{}",
            second.log()
        );
        std::thread::sleep(Duration::from_secs(1));
        second
    });
    let partner_failures = partner.1.into_inner().unwrap_or_default();
    let stranger_passes = stranger.1.into_inner().unwrap_or_default();
    let (partner_attempts, stranger_attempts) = (partner.0.into_inner(), stranger.0.into_inner());
    eprintln!(
        "across SIGKILL and restart: partner {partner_attempts} connections ({} failed), stranger {stranger_attempts} probes ({} got through)",
        partner_failures.len(),
        stranger_passes.len()
    );
    assert!(
        partner_failures.is_empty(),
        "partner failed {} of {partner_attempts} times: {partner_failures:?}",
        partner_failures.len()
    );
    assert!(
        stranger_passes.is_empty(),
        "stranger got through {} of {stranger_attempts} times: {stranger_passes:?}",
        stranger_passes.len()
    );
    assert!(
        partner_attempts >= 5 && stranger_attempts >= 5,
        "{partner_attempts} {stranger_attempts}"
    );

    // The successor owns the state: a clean stop detaches and unpins (default stop semantics).
    let mut second = second;
    stop_cleanly(&mut second);
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());
    assert!(!setup.pins.path().exists(), "pins left behind");
}

#[test]
fn cli_edits_work_with_the_daemon_stopped_and_the_program_pinned() {
    if !kernel_tests_enabled("cli_edits_work_with_the_daemon_stopped_and_the_program_pinned") {
        return;
    }
    let setup = Setup::new("gcs", "keep_attached_on_exit = true");
    let mut daemon = setup.start_daemon("gatekeeper-run");
    stop_cleanly(&mut daemon);
    assert!(
        daemon.log().contains("keep_attached_on_exit"),
        "{}",
        daemon.log()
    );
    // Still enforcing, with nobody running.
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    let status = setup.status();
    assert_eq!(status["daemon_running"], false, "{status}");
    assert_eq!(status["loaded"], true, "{status}");
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");

    let out = setup.cli_ok(&[
        "allow",
        "add",
        &STRANGER_V4.to_string(),
        "--comment",
        "offline edit",
    ]);
    assert!(out.contains("and to the live filter"), "{out}");
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());
    assert!(setup.read_config().contains("comment = \"offline edit\""));
    assert_eq!(setup.status()["in_sync"], true);
    setup.cli_ok(&["allow", "remove", &format!("{STRANGER_V4}/32")]);
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);

    // A file edited by hand while no daemon runs shows up as a difference.
    let hand = setup.commented_config("keep_attached_on_exit = true", &["203.0.113.0/24".into()]);
    setup.write_config(&hand);
    let status = setup.status();
    assert_eq!(status["in_sync"], false, "{status}");
    assert_eq!(status["health"], "differs", "{status}");
    assert_eq!(
        status["difference"]["missing_from_live"][0], "203.0.113.0/24",
        "{status}"
    );

    // `detach` takes it off and removes the pins.
    let out = setup.cli_ok(&["detach"]);
    assert!(
        out.contains(&format!("detached from {}", setup.link.left_if)),
        "{out}"
    );
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());
    assert!(!setup.pins.path().exists(), "pins left behind");
    assert_eq!(setup.status()["health"], "not_loaded");
    // With nothing pinned, edits go to the file only.
    let out = setup.cli_ok(&["allow", "add", "2001:db8::/32"]);
    assert!(out.contains("the filter is not loaded"), "{out}");
}

#[test]
fn a_broken_config_on_reload_is_refused_and_enforcement_stays() {
    if !kernel_tests_enabled("a_broken_config_on_reload_is_refused_and_enforcement_stays") {
        return;
    }
    let setup = Setup::new("gcb", "");
    let daemon = setup.start_daemon("gatekeeper-run");
    // The broken file would admit the stranger and forget the partner, if it were applied.
    let broken = format!(
        "interfaces = [\"{}\"]\npin_dir = \"{}\"\n[[allow]]\ncidr = \"192.0.2.66/24\"\n",
        setup.link.left_if,
        setup.pins.path().display()
    );
    setup.write_config(&broken);
    signal(&daemon, libc::SIGHUP);
    wait_for_count(&daemon, "reload refused", 1);
    let log = daemon.log();
    let expected = format!(
        "{}:4:8: allow entry \"192.0.2.66/24\" has host bits set",
        setup.config.display()
    );
    let line = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_default();
    assert!(line.contains(&expected), "{line}");
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);

    // A fixed file is picked up without a signal (the daemon watches the file).
    let fixed = setup.commented_config("", &[format!("{STRANGER_V4}/32")]);
    setup.write_config(&fixed);
    wait_for_count(&daemon, "config reloaded", 1);
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
}

#[test]
fn incompatible_pinned_state_is_refused_with_advice() {
    if !kernel_tests_enabled("incompatible_pinned_state_is_refused_with_advice") {
        return;
    }
    let setup = Setup::new("gci", "");
    std::fs::create_dir_all(setup.pins.path()).expect("pin directory");
    // A pinned map under the allowlist's name with another shape (an array of u32).
    pin_foreign_map(&setup.pins.path().join("GK_ALLOW_V4"));
    let out = setup.cli(&["allow", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("incompatible version"), "{stderr}");
    assert!(stderr.contains("gatekeeper detach"), "{stderr}");
    let out = setup
        .host()
        .nsenter()
        .arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&setup.config)
        .output()
        .expect("run gatekeeper");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("incompatible version"), "{stderr}");
}

/// Creates and pins a small BPF array map at `path` with raw `bpf(2)` calls.
fn pin_foreign_map(path: &Path) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut create = [0u8; 128];
    create[0..4].copy_from_slice(&BPF_MAP_TYPE_ARRAY.to_ne_bytes());
    create[4..8].copy_from_slice(&4u32.to_ne_bytes());
    create[8..12].copy_from_slice(&4u32.to_ne_bytes());
    create[12..16].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: BPF_MAP_CREATE with a zeroed, sized attribute block.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, create.as_ptr(), create.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path without NUL");
    let mut pin = [0u8; 128];
    pin[0..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&u32::try_from(fd).expect("fd").to_ne_bytes());
    // SAFETY: BPF_OBJ_PIN of our fd at a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), pin.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we created; the pin keeps the map.
    unsafe { libc::close(i32::try_from(fd).expect("fd")) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {err}");
}

#[test]
fn a_reload_attaches_added_interfaces_and_detaches_removed_ones() {
    if !kernel_tests_enabled("a_reload_attaches_added_interfaces_and_detaches_removed_ones") {
        return;
    }
    let setup = Setup::new("gcf", "");
    let daemon = setup.start_daemon("gatekeeper-run");
    // A second interface on the mail host: a veth pair inside its namespace.
    let (extra, peer) = (unique_name("gcx"), unique_name("gcy"));
    for argv in [
        [
            "ip", "link", "add", &extra, "type", "veth", "peer", "name", &peer,
        ]
        .as_slice(),
        &["ip", "link", "set", &extra, "up"],
        &["ip", "link", "set", &peer, "up"],
    ] {
        setup.host().exec(argv).expect("second interface");
    }
    let with_interfaces = |names: &[&str]| {
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        setup.commented_config("", &[]).replace(
            &format!("interfaces = [\"{}\"]", setup.link.left_if),
            &format!("interfaces = [{}]", list.join(", ")),
        )
    };
    // Waits for a reload that applied exactly these interfaces (a reload triggered by the file
    // poll may come first and count too).
    let reload = |names: &[&str]| {
        let applied = format!("interfaces={}", names.join(","));
        let done = |log: &str| {
            log.lines()
                .filter(|l| l.contains("config reloaded") && l.ends_with(&applied))
                .count()
        };
        let before = done(&daemon.log());
        setup.write_config(&with_interfaces(names));
        signal(&daemon, libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while done(&daemon.log()) <= before {
            assert!(
                Instant::now() <= deadline,
                "no reload applied {applied}:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let attached = |name: &str| {
        let status = setup.status();
        status["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["name"] == name && i["attached"] == true)
    };

    reload(&[&setup.link.left_if, &extra]);
    assert!(attached(&extra), "{}", daemon.log());
    assert!(setup.pins.path().join(format!("link-{extra}")).exists());

    // The veth to the clients leaves the config: its filter comes off, the stranger gets through.
    reload(&[&extra]);
    assert!(!attached(&setup.link.left_if));
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());

    reload(&[&setup.link.left_if]);
    assert!(attached(&setup.link.left_if));
    assert!(!attached(&extra));
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
}

#[test]
fn a_stale_pinned_link_is_replaced_when_the_interface_was_recreated() {
    if !kernel_tests_enabled("a_stale_pinned_link_is_replaced_when_the_interface_was_recreated") {
        return;
    }
    let setup = Setup::new("gcl", "keep_attached_on_exit = true");
    let mut first = setup.start_daemon("gatekeeper-run-1");
    stop_cleanly(&mut first);
    // The interface goes away with its program (a driver reload, a re-created veth) and comes
    // back under the same name: the pinned link now points at nothing.
    let (left, right) = (&setup.link.left, &setup.link.right);
    setup.link.recreate_veth().expect("re-create the veth");
    left.add_addr(&setup.link.left_if, &format!("{HOST_V4}/24"))
        .expect("host address");
    for addr in [PARTNER_V4, STRANGER_V4] {
        right
            .add_addr(&setup.link.right_if, &format!("{addr}/24"))
            .expect("client address");
    }
    assert!(
        setup.connect(STRANGER_V4, TIMEOUT).is_banner(),
        "no filter on the new interface"
    );
    let second = setup.start_daemon("gatekeeper-run-2");
    assert!(second.log().contains("stale"), "{}", second.log());
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    assert_eq!(setup.status()["interfaces"][0]["attached"], true);
    drop(second);
    setup.cli_ok(&["detach"]);
}

/// The capabilities `examples/gatekeeper.service` grants, as `setpriv --bounding-set` wants them.
fn unit_bounding_set() -> String {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gatekeeper.service");
    let text = std::fs::read_to_string(&unit).expect("read examples/gatekeeper.service");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets a CapabilityBoundingSet");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn the_systemd_units_capabilities_are_enough() {
    if !kernel_tests_enabled("the_systemd_units_capabilities_are_enough") {
        return;
    }
    let caps = unit_bounding_set();
    let setup = Setup::new("gcu", "");
    // bpffs is mounted already (as systemd does at boot); the unit has no CAP_SYS_ADMIN to mount it.
    let as_unit = |args: &[&str]| {
        let mut cmd = setup.host().nsenter();
        cmd.args(["setpriv", "--bounding-set", &caps, "--"])
            .arg(workspace_binary("gatekeeper"))
            .args(args)
            .arg("--config")
            .arg(&setup.config);
        cmd
    };
    let mut daemon = Daemon::start(
        "gatekeeper run (unit capabilities)",
        as_unit(&["run"]),
        &setup.dir.path().join("unit.log"),
    )
    .expect("start gatekeeper run with the unit's capabilities");
    if let Err(err) = daemon.wait_for_log("enforcing", Duration::from_secs(20)) {
        panic!("{err:#}");
    }
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    let out = as_unit(&["allow", "add", &STRANGER_V4.to_string()])
        .output()
        .expect("run gatekeeper allow add with the unit's capabilities");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());
    stop_cleanly(&mut daemon);
    assert!(!setup.pins.path().exists(), "{}", daemon.log());
}

/// `count` /31s, each in a /24 of its own (random, outside the documentation ranges: they only
/// fill the tables, no packet comes from them), as config lines. Each takes a DIR-24-8 block (a
/// lone /32 would not: its /24's first-level entry holds it).
fn spread_entries(count: usize, seed: u64) -> Vec<String> {
    let mut rng = gatekeeper_tests::generate::Rng::new(seed);
    let mut slots = std::collections::BTreeSet::new();
    while slots.len() < count {
        // 1.0.0.0-99.255.255.0: far from the test's 192.0.2/198.51.100/203.0.113 addresses.
        let slot = 0x01_0000 + (rng.next_u64() as u32) % (99 << 16);
        slots.insert(slot);
    }
    slots
        .into_iter()
        .map(|slot| {
            let addr = std::net::Ipv4Addr::from((slot << 8) | (rng.next_u64() as u32 & 0xfe));
            format!("{addr}/31")
        })
        .collect()
}

#[test]
fn a_hundred_thousand_spread_entries_start_with_default_settings() {
    if !kernel_tests_enabled("a_hundred_thousand_spread_entries_start_with_default_settings") {
        return;
    }
    // 100k /24s with a long prefix each: far beyond the old fixed pool of 16384 blocks.
    let setup = Setup::new("gsp", "");
    setup.write_config(&setup.commented_config("", &spread_entries(100_000, 0x5b_7ead)));
    let mut daemon = setup.start_daemon("gatekeeper-run");
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    assert_eq!(setup.status()["in_sync"], true);
    stop_cleanly(&mut daemon);
}

#[test]
fn a_reload_that_outgrows_the_block_pool_grows_it_without_a_gap() {
    if !kernel_tests_enabled("a_reload_that_outgrows_the_block_pool_grows_it_without_a_gap") {
        return;
    }
    // Started with a short list (DIR-24-8 explicitly, default pool of 16384 blocks), reloaded
    // with 20,000 /24s that each need a block: the pool grows (new tables filled, the program
    // that uses them swapped into the link) while the partner is probed in a loop.
    let setup = Setup::new("ggr", DIR24);
    let mut daemon = setup.start_daemon("gatekeeper-run");
    let (attempts, failures) = probe_partner_while(&setup, || {
        for (round, count) in [20_000, 40_000].into_iter().enumerate() {
            let extra = spread_entries(count, 0x9e0 + round as u64);
            setup.write_config(&setup.commented_config(DIR24, &extra));
            signal(&daemon, libc::SIGHUP);
            // The daemon also reloads when it sees the file change: wait for the reload that
            // read this round's list, not just for any reload.
            let loaded = format!("entries={} ", count + 1);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !daemon
                .log()
                .lines()
                .any(|l| l.contains("config reloaded") && l.contains(&loaded))
            {
                assert!(Instant::now() < deadline, "no reload:\n{}", daemon.log());
                assert!(!daemon.log().contains("reload refused"), "{}", daemon.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let log = daemon.log();
    assert!(!log.contains("reload refused"), "{log}");
    assert!(count(&log, "growing the pool") >= 2, "{log}");
    assert!(
        failures.is_empty(),
        "{} of {attempts} connections failed while the pool grew: {failures:?}",
        failures.len()
    );
    assert!(
        attempts >= 5,
        "only {attempts} connections during the reloads"
    );
    assert_eq!(setup.status()["in_sync"], true);
    assert_eq!(setup.connect(STRANGER_V4, PROBE), Outcome::TimedOut);
    // The CLI works on the new tables through the replaced pins.
    setup.cli_ok(&["allow", "add", &format!("{STRANGER_V4}/32")]);
    assert!(setup.connect(STRANGER_V4, TIMEOUT).is_banner());
    stop_cleanly(&mut daemon);
}

#[test]
fn an_allow_add_that_needs_more_blocks_than_the_pool_has_is_applied_by_the_reload() {
    if !kernel_tests_enabled(
        "an_allow_add_that_needs_more_blocks_than_the_pool_has_is_applied_by_the_reload",
    ) {
        return;
    }
    // 17,000 hosts, each alone in its /24: they need no block, so `auto` makes the smallest
    // pool (16,384 blocks); a /8 over them needs a block for every one, more than the pool has.
    let hosts: Vec<String> = (0..17_000u32)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0001 + (i << 8))))
        .collect();
    let setup = Setup::new("gab", "");
    setup.write_config(&setup.commented_config("", &hosts));
    let mut daemon = setup.start_daemon("gatekeeper-run");
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    let out = setup.cli_ok(&["allow", "add", "10.0.0.0/8"]);
    assert!(out.contains("not yet live"), "{out}\n{}", daemon.log());
    assert!(setup.read_config().contains("cidr = \"10.0.0.0/8\""));
    // The daemon notices the file, grows the pool, and then the live filter matches it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.status()["in_sync"] != true {
        assert!(
            Instant::now() < deadline,
            "never in sync:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        daemon.log().contains("growing the pool"),
        "{}",
        daemon.log()
    );
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    stop_cleanly(&mut daemon);
}

#[test]
fn a_failed_start_leaves_no_pins() {
    if !kernel_tests_enabled("a_failed_start_leaves_no_pins") {
        return;
    }
    // A ceiling of 10 blocks for a list that needs 50: the start fails after the maps were
    // created and pinned; it must take them away again.
    let setup = Setup::new("gfs", "");
    let ceiling = "ipv4_dir24_blocks = 10";
    setup.write_config(&setup.commented_config(ceiling, &spread_entries(50, 0xfa11)));
    let out = setup
        .cli_command(&["run"])
        .output()
        .expect("run gatekeeper run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started despite the ceiling:\n{stderr}"
    );
    assert!(stderr.contains("no free block"), "{stderr}");
    let left: Vec<String> = std::fs::read_dir(setup.pins.path())
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "the failed start left pins: {left:?}");
    // Raising the ceiling is enough: no `gatekeeper detach` needed.
    setup.write_config(
        &setup.commented_config("ipv4_dir24_blocks = 100", &spread_entries(50, 0xfa11)),
    );
    let mut daemon = setup.start_daemon("gatekeeper-run");
    assert!(setup.connect(PARTNER_V4, TIMEOUT).is_banner());
    stop_cleanly(&mut daemon);
}
