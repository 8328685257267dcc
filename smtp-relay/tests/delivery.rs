//! The delivery queue end to end: the relay in-process on loopback, real
//! SMTP next hops (one written in these tests, Python's aiosmtpd as an
//! independent one), a DNS server on loopback for MX, and the operator
//! commands of the real binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::aiosmtpd::Aiosmtpd;
use common::dns::{DnsServer, Record};
use common::nexthop::{NextHop, Script, tls_config};
use common::{Client, PASSWORD, Setup, TestServer, config_with, logs, queue_id, split_received};
use smtp_relay::config::Role;

const MESSAGE: &[u8] = b"From: someone@sender.example\r\n\
To: alice@example.org\r\n\
Subject: queued\r\n\
\r\n\
.a line starting with a dot\r\n\
..two dots\r\n\
8-bit: \xc3\xa4\xc3\xb6\xc3\xbc\r\n\
last line\r\n";

const WAIT: Duration = Duration::from_secs(15);

fn delivery(routes: &[(&str, SocketAddr, &str)], extra: &str) -> String {
    common::delivery_section(routes, extra)
}

fn submit_authenticated(server: &TestServer, from: &str, to: &[&str], msg: &[u8]) -> String {
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &server.setup.ca());
    c.ehlo();
    c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
    let r = c.send_mail(from, to, msg);
    c.cmd("QUIT");
    queue_id(&r)
}

fn submit_mta(server: &TestServer, from: &str, to: &[&str], msg: &[u8]) -> String {
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    let r = c.send_mail(from, to, msg);
    c.cmd("QUIT");
    queue_id(&r)
}

#[track_caller]
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spool_empty(server: &TestServer) -> bool {
    server.setup.spool().queued_ids().expect("list").is_empty()
}

/// Local mail goes to the route written here, authenticated relay to a
/// smarthost that is aiosmtpd: each arrives once, byte-identical apart
/// from our Received header.
#[test]
fn local_and_relayed_mail_arrive_once_byte_identical() {
    let local = NextHop::start("127.0.0.1:0", Script::default());
    let smarthost = Aiosmtpd::start(&[]);
    let tail = format!(
        "{}\n[delivery.smarthost]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        delivery(&[("example.org", local.addr, "opportunistic")], ""),
        smarthost.addr.port()
    );
    let server = TestServer::start_with("deliver", &config_with("", &tail));
    let local_id = submit_mta(
        &server,
        "someone@sender.example",
        &["alice@example.org"],
        MESSAGE,
    );
    let relay_id = submit_authenticated(
        &server,
        "alice@example.org",
        &["friend@other.example"],
        MESSAGE,
    );

    let got = local.wait_for(1, WAIT);
    let stored = smarthost.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    // Nothing more arrives later.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(local.messages().len(), 1);
    assert_eq!(smarthost.messages().len(), 1);

    let m = &got[0];
    assert_eq!(m.from, "someone@sender.example");
    assert_eq!(m.rcpts, vec!["alice@example.org"]);
    let (received, body) = split_received(&m.data);
    assert_eq!(body, MESSAGE, "local message altered on the way");
    assert!(received.contains(&format!("id {local_id}")), "{received}");

    let s = &stored[0];
    assert_eq!(s.from, "alice@example.org");
    assert_eq!(s.rcpts, vec!["friend@other.example"]);
    let (received, body) = split_received(&s.data);
    assert_eq!(body, MESSAGE, "relayed message altered on the way");
    assert!(received.contains(&format!("id {relay_id}")), "{received}");
    assert!(received.contains("ESMTPSA"), "{received}");

    for id in [&local_id, &relay_id] {
        let lines = logs::lines_with(&["event=\"delivery\"", id, "outcome=\"delivered\""]);
        assert_eq!(lines.len(), 1, "one delivery line for {id}: {lines:?}");
        for field in ["next_hop=", "reply=", "delay=", "recipient="] {
            assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
        }
    }
}

/// Several messages to one destination share a connection (RSET between)
/// and never exceed `connections_per_destination`.
#[test]
fn connections_are_reused_and_bounded() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let tail = delivery(
        &[("example.org", hop.addr, "none")],
        "connections_per_destination = 1",
    );
    let server = TestServer::start_with("reuse", &config_with("", &tail));
    for i in 0..5 {
        let msg = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        submit_mta(
            &server,
            "a@sender.example",
            &["alice@example.org"],
            msg.as_bytes(),
        );
    }
    let got = hop.wait_for(5, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    assert_eq!(got.len(), 5);
    assert_eq!(
        hop.connect_times().len(),
        1,
        "one connection for five messages"
    );
    assert!(got.iter().all(|m| m.connection == 1));
}

/// Messages queued while the next hop is unreachable survive a restart of
/// the relay and are delivered once when it comes back.
#[test]
fn restart_with_queued_messages_delivers_each_once() {
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    let tail = delivery(&[("example.org", hop.addr, "none")], "");
    let config = config_with("", &tail);
    let server = TestServer::start_with("restart", &config);
    let mut ids = Vec::new();
    for i in 0..4 {
        let msg = format!("Subject: restart {i}\r\n\r\nbody {i}\r\n");
        ids.push(submit_mta(
            &server,
            "a@sender.example",
            &["alice@example.org"],
            msg.as_bytes(),
        ));
    }
    wait_until("a failed attempt for every message", WAIT, || {
        ids.iter().all(|id| {
            server
                .setup
                .spool()
                .read_envelope(id)
                .map(|e| e.attempts >= 1)
                .unwrap_or(false)
        })
    });
    let server = server.restart(&config);
    hop.script().down = false;
    let got = hop.wait_for(4, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hop.messages().len(), 4, "duplicates after restart");
    let mut subjects: Vec<String> = got
        .iter()
        .map(|m| {
            let (_, body) = split_received(&m.data);
            String::from_utf8_lossy(&body)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        (0..4)
            .map(|i| format!("Subject: restart {i}"))
            .collect::<Vec<_>>()
    );
}

/// A message queued by an earlier relay (envelope format version 1, with a
/// failed attempt recorded as plain strings) is delivered by this one, once.
#[test]
fn version_1_envelope_from_an_older_relay_is_delivered() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let config = config_with("", &delivery(&[("example.org", hop.addr, "none")], ""));
    let setup = Setup::new("v1-envelope", &config);
    let spool = setup.dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool dir");
    let eml: &[u8] = b"Subject: from the old relay\r\n\r\nbody\r\n";
    std::fs::write(spool.join("OLD1.eml"), eml).expect("eml");
    let v1 = format!(
        r#"{{
  "version": 1,
  "id": "OLD1",
  "sender": "a@sender.example",
  "recipients": [
    {{ "address": "alice@example.org", "local": true, "status": "pending",
       "reply": "4.4.1 127.0.0.1:9: connect refused", "next_hop": "none" }}
  ],
  "client_addr": "127.0.0.1:40000",
  "helo": "client.example",
  "listener": "127.0.0.1:25",
  "role": "mta",
  "tls": false,
  "user": null,
  "received_at": {now},
  "received_at_rfc3339": "",
  "size": {size},
  "body": "7BIT",
  "attempts": 1,
  "next_attempt": 0
}}"#,
        now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
        size = eml.len()
    );
    std::fs::write(spool.join("OLD1.env"), v1).expect("env");
    let server = TestServer::start_in(setup);
    let got = hop.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    assert_eq!(got[0].data, eml, "delivered unchanged");
    assert_eq!(got[0].rcpts, vec!["alice@example.org".to_owned()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hop.messages().len(), 1);
}

/// While the next hop is down the message waits, retried with growing
/// delays (no busy loop), and goes once it is back.
#[test]
fn next_hop_down_retries_with_growing_delays() {
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    let tail = delivery(&[("example.org", hop.addr, "none")], "");
    let server = TestServer::start_with("down", &config_with("", &tail));
    let id = submit_mta(&server, "a@sender.example", &["alice@example.org"], MESSAGE);
    wait_until("four attempts", WAIT, || hop.connect_times().len() >= 4);
    let t = hop.connect_times();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(250), "{gaps:?}");
    assert!(
        gaps[2] > gaps[0] + Duration::from_millis(300),
        "delays do not grow: {gaps:?}"
    );
    let env = server
        .setup
        .spool()
        .read_envelope(&id)
        .expect("still queued");
    assert!(env.attempts >= 3);
    assert!(
        env.recipients[0]
            .last_reply()
            .unwrap_or_default()
            .contains("421"),
        "{:?}",
        env.recipients[0]
    );
    hop.script().down = false;
    hop.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hop.messages().len(), 1);
}

/// A next hop that refuses us at its greeting (421), or does not accept
/// the connection at all, is named in the delivery log (`next_hop`) and in
/// the envelope, so the operator knows which host to look at.
#[test]
fn a_next_hop_that_refuses_or_is_closed_is_named_in_log_and_envelope() {
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let tail = delivery(
        &[
            ("example.org", hop.addr, "none"),
            ("other.example", closed, "none"),
        ],
        "",
    );
    let server = TestServer::start_with("namedhop", &config_with("", &tail));
    let refused = submit_mta(&server, "a@sender.example", &["alice@example.org"], MESSAGE);
    let unreachable = submit_authenticated(
        &server,
        "alice@example.org",
        &["friend@other.example"],
        MESSAGE,
    );
    for (id, host, reply) in [
        (&refused, hop.addr, "421 4.3.2"),
        (&unreachable, closed, "refused"),
    ] {
        let deferred = || {
            logs::lines_with(&[
                "event=\"delivery\"",
                &format!("queue_id={id}"),
                "outcome=\"deferred\"",
            ])
        };
        wait_until("a deferred attempt", WAIT, || !deferred().is_empty());
        let line = &deferred()[0];
        assert!(
            line.contains(&format!("next_hop=\"{host}\"")),
            "next hop not named: {line}"
        );
        assert!(line.contains(reply), "{line}");
        // The envelope is rewritten after the log line.
        let last = || {
            let env = server.setup.spool().read_envelope(id).expect("queued");
            env.recipients[0].last.clone()
        };
        wait_until("the answer in the envelope", WAIT, || last().is_some());
        assert_eq!(last().and_then(|a| a.host()), Some(host), "{:?}", last());
    }
}

/// 451 after DATA, then 250: delivered exactly once.
#[test]
fn temporary_failure_then_success_delivers_once() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    hop.script()
        .data_replies
        .push_back("451 4.3.0 try again later".into());
    let tail = delivery(&[("example.org", hop.addr, "none")], "");
    let server = TestServer::start_with("tempfail", &config_with("", &tail));
    let id = submit_mta(&server, "a@sender.example", &["alice@example.org"], MESSAGE);
    hop.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hop.messages().len(), 1);
    assert_eq!(hop.data_ends(), 2, "one refused and one accepted transfer");
    assert_eq!(
        logs::lines_with(&[&id, "outcome=\"deferred\"", "451 4.3.0"]).len(),
        1
    );
}

/// A recipient refused with 5xx gets a DSN sent to the sender (through the
/// same routes); the accepted recipient gets the message once.
#[test]
fn permanent_refusal_bounces_to_the_sender() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    hop.script().refuse_rcpt.push((
        "gone@partner.example".into(),
        "550 5.1.1 <gone@partner.example>: no such user".into(),
    ));
    let tail = delivery(
        &[
            ("example.org", hop.addr, "none"),
            ("partner.example", hop.addr, "none"),
        ],
        "",
    );
    let server = TestServer::start_with("bounce", &config_with("", &tail));
    let id = submit_authenticated(
        &server,
        "alice@example.org",
        &["gone@partner.example", "ok@partner.example"],
        MESSAGE,
    );
    let got = hop.wait_for(2, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hop.messages().len(), 2);
    let original = got
        .iter()
        .find(|m| m.from == "alice@example.org")
        .expect("original");
    assert_eq!(original.rcpts, vec!["ok@partner.example"]);
    let bounce = got
        .iter()
        .find(|m| m.from.is_empty())
        .expect("bounce with null sender");
    assert_eq!(bounce.rcpts, vec!["alice@example.org"]);
    let text = String::from_utf8_lossy(&bounce.data);
    // Content-Type: multipart/report; report-type=delivery-status (the
    // parameter may be quoted, so compare it parsed).
    let parsed = mail_parser::MessageParser::default()
        .parse(&bounce.data)
        .expect("bounce parses");
    let ctype = mail_parser::MimeHeaders::content_type(&parsed).expect("Content-Type");
    assert_eq!(
        (ctype.ctype(), ctype.subtype()),
        ("multipart", Some("report")),
        "{text}"
    );
    assert_eq!(
        ctype.attribute("report-type"),
        Some("delivery-status"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; gone@partner.example"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"), "{text}");
    assert!(text.contains(&format!("X-Queue-ID: {id}")), "{text}");
    assert!(
        text.contains("Subject: queued"),
        "original headers attached: {text}"
    );
    assert!(!text.contains("ok@partner.example"), "{text}");
}

/// A message with the null sender that fails is dropped with a log line,
/// never bounced.
#[test]
fn null_sender_failure_is_dropped_not_bounced() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    hop.script()
        .refuse_rcpt
        .push(("nobody@example.org".into(), "550 5.1.1 no such user".into()));
    let tail = delivery(&[("example.org", hop.addr, "none")], "");
    let server = TestServer::start_with("nullsender", &config_with("", &tail));
    let id = submit_mta(&server, "", &["nobody@example.org"], MESSAGE);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    wait_until("the drop log line", WAIT, || {
        !logs::lines_with(&[&id, "event=\"bounce\"", "outcome=\"dropped\""]).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(hop.messages().is_empty(), "{:?}", hop.messages());
    assert!(spool_empty(&server));
}

/// MX lookup through a DNS server on loopback: preference order, and the
/// next MX when the best one refuses connections.
#[test]
fn mx_delivery_by_preference_with_fallback() {
    // mx2 (preference 20) is the one that works; mx1 (10) refuses
    // connections; mx3 (30) would work but must not be used.
    let mx2 = NextHop::start("127.0.0.1:0", Script::default());
    let port = mx2.addr.port();
    let mx3 = NextHop::start(&format!("127.0.0.3:{port}"), Script::default());
    let dns = DnsServer::start(vec![
        ("far.example", Record::Mx(30, "mx3.far.example".into())),
        ("far.example", Record::Mx(10, "mx1.far.example".into())),
        ("far.example", Record::Mx(20, "mx2.far.example".into())),
        ("mx1.far.example", Record::A([127, 0, 0, 2].into())),
        ("mx2.far.example", Record::A([127, 0, 0, 1].into())),
        ("mx3.far.example", Record::A([127, 0, 0, 3].into())),
    ]);
    let tail = delivery(
        &[],
        &format!(
            "nameservers = [\"{}\"]\nmx_port = {port}\nmx_tls = \"none\"",
            dns.addr
        ),
    );
    let server = TestServer::start_with("mx", &config_with("", &tail));
    submit_authenticated(&server, "alice@example.org", &["bob@far.example"], MESSAGE);
    let got = mx2.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    assert_eq!(got[0].rcpts, vec!["bob@far.example"]);
    assert!(mx3.messages().is_empty(), "the worse MX was used");
    assert!(mx3.connect_times().is_empty());
}

/// `tls = "required"` with the test CA: STARTTLS, a verified certificate
/// and AUTH to the smarthost; a hop without STARTTLS gets nothing.
#[test]
fn required_tls_and_auth_to_the_smarthost() {
    let setup = Setup::new("tls-hop", "");
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            tls: Some(tls_config(setup.dir.path())),
            auth: Some(("relayuser".into(), "relay secret".into())),
            ..Script::default()
        },
    );
    let plain = NextHop::start("127.0.0.1:0", Script::default());
    std::fs::write(setup.dir.path().join("smarthost.pw"), "relay secret\n").expect("pw");
    let tail = format!(
        "{}ca_file = \"ca.pem\"\n\n[delivery.smarthost]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"required\"\nauth_user = \"relayuser\"\nauth_password_file = \"smarthost.pw\"\n\n[[delivery.route]]\ndomain = \"plain.example\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"required\"\n",
        delivery(&[], ""),
        hop.addr.port(),
        plain.addr.port()
    );
    setup.rewrite(&config_with("", &tail));
    let server = TestServer::start_in(setup);
    submit_authenticated(
        &server,
        "alice@example.org",
        &["friend@other.example"],
        MESSAGE,
    );
    let plain_id =
        submit_authenticated(&server, "alice@example.org", &["x@plain.example"], MESSAGE);
    let got = hop.wait_for(1, WAIT);
    assert!(got[0].tls, "delivered without TLS");
    assert_eq!(got[0].auth.as_deref(), Some("relayuser"));
    let (_, body) = split_received(&got[0].data);
    assert_eq!(body, MESSAGE);
    wait_until("a failed attempt to the plaintext hop", WAIT, || {
        server
            .setup
            .spool()
            .read_envelope(&plain_id)
            .map(|e| e.attempts >= 1)
            .unwrap_or(false)
    });
    let env = server
        .setup
        .spool()
        .read_envelope(&plain_id)
        .expect("queued");
    assert!(
        env.recipients[0]
            .last_reply()
            .unwrap_or_default()
            .contains("STARTTLS not offered"),
        "{:?}",
        env.recipients[0]
    );
    assert!(plain.messages().is_empty());
}

/// `queue list/show/remove/flush` of the real binary against the running
/// relay (control socket), and the metrics endpoint.
#[test]
fn operator_commands_and_metrics() {
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    // Long backoff: only `flush` can make the message go in time.
    let tail = format!(
        "[delivery]\nretry_initial_secs = 600.0\nretry_max_secs = 600.0\n\n[[delivery.route]]\ndomain = \"example.org\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
        hop.addr.port()
    );
    let server = TestServer::start_with(
        "ops",
        &config_with("metrics_listen = \"127.0.0.1:0\"", &tail),
    );
    let keep = submit_mta(&server, "a@sender.example", &["alice@example.org"], MESSAGE);
    let drop_id = submit_mta(&server, "b@sender.example", &["alice@example.org"], MESSAGE);
    wait_until("first attempts", WAIT, || hop.connect_times().len() >= 2);
    let bin = env!("CARGO_BIN_EXE_smtp-relay");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("queue")
            .arg("--config")
            .arg(&server.setup.config)
            .args(args)
            .output()
            .expect("run queue command");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list: serde_json::Value = serde_json::from_str(&run(&["list", "--json"])).expect("json");
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(ids.contains(&keep.as_str()) && ids.contains(&drop_id.as_str()));
    assert!(run(&["list"]).contains("2 message(s)"));
    let show = run(&["show", &keep]);
    assert!(show.contains("\"status\": \"pending\""), "{show}");
    assert!(show.contains("Subject: queued"), "{show}");
    assert!(run(&["remove", &drop_id]).contains("removed"));
    // Removed at once, or when an attempt still in flight ends ("will be removed when its
    // delivery attempt ends"): the hop's 421 may not have been read yet.
    let removed_env = server.setup.dir.path().join(format!("spool/{drop_id}.env"));
    wait_until("the removed message's envelope gone", WAIT, || {
        !removed_env.exists()
    });
    hop.script().down = false;
    assert!(run(&["flush"]).contains("scheduled"));
    let got = hop.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hop.messages().len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains(&keep));

    // Prometheus text on GET /metrics, 404 elsewhere.
    let get = |path: &str| {
        use std::io::{Read as _, Write as _};
        let mut s =
            std::net::TcpStream::connect(server.metrics.expect("metrics addr")).expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    };
    let m = get("/metrics");
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    let value = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {m}"))
    };
    assert!(value("smtp_relay_delivered_total ") >= 1);
    assert!(value("smtp_relay_deferred_total ") >= 2);
    assert!(value("smtp_relay_accepted_total ") >= 2);
    assert!(value("smtp_relay_sessions_total ") >= 2);
    // Gauges are per process; other tests run queues here too.
    value("smtp_relay_queue_depth ");
    value("smtp_relay_oldest_message_age_seconds ");
    assert!(get("/other").starts_with("HTTP/1.1 404"));
}

/// A message the next hop never takes expires after
/// `max_queue_lifetime_secs`: the sender gets a DSN with status 4.4.7.
#[test]
fn expired_message_bounces_with_4_4_7() {
    let down = NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    );
    let senders = NextHop::start("127.0.0.1:0", Script::default());
    let tail = delivery(
        &[
            ("partner.example", down.addr, "none"),
            ("example.org", senders.addr, "none"),
        ],
        "max_queue_lifetime_secs = 2",
    );
    let server = TestServer::start_with("expire", &config_with("", &tail));
    let id = submit_authenticated(
        &server,
        "alice@example.org",
        &["bob@partner.example"],
        MESSAGE,
    );
    let got = senders.wait_for(1, WAIT);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
    let bounce = &got[0];
    assert!(bounce.from.is_empty());
    assert_eq!(bounce.rcpts, vec!["alice@example.org"]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(
        text.contains("Final-Recipient: rfc822; bob@partner.example"),
        "{text}"
    );
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("421"), "last reply of the next hop: {text}");
    assert!(!down.connect_times().is_empty());
    assert_eq!(logs::lines_with(&[&id, "outcome=\"expired\""]).len(), 1);
}

/// `tls = "opportunistic"`: STARTTLS when offered, without a CA to check
/// against (RFC 7435); plaintext to a hop that does not offer it.
#[test]
fn opportunistic_tls_encrypts_when_offered() {
    let setup = Setup::new("opportunistic", "");
    let tls_hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            tls: Some(tls_config(setup.dir.path())),
            ..Script::default()
        },
    );
    let plain_hop = NextHop::start("127.0.0.1:0", Script::default());
    let tail = delivery(
        &[
            ("example.org", tls_hop.addr, "opportunistic"),
            ("partner.example", plain_hop.addr, "opportunistic"),
        ],
        "",
    );
    setup.rewrite(&config_with("", &tail));
    let server = TestServer::start_in(setup);
    submit_authenticated(
        &server,
        "alice@example.org",
        &["bob@example.org", "carol@partner.example"],
        MESSAGE,
    );
    let encrypted = tls_hop.wait_for(1, WAIT);
    let plain = plain_hop.wait_for(1, WAIT);
    assert!(encrypted[0].tls, "STARTTLS was offered but not used");
    assert!(!plain[0].tls);
    assert_eq!(split_received(&encrypted[0].data).1, MESSAGE);
    assert_eq!(split_received(&plain[0].data).1, MESSAGE);
    wait_until("an empty queue", WAIT, || spool_empty(&server));
}

/// The relay binary (a child process: the trust store comes from its
/// environment, which a test must not change in its own process) relaying
/// through a smarthost with `tls = "required"` and no `ca_file`; the message
/// is submitted, and its queue id returned.
fn relay_via_required_tls(
    setup: &Setup,
    hop: &NextHop,
    env: &[(&str, &std::path::Path)],
) -> (common::process::Relay, String) {
    let tail = format!(
        "{}\n[delivery.smarthost]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"required\"\n",
        delivery(&[], ""),
        hop.addr.port()
    );
    setup.rewrite(&config_with("", &tail));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"));
    command
        .args(["run", "--config"])
        .arg(&setup.config)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for (key, value) in env {
        command.env(key, value);
    }
    let relay = common::process::Relay::spawn(command, 6);
    let mut c = Client::connect_tls(relay.addr("submissions", true), &setup.ca());
    c.ehlo();
    c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
    let id = queue_id(&c.send_mail("alice@example.org", &["friend@other.example"], MESSAGE));
    c.cmd("QUIT");
    (relay, id)
}

/// No `ca_file`: the platform's trust store, which honours `SSL_CERT_FILE`.
/// The test CA given only there verifies the smarthost; without it (the
/// host's own store, which does not know the test CA) the same delivery is
/// deferred and nothing reaches the hop.
#[test]
fn the_system_trust_store_honours_ssl_cert_file() {
    let setup = Setup::new("trust-store", "");
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            tls: Some(tls_config(setup.dir.path())),
            ..Script::default()
        },
    );
    let (relay, id) = relay_via_required_tls(&setup, &hop, &[]);
    wait_until("a failed attempt to the unverifiable hop", WAIT, || {
        setup
            .spool()
            .read_envelope(&id)
            .map(|e| e.attempts >= 1)
            .unwrap_or(false)
    });
    let env = setup.spool().read_envelope(&id).expect("still queued");
    let reply = env.recipients[0].last_reply().unwrap_or_default();
    assert!(reply.contains("TLS handshake failed"), "{reply}");
    assert!(hop.messages().is_empty(), "delivered to an unverified hop");
    drop(relay);

    let setup = Setup::new("trust-store-env", "");
    let hop = NextHop::start(
        "127.0.0.1:0",
        Script {
            tls: Some(tls_config(setup.dir.path())),
            ..Script::default()
        },
    );
    let ca = setup.ca();
    let (_relay, _) = relay_via_required_tls(&setup, &hop, &[("SSL_CERT_FILE", &ca)]);
    let got = hop.wait_for(1, WAIT);
    assert!(got[0].tls, "delivered without TLS");
    let (_, body) = split_received(&got[0].data);
    assert_eq!(body, MESSAGE);
}
