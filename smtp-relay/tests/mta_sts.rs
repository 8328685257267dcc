//! MTA-STS (RFC 8461) end to end: NSD on loopback serves the MX and `_mta-sts` TXT records, an
//! HTTPS server started here serves the policies (certificates from a test CA made with rcgen,
//! given to the relay as `ca_file`), and the MX hosts are the tests' SMTP next hops on loopback
//! addresses (`mx_port` points the relay at them).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::https_policy::{PolicyServer, response};
use common::nexthop::{NextHop, Script};
use common::nsd::Nsd;
use common::{Client, PASSWORD, Setup, TestServer, config_with, logs, queue_id};
use smtp_relay::config::Role;
use smtp_relay::delivery::tls_policy::TlsResult;

const WAIT: Duration = Duration::from_secs(20);

fn message(to: &str) -> Vec<u8> {
    format!("From: alice@example.org\r\nTo: {to}\r\nSubject: sts\r\n\r\nhello\r\n").into_bytes()
}

fn submit(server: &TestServer, to: &str) -> String {
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &server.setup.ca());
    c.ehlo();
    c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
    let r = c.send_mail("alice@example.org", &[to], &message(to));
    c.cmd("QUIT");
    queue_id(&r)
}

#[track_caller]
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test CA (written to `dir/sts-ca.pem`) that issues server configs for any names.
struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &std::path::Path) -> Pki {
        let (cert, issuer) = common::test_ca("MTA-STS test CA");
        std::fs::write(dir.join("sts-ca.pem"), cert.pem()).expect("write ca");
        Pki { issuer }
    }

    fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("leaf params");
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        common::nexthop::server_config(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

fn policy_text(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn policy(mode: &str, mx: &str) -> String {
    common::https_policy::policy_response(&policy_text(mode, mx))
}

/// A zone publishing an MTA-STS policy id and its policy host.
fn zone(mx: &[(u16, &str, &str)], policy_host: &str) -> String {
    zone_with_id(mx, policy_host, "20261129T1")
}

fn zone_with_id(mx: &[(u16, &str, &str)], policy_host: &str, id: &str) -> String {
    let mut z = format!("_mta-sts IN TXT \"v=STSv1; id={id};\"\nmta-sts IN A {policy_host}\n");
    for (pref, name, ip) in mx {
        z.push_str(&format!("@ IN MX {pref} {name}\n{name} IN A {ip}\n"));
    }
    z
}

fn delivered_to(hop: &NextHop, rcpt: &str) -> Option<common::nexthop::Captured> {
    hop.messages().into_iter().find(|m| m.rcpts == [rcpt])
}

/// Policy lines of the audit for one message.
fn audit(id: &str, needles: &[&str]) -> usize {
    let mut all = vec![id, "event=\"delivery_tls\""];
    all.extend_from_slice(needles);
    logs::lines_with(&all).len()
}

/// Enforce: the preferred MX outside the policy is skipped, and the one named gets the mail
/// over verified TLS; an MX with a certificate not valid for its name defers the mail; testing
/// mode delivers to that same MX; a policy host that is down (nothing cached) is no policy; a
/// route with `tls = "none"` ignores the policy. Then, the policy server gone, a restarted
/// relay still enforces the cached policy, and the deferred message bounces at its queue
/// lifetime with a DSN naming the policy. Last, a new policy id makes it fetch the new policy.
#[test]
fn mta_sts_enforce_testing_cache_and_overrides() {
    let setup = Setup::new("mta-sts", "");
    let pki = Pki::new(setup.dir.path());
    let good = pki.server(&["mx1.enforce.example", "mx2.enforce.example"]);
    let bad = pki.server(&["wrong.example"]);
    let tls = |cfg: &Arc<rustls::ServerConfig>| Script {
        tls: Some(cfg.clone()),
        ..Script::default()
    };
    let mx1 = NextHop::start("127.0.0.2:0", tls(&good));
    let port = mx1.addr.port();
    let mx2 = NextHop::start(&format!("127.0.0.3:{port}"), tls(&good));
    let bad_mx = NextHop::start(&format!("127.0.0.4:{port}"), tls(&bad));
    let routed = NextHop::start("127.0.0.5:0", Script::default());
    let local = NextHop::start("127.0.0.1:0", Script::default());
    let names: Vec<String> = [
        "enforce",
        "bad-enforce",
        "bad-testing",
        "routed",
        "down",
        "redirect",
        "html",
        "huge",
    ]
    .iter()
    .map(|d| format!("mta-sts.{d}.example"))
    .collect();
    let policies = PolicyServer::start(
        "127.0.0.1:0",
        pki.server(&names.iter().map(String::as_str).collect::<Vec<_>>()),
        HashMap::from([
            (names[0].clone(), policy("enforce", "mx2.enforce.example")),
            (names[1].clone(), policy("enforce", "*.bad-enforce.example")),
            (names[2].clone(), policy("testing", "*.bad-testing.example")),
            (names[3].clone(), policy("enforce", "mx.routed.example")),
            (names[4].clone(), policy("enforce", "*.down.example")),
            // Fetches that break the limits: each is no policy.
            (
                names[5].clone(),
                response("301 Moved Permanently", "text/plain", ""),
            ),
            (
                names[6].clone(),
                response(
                    "200 OK",
                    "text/html",
                    &policy_text("enforce", "*.html.example"),
                ),
            ),
            (
                names[7].clone(),
                response(
                    "200 OK",
                    "text/plain",
                    &(policy_text("enforce", "*.huge.example") + &"x: y\r\n".repeat(20_000)),
                ),
            ),
        ]),
    );
    let both = [(10, "mx1", "127.0.0.2"), (20, "mx2", "127.0.0.3")];
    let bad_only = [(10, "mx", "127.0.0.4")];
    let zones: Vec<(String, String)> = [
        ("enforce", &both[..], "127.0.0.1"),
        ("bad-enforce", &bad_only, "127.0.0.1"),
        ("bad-testing", &bad_only, "127.0.0.1"),
        ("routed", &bad_only, "127.0.0.1"),
        // Its policy host has no server: nothing listens there.
        ("down", &bad_only, "127.0.0.6"),
        ("redirect", &bad_only, "127.0.0.1"),
        ("html", &bad_only, "127.0.0.1"),
        ("huge", &bad_only, "127.0.0.1"),
    ]
    .iter()
    .map(|(d, mx, policy_host)| (format!("{d}.example"), zone(mx, policy_host)))
    .collect();
    let zones: Vec<(&str, &str)> = zones
        .iter()
        .map(|(o, z)| (o.as_str(), z.as_str()))
        .collect();
    let nsd = Nsd::start(&zones);
    let policy_port = policies.addr.port();
    let config = |nameserver: std::net::SocketAddr, policy_port: u16, lifetime: &str| {
        config_with(
            "",
            &common::delivery_section(
                &[
                    ("example.org", local.addr, "none"),
                    ("routed.example", routed.addr, "none"),
                ],
                &format!(
                    "nameservers = [\"{}\"]\nmx_port = {port}\nmx_tls = \"mta-sts\"\n\
                     ca_file = \"sts-ca.pem\"\nmta_sts_port = {}\n\
                     mta_sts_fetch_timeout_secs = 3\n{lifetime}",
                    nameserver, policy_port
                ),
            ),
        )
    };
    setup.rewrite(&config(nsd.addr, policy_port, ""));
    let server = TestServer::start_in(setup);

    let enforced = submit(&server, "bob@enforce.example");
    let got = mx2.wait_for(1, WAIT);
    assert!(got[0].tls, "enforce delivered without TLS");
    assert!(
        mx1.messages().is_empty(),
        "the MX outside the policy got mail"
    );
    assert!(
        mx1.connect_times().is_empty(),
        "the MX outside the policy was tried"
    );
    assert_eq!(
        audit(
            &enforced,
            &["mx=\"mx1.enforce.example\"", "result=\"mx_mismatch\""]
        ),
        1
    );
    wait_until("the audit line of the delivery", || {
        audit(
            &enforced,
            &[
                "mx=\"mx2.enforce.example\"",
                "policy=\"mta_sts_enforce\"",
                "tls_version=\"TLSv1_3\"",
                "result=\"verified\"",
            ],
        ) == 1
    });

    let deferred = submit(&server, "carol@bad-enforce.example");
    let testing = submit(&server, "dave@bad-testing.example");
    let down = submit(&server, "erin@down.example");
    let overridden = submit(&server, "frank@routed.example");
    for domain in ["redirect", "html", "huge"] {
        submit(&server, &format!("x@{domain}.example"));
    }
    wait_until("testing and no-policy deliveries to the bad MX", || {
        [
            "dave@bad-testing.example",
            "erin@down.example",
            "x@redirect.example",
            "x@html.example",
            "x@huge.example",
        ]
        .iter()
        .all(|r| delivered_to(&bad_mx, r).is_some())
    });
    for (domain, error) in [
        ("down.example", "connect to 127.0.0.6"),
        (
            "redirect.example",
            "HTTP status 301 (redirects are not followed)",
        ),
        (
            "html.example",
            "Content-Type \"text/html\" is not text/plain",
        ),
        ("huge.example", "policy larger than 65536 octets"),
    ] {
        let lines = logs::lines_with(&["policy fetch failed", domain, error]);
        assert_eq!(lines.len(), 1, "{domain}: {error}");
    }
    assert!(delivered_to(&bad_mx, "dave@bad-testing.example").is_some_and(|m| m.tls));
    let plain = routed.wait_for(1, WAIT);
    assert_eq!(plain[0].rcpts, ["frank@routed.example"]);
    assert!(!plain[0].tls, "tls = \"none\" route used TLS");
    wait_until("a deferred attempt under enforce", || {
        server
            .setup
            .spool()
            .read_envelope(&deferred)
            .is_ok_and(|e| e.attempts >= 1)
    });
    let env = server
        .setup
        .spool()
        .read_envelope(&deferred)
        .expect("queued");
    let reply = env.recipients[0].last_reply().unwrap_or_default();
    assert!(
        reply.contains("MTA-STS policy of bad-enforce.example (id 20261129T1, mode enforce)")
            && reply.contains("4.7.5"),
        "{reply}"
    );
    assert!(delivered_to(&bad_mx, "carol@bad-enforce.example").is_none());
    assert!(
        audit(
            &deferred,
            &["policy=\"mta_sts_enforce\"", "result=\"failed\""]
        ) >= 1
    );
    assert!(
        audit(
            &testing,
            &["policy=\"mta_sts_testing\"", "result=\"encrypted\""]
        ) >= 1
    );
    assert!(audit(&down, &["policy=\"opportunistic\"", "result=\"encrypted\""]) >= 1);
    assert!(audit(&overridden, &["policy=\"none\"", "result=\"plaintext\""]) >= 1);
    let count = smtp_relay::metrics::delivery_tls_count;
    assert!(count("mta_sts_enforce", TlsResult::MxMismatch) >= 1);
    assert!(count("mta_sts_enforce", TlsResult::Verified) >= 1);
    assert!(count("mta_sts_enforce", TlsResult::Failed) >= 1);
    let cache = server.setup.dir.path().join("spool/mta-sts");
    assert!(cache.join("enforce.example.json").exists());
    assert!(!cache.join("down.example.json").exists());
    let fetched = policies.requests();

    // The policy server gone: the restarted relay has only its cache. The deferred message is
    // older than its new lifetime, so its next attempt bounces it.
    drop(policies);
    wait_until("the deferred message to be 2 s old", || {
        unix_now() >= env.received_at + 2
    });
    let server = server.restart(&config(
        nsd.addr,
        policy_port,
        "max_queue_lifetime_secs = 2",
    ));
    let again = submit(&server, "grace@enforce.example");
    wait_until("the second enforce delivery", || {
        delivered_to(&mx2, "grace@enforce.example").is_some()
    });
    assert!(
        mx1.connect_times().is_empty(),
        "cached policy not applied after restart"
    );
    assert_eq!(
        audit(
            &again,
            &["mx=\"mx1.enforce.example\"", "result=\"mx_mismatch\""]
        ),
        1
    );
    let bounce = local.wait_for(1, WAIT);
    let text = String::from_utf8_lossy(&bounce[0].data);
    assert_eq!(bounce[0].rcpts, ["alice@example.org"]);
    assert!(
        text.contains("carol@bad-enforce.example")
            && text.contains("MTA-STS policy of bad-enforce.example"),
        "{text}"
    );
    // One fetch per domain, retries served from the cache; routed.example's `tls = "none"`
    // route never asked for its policy.
    assert_eq!(fetched, 6, "policies fetched");

    // A new id in the TXT record: the cached policy is refreshed, and the new one (mx1 only)
    // followed. New ports for the DNS and policy servers, so the relay restarts.
    let policies = PolicyServer::start(
        "127.0.0.1:0",
        pki.server(&["mta-sts.enforce.example"]),
        HashMap::from([(
            "mta-sts.enforce.example".to_owned(),
            policy("enforce", "mx1.enforce.example"),
        )]),
    );
    let zone = zone_with_id(&both, "127.0.0.1", "20261129T2");
    let nsd = Nsd::start(&[("enforce.example", &zone)]);
    let server = server.restart(&config(nsd.addr, policies.addr.port(), ""));
    submit(&server, "heidi@enforce.example");
    let got = mx1.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, ["heidi@enforce.example"]);
    assert_eq!(policies.requests(), 1);
    let cached = std::fs::read_to_string(cache.join("enforce.example.json")).expect("cache");
    assert!(cached.contains("20261129T2"), "{cached}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
