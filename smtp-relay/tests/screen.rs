//! Connection-time screening (`[screen]`) against a real DNS server on loopback (NSD, never the
//! system resolver): DNSBL listings refused at connect with the zone named, DNSWL offsets, code
//! filters, the lists' error answers, a silent server, the pre-greet test without `[bans]`,
//! HELO sanity, and the config errors `check` reports. Clients act from other loopback
//! addresses (127.0.0.3, ...) to be listed or not.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::logs;
use common::nsd::{Nsd, SilentDns};
use common::{Client, TestServer};
use smtp_relay::check::{Check, CheckResult};
use smtp_relay::config::Role;
use smtp_relay::metrics::check_count;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// The test relay with `tail` (a `[dns]` and a `[screen]` table) and `top` keys.
fn relay(tag: &str, top: &str, tail: &str) -> TestServer {
    TestServer::start_with(tag, &common::config_with(top, tail))
}

/// The mta listener on 127.0.0.1.
fn mta(server: &TestServer) -> SocketAddr {
    server
        .listeners(Role::Mta)
        .into_iter()
        .find(SocketAddr::is_ipv4)
        .expect("ipv4 mta listener")
}

/// The audit line of the screen decision for `client`, waiting a little for it.
#[track_caller]
fn screen_lines(client: &str, needles: &[&str]) -> Vec<String> {
    let client = format!("client={client}:");
    let mut all = vec!["event=\"screen\"", client.as_str()];
    all.extend_from_slice(needles);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = logs::lines_with(&all);
        if !lines.is_empty() || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_listed_client_is_refused_at_connect_naming_the_zone_and_a_welcome_list_offsets_it() {
    // 127.0.0.1 listed in both; 127.0.0.7 only in the blocklist; 127.0.0.3 nowhere.
    let nsd = Nsd::start(&[
        (
            "bl.test",
            "1.0.0.127 IN A 127.0.0.2\n7.0.0.127 IN A 127.0.0.2\n",
        ),
        ("wl.test", "1.0.0.127 IN A 127.0.0.5\n"),
    ]);
    let screen = "[screen]\nthreshold = 3\n\n[[screen.dnsbl]]\nzone = \"bl.test\"\nweight = 3\n";
    let listed_before = check_count(Check::Dnsbl, CheckResult::Listed);
    let server = relay("screen-bl", "", &format!("{}\n{screen}", nsd.dns_section()));
    let addr = mta(&server);

    let mut c = Client::connect_from(addr, ip("127.0.0.1"));
    c.greeting.expect(554, "5.7.1");
    let text = c.greeting.text();
    assert!(
        text.contains("Service unavailable; client [127.0.0.1] blocked using bl.test"),
        "{text}"
    );
    assert_eq!(c.read_reply().code, 0, "closed after the 554");
    let line = screen_lines("127.0.0.1", &["bl.test:3", "outcome=\"554 5.7.1\""]);
    assert!(!line.is_empty(), "no screen line naming bl.test");
    assert!(
        line[0].contains("score=3") && line[0].contains("threshold=3"),
        "{line:?}"
    );
    assert!(check_count(Check::Dnsbl, CheckResult::Listed) > listed_before);

    // The verdict is cached per address: the second connection is refused without asking.
    let c = Client::connect_from(addr, ip("127.0.0.1"));
    c.greeting.expect(554, "5.7.1");
    assert!(
        !screen_lines("127.0.0.1", &["cached=true", "outcome=\"554 5.7.1\""]).is_empty(),
        "the second refusal came from the cache"
    );

    // An address no list knows is greeted.
    let mut c = Client::connect_from(addr, ip("127.0.0.3"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    assert!(!screen_lines("127.0.0.3", &["score=0", "outcome=\"pass\""]).is_empty());

    // Submission is for our own users: not screened.
    let mut c = Client::connect_from(server.addr(Role::Submission), ip("127.0.0.1"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    drop(server);

    // The same client in a welcome list of weight 1 falls under the threshold.
    let wl = "\n[[screen.dnswl]]\nzone = \"wl.test\"\nweight = 1\n";
    let server = relay(
        "screen-wl",
        "",
        &format!("{}\n{screen}{wl}", nsd.dns_section()),
    );
    let addr = mta(&server);
    let mut c = Client::connect_from(addr, ip("127.0.0.1"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    let line = screen_lines("127.0.0.1", &["wl=\"wl.test:1\"", "score=2"]);
    assert!(!line.is_empty(), "no screen line with the welcome list");
    // Not in the welcome list: still refused.
    let c = Client::connect_from(addr, ip("127.0.0.7"));
    c.greeting.expect(554, "5.7.1");
}

#[test]
fn code_filters_error_answers_and_trusted_networks() {
    let nsd = Nsd::start(&[(
        "codes.test",
        "1.0.0.127 IN A 127.0.0.9\n\
         4.0.0.127 IN A 127.0.0.2\n\
         5.0.0.127 IN A 127.255.255.254\n\
         6.0.0.127 IN A 127.0.0.2\n\
         1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN A 127.0.0.2\n",
    )]);
    let screen = "[screen]\n[[screen.dnsbl]]\nzone = \"codes.test\"\n\
                  codes = [\"127.0.0.2\", \"127.0.0.20-127.0.0.29\"]\n";
    let ignored_before = check_count(Check::Dnsbl, CheckResult::Ignored);
    let server = relay(
        "screen-codes",
        "trusted_networks = [\"127.0.0.6/32\"]",
        &format!("{}\n{screen}", nsd.dns_section()),
    );
    let addr = mta(&server);
    // Listed with a code the filter leaves out.
    let mut c = Client::connect_from(addr, ip("127.0.0.1"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    // Listed with a code that counts.
    let c = Client::connect_from(addr, ip("127.0.0.4"));
    c.greeting.expect(554, "5.7.1");
    // "You asked through a public resolver": not a listing, a WARN.
    let mut c = Client::connect_from(addr, ip("127.0.0.5"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    let warn = logs::lines_with(&[
        "WARN",
        "event=\"dnsbl_error_answer\"",
        "client=127.0.0.5",
        "codes.test",
        "127.255.255.254",
    ]);
    assert!(!warn.is_empty(), "no WARN about the error answer");
    assert!(check_count(Check::Dnsbl, CheckResult::Ignored) > ignored_before);
    // IPv6 clients are asked by their 32 nibbles (::1 is listed).
    let v6 = server
        .listeners(Role::Mta)
        .into_iter()
        .find(SocketAddr::is_ipv6)
        .expect("ipv6 mta listener");
    let c = Client::connect(v6);
    c.greeting.expect(554, "5.7.1");
    assert!(
        c.greeting
            .text()
            .contains("client [::1] blocked using codes.test"),
        "{:?}",
        c.greeting
    );
    // trusted_networks are not screened, listed or not.
    let mut c = Client::connect_from(addr, ip("127.0.0.6"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    // (The decision is logged before the greeting, so it would be there by now.)
    assert!(logs::lines_with(&["event=\"screen\"", "client=127.0.0.6:"]).is_empty());
}

#[test]
fn a_silent_or_refusing_dns_server_costs_at_most_the_timeout_and_never_refuses() {
    let silent = SilentDns::start();
    // Each query alone would wait 10 s; the screen gives up after 700 ms.
    let tail = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 10000\n\n[screen]\ndnsbl_timeout_ms = 700\n\
         [[screen.dnsbl]]\nzone = \"bl.test\"\n",
        silent.addr
    );
    let server = relay("screen-silent", "", &tail);
    let started = Instant::now();
    let mut c = Client::connect_from(mta(&server), ip("127.0.0.1"));
    let waited = started.elapsed();
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    // Bounded by dnsbl_timeout_ms, far below the resolver's own 10 s (slack for a busy machine).
    assert!(waited < Duration::from_secs(5), "greeting after {waited:?}");
    assert!(
        !screen_lines("127.0.0.1", &["temperror=\"bl.test\"", "outcome=\"pass\""]).is_empty(),
        "no temperror in the screen line"
    );
    assert!(!logs::lines_with(&["event=\"dnsbl_temperror\"", "bl.test"]).is_empty());
    drop(server);

    // NSD refuses names outside its zones: a temporary error as well, never a listing.
    let nsd = Nsd::start(&[("bl.test", "1.0.0.127 IN A 127.0.0.2\n")]);
    let tail = format!(
        "{}\n[screen]\n[[screen.dnsbl]]\nzone = \"elsewhere.test\"\n",
        nsd.dns_section()
    );
    let server = relay("screen-refused", "", &tail);
    let mut c = Client::connect_from(mta(&server), ip("127.0.0.1"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    c.ehlo();
    assert!(!logs::lines_with(&["event=\"dnsbl_temperror\"", "elsewhere.test"]).is_empty());
}

/// Connects from `source` and sends `EHLO` before any greeting; returns the relay's first line.
fn talk_first(addr: SocketAddr, source: IpAddr) -> String {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind");
    socket.connect(&addr.into()).expect("connect");
    let mut tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(b"EHLO early.example\r\n").expect("write");
    let mut line = String::new();
    let _ = BufReader::new(tcp).read_line(&mut line);
    line
}

#[test]
fn a_pre_greet_talker_is_refused_without_a_bans_table() {
    let talker_before = check_count(Check::PreGreet, CheckResult::Talker);
    let server = relay(
        "screen-pregreet",
        "",
        "[screen]\npre_greet_delay_ms = 400\n",
    );
    let addr = mta(&server);
    let said = talk_first(addr, ip("127.0.0.3"));
    assert!(
        said.starts_with("554 5.5.1 Protocol error: input before the greeting\r\n"),
        "{said:?}"
    );
    assert!(check_count(Check::PreGreet, CheckResult::Talker) > talker_before);
    assert!(!logs::lines_with(&["event=\"pre_greet\"", "client=127.0.0.3:"]).is_empty());
    // A client that waits is greeted after the delay.
    let started = Instant::now();
    let mut c = Client::connect_from(addr, ip("127.0.0.4"));
    assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
    assert!(started.elapsed() >= Duration::from_millis(400));
    c.ehlo();
    // Our own users on submission are not held back.
    let said = talk_first(server.addr(Role::Submission), ip("127.0.0.3"));
    assert!(said.starts_with("220 "), "{said:?}");
    drop(server);

    // With lists that never answer, a talker is still answered at once: it does not wait for
    // dnsbl_timeout_ms (5 s here).
    let silent = SilentDns::start();
    let tail = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 10000\n\n[screen]\n\
         pre_greet_delay_ms = 300\ndnsbl_timeout_ms = 5000\n[[screen.dnsbl]]\nzone = \"bl.test\"\n",
        silent.addr
    );
    let server = relay("screen-pregreet-lists", "", &tail);
    let started = Instant::now();
    let said = talk_first(mta(&server), ip("127.0.0.3"));
    assert!(said.starts_with("554 5.5.1 "), "{said:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the talker waited {:?} for the lists",
        started.elapsed()
    );
}

#[test]
fn helo_names_that_are_junk_or_ours_are_refused_to_strangers() {
    let server = relay("screen-helo", "", "[screen]\nhelo = \"reject\"\n");
    let addr = mta(&server);
    let mut c = Client::connect_from(addr, ip("127.0.0.3"));
    assert_eq!(c.greeting.code, 220);
    for ours in ["mx.example.org", "EXAMPLE.NET", "[127.0.0.1]"] {
        c.cmd(&format!("EHLO {ours}")).expect(550, "5.7.1");
        c.cmd(&format!("HELO {ours}")).expect(550, "5.7.1");
    }
    for junk in ["localhost", "127.0.0.3", "bad_name.example", "[300.1.2.3]"] {
        c.cmd(&format!("EHLO {junk}")).expect(501, "5.5.2");
    }
    // No EHLO was accepted, so no transaction either.
    c.cmd("MAIL FROM:<a@sender.example>").expect(503, "5.5.1");
    c.cmd("EHLO mail.sender.example").expect(250, "");
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("QUIT");
    let refused = logs::lines_with(&[
        "event=\"helo\"",
        "client=127.0.0.3:",
        "helo=\"mx.example.org\"",
        "result=\"ours\"",
        "outcome=\"550 5.7.1\"",
    ]);
    assert!(!refused.is_empty(), "no audit line for the stolen name");
    // Submission (our users' laptops say anything) is not judged.
    let mut c = Client::connect(server.addr(Role::Submission));
    c.cmd("EHLO mx.example.org").expect(250, "");
    drop(server);

    // helo = "log": judged and logged, never refused.
    let server = relay("screen-helo-log", "", "[screen]\nhelo = \"log\"\n");
    let mut c = Client::connect_from(mta(&server), ip("127.0.0.4"));
    c.cmd("EHLO example.org").expect(250, "");
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    let logged = logs::lines_with(&[
        "event=\"helo\"",
        "client=127.0.0.4:",
        "helo=\"example.org\"",
        "outcome=\"logged\"",
    ]);
    assert!(!logged.is_empty(), "no audit line under helo = \"log\"");
}

fn check(config: &Path) -> (bool, String) {
    common::process::check(BIN, config)
}

#[test]
fn check_names_the_keys_of_a_screen_that_cannot_work() {
    let lists = "[screen]\n[[screen.dnsbl]]\nzone = \"bl.test\"\n";
    let setup = common::Setup::new("screen-check", &common::config_with("", lists));
    let (ok, out) = check(&setup.config);
    assert!(!ok, "{out}");
    assert!(
        out.contains("screen.dnsbl") && out.contains("[dns]"),
        "{out}"
    );
    // The same at start.
    let err = smtp_relay::prepare(&setup.config)
        .err()
        .expect("no start without [dns]");
    assert!(format!("{err:#}").contains("screen.dnsbl"), "{err:#}");

    let delays = "[bans]\npre_greet = { delay_ms = 2000, ban_secs = 3600 }\n\n\
                  [screen]\npre_greet_delay_ms = 1000\n";
    setup.rewrite(&common::config_with("", delays));
    let (ok, out) = check(&setup.config);
    assert!(!ok, "{out}");
    assert!(
        out.contains("screen.pre_greet_delay_ms") && out.contains("bans.pre_greet.delay_ms"),
        "{out}"
    );
    // The same delay in both tables is one delay.
    setup.rewrite(&common::config_with("", &delays.replace("1000", "2000")));
    let (ok, out) = check(&setup.config);
    assert!(ok, "{out}");

    for (bad, key) in [
        ("codes = [\"10.0.0.2\"]", "screen.dnsbl[0].codes[0]"),
        ("weight = 0", "screen.dnsbl[0].weight"),
        ("zone = \"bl test\"", "screen.dnsbl[0].zone"),
    ] {
        let text = format!(
            "[dns]\nnameservers = [\"127.0.0.1:53\"]\n\n[screen]\n[[screen.dnsbl]]\n{}\n",
            if bad.starts_with("zone") {
                bad.to_owned()
            } else {
                format!("zone = \"bl.test\"\n{bad}")
            }
        );
        setup.rewrite(&common::config_with("", &text));
        let (ok, out) = check(&setup.config);
        assert!(!ok && out.contains(key), "expected {key} in: {out}");
    }
}
