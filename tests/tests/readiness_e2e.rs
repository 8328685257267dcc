//! systemd readiness of `gatekeeper run` (issue 22): with `Type=notify` the unit counts as started,
//! and the relay ordered after it starts, when the daemon sends `READY=1`. That must mean the filter
//! is attached with its maps filled: a stranger's SYN sent while the daemon starts passes, the first
//! one after `READY=1` is dropped. A reload is bracketed by `RELOADING=1` and `READY=1`. The
//! notification socket is the test's own; namespaces, veth, real TCP, the real binary.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    addresses::{LINK_PARTNER_V4 as PARTNER_V4, LINK_STRANGER_V4 as STRANGER_V4},
    gk::{MailHost, stop_cleanly},
    kernel_tests_enabled,
    notify::{NotifySocket, status},
    process::{Daemon, TempDir},
    tcp::Outcome,
    workspace_binary,
};

/// Long enough for a SYN/SYN-ACK on a veth.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// For probes that are expected to time out.
const PROBE: Duration = Duration::from_millis(300);
/// How long a start or reload may take to report.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `gatekeeper run` in the host namespace with `NOTIFY_SOCKET` set, as systemd starts it.
fn start_notifying(host: &MailHost, notify: &NotifySocket) -> Daemon {
    let mut cmd = host.host().nsenter();
    cmd.arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&host.config)
        .env("NOTIFY_SOCKET", notify.path());
    let log = host.dir.path().join("gatekeeper-run.log");
    Daemon::start("gatekeeper-run", cmd, &log).expect("start gatekeeper run")
}

/// The next notification with `line`; fails with what arrived instead and the daemon's log.
fn wait_for(notify: &NotifySocket, daemon: &Daemon, line: &str) -> String {
    notify
        .wait_for(line, READY_TIMEOUT)
        .unwrap_or_else(|seen| panic!("no {line}; received {seen:?}; log:\n{}", daemon.log()))
}

fn signal(daemon: &Daemon, signal: i32) {
    let pid = daemon.pid().expect("daemon running");
    let pid = libc::pid_t::try_from(pid).expect("pid in range");
    // SAFETY: signalling a child this test started, by its PID.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

#[test]
fn ready_is_sent_only_once_the_filter_enforces_and_reloads_are_bracketed() {
    if !kernel_tests_enabled(
        "ready_is_sent_only_once_the_filter_enforces_and_reloads_are_bracketed",
    ) {
        return;
    }
    let host = MailHost::new("grd");
    host.write_config(&host.config_text("", &[&format!("{PARTNER_V4}/32")]));
    let notify = NotifySocket::bind(&host.dir.path().join("notify.sock")).expect("notify socket");

    // The test holds the config's edit lock, which the starting daemon takes before it fills the
    // maps and attaches; held by a process that is not a gatekeeper command, the daemon waits
    // 500 ms for it, then goes on without it. So for at least 500 ms after the daemon asks for it
    // (after loading the program) the filter is not attached yet.
    let lock = gatekeeper::lock::lock_config(&host.config, Duration::from_secs(1))
        .expect("take the config's edit lock");
    let mut daemon = start_notifying(&host, &notify);
    let starting = Instant::now();
    // While it starts, a stranger gets through and the daemon has not claimed readiness.
    while starting.elapsed() < Duration::from_millis(300) {
        let stranger = host.connect(IpAddr::V4(STRANGER_V4), TIMEOUT);
        assert!(
            stranger.is_banner(),
            "the stranger was refused before the daemon could attach: {stranger:?}\n{}",
            daemon.log()
        );
        assert_eq!(
            notify.try_recv(),
            None,
            "notified before the filter was attached:\n{}",
            daemon.log()
        );
    }
    drop(lock);

    let ready = wait_for(&notify, &daemon, "READY=1");
    // The first SYN after READY=1 is dropped: the filter enforced when it was sent.
    assert_eq!(
        host.connect(IpAddr::V4(STRANGER_V4), PROBE),
        Outcome::TimedOut,
        "the stranger got through after READY=1:\n{}",
        daemon.log()
    );
    assert!(host.connect(IpAddr::V4(PARTNER_V4), TIMEOUT).is_banner());
    let line = status(&ready).unwrap_or_else(|| panic!("READY=1 without STATUS=: {ready:?}"));
    for needle in [
        "enforcing on".to_owned(),
        host.link.left_if.clone(),
        "ports 25".to_owned(),
        "1 allowed networks".to_owned(),
    ] {
        assert!(
            line.contains(&needle),
            "{needle:?} missing in STATUS={line}"
        );
    }
    assert!(daemon.log().contains("enforcing"), "{}", daemon.log());

    // `systemctl reload`: SIGHUP. RELOADING=1 (with the clock systemd ≥ 253 matches it against),
    // then READY=1 once the new config is in force: the stranger, now allowed, gets through.
    host.write_config(&host.config_text(
        "",
        &[&format!("{PARTNER_V4}/32"), &format!("{STRANGER_V4}/32")],
    ));
    signal(&daemon, libc::SIGHUP);
    let reloading = wait_for(&notify, &daemon, "RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let ready = wait_for(&notify, &daemon, "READY=1");
    assert!(
        status(&ready).is_some_and(|s| s.contains("2 allowed networks")),
        "{ready:?}"
    );
    assert!(
        daemon.log().contains("config reloaded"),
        "READY=1 before the reload was applied:\n{}",
        daemon.log()
    );
    assert!(host.connect(IpAddr::V4(STRANGER_V4), TIMEOUT).is_banner());

    // A config that does not validate: RELOADING=1, READY=1 again, the previous config in force.
    host.write_config("interfaces = [\"\"\n");
    signal(&daemon, libc::SIGHUP);
    wait_for(&notify, &daemon, "RELOADING=1");
    wait_for(&notify, &daemon, "READY=1");
    assert!(daemon.log().contains("reload refused"), "{}", daemon.log());
    assert!(host.connect(IpAddr::V4(STRANGER_V4), TIMEOUT).is_banner());

    stop_cleanly(&mut daemon);
    wait_for(&notify, &daemon, "STOPPING=1");
}

/// `examples/gatekeeper.service` with its binary paths pointed at this build (nothing is installed
/// on the host), in `dir`.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gatekeeper.service");
    let text = std::fs::read_to_string(&unit).expect("read examples/gatekeeper.service");
    let binary = workspace_binary("gatekeeper");
    let text = text.replace("/usr/local/sbin/gatekeeper", &binary.display().to_string());
    let path = dir.join("gatekeeper.service");
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn systemd_analyze_verifies_the_gatekeeper_unit() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gatekeeper.service"),
    )
    .expect("read examples/gatekeeper.service");
    assert!(unit.lines().any(|l| l == "Type=notify"), "not Type=notify");
    let dir = TempDir::new("unit").expect("temporary directory");
    let path = unit_with_built_binary(dir.path());
    gatekeeper_tests::notify::verify_unit("systemd_analyze_verifies_the_gatekeeper_unit", &path);
}
