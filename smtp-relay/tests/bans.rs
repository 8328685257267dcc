//! `[bans]`: the relay binary, real TCP on loopback (one 127.0.0.x source address per client),
//! and a Unix-socket listener of the test's own (`common::ban_socket`) that plays the gatekeeper
//! daemon's side of the ban socket protocol: it reads one JSON request a line, answers one line
//! (ok, or refused), and records what it was asked. Each trigger asks exactly once for the offending address with
//! the configured duration and reason; triggers that are off ask nothing; a missing socket or
//! a refusing daemon never costs the SMTP service.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::ban_socket::{Answer, BanSocket};
use common::process::Relay;
use common::{Client, Setup, config_with};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");

fn ban(ip: &str, secs: u64, reason: &str) -> Value {
    serde_json::json!({"ban": ip, "for_secs": secs, "reason": reason})
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The standard test config (AUTH throttled after 4 failures, so most of ten attempts meet
/// the 454 without a password check) with `bans` appended to a `[bans]` table.
fn relay_with(tag: &str, bans: &str) -> (Setup, Relay) {
    let setup = Setup::new(
        tag,
        &config_with(
            "auth_max_failures = 4\nmetrics_listen = \"127.0.0.1:0\"",
            &format!("[bans]\nsocket = \"ban.sock\"\n{bans}"),
        ),
    );
    let relay = Relay::start(BIN, &setup.config, 6);
    (setup, relay)
}

fn socket_path(setup: &Setup) -> PathBuf {
    setup.dir.path().join("ban.sock")
}

/// `attempts` failed AUTH PLAIN from `source` on the submission port, three per session (the
/// relay closes after three failures).
fn fail_auth(relay: &Relay, setup: &Setup, source: &str, attempts: usize) {
    let mut left = attempts;
    while left > 0 {
        let mut c = Client::connect_from(relay.addr("submission", true), ip(source));
        c.ehlo();
        c.starttls(&setup.ca());
        c.ehlo();
        for _ in 0..left.min(3) {
            let r = c.auth_plain("alice", "wrong guess");
            assert!(matches!(r.code, 535 | 454 | 421), "{r:?}");
            left -= 1;
            if r.code == 421 {
                break;
            }
        }
    }
}

/// A message for a local recipient from `source` on the mta port: the service works.
fn send_local_mail(relay: &Relay, source: &str) {
    let mut c = Client::connect_from(relay.addr("mta", true), ip(source));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    c.send_mail(
        "someone@sender.example",
        &["alice@example.org"],
        b"Subject: hi\r\n\r\nhello\r\n",
    )
    .expect(250, "2.0.0");
    c.cmd("QUIT");
}

/// A message with `data` (sent as is, end included) from `source`; returns the reply code.
fn send_raw_data(relay: &Relay, source: &str, data: &[u8]) -> u16 {
    let mut c = Client::connect_from(relay.addr("mta", true), ip(source));
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(data);
    c.read_reply().code
}

/// The value of the series `series` (name and labels) on the relay's metrics endpoint.
fn metric(relay: &Relay, series: &str) -> u64 {
    let line = relay.wait_for_log(&["event=\"metrics_listening\""]);
    let addr = line
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address in {line}"));
    let mut tcp = TcpStream::connect(addr).expect("connect to metrics");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing in {text}"))
}

fn tcp_from(addr: SocketAddr, source: &str) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(ip(source), 0).into())
        .expect("bind source");
    socket.connect(&addr.into()).expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp
}

#[test]
fn ten_failed_auths_ask_for_exactly_one_ban() {
    let (setup, relay) = relay_with(
        "bans-auth",
        "auth_failures = { count = 10, within_secs = 600, ban_secs = 3600 }\n",
    );
    let daemon = BanSocket::start(&socket_path(&setup), Answer::Ok);
    fail_auth(&relay, &setup, "127.0.0.2", 9);
    std::thread::sleep(Duration::from_millis(300));
    assert!(daemon.requests().is_empty(), "{:?}", daemon.requests());
    fail_auth(&relay, &setup, "127.0.0.2", 1);
    assert_eq!(
        daemon.wait_for(1),
        vec![ban("127.0.0.2", 3600, "auth-failures")]
    );
    let line = relay.wait_for_log(&["event=\"ban\"", "outcome=\"ok\""]);
    for field in [
        "client=127.0.0.2",
        "trigger=\"auth_failures\"",
        "for_secs=3600",
        "banned=\"127.0.0.2/32\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    // Ten more: the ban asked for still runs, so it is not asked for again.
    fail_auth(&relay, &setup, "127.0.0.2", 10);
    assert_eq!(daemon.wait_for(1).len(), 1, "{:?}", daemon.requests());
    // A correct password from elsewhere is not evidence (bob: alice is held at 454 for now).
    let mut c = Client::connect_from(relay.addr("submission", true), ip("127.0.0.3"));
    c.ehlo();
    c.starttls(&setup.ca());
    c.ehlo();
    c.auth_plain("bob", "bobs password").expect(235, "2.7.0");
    assert_eq!(daemon.wait_for(1).len(), 1);
}

#[test]
fn pre_greet_talkers_smugglers_and_floods_are_banned() {
    let (setup, relay) = relay_with(
        "bans-triggers",
        "smuggling = { ban_secs = 86400 }\n\
         pre_greet = { delay_ms = 300, ban_secs = \"1h\" }\n\
         connections = { count = 5, within_secs = 60, ban_secs = 600 }\n",
    );
    let daemon = BanSocket::start(&socket_path(&setup), Answer::Ok);

    // Talks before the banner: 554, closed, banned.
    let mut tcp = tcp_from(relay.addr("mta", true), "127.0.0.4");
    tcp.write_all(b"EHLO eager.example\r\n").expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("554 5.5.1 "), "{answer:?}");
    assert_eq!(
        daemon.wait_for(1),
        vec![ban("127.0.0.4", 3600, "pre-greet")]
    );
    relay.wait_for_log(&["event=\"pre_greet\"", "client=127.0.0.4"]);

    // A client that waits for the banner is served (after the delay) and not banned.
    let started = Instant::now();
    send_local_mail(&relay, "127.0.0.5");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A fake end of data: refused and banned. A mere bare LF: refused, not banned.
    let smuggled = b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<x@evil.example>\r\n\r\n.\r\n";
    assert_eq!(send_raw_data(&relay, "127.0.0.6", smuggled), 550);
    assert_eq!(send_raw_data(&relay, "127.0.0.7", b"a\nb\r\n.\r\n"), 550);
    let got = daemon.wait_for(2);
    assert_eq!(got[1], ban("127.0.0.6", 86400, "smuggling"), "{got:?}");
    assert_eq!(got.len(), 2, "{got:?}");

    // Five connections within a minute; all of them were served (5 = the count, so the fifth
    // asks). 127.0.0.5 has had one connection, it is not banned.
    for n in 0..5 {
        if n == 4 {
            assert_eq!(daemon.requests().len(), 2, "asked before the fifth");
        }
        let mut c = Client::connect_from(relay.addr("mta", true), ip("127.0.0.8"));
        assert_eq!(c.greeting.code, 220);
        c.cmd("QUIT");
    }
    let got = daemon.wait_for(3);
    assert_eq!(got[2], ban("127.0.0.8", 600, "connections"), "{got:?}");
    assert_eq!(got.len(), 3, "{got:?}");
    // One connection to the socket served all of them.
    assert_eq!(daemon.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn triggers_that_are_off_ask_nothing() {
    let (setup, relay) = relay_with("bans-off", "");
    let daemon = BanSocket::start(&socket_path(&setup), Answer::Ok);
    fail_auth(&relay, &setup, "127.0.0.2", 12);
    let smuggled = b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<x@evil.example>\r\n\r\n.\r\n";
    assert_eq!(send_raw_data(&relay, "127.0.0.3", smuggled), 550);
    for _ in 0..8 {
        send_local_mail(&relay, "127.0.0.4");
    }
    // No greeting delay: input before the banner is just an early command.
    let mut tcp = tcp_from(relay.addr("mta", true), "127.0.0.5");
    tcp.write_all(b"QUIT\r\n").expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("220 "), "{answer:?}");
    assert!(answer.contains("221 2.0.0"), "{answer:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(daemon.requests().is_empty(), "{:?}", daemon.requests());
    assert_eq!(daemon.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn a_missing_refusing_or_restarting_daemon_never_costs_smtp_service() {
    let (setup, relay) = relay_with(
        "bans-down",
        "auth_failures = { count = 3, within_secs = 600, ban_secs = 3600 }\n",
    );
    let path = socket_path(&setup);

    // No socket: the ban fails (one WARN for the outage), the service goes on.
    fail_auth(&relay, &setup, "127.0.0.2", 3);
    relay.wait_for_log(&["event=\"ban_socket_down\""]);
    send_local_mail(&relay, "127.0.0.2");
    fail_auth(&relay, &setup, "127.0.0.3", 3);
    send_local_mail(&relay, "127.0.0.3");
    let downs = relay
        .lines()
        .iter()
        .filter(|l| l.contains("event=\"ban_socket_down\""))
        .count();
    assert_eq!(downs, 1, "one WARN per outage");

    // The daemon comes up and refuses: logged with its reason, the service goes on. The
    // address whose request failed is asked for again on new evidence.
    let refusing = BanSocket::start(&path, Answer::Refuse("127.0.0.2 is in never_ban"));
    std::thread::sleep(Duration::from_millis(500));
    fail_auth(&relay, &setup, "127.0.0.2", 3);
    assert_eq!(
        refusing.wait_for(1),
        vec![ban("127.0.0.2", 3600, "auth-failures")]
    );
    let line = relay.wait_for_log(&["event=\"ban\"", "outcome=\"refused\""]);
    assert!(line.contains("127.0.0.2 is in never_ban"), "{line}");
    relay.wait_for_log(&["event=\"ban_socket_up\""]);
    send_local_mail(&relay, "127.0.0.2");

    // The daemon restarts: the kept connection is dead, the next request gets through on a
    // new one.
    drop(refusing);
    let daemon = BanSocket::start(&path, Answer::Ok);
    fail_auth(&relay, &setup, "127.0.0.4", 3);
    assert_eq!(
        daemon.wait_for(1),
        vec![ban("127.0.0.4", 3600, "auth-failures")]
    );
    send_local_mail(&relay, "127.0.0.4");

    let results = "smtp_relay_ban_results_total{trigger=\"auth_failures\",result=";
    assert_eq!(
        metric(
            &relay,
            "smtp_relay_bans_requested_total{trigger=\"auth_failures\"}"
        ),
        4
    );
    for (result, n) in [
        ("failed", 2),
        ("refused", 1),
        ("accepted", 1),
        ("dropped", 0),
    ] {
        assert_eq!(
            metric(&relay, &format!("{results}\"{result}\"}}")),
            n,
            "{result}"
        );
    }
}
