//! Bans end to end (issue 18): the real daemon and CLI in two namespaces joined by a veth, real
//! TCP. A ban is enforced by the program itself (it ends on time with the daemon stopped), it
//! survives a daemon restart (pinned) and a reboot (the state file, with the pins gone), and the
//! ban socket refuses allowlisted and `never_ban` sources and users outside its group.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    addresses::{LINK_PARTNER_V4 as PARTNER_V4, LINK_STRANGER_V4 as STRANGER_V4},
    ban_socket::ask,
    gk::{MailHost, stop_cleanly},
    kernel_tests_enabled,
    tcp::Outcome,
};

const TIMEOUT: Duration = Duration::from_millis(1500);
/// For probes that are expected to time out.
const PROBE: Duration = Duration::from_millis(400);

/// The mail host with port 25 open (everyone may connect, but for bans) and the partner
/// allowlisted (a ban of the partner shows that ban > allow), the ban state file and socket in
/// the test's directory, and `never_ban` as given.
fn setup(tag: &str, never_ban: &str, extra: &str) -> MailHost {
    let host = MailHost::new(tag);
    let dir = host.dir.path().to_path_buf();
    let keys = format!(
        "keep_attached_on_exit = true\nban_state = \"{}\"\nban_socket = \"{}\"\nnever_ban = [\"{never_ban}\"]\n{extra}\n[[port]]\nnumber = 25\npolicy = \"open\"\n",
        dir.join("state/bans.json").display(),
        dir.join("ban.sock").display(),
    );
    host.write_config(&host.config_text(&keys, &[&format!("{PARTNER_V4}")]));
    host
}

fn partner(host: &MailHost, timeout: Duration) -> Outcome {
    host.connect(IpAddr::V4(PARTNER_V4), timeout)
}

#[test]
fn a_ban_ends_on_time_with_the_daemon_stopped_and_survives_restart_and_reboot() {
    if !kernel_tests_enabled(
        "a_ban_ends_on_time_with_the_daemon_stopped_and_survives_restart_and_reboot",
    ) {
        return;
    }
    let host = setup("gbn", "198.51.100.0/24", "");
    let mut daemon = host.start_daemon("gatekeeper-run");
    assert!(
        partner(&host, TIMEOUT).is_banner(),
        "the partner connects before the ban"
    );
    let stranger = |timeout| host.connect(IpAddr::V4(STRANGER_V4), timeout);
    assert!(
        stranger(TIMEOUT).is_banner(),
        "port 25 is open: a stranger connects"
    );
    host.cli_ok(&["ban", "add", &STRANGER_V4.to_string(), "--for", "1h"]);
    assert_eq!(
        stranger(PROBE),
        Outcome::TimedOut,
        "a banned stranger is dropped on the open port"
    );
    host.cli_ok(&["ban", "remove", &STRANGER_V4.to_string()]);
    assert!(stranger(TIMEOUT).is_banner(), "unbanned, it connects again");

    // A long ban: survives a restart (pins) and a reboot (state file, pins removed).
    let out = host.cli(&[
        "ban",
        "add",
        &PARTNER_V4.to_string(),
        "--for",
        "1h",
        "--reason",
        "test",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("covered by the allow entry"),
        "ban add warns that the ban wins over the allow entry"
    );
    assert_eq!(
        partner(&host, PROBE),
        Outcome::TimedOut,
        "banned: its SYN is dropped"
    );
    let stats = host.stats();
    assert!(host.counter(&stats, "ipv4", "banned") > 0, "{stats}");
    let list: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["ban", "list", "--json"])).expect("json");
    let ban = &list["bans"][0];
    assert_eq!(ban["source"], format!("{PARTNER_V4}/32"));
    assert_eq!(ban["reason"], "test");
    assert!(
        ban["left_secs"].as_u64().is_some_and(|s| s > 3500),
        "{list}"
    );
    assert!(ban["hits"].as_u64().is_some_and(|h| h > 0), "{list}");

    // Restart: the pinned map keeps it.
    stop_cleanly(&mut daemon);
    assert_eq!(
        partner(&host, PROBE),
        Outcome::TimedOut,
        "still banned, daemon stopped"
    );
    let mut daemon = host.start_daemon("gatekeeper-run-2");
    assert_eq!(
        partner(&host, PROBE),
        Outcome::TimedOut,
        "still banned after a restart"
    );

    // "Reboot": the pins go, the state file brings the ban back.
    stop_cleanly(&mut daemon);
    host.cli_ok(&["detach"]);
    assert!(
        partner(&host, TIMEOUT).is_banner(),
        "no filter at all after detach"
    );
    let mut daemon = host.start_daemon("gatekeeper-run-3");
    assert!(daemon.log().contains("restored=1"), "{}", daemon.log());
    assert_eq!(
        partner(&host, PROBE),
        Outcome::TimedOut,
        "restored from the state file"
    );

    // A short ban, then the daemon stops: the program lets the source in after the deadline.
    host.cli_ok(&["ban", "remove", &PARTNER_V4.to_string()]);
    assert!(partner(&host, TIMEOUT).is_banner(), "the ban was lifted");
    host.cli_ok(&["ban", "add", &PARTNER_V4.to_string(), "--for", "3s"]);
    let banned_at = Instant::now();
    stop_cleanly(&mut daemon);
    assert_eq!(
        partner(&host, PROBE),
        Outcome::TimedOut,
        "banned, daemon stopped"
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(banned_at.elapsed()) + Duration::from_millis(500),
    );
    assert!(
        partner(&host, TIMEOUT).is_banner(),
        "connects again after the deadline, with no daemon running"
    );
}

#[test]
fn the_ban_socket_refuses_allowlisted_never_ban_and_outsiders() {
    if !kernel_tests_enabled("the_ban_socket_refuses_allowlisted_never_ban_and_outsiders") {
        return;
    }
    let host = setup("gbs", "192.0.2.64/27", "ban_max_secs = 600\n");
    let daemon = host.start_daemon("gatekeeper-run");
    let socket = host.dir.path().join("ban.sock");

    let allowed = ask(
        &socket,
        &format!(r#"{{"ban": "{PARTNER_V4}", "for_secs": 60, "reason": "x"}}"#),
    );
    assert_eq!(allowed["ok"], false);
    assert_eq!(
        allowed["error"],
        format!("{PARTNER_V4} is in the allowlist ({PARTNER_V4}/32)")
    );
    let own = ask(
        &socket,
        &format!(r#"{{"ban": "{STRANGER_V4}", "for_secs": 60}}"#),
    );
    assert_eq!(own["ok"], false);
    assert_eq!(
        own["error"],
        format!("{STRANGER_V4} is in never_ban (192.0.2.64/27)")
    );

    // Accepted, clamped to ban_max_secs, logged with the requester.
    let banned = ask(
        &socket,
        r#"{"ban": "192.0.2.9", "for_secs": 99999, "reason": "auth-failures"}"#,
    );
    assert_eq!(
        banned,
        serde_json::json!({"ok": true, "banned": "192.0.2.9/32", "for_secs": 600})
    );
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("banned (ban socket)")
            && l.contains(&format!("pid={}", std::process::id()))
            && l.contains("reason=auth-failures")),
        "{log}"
    );
    assert!(host.cli_ok(&["ban", "list"]).contains("192.0.2.9/32"));

    // Mode 0660, root's group: a user outside it cannot connect.
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // The test directory must be reachable for the other user to reach the socket at all.
    std::fs::set_permissions(host.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect({:?})\n  print('connected')\nexcept OSError as e:\n  print('refused', e.errno)",
            socket.display().to_string()
        ))
        .output()
        .expect("run setpriv");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        format!("refused {}", libc::EACCES),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(meta.gid(), 0);
}
