//! One test per protocol limit: the reply the client gets, and that the
//! session (or at least the server) goes on serving afterwards. Plus the
//! AUTH brute-force throttle.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Client, PASSWORD, TestServer, config_text, logs};
use smtp_relay::config::Role;

/// The standard config with `edits` applied (`from` replaced by `to`) and
/// `top` keys added.
fn server(tag: &str, top: &str, edits: &[(&str, &str)]) -> TestServer {
    let mut text = format!("{top}\n{}", config_text("", 10_000));
    for (from, to) in edits {
        assert!(text.contains(from), "{from} not in config");
        text = text.replacen(from, to, 1);
    }
    TestServer::start_with(tag, &text)
}

#[track_caller]
fn still_serving(server: &TestServer) {
    let mut c = Client::connect(server.addr(Role::Mta));
    assert_eq!(c.greeting.code, 220);
    c.cmd("NOOP").expect(250, "2.0.0");
}

fn start_mail(c: &mut Client) {
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
}

#[test]
fn command_line_limit_is_configurable() {
    let server = server("cmdline", "max_command_line = 600", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    // 590 octets with CRLF: fine with 600, too long for the default 512.
    c.cmd(&format!("NOOP {}", "a".repeat(583)))
        .expect(250, "2.0.0");
    c.cmd(&format!("NOOP {}", "a".repeat(600)))
        .expect(500, "5.5.6");
    c.cmd("NOOP").expect(250, "2.0.0");
    still_serving(&server);
}

#[test]
fn text_line_limit_refuses_the_message_and_keeps_the_session() {
    let server = server("textline", "", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    start_mail(&mut c);
    // 998 + CRLF is the RFC maximum: accepted.
    let ok = format!("Subject: ok\r\n\r\n{}\r\n.\r\n", "x".repeat(998));
    c.send_raw(ok.as_bytes());
    c.read_reply().expect(250, "2.0.0");
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    let long = format!("Subject: long\r\n\r\n{}\r\n.\r\n", "x".repeat(999));
    c.send_raw(long.as_bytes());
    c.read_reply().expect(500, "5.5.6");
    c.cmd("NOOP").expect(250, "2.0.0");
    assert_eq!(server.setup.spool().queued_ids().expect("list").len(), 1);
    still_serving(&server);
}

#[test]
fn message_size_is_enforced_while_reading() {
    let server = server("size", "", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.example> SIZE=10001")
        .expect(552, "5.3.4");
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    for _ in 0..120 {
        c.send_raw(format!("{}\r\n", "y".repeat(98)).as_bytes());
    }
    c.send_raw(b".\r\n");
    c.read_reply().expect(552, "5.3.4");
    c.cmd("NOOP").expect(250, "2.0.0");
    assert!(server.setup.spool().queued_ids().expect("list").is_empty());
}

#[test]
fn recipients_per_message() {
    let server = server("rcpts", "max_recipients = 2", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<a1@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<a2@example.org>").expect(250, "2.1.5");
    c.cmd("RCPT TO:<a3@example.org>").expect(452, "4.5.3");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: two\r\n\r\nx\r\n.\r\n");
    let id = common::queue_id(c.read_reply().expect(250, "2.0.0"));
    let env = server.setup.spool().read_envelope(&id).expect("queued");
    assert_eq!(env.recipients.len(), 2);
    c.cmd("NOOP").expect(250, "2.0.0");
}

#[test]
fn errors_per_session() {
    let server = server("errors", "max_errors = 3", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    c.cmd("BOGUS").expect(500, "5.5.2");
    c.cmd("BOGUS").expect(500, "5.5.2");
    c.cmd("BOGUS").expect(421, "4.7.0");
    assert_eq!(c.read_reply().code, 0, "closed after too many errors");
    still_serving(&server);
}

#[test]
fn commands_per_session() {
    let server = server("commands", "max_commands = 5", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    for _ in 0..5 {
        c.cmd("NOOP").expect(250, "2.0.0");
    }
    c.cmd("NOOP").expect(421, "4.7.0");
    assert_eq!(c.read_reply().code, 0, "closed after too many commands");
    still_serving(&server);
}

/// `max_commands` counts per transaction: a sender reusing one connection
/// for many messages (3 commands each, 1,201 in all with EHLO) is never cut
/// off by the default 1,000, nor by a transaction ended with RSET.
#[test]
fn commands_count_per_transaction_so_one_connection_carries_400_messages() {
    let server = server("commands400", "", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    for i in 0..400 {
        let r = c.send_mail(
            "a@sender.example",
            &["alice@example.org"],
            format!("Subject: {i}\r\n\r\nmessage {i}\r\n").as_bytes(),
        );
        assert_eq!(r.code, 250, "message {i}: {r:?}");
    }
    // Transactions ended by RSET count as ended too.
    for _ in 0..400 {
        c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
        c.cmd("RSET").expect(250, "2.0.0");
    }
    c.cmd("NOOP").expect(250, "2.0.0");
    assert_eq!(server.setup.spool().queued_ids().expect("list").len(), 400);
}

/// Outside a transaction RSET starts nothing over: NOOP and RSET alone are
/// still cut off at `max_commands`.
#[test]
fn rset_without_a_transaction_does_not_reset_the_command_count() {
    let server = server("commandsrset", "max_commands = 6", &[]);
    let mut c = Client::connect(server.addr(Role::Mta));
    for _ in 0..3 {
        c.cmd("NOOP").expect(250, "2.0.0");
        c.cmd("RSET").expect(250, "2.0.0");
    }
    c.cmd("RSET").expect(421, "4.7.0");
    assert_eq!(c.read_reply().code, 0, "closed after too many commands");
}

#[test]
fn sessions_total() {
    let server = server(
        "total",
        "max_connections_per_client = 10",
        &[(
            "command_timeout_secs = 10",
            "command_timeout_secs = 10\nmax_connections = 2",
        )],
    );
    let a = Client::connect(server.addr(Role::Mta));
    let b = Client::connect(server.addr(Role::Mta));
    assert_eq!((a.greeting.code, b.greeting.code), (220, 220));
    let c = Client::connect(server.addr(Role::Mta));
    c.greeting.expect(421, "4.7.0");
    drop(a);
    // The slot comes back once the first session is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect(server.addr(Role::Mta));
        if d.greeting.code == 220 {
            d.cmd("NOOP").expect(250, "2.0.0");
            break;
        }
        assert!(Instant::now() < deadline, "slot not released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_per_client_address() {
    let server = server("perclient", "max_connections_per_client = 2", &[]);
    let addr = server.addr(Role::Mta);
    let _a = Client::connect(addr);
    let _b = Client::connect(addr);
    let c = Client::connect(addr);
    c.greeting.expect(421, "4.7.0");
    // Another client address is not affected.
    let mut d = Client::connect_from(addr, "127.0.0.2".parse().expect("ip"));
    assert_eq!(d.greeting.code, 220);
    d.cmd("NOOP").expect(250, "2.0.0");
}

#[test]
fn tls_handshake_timeout() {
    let server = server("handshake", "tls_handshake_timeout_secs = 1", &[]);
    let started = Instant::now();
    // Implicit TLS port, and a client that never says ClientHello.
    let mut tcp = std::net::TcpStream::connect(server.addr(Role::Submissions)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut tcp, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    still_serving(&server);
}

#[test]
fn command_and_data_timeouts() {
    let server = server(
        "timeouts",
        "data_timeout_secs = 1",
        &[("command_timeout_secs = 10", "command_timeout_secs = 2")],
    );
    // Waiting for data: 1 s, then 421 and close.
    let mut c = Client::connect(server.addr(Role::Mta));
    start_mail(&mut c);
    c.send_raw(b"Subject: slow\r\n");
    let started = Instant::now();
    c.read_reply().expect(421, "4.4.2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "{waited:?}"
    );
    // Waiting for a command: 2 s.
    let mut c = Client::connect(server.addr(Role::Mta));
    let started = Instant::now();
    c.read_reply().expect(421, "4.4.2");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert!(server.setup.spool().queued_ids().expect("list").is_empty());
    still_serving(&server);
}

/// Opens a submission session with STARTTLS from `source` and tries AUTH
/// PLAIN; returns the reply and how long it took.
fn try_auth(server: &TestServer, source: IpAddr, user: &str, password: &str) -> (u16, Duration) {
    let addr = server
        .listeners(Role::Submission)
        .into_iter()
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .expect("listener");
    let mut c = Client::connect_from(addr, source);
    c.ehlo();
    c.starttls(&server.setup.ca());
    c.ehlo();
    let started = Instant::now();
    let r = c.auth_plain(user, password);
    (r.code, started.elapsed())
}

#[test]
fn auth_brute_force_is_slowed_then_refused_per_address() {
    let server = server(
        "bruteforce",
        "auth_max_failures = 3\nauth_failure_window_secs = 60",
        &[("auth_failure_delay_ms = 20", "auth_failure_delay_ms = 150")],
    );
    let v4: IpAddr = "127.0.0.1".parse().expect("ip");
    let v6: IpAddr = "::1".parse().expect("ip");
    // alice (exists) fails three times from 127.0.0.1: growing delays.
    let a: Vec<(u16, Duration)> = (0..3)
        .map(|_| try_auth(&server, v4, "alice", "wrong"))
        .collect();
    assert!(a.iter().all(|(code, _)| *code == 535), "{a:?}");
    assert!(a[0].1 >= Duration::from_millis(150), "{a:?}");
    assert!(a[1].1 >= Duration::from_millis(300), "{a:?}");
    assert!(a[2].1 >= Duration::from_millis(600), "{a:?}");
    // The address is refused now, even with a correct password for bob.
    assert_eq!(try_auth(&server, v4, "bob", "bobs password").0, 454);
    // From an address that did not fail, alice's password works.
    let fresh: IpAddr = "127.0.0.2".parse().expect("ip");
    assert_eq!(try_auth(&server, fresh, "alice", PASSWORD).0, 235);
    // A user that does not exist gets exactly the same treatment.
    let g: Vec<(u16, Duration)> = (0..3)
        .map(|_| try_auth(&server, v6, "ghost", "wrong"))
        .collect();
    assert_eq!(
        g.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        a.iter().map(|(c, _)| *c).collect::<Vec<_>>()
    );
    assert!(g[2].1 >= Duration::from_millis(600), "{g:?}");
    assert_eq!(try_auth(&server, v6, "ghost", "anything").0, 454);
    assert!(!logs::lines_with(&["event=\"auth\"", "outcome=\"throttled\"", "ghost"]).is_empty());
    still_serving(&server);
}

/// Ten failed logins for a user from one address lock out that address,
/// not the user: the right password from another address still works
/// (failures from anywhere used to lock the name out for 15 minutes).
#[test]
fn failures_from_one_address_never_lock_a_user_out_elsewhere() {
    let server = server(
        "nolockout",
        "",
        &[("auth_failure_delay_ms = 20", "auth_failure_delay_ms = 1")],
    );
    let guesser: IpAddr = "127.0.0.2".parse().expect("ip");
    let alice_at_home: IpAddr = "127.0.0.3".parse().expect("ip");
    // auth_max_failures is 10 by default.
    for i in 0..10 {
        let (code, _) = try_auth(&server, guesser, "alice", &format!("guess {i}"));
        assert_eq!(code, 535, "guess {i}");
    }
    assert_eq!(try_auth(&server, guesser, "alice", PASSWORD).0, 454);
    assert_eq!(try_auth(&server, alice_at_home, "alice", PASSWORD).0, 235);
    // Her success does not let the guesser in again.
    assert_eq!(try_auth(&server, guesser, "alice", PASSWORD).0, 454);
    assert_eq!(try_auth(&server, guesser, "bob", "bobs password").0, 454);
}
