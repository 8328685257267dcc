//! `[recipients]`: recipient validation at RCPT time, against the relay binary on loopback,
//! the scripted next hop of `common::nexthop` (which knows two users) and a ban socket of the
//! test's own. An unknown local recipient gets `550 5.1.1` before DATA: nothing is spooled,
//! nothing reaches the next hop, no bounce is made. A next hop that is down or not listening
//! gives `451 4.4.3`, never `250`. Answers are cached (a second RCPT makes no connection), list
//! files are followed (a broken edit keeps the last good list), and a harvester is closed and
//! banned.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::ban_socket::{Answer, BanSocket};
use common::nexthop::{NextHop, Script};
use common::process::Relay;
use common::{Client, Setup, config_with, delivery_section};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");
const MESSAGE: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";
const HIT: &str = "smtp_relay_check_cache_total{check=\"recipient\",result=\"hit\"}";
const MISS: &str = "smtp_relay_check_cache_total{check=\"recipient\",result=\"miss\"}";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A next hop that knows two users at example.org, alice and bob (and its postmaster).
fn two_users() -> NextHop {
    NextHop::start(
        "127.0.0.1:0",
        Script {
            known_rcpts: Some(vec![
                "alice@example.org".into(),
                "bob@example.org".into(),
                "postmaster@example.org".into(),
            ]),
            ..Script::default()
        },
    )
}

/// The relay binary with the standard test config, metrics, `[delivery]` routes for
/// example.org (and example.net) to `routes`, and `tail` (the `[recipients]` table and more).
fn relay(tag: &str, routes: &[(&str, SocketAddr)], tail: &str) -> (Setup, Relay) {
    let routes: Vec<(&str, SocketAddr, &str)> =
        routes.iter().map(|(d, a)| (*d, *a, "none")).collect();
    let setup = Setup::new(
        tag,
        &config_with(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("{}\n{tail}", delivery_section(&routes, "")),
        ),
    );
    let relay = Relay::start(BIN, &setup.config, 6);
    (setup, relay)
}

const VERIFY_ORG: &str =
    "[recipients]\n[[recipients.domain]]\ndomain = \"example.org\"\nsource = \"verify\"\n";

fn session(relay: &Relay, source: &str) -> Client {
    let mut c = Client::connect_from(relay.addr("mta", true), ip(source));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    c.cmd("MAIL FROM:<someone@sender.example>")
        .expect(250, "2.1.0");
    c
}

#[test]
fn an_unknown_recipient_is_refused_before_data_and_nothing_is_queued_or_bounced() {
    let hop = two_users();
    let (setup, relay) = relay("rcpt-unknown", &[("example.org", hop.addr)], VERIFY_ORG);
    let mut c = session(&relay, "127.0.0.2");
    let r = c.cmd("RCPT TO:<nobody@example.org>");
    r.expect(550, "5.1.1");
    assert_eq!(
        r.text(),
        "5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
    );
    // Nothing was accepted, so there is no transaction to send.
    c.cmd("DATA").expect(554, "5.5.1");
    c.cmd("QUIT");
    relay.wait_for_log(&[
        "event=\"recipient\"",
        "client=127.0.0.2:",
        "recipient=\"nobody@example.org\"",
        "result=\"unknown\"",
        "source=\"verify\"",
        "outcome=\"550 5.1.1\"",
    ]);
    // A known user in the same kind of session goes through, the unknown one next to it not.
    let mut c = session(&relay, "127.0.0.2");
    c.cmd("RCPT TO:<Alice@Example.ORG>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<nobody@example.org>").expect(550, "5.1.1");
    // postmaster is never probed (RFC 5321 4.5.1), and accepted although the hop does not know it.
    c.cmd("RCPT TO:<postmaster@example.org>")
        .expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(MESSAGE);
    c.send_raw(b".\r\n");
    c.read_reply().expect(250, "2.0.0");
    c.cmd("QUIT");
    let got = hop.wait_for(1, Duration::from_secs(10));
    assert_eq!(
        got[0].rcpts,
        ["Alice@Example.ORG", "postmaster@example.org"],
        "only the accepted recipients reach the next hop"
    );
    // The queue is empty again and made no bounce: nothing for the unknown user was queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !setup.spool().queued_ids().expect("spool").is_empty() {
        assert!(Instant::now() < deadline, "the spool does not empty");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        setup.spool().queued_ids().expect("spool").is_empty(),
        "a bounce was queued"
    );
    assert_eq!(hop.messages().len(), 1);
    // One probe per address (the second RCPT of nobody came from the cache), none for
    // postmaster; then the delivery.
    assert_eq!(
        hop.rcpts_seen(),
        [
            "nobody@example.org",
            "Alice@Example.ORG",
            "Alice@Example.ORG",
            "postmaster@example.org"
        ]
    );
    assert_eq!(
        relay.metric("smtp_relay_checks_total{check=\"recipient\",result=\"unknown\"}"),
        2
    );
    assert_eq!(
        relay.metric("smtp_relay_refused_total{reason=\"unknown_recipient\"}"),
        2
    );
}

#[test]
fn a_second_rcpt_of_the_same_address_is_answered_from_the_cache() {
    let hop = two_users();
    let (_setup, relay) = relay("rcpt-cache", &[("example.org", hop.addr)], VERIFY_ORG);
    let mut c = session(&relay, "127.0.0.3");
    c.cmd("RCPT TO:<bob@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<ghost@example.org>").expect(550, "5.1.1");
    c.cmd("QUIT");
    let connections = hop.connect_times().len();
    assert_eq!(connections, 2, "one probe per address");
    assert_eq!((relay.metric(HIT), relay.metric(MISS)), (0, 2));
    // Another session, other case: both answers come from the cache, no new connection.
    let mut c = session(&relay, "127.0.0.4");
    c.cmd("RCPT TO:<BOB@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<ghost@EXAMPLE.org>").expect(550, "5.1.1");
    c.cmd("QUIT");
    assert_eq!(hop.connect_times().len(), connections);
    assert_eq!((relay.metric(HIT), relay.metric(MISS)), (2, 2));
    assert_eq!(
        hop.rcpts_seen(),
        ["bob@example.org", "ghost@example.org"],
        "each address was probed once"
    );
}

#[test]
fn a_next_hop_that_is_down_or_not_listening_gives_451_never_250() {
    let down = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let (_setup, relay) = relay(
        "rcpt-down",
        &[("example.org", down.addr), ("example.net", closed)],
        &format!(
            "{VERIFY_ORG}\n[[recipients.domain]]\ndomain = \"example.net\"\nsource = \"verify\"\n"
        ),
    );
    let mut c = session(&relay, "127.0.0.5");
    let r = c.cmd("RCPT TO:<alice@example.org>");
    r.expect(451, "4.4.3");
    assert_eq!(
        r.text(),
        "4.4.3 Recipient verification unavailable, try later"
    );
    c.cmd("RCPT TO:<alice@example.net>").expect(451, "4.4.3");
    // The hop is remembered as down for tempfail_ttl_secs: another address makes no new
    // connection (a storm of RCPTs is not a storm of connections to a dead host).
    c.cmd("RCPT TO:<bob@example.org>").expect(451, "4.4.3");
    assert_eq!(down.connect_times().len(), 1);
    c.cmd("DATA").expect(554, "5.5.1");
    c.cmd("QUIT");
    let line = relay.wait_for_log(&[
        "event=\"recipient\"",
        "recipient=\"alice@example.net\"",
        "result=\"unverified\"",
        "outcome=\"451 4.4.3\"",
    ]);
    assert!(line.contains(&closed.to_string()), "{line}");
    assert_eq!(
        relay.metric("smtp_relay_checks_total{check=\"recipient\",result=\"unverified\"}"),
        3
    );
}

#[test]
fn a_list_file_is_followed_and_a_broken_edit_keeps_the_last_good_list() {
    let hop = two_users();
    let dir = common::TempDir::new("rcpt-list-file");
    let list = dir.path().join("example.org.list");
    std::fs::write(&list, "# staff\nalice@example.org\n").expect("write");
    let (_setup, relay) = relay(
        "rcpt-list",
        &[("example.org", hop.addr)],
        &format!(
            "[recipients]\nreload_secs = 0.2\n[[recipients.domain]]\ndomain = \"example.org\"\n\
             source = \"list\"\nfile = \"{}\"\n",
            list.display()
        ),
    );
    let mut c = session(&relay, "127.0.0.6");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<carol@example.org>").expect(550, "5.1.1");
    std::fs::write(&list, "alice@example.org\ncarol@example.org\n").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    c.cmd("RCPT TO:<carol@example.org>").expect(250, "2.1.5");
    relay.wait_for_log(&["event=\"recipients_reloaded\"", "entries=2"]);
    // A broken edit (and one that drops alice): the last good list stays in force.
    std::fs::write(&list, "carol@example.org\nthis line is broken\n").expect("write");
    std::thread::sleep(Duration::from_millis(500));
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    let line = relay.wait_for_log(&["event=\"recipients_reload_failed\""]);
    assert!(
        line.contains(&format!("{}:2: one address per line", list.display())),
        "{line}"
    );
    c.cmd("QUIT");
    // A list never asks the next hop.
    assert!(hop.connect_times().is_empty());
}

#[test]
fn a_harvester_is_slowed_closed_and_banned() {
    let hop = two_users();
    let setup = Setup::new(
        "rcpt-harvest",
        &config_with(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!(
                "{}\n[recipients]\nunknown_delay_ms = 100\nunknown_max = 6\n\
                 [[recipients.domain]]\ndomain = \"example.org\"\nsource = \"verify\"\n\n\
                 [bans]\nsocket = \"ban.sock\"\n\
                 unknown_recipients = {{ count = 6, within_secs = 60, ban_secs = 600 }}\n",
                delivery_section(&[("example.org", hop.addr, "none")], "")
            ),
        ),
    );
    let daemon = BanSocket::start(&setup.dir.path().join("ban.sock"), Answer::Ok);
    let relay = Relay::start(BIN, &setup.config, 6);
    let mut c = session(&relay, "127.0.0.7");
    let mut waits = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        c.cmd(&format!("RCPT TO:<guess{i}@example.org>"))
            .expect(550, "5.1.1");
        waits.push(start.elapsed());
    }
    // Three answered at once, then 100 ms, then 200 ms (lower bounds only: sleeps are exact
    // at the least).
    assert!(waits[3] >= Duration::from_millis(100), "{waits:?}");
    assert!(waits[4] >= Duration::from_millis(200), "{waits:?}");
    // The sixth unknown closes the session.
    c.cmd("RCPT TO:<guess5@example.org>").expect(421, "4.7.0");
    assert_eq!(c.read_reply().code, 0, "closed after the 421");
    relay.wait_for_log(&[
        "event=\"recipient_harvest\"",
        "client=127.0.0.7:",
        "unknown=6",
    ]);
    relay.wait_for_log(&[
        "event=\"disconnect\"",
        "client=127.0.0.7:",
        "reason=\"recipient_harvest\"",
    ]);
    let got = daemon.wait_for(1);
    assert_eq!(
        got,
        [serde_json::json!({"ban": "127.0.0.7", "for_secs": 600, "reason": "unknown-recipients"})]
    );
    // A known user from another address is unaffected.
    let mut c = session(&relay, "127.0.0.8");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    c.cmd("QUIT");
}

#[test]
fn check_reports_recipient_config_errors() {
    let setup = Setup::new(
        "rcpt-check",
        &config_with(
            "",
            "[recipients]\n[[recipients.domain]]\ndomain = \"example.org\"\nsource = \"verify\"\n",
        ),
    );
    let (ok, text) = common::process::check(BIN, &setup.config);
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "recipients.domain[0].source = \"verify\": example.org has no [[delivery.route]]"
        ),
        "{text}"
    );
    std::fs::write(
        setup.dir.path().join("list"),
        "alice@example.org\nbob@other.example\n",
    )
    .expect("write");
    setup.rewrite(&config_with(
        "",
        "[recipients]\n[[recipients.domain]]\ndomain = \"example.org\"\nsource = \"list\"\nfile = \"list\"\n",
    ));
    let (ok, text) = common::process::check(BIN, &setup.config);
    assert!(!ok, "{text}");
    assert!(
        text.contains("list:2: other.example is not a domain this list is used for"),
        "{text}"
    );
}

#[test]
fn the_readme_example_is_a_valid_config() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("\n## Recipient validation\n")
        .nth(1)
        .expect("the README has a Recipient validation section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml example in the section");
    let setup = Setup::new(
        "rcpt-readme",
        &config_with(
            "",
            &format!(
                "{}\n{block}",
                delivery_section(
                    &[(
                        "example.org",
                        "127.0.0.1:2525".parse().expect("addr"),
                        "none"
                    )],
                    ""
                )
            ),
        ),
    );
    std::fs::create_dir_all(setup.dir.path().join("recipients")).expect("mkdir");
    std::fs::write(
        setup.dir.path().join("recipients/example.net"),
        "alice@example.net\nsales@example.net\n",
    )
    .expect("write");
    let prepared = smtp_relay::prepare(&setup.config).expect("the README example is valid");
    let r = prepared.config.recipients.expect("[recipients]");
    assert_eq!(r.domains.len(), 2);
    assert_eq!(r.negative_ttl, Duration::from_secs(600));
    let bans = prepared.config.bans.expect("[bans]");
    assert!(bans.unknown_recipients.is_some());
}
