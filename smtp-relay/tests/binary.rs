//! Tests of the real `smtp-relay` binary: durability across SIGKILL,
//! graceful SIGTERM, `check` on good and bad configs (including the shipped
//! example), `hash-password`, the audit log lines, and the generated shell
//! completions and man page.

mod common;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nexthop::{NextHop, Script};
use common::process::Relay;
use common::{Client, PASSWORD, Setup, queue_id, split_received};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");

const MESSAGE: &[u8] = b"Subject: durable\r\n\r\n.dot\r\nline\r\n";

#[test]
fn message_answered_250_survives_sigkill_and_is_delivered_once_after_restart() {
    // The next hop is down while the first relay runs, so the messages are
    // still queued (with failed attempts recorded) when it is killed.
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    let routes = [
        ("example.org", hop.addr, "none"),
        ("other.example", hop.addr, "none"),
    ];
    let config = common::config_with("", &common::delivery_section(&routes, ""));
    let setup = Setup::new("kill9", &config);
    let mut relay = Relay::start(BIN, &setup.config, 6);
    let mut c = Client::connect(relay.addr("mta", true));
    c.ehlo();
    let r = c.send_mail("someone@sender.example", &["alice@example.org"], MESSAGE);
    let local_id = queue_id(&r);
    // An authenticated relay over implicit TLS on ::1 too.
    let mut c6 = Client::connect_tls(relay.addr("submissions", false), &setup.ca());
    c6.ehlo();
    c6.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
    let r = c6.send_mail("alice@example.org", &["friend@other.example"], MESSAGE);
    let relay_id = queue_id(&r);

    let line = relay.wait_for_log(&["event=\"message\"", &format!("queue_id=\"{local_id}\"")]);
    for needle in [
        "client=127.0.0.1:",
        "tls=false",
        "user=\"none\"",
        "sender=\"someone@sender.example\"",
        "recipients=\"alice@example.org\"",
        "size=",
        "outcome=\"250 2.0.0\"",
    ] {
        assert!(line.contains(needle), "{needle} missing in {line}");
    }
    let line = relay.wait_for_log(&["event=\"message\"", &format!("queue_id=\"{relay_id}\"")]);
    assert!(
        line.contains("user=\"alice\"") && line.contains("tls=true"),
        "{line}"
    );
    assert!(line.contains("client=[::1]:"), "{line}");

    // kill -9, no chance to flush anything.
    relay.child.kill().expect("SIGKILL");
    relay.wait_exit();
    let spool = setup.spool();
    for id in [&local_id, &relay_id] {
        let (env, eml) = spool.read(id).expect("message in spool after SIGKILL");
        assert_eq!(split_received(&eml).1, MESSAGE);
        assert_eq!(env.id, *id);
    }
    // Restarted with the next hop back: each message arrives once.
    hop.script().down = false;
    let _relay = Relay::start(BIN, &setup.config, 6);
    let got = hop.wait_for(2, Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !spool.queued_ids().expect("list").is_empty() {
        assert!(Instant::now() < deadline, "queue not emptied");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        hop.messages().len(),
        2,
        "duplicates after SIGKILL and restart"
    );
    for m in &got {
        assert_eq!(split_received(&m.data).1, MESSAGE);
    }
}

#[test]
fn sigterm_stops_gracefully_and_auth_failures_are_logged() {
    let setup = Setup::new("term", &common::config_text("", 10_000));
    let mut relay = Relay::start(BIN, &setup.config, 6);
    // The running relay's spool lock is private: nobody else can open it to flock it.
    let lock = std::fs::metadata(setup.dir.path().join("spool/lock")).expect("the spool lock");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&lock.permissions()) & 0o7777,
        0o600
    );
    let mut c = Client::connect(relay.addr("submission", true));
    c.ehlo();
    c.starttls(&setup.ca());
    c.ehlo();
    c.auth_plain("mallory", "guess").expect(535, "5.7.8");
    let line = relay.wait_for_log(&["event=\"auth\"", "outcome=\"failed\""]);
    assert!(line.contains("user=\"mallory\""), "{line}");
    assert!(line.contains("client=127.0.0.1:"), "{line}");

    let pid = i32::try_from(relay.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    c.read_reply().expect(421, "4.3.2");
    let status = relay.wait_exit();
    assert!(status.success(), "{status}");
}

fn check(config: &Path) -> (bool, String) {
    common::process::check(BIN, config)
}

#[test]
fn example_config_passes_check() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/smtp-relay.toml");
    let text = std::fs::read_to_string(&example).expect("examples/smtp-relay.toml");
    let dir = common::TempDir::new("example");
    let root = dir.path();
    // The example names absolute production paths; recreate them under a
    // temp dir so `check` really reads a certificate, key and gatekeeper file.
    std::fs::create_dir_all(root.join("tls")).expect("mkdir");
    common::write_certs(&root.join("tls"));
    std::fs::rename(root.join("tls/cert.pem"), root.join("tls/fullchain.pem")).expect("mv");
    std::fs::rename(root.join("tls/key.pem"), root.join("tls/privkey.pem")).expect("mv");
    std::fs::write(
        root.join("gatekeeper.toml"),
        "interfaces = [\"eth0\"]\nprotected_ports = [25]\n\n[[allow]]\ncidr = \"198.51.100.0/24\"\ncomment = \"partner\"\n",
    )
    .expect("gk");
    // The example's DKIM keys, made as `smtp-relay dkim keygen` makes them.
    std::fs::create_dir_all(root.join("dkim")).expect("mkdir");
    for (selector, algorithm) in [
        ("ed2026", smtp_relay::dkim::keys::Algorithm::Ed25519),
        ("rsa2026", smtp_relay::dkim::keys::Algorithm::Rsa),
    ] {
        let pem = smtp_relay::dkim::keys::generate(algorithm).expect("keygen");
        let path = root.join(format!("dkim/example.org.{selector}.key"));
        smtp_relay::dkim::keyfile::write(&path, &pem, None).expect("write key");
    }
    let root_s = root.display().to_string();
    let replacements = [
        ("/etc/smtp-relay/dkim/", format!("{root_s}/dkim/")),
        ("/etc/smtp-relay/tls/", format!("{root_s}/tls/")),
        (
            "/etc/gatekeeper/gatekeeper.toml",
            format!("{root_s}/gatekeeper.toml"),
        ),
        ("/var/lib/smtp-relay", format!("{root_s}/spool")),
    ];
    // The shipped file has the [dkim] tables commented out (no key exists on a fresh install):
    // uncommented here, with the keys made above, they must load.
    let mut text = text
        .replace("#[[dkim.key]]", "[[dkim.key]]")
        .replace("#domain = \"example.org\"", "domain = \"example.org\"")
        .replace("#selector = ", "selector = ")
        .replace("#private_key = ", "private_key = ");
    for (from, to) in &replacements {
        assert!(text.contains(from), "example no longer mentions {from}");
        text = text.replace(from, to);
    }
    let config = root.join("smtp-relay.toml");
    std::fs::write(&config, &text).expect("write");
    let (ok, out) = check(&config);
    assert!(ok, "example config fails check: {out}");
    assert!(out.contains("OK (5 listener(s), 1 user(s))"), "{out}");
    // The same code path, in-process.
    let prepared = smtp_relay::prepare(&config).expect("example valid");
    assert_eq!(
        prepared.config.local_domains,
        vec!["example.org", "example.net"]
    );
    assert!(prepared.config.listeners[0].admits("198.51.100.9".parse().expect("ip")));
    assert!(!prepared.config.listeners[0].admits("203.0.113.9".parse().expect("ip")));
    let bans = prepared
        .config
        .bans
        .as_ref()
        .expect("the example has [bans]");
    assert_eq!(bans.socket, Path::new("/run/gatekeeper/ban.sock"));
    assert!(bans.auth_failures.is_some() && bans.smuggling.is_some());
    let screen = prepared
        .config
        .screen
        .as_ref()
        .expect("the example has [screen]");
    assert_eq!((screen.threshold, screen.dnsbl.len()), (3, 1));
    let dkim = prepared
        .config
        .dkim
        .as_ref()
        .expect("the example has [dkim]");
    assert_eq!(dkim.keys.len(), 2);
    assert!(prepared.dkim.is_some());
    // And the check is real: without the certificate it fails.
    std::fs::remove_file(root.join("tls/fullchain.pem")).expect("rm");
    let (ok, out) = check(&config);
    assert!(!ok && out.contains("fullchain.pem"), "{out}");
}

#[test]
fn bad_configs_fail_with_a_clear_error() {
    let good = common::config_text("", 10_000);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            good.replace(
                "command_timeout_secs = 10",
                "command_timeout_secs = 10\nrelay_everything = true",
            ),
            vec!["relay.toml", "relay_everything", "line 7, column 1"],
        ),
        (
            good.replace("cert = \"cert.pem\"", "cert = \"missing.pem\""),
            vec!["missing.pem"],
        ),
        (
            good.replace("key = \"key.pem\"", "key = \"ca.pem\""),
            vec!["ca.pem"],
        ),
        (
            good.replacen(
                "password_hash = \"$argon2id$",
                "password_hash = \"$argon2id$x",
                1,
            ),
            vec!["relay.toml", "alice", "password_hash"],
        ),
        (
            good.replace(
                "address = \"[::1]:0\"\nrole = \"mta\"",
                "address = \"[::1]:2525\"\nrole = \"mta\"",
            )
            .replace(
                "address = \"[::1]:0\"\nrole = \"submission\"",
                "address = \"[::]:2525\"\nrole = \"submission\"",
            ),
            vec!["relay.toml", "clashes"],
        ),
        (
            // A CA file without a certificate in it.
            format!(
                "{good}\n[delivery]\nnameservers = [\"192.0.2.53:53\"]\nca_file = \"key.pem\"\n"
            ),
            vec!["relay.toml", "ca_file", "key.pem"],
        ),
        (
            format!(
                "{good}\n[delivery]\nnameservers = [\"192.0.2.53:53\"]\nca_file = \"nowhere.pem\"\n"
            ),
            vec!["relay.toml", "nowhere.pem"],
        ),
        (
            // Nowhere to send: every message would wait 5 days.
            format!("{good}\n[delivery]\nretry_initial_secs = 1.0\n"),
            vec!["relay.toml", "delivery: no way to deliver", "nameservers"],
        ),
        (
            format!(
                "{good}\n[delivery.smarthost]\nhost = \"relay.internal\"\nauth_user = \"u\"\nauth_password_file = \"key.pem\"\n"
            ),
            vec!["relay.toml", "tls = \"required\""],
        ),
    ];
    for (text, needles) in cases {
        let setup = Setup::new("bad", &text);
        let (ok, out) = check(&setup.config);
        assert!(!ok, "bad config accepted: {out}");
        for n in needles {
            assert!(out.contains(n), "{n:?} missing in: {out}");
        }
        // `run` refuses it the same way, before listening.
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&setup.config)
            .output()
            .expect("run");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("relay.toml"));
    }
}

#[test]
fn port_in_use_at_run_fails_and_nothing_listens() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    let free_port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let text = common::config_text("", 10_000)
        .replacen(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"127.0.0.1:{free_port}\""),
            1,
        )
        .replacen(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"127.0.0.1:{busy_port}\""),
            1,
        );
    let setup = Setup::new("busy", &text);
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&setup.config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("relay.toml"), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{busy_port}")),
        "{stderr}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", free_port)).is_err(),
        "first listener still accepting after a failed start"
    );
    drop(busy);
}

#[test]
fn hash_password_from_stdin() {
    let mut child = Command::new(BIN)
        .args(["hash-password", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret pass\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).expect("utf8");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    smtp_relay::password::check_hash(hash).expect("valid hash");
    use argon2::PasswordVerifier as _;
    let parsed = argon2::PasswordHash::new(hash).expect("phc");
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret pass", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"s3cret pass\n", &parsed)
            .is_err()
    );
    // Empty input is refused.
    let out = Command::new(BIN)
        .args(["hash-password", "--stdin"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success());
}

#[test]
fn refused_peers_are_logged_and_sigint_stops() {
    let extra =
        "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"mta\"\nallow = [\"192.0.2.0/24\"]\n";
    let setup = Setup::new("refused", &common::config_text(extra, 10_000));
    let mut relay = Relay::start(BIN, &setup.config, 7);
    let closed = relay.addrs[6].0;
    let c = Client::connect(closed);
    c.greeting.expect(554, "5.7.1");
    let line = relay.wait_for_log(&["event=\"peer_refused\""]);
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    assert!(line.contains(&format!("listener={closed}")), "{line}");

    let pid = i32::try_from(relay.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = relay.wait_exit();
    assert!(status.success(), "{status}");
    relay.wait_for_log(&["event=\"shutdown\"", "stopped"]);
}

/// Every top-level subcommand, as a user types it.
const SUBCOMMANDS: [&str; 6] = [
    "run",
    "check",
    "queue",
    "hash-password",
    "completions",
    "man",
];

fn completion_script(shell: &str) -> String {
    let out = Command::new(BIN)
        .args(["completions", shell])
        .output()
        .expect("run smtp-relay completions");
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 script")
}

#[test]
fn completions_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let script = completion_script(shell);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        assert!(script.contains("smtp-relay"), "{shell}: {script}");
        for verb in SUBCOMMANDS
            .iter()
            .chain(&["list", "show", "flush", "remove"])
        {
            assert!(script.contains(verb), "{shell} completion lacks {verb}");
        }
    }
}

/// What bash offers after `words` (the last one is being completed), using
/// the function the script registers for `smtp-relay`.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    const DRIVER: &str = r#"
source "$1" || exit 1
spec=$(complete -p smtp-relay) || exit 1
fn=${spec#*-F }
fn=${fn%% *}
shift
COMP_WORDS=("$@")
COMP_CWORD=$(( $# - 1 ))
"$fn" smtp-relay "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", DRIVER, "bash"])
        .arg(script)
        .args(words)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{words:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_is_valid_and_completes_subcommands_and_their_arguments() {
    let dir = common::TempDir::new("bash-completion");
    let path = dir.path().join("smtp-relay.bash");
    std::fs::write(&path, completion_script("bash")).expect("write script");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(
        out.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = bash_complete(&path, &["smtp-relay", ""]);
    for verb in SUBCOMMANDS {
        assert!(top.iter().any(|w| w == verb), "{verb} not offered: {top:?}");
    }
    // Past the subcommand too: clap_complete alone gets this wrong for a
    // hyphenated name (see fix_bash_states in main.rs).
    let queue = bash_complete(&path, &["smtp-relay", "queue", "--config", "r.toml", ""]);
    for verb in ["list", "show", "flush", "remove"] {
        assert!(
            queue.iter().any(|w| w == verb),
            "{verb} not offered: {queue:?}"
        );
    }
    let shells = bash_complete(&path, &["smtp-relay", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.iter().any(|w| w == shell), "{shell}: {shells:?}");
    }
    let run = bash_complete(&path, &["smtp-relay", "run", "--"]);
    assert!(run.iter().any(|w| w == "--config"), "{run:?}");
}

#[test]
fn completions_for_an_unknown_shell_fail_naming_the_choices() {
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("run smtp-relay completions");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "a script for an unknown shell");
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
    assert!(
        stderr.contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{stderr}"
    );
}

#[test]
fn man_page_is_roff_with_a_page_per_subcommand() {
    let out = Command::new(BIN)
        .arg("man")
        .output()
        .expect("run smtp-relay man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = String::from_utf8(out.stdout).expect("utf8 page");
    assert!(page.starts_with('.'), "not roff: {page}");
    assert!(page.contains("\n.TH smtp-relay 1"), "{page}");
    assert!(page.contains("\n.SH SYNOPSIS"), "{page}");
    for verb in SUBCOMMANDS {
        assert!(
            page.contains(&format!("\n.TH smtp-relay-{verb} 1")),
            "no page for {verb}"
        );
    }
    // The text comes from the CLI's doc comments.
    assert!(page.contains("never an open relay"), "{page}");
    assert!(page.contains("control socket"), "{page}");
}

/// With no relay running, `queue flush|remove` write the spool themselves:
/// fine for the spool's owner; anyone else (root, while the relay runs as
/// `smtp-relay`) is refused before touching it, since the relay could not
/// read those files, nor open a root-owned `lock`, at its next start.
#[test]
fn queue_commands_without_a_relay_write_the_spool_only_as_its_owner() {
    use std::os::unix::fs::MetadataExt as _;
    let setup = Setup::new("qowner", &common::config_with("", ""));
    let spool = setup.dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("mkdir spool");
    let flush = || {
        Command::new(BIN)
            .args(["queue", "--config"])
            .arg(&setup.config)
            .arg("flush")
            .output()
            .expect("run queue flush")
    };
    let out = flush();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("as soon as the relay starts"));
    // The spool lock is private (whoever can open it can flock it and stall the relay's start),
    // also one an older version left 0644.
    let lock_mode = || {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(spool.join("lock"))
            .expect("stat lock")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(lock_mode(), 0o600);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(spool.join("lock"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    assert!(flush().status.success());
    assert_eq!(lock_mode(), 0o600, "made private again");

    let test = "queue_commands_without_a_relay_write_the_spool_only_as_its_owner";
    if !common::root_tests_enabled(test, "giving the spool another owner") {
        return;
    }
    std::fs::remove_file(spool.join("lock")).expect("rm lock");
    std::os::unix::fs::chown(&spool, Some(65534), Some(65534)).expect("chown spool");
    let out = flush();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "root wrote a spool it does not own");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    assert!(stderr.contains("runuser -u smtp-relay"), "{stderr}");
    assert!(!spool.join("lock").exists(), "a root-owned lock was left");
    assert_eq!(std::fs::metadata(&spool).expect("stat").uid(), 65534);
}

/// A renewed certificate (files replaced by rename, as ACME clients do) is
/// served from the next handshake on without a restart; a half-renewed pair
/// (new certificate, old key) keeps the previous one in service; SIGHUP
/// checks at once and no longer ends the process.
#[test]
fn renewed_certificate_is_served_without_a_restart() {
    let setup = Setup::new("renew", &common::config_text("", 10_000));
    let mut relay = Relay::start(BIN, &setup.config, 6);
    let implicit = relay.addr("submissions", true);
    let ehlo_over_tls = |ca: &Path| {
        let mut c = Client::connect_tls(implicit, ca);
        c.greeting.expect(220, "");
        c.ehlo();
        c.cmd("QUIT");
    };
    ehlo_over_tls(&setup.ca());

    // A new CA and leaf: a client trusting only the new CA succeeds only if
    // the relay serves the new leaf.
    let renewed = common::TempDir::new("renewed");
    common::write_certs(renewed.path());
    let replace = |from: &Path, name: &str| {
        let tmp = setup.dir.path().join(format!("{name}.new"));
        std::fs::copy(from.join(name), &tmp).expect("copy");
        std::fs::rename(&tmp, setup.dir.path().join(name)).expect("rename");
    };
    replace(renewed.path(), "key.pem");
    replace(renewed.path(), "cert.pem");
    let new_ca = renewed.path().join("ca.pem");
    ehlo_over_tls(&new_ca);
    relay.wait_for_log(&["event=\"tls_reloaded\""]);

    // Only the certificate of a third pair arrives: it does not match the
    // key in place, so the renewed pair stays in service.
    let third = common::TempDir::new("third");
    common::write_certs(third.path());
    replace(third.path(), "cert.pem");
    ehlo_over_tls(&new_ca);
    let line = relay.wait_for_log(&["event=\"tls_reload_failed\""]);
    assert!(line.contains("does not match its key"), "{line}");

    let pid = i32::try_from(relay.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    relay.wait_for_log(&["event=\"reload\""]);
    ehlo_over_tls(&new_ca);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(relay.wait_exit().success());
}
