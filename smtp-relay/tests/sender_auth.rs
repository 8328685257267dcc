//! Sender authentication end to end: SPF, DKIM and DMARC records served by a real DNS server
//! (NSD on loopback, never the system resolver), messages signed in the test with keys published
//! there (Ed25519 made with ring, RSA made by `openssl genpkey`), the relay in-process, and the
//! scripted next hop showing what was delivered: our `Authentication-Results:` field, the
//! quarantine header, and the forged fields that must be gone.
//!
//! Each case uses its own DNS names, so the resolver's cache never hides a record.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nexthop::{Captured, NextHop, Script};
use common::nsd::{Nsd, SilentDns};
use common::{Client, TempDir, TestServer, b64, config_text, delivery_section};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use smtp_relay::config::Role;
use smtp_relay::metrics::auth_check_count as check_count;
use smtp_relay::sender_auth::{AuthCheck, CheckResult};

const WAIT: Duration = Duration::from_secs(20);
const ID: &str = "mx.example.org";
const HEADERS: [&str; 4] = ["From", "To", "Subject", "Message-ID"];

/// A DKIM private key made for the test; [`DkimKey::record`] publishes its public half.
enum DkimKey {
    /// PKCS#8 DER (ring).
    Ed25519(Vec<u8>),
    /// PEM file (openssl) and the SubjectPublicKeyInfo DER.
    Rsa(PathBuf, Vec<u8>),
}

impl DkimKey {
    fn ed25519() -> DkimKey {
        DkimKey::Ed25519(Ed25519Key::generate_pkcs8().expect("ed25519 key"))
    }

    fn rsa(dir: &Path) -> DkimKey {
        let pem = dir.join("rsa.pem");
        let ok = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .arg("-out")
            .arg(&pem)
            .stderr(Stdio::null())
            .status()
            .expect("run openssl")
            .success();
        assert!(ok, "openssl genpkey failed");
        let spki = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&pem)
            .output()
            .expect("run openssl");
        assert!(spki.status.success(), "openssl pkey -pubout failed");
        DkimKey::Rsa(pem, spki.stdout)
    }

    /// The TXT data; split into strings of at most 250 octets (RSA-2048 needs it).
    fn record(&self) -> String {
        let text = match self {
            DkimKey::Ed25519(pkcs8) => {
                let key = Ed25519Key::from_pkcs8_der(pkcs8).expect("key");
                format!("v=DKIM1; k=ed25519; p={}", b64(&key.public_key()))
            }
            DkimKey::Rsa(_, spki) => format!("v=DKIM1; k=rsa; p={}", b64(spki)),
        };
        text.as_bytes()
            .chunks(250)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `msg` with a DKIM-Signature of `domain`/`selector` on top.
    fn sign(&self, msg: &str, domain: &str, selector: &str) -> String {
        self.sign_headers(msg, domain, selector, &HEADERS)
    }

    /// [`DkimKey::sign`] over the header fields `headers`.
    fn sign_headers(&self, msg: &str, domain: &str, selector: &str, headers: &[&str]) -> String {
        let headers = headers.iter().copied();
        let signature = match self {
            DkimKey::Ed25519(pkcs8) => {
                DkimSigner::from_key(Ed25519Key::from_pkcs8_der(pkcs8).expect("key"))
                    .domain(domain)
                    .selector(selector)
                    .headers(headers.clone())
                    .sign(msg.as_bytes())
            }
            DkimKey::Rsa(pem, _) => {
                let der = PrivateKeyDer::from_pem_file(pem).expect("pem");
                DkimSigner::from_key(RsaKey::<Sha256>::from_key_der(der).expect("key"))
                    .domain(domain)
                    .selector(selector)
                    .headers(headers.clone())
                    .sign(msg.as_bytes())
            }
        }
        .expect("sign");
        format!("{}{msg}", signature.to_header())
    }
}

/// A message from `from` with a unique subject (how the test finds it at the next hop).
fn message(from: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <user@example.org>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@test>\r\nDate: Sun, 29 Nov 2026 20:00:00 +0000\r\n\r\n\
         Hello.\r\nA second line.\r\n"
    )
}

/// The zones: SPF policies, DKIM keys, DMARC policies. `unserved.example` is not served: NSD
/// refuses it, a temporary error.
fn zones(ed: &DkimKey, rsa: Option<&DkimKey>) -> Vec<(&'static str, String)> {
    let ed = ed.record();
    let rsa = rsa.map(|k| format!("rsa._domainkey IN TXT {}\n", k.record()));
    let spf = "pass IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n\
               fail IN TXT \"v=spf1 ip4:192.0.2.1 -all\"\n\
               soft IN TXT \"v=spf1 ~all\"\n\
               none IN A 192.0.2.2\n\
               temp IN TXT \"v=spf1 include:spf.unserved.example -all\"\n\
               helo IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n\
               silent IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n"
        .to_owned();
    let dkim = format!(
        "ed._domainkey IN TXT {ed}\n{}\
         bad._domainkey IN TXT \"v=DKIM1; k=rsa; p=not*base64\"\n",
        rsa.unwrap_or_default()
    );
    let dmarc = format!(
        "reject IN TXT \"v=spf1 -all\"\n\
         ed._domainkey.reject IN TXT {ed}\n\
         _dmarc.reject IN TXT \"v=DMARC1; p=reject\"\n\
         quar IN TXT \"v=spf1 -all\"\n\
         _dmarc.quar IN TXT \"v=DMARC1; p=quarantine\"\n\
         open IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n"
    );
    // `test` itself is served (empty), so DMARC's walk up the tree ends in NXDOMAIN there.
    vec![
        ("spf.test", spf),
        ("dkim.test", dkim),
        ("dmarc.test", dmarc),
        ("test", String::new()),
    ]
}

fn start_nsd(zones: &[(&'static str, String)]) -> Nsd {
    let refs: Vec<(&str, &str)> = zones.iter().map(|(o, r)| (*o, r.as_str())).collect();
    Nsd::start(&refs)
}

/// The relay with `[sender_auth]` (`table`), a second `mta` listener under
/// `dmarc_policy = "honor"`, the `dns` table and delivery of example.org to `hop`.
fn relay(tag: &str, dns: &str, table: &str, hop: &NextHop) -> TestServer {
    relay_with(tag, "", dns, table, hop)
}

/// [`relay`] with top-level keys `top`.
fn relay_with(tag: &str, top: &str, dns: &str, table: &str, hop: &NextHop) -> TestServer {
    let honor = "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"mta\"\n\
                 allow = [\"127.0.0.0/8\"]\ndmarc_policy = \"honor\"\n";
    let config = format!(
        "{top}\n{}\n{dns}\n{table}\n{}",
        config_text(honor, 1_000_000),
        delivery_section(&[("example.org", hop.addr, "none")], "")
    );
    TestServer::start_with(tag, &config)
}

/// Report-only (the default) first, honor second.
fn mta(server: &TestServer, honor: bool) -> std::net::SocketAddr {
    let v4: Vec<_> = server
        .listeners(Role::Mta)
        .into_iter()
        .filter(|a| a.is_ipv4())
        .collect();
    v4[usize::from(honor)]
}

/// Sends `msg` with `helo` and MAIL FROM `from`; returns the final reply code and text.
fn send(addr: std::net::SocketAddr, helo: &str, from: &str, msg: &str) -> common::Reply {
    let mut c = Client::connect(addr);
    c.cmd(&format!("EHLO {helo}")).expect(250, "");
    let r = c.send_mail(from, &["user@example.org"], msg.as_bytes());
    c.cmd("QUIT");
    r
}

fn by_subject<'a>(got: &'a [Captured], subject: &str) -> &'a Captured {
    let needle = format!("Subject: {subject}\r\n");
    got.iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains(&needle))
        .unwrap_or_else(|| panic!("no message {subject} at the next hop"))
}

/// Our A-R field of a delivered message, unfolded, after parsing the message with
/// mail-parser: it must be the field right after our Received, and the only one of ours.
fn our_results(m: &Captured) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("message parses");
    let fields: Vec<String> = parsed
        .headers_raw()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Authentication-Results"))
        .map(|(_, value)| value.replace("\r\n", "").trim().to_owned())
        .collect();
    let ours: Vec<&String> = fields
        .iter()
        .filter(|v| v.split(';').next().map(str::trim) == Some(ID))
        .collect();
    assert_eq!(ours.len(), 1, "one A-R of ours: {fields:?}");
    let names: Vec<&str> = parsed.headers_raw().map(|(n, _)| n).collect();
    assert_eq!(
        names.get(..2),
        Some(&["Received", "Authentication-Results"][..]),
        "{names:?}"
    );
    ours[0].clone()
}

/// The `method=result` pairs of an A-R value (RFC 8601 2.2 grammar, comments dropped).
fn methods(results: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in results.split(';').skip(1) {
        let part = part.trim();
        if let Some((method, rest)) = part.split_once('=') {
            let result = rest.split([' ', '\t', '(']).next().unwrap_or("");
            out.push((method.trim().to_owned(), result.to_owned()));
        }
    }
    out
}

fn result_of(m: &Captured, method: &str) -> String {
    let ar = our_results(m);
    methods(&ar)
        .into_iter()
        .find(|(n, _)| n == method)
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no {method} in {ar}"))
}

#[test]
fn spf_pass_fail_softfail_none_temperror_and_the_helo_identity() {
    let ed = DkimKey::ed25519();
    let nsd = start_nsd(&zones(&ed, None));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay(
        "auth-spf",
        &nsd.dns_section(),
        "[sender_auth]\nspf = true\n",
        &hop,
    );
    let addr = mta(&server, false);
    let pass_before = check_count(AuthCheck::Spf, CheckResult::Pass);
    // SPF softfail has no DKIM/DMARC counterpart; it is an SPF-only result.
    let cases = [
        ("spf-pass", "a@pass.spf.test", "pass"),
        ("spf-fail", "a@fail.spf.test", "fail"),
        ("spf-softfail", "a@soft.spf.test", "softfail"),
        ("spf-none", "a@none.spf.test", "none"),
        ("spf-temperror", "a@temp.spf.test", "temperror"),
        // The null sender is checked with the HELO name (RFC 7208 2.4).
        ("spf-helo", "", "pass"),
    ];
    for (subject, from, _) in cases {
        // SPF fail alone is no reason to refuse: only DMARC carries a policy.
        send(
            addr,
            "helo.spf.test",
            from,
            &message("x@example.net", subject),
        )
        .expect(250, "2.0.0");
    }
    let got = hop.wait_for(cases.len(), WAIT);
    for (subject, from, want) in cases {
        let m = by_subject(&got, subject);
        assert_eq!(result_of(m, "spf"), want, "{subject}");
        let ar = our_results(m);
        if from.is_empty() {
            assert!(ar.contains("smtp.helo=helo.spf.test"), "{ar}");
        } else {
            assert!(ar.contains(&format!("smtp.mailfrom={from}")), "{ar}");
        }
        // Only SPF is on: nothing else is claimed.
        assert!(!ar.contains("dkim=") && !ar.contains("dmarc="), "{ar}");
    }
    assert!(check_count(AuthCheck::Spf, CheckResult::Pass) >= pass_before + 2);
    let lines = common::logs::lines_with(&["event=\"check\"", "spf=\"softfail\""]);
    assert!(
        !lines.is_empty(),
        "an audit line per message with its results"
    );
}

#[test]
fn dkim_pass_fail_none_temperror_permerror_with_ed25519_and_rsa_keys() {
    let dir = TempDir::new("auth-dkim-keys");
    let ed = DkimKey::ed25519();
    let rsa = DkimKey::rsa(dir.path());
    let nsd = start_nsd(&zones(&ed, Some(&rsa)));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay(
        "auth-dkim",
        &nsd.dns_section(),
        "[sender_auth]\ndkim = true\n",
        &hop,
    );
    let addr = mta(&server, false);
    let from = "a@dkim.test";
    let altered = ed
        .sign(&message(from, "dkim-fail"), "dkim.test", "ed")
        .replace("A second line.", "A changed line.");
    let cases = [
        (
            "dkim-pass-ed25519",
            ed.sign(&message(from, "dkim-pass-ed25519"), "dkim.test", "ed"),
            "pass",
        ),
        (
            "dkim-pass-rsa",
            rsa.sign(&message(from, "dkim-pass-rsa"), "dkim.test", "rsa"),
            "pass",
        ),
        ("dkim-fail", altered, "fail"),
        ("dkim-none", message(from, "dkim-none"), "none"),
        (
            "dkim-temperror",
            ed.sign(&message(from, "dkim-temperror"), "unserved.example", "ed"),
            "temperror",
        ),
        (
            "dkim-permerror",
            ed.sign(&message(from, "dkim-permerror"), "dkim.test", "bad"),
            "permerror",
        ),
    ];
    for (subject, msg, _) in &cases {
        send(addr, "client.example", "a@dkim.test", msg).expect(250, "2.0.0");
        let _ = subject;
    }
    let got = hop.wait_for(cases.len(), WAIT);
    for (subject, _, want) in &cases {
        let m = by_subject(&got, subject);
        assert_eq!(&result_of(m, "dkim"), want, "{subject}: {}", our_results(m));
        if *want == "pass" {
            // The message after our fields is byte for byte what was signed.
            let ar = our_results(m);
            assert!(ar.contains("header.d=dkim.test"), "{ar}");
        }
    }
}

#[test]
fn dmarc_results_and_the_listener_policy() {
    let ed = DkimKey::ed25519();
    let nsd = start_nsd(&zones(&ed, None));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay(
        "auth-dmarc",
        &nsd.dns_section(),
        "[sender_auth]\nspf = true\ndkim = true\ndmarc = true\narc = true\n",
        &hop,
    );
    let (report_only, honor) = (mta(&server, false), mta(&server, true));
    let rejects_before =
        smtp_relay::metrics::refused_count(smtp_relay::refusal::Refusal::DmarcReject);

    // Aligned DKIM: pass, whatever SPF says.
    let pass = ed.sign(
        &message("a@reject.dmarc.test", "dmarc-pass"),
        "reject.dmarc.test",
        "ed",
    );
    send(honor, "client.example", "b@pass.spf.test", &pass).expect(250, "2.0.0");

    // p=reject and nothing aligned: refused under honor, nothing spooled.
    let fail = message("a@reject.dmarc.test", "dmarc-reject-honor");
    let r = send(honor, "client.example", "b@pass.spf.test", &fail);
    r.expect(550, "5.7.1");
    assert!(
        r.text()
            .contains("Message rejected: DMARC policy of reject.dmarc.test (p=reject)"),
        "{r:?}"
    );

    // The same under report-only: accepted, marked.
    let fail = message("a@reject.dmarc.test", "dmarc-reject-report");
    send(report_only, "client.example", "b@pass.spf.test", &fail).expect(250, "2.0.0");

    // p=quarantine under honor: accepted, marked.
    let quar = message("a@quar.dmarc.test", "dmarc-quarantine");
    send(honor, "client.example", "b@pass.spf.test", &quar).expect(250, "2.0.0");

    // No DMARC record: none. The From domain's DNS refuses us: temperror, never a reject.
    let none = message("a@open.dmarc.test", "dmarc-none");
    send(honor, "client.example", "b@open.dmarc.test", &none).expect(250, "2.0.0");
    let temp = message("a@unserved.example", "dmarc-temperror");
    send(honor, "client.example", "b@pass.spf.test", &temp).expect(250, "2.0.0");

    let got = hop.wait_for(5, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let got_now = hop.messages();
    assert_eq!(
        got_now.len(),
        5,
        "the rejected message never reaches the hop"
    );
    assert!(
        got.iter()
            .all(|m| !String::from_utf8_lossy(&m.data).contains("dmarc-reject-honor")),
        "rejected message delivered"
    );
    // Counters are process-wide and other tests run beside this one: at least ours.
    assert!(
        smtp_relay::metrics::refused_count(smtp_relay::refusal::Refusal::DmarcReject)
            > rejects_before
    );

    let m = by_subject(&got, "dmarc-pass");
    assert_eq!(result_of(m, "dmarc"), "pass");
    assert_eq!(result_of(m, "dkim"), "pass");
    // No ARC set in the message.
    assert_eq!(result_of(m, "arc"), "none");
    assert!(!String::from_utf8_lossy(&m.data).contains("X-Gatekeeper-Quarantine"));

    let m = by_subject(&got, "dmarc-reject-report");
    assert_eq!(result_of(m, "dmarc"), "fail");
    assert_eq!(result_of(m, "dkim"), "none");
    assert!(
        String::from_utf8_lossy(&m.data).contains(
            "\r\nX-Gatekeeper-Quarantine: dmarc=fail policy=reject domain=reject.dmarc.test\r\n"
        ),
        "{}",
        String::from_utf8_lossy(&m.data)
    );

    let m = by_subject(&got, "dmarc-quarantine");
    assert_eq!(result_of(m, "dmarc"), "fail");
    assert!(
        String::from_utf8_lossy(&m.data).contains(
            "X-Gatekeeper-Quarantine: dmarc=fail policy=quarantine domain=quar.dmarc.test"
        ),
    );

    assert_eq!(result_of(by_subject(&got, "dmarc-none"), "dmarc"), "none");
    assert_eq!(
        result_of(by_subject(&got, "dmarc-temperror"), "dmarc"),
        "temperror"
    );

    // The rejected message left nothing in the spool (not even a temp file) and caused no
    // bounce.
    let spool = server.setup.spool();
    for id in spool.queued_ids().expect("spool") {
        let (env, eml) = spool.read(&id).expect("read");
        assert!(!env.is_bounce, "a bounce was queued: {env:?}");
        assert!(!String::from_utf8_lossy(&eml).contains("dmarc-reject-honor"));
    }
    let tmp = std::fs::read_dir(server.setup.dir.path().join("spool/tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "temp files left in the spool");
    // The refusal's audit line (the log is shared with the other tests of this binary).
    assert!(
        !common::logs::lines_with(&["event=\"check\"", "reject (p=reject of reject.dmarc.test)"])
            .is_empty()
    );
}

#[test]
fn silent_dns_gives_temperror_within_the_deadline_and_mail_is_accepted() {
    let silent = SilentDns::start();
    let ed = DkimKey::ed25519();
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let dns = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 3000\n",
        silent.addr
    );
    let server = relay(
        "auth-silent",
        &dns,
        "[sender_auth]\nspf = true\ndkim = true\ndmarc = true\ncheck_timeout_ms = 500\n",
        &hop,
    );
    let msg = ed.sign(
        &message("a@silent.spf.test", "silent"),
        "silent.spf.test",
        "ed",
    );
    let started = Instant::now();
    send(
        mta(&server, true),
        "client.example",
        "a@silent.spf.test",
        &msg,
    )
    .expect(250, "2.0.0");
    // Bounded by the check deadline, not the resolver's 3 s (slack for a loaded machine).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let got = hop.wait_for(1, WAIT);
    let m = by_subject(&got, "silent");
    for method in ["spf", "dkim", "dmarc"] {
        assert_eq!(result_of(m, method), "temperror", "{method}");
    }
}

#[test]
fn forged_results_of_our_authserv_id_are_removed_foreign_ones_kept() {
    let ed = DkimKey::ed25519();
    let nsd = start_nsd(&zones(&ed, None));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay(
        "auth-forged",
        &nsd.dns_section(),
        "[sender_auth]\nspf = true\ndkim = true\ndmarc = true\nmax_verify_size = 2000\n",
        &hop,
    );
    let forged = |subject: &str, body_lines: usize| {
        let mut msg = format!(
            "Authentication-Results: MX.EXAMPLE.ORG; dkim=pass header.d=bank.example\r\n\
             Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n\
             Authentication-Results:\r\n\t(folded) mx.example.org;\r\n\tdmarc=pass\r\n{}",
            message("a@open.dmarc.test", subject)
        );
        for i in 0..body_lines {
            msg.push_str(&format!("filler line {i} to pass max_verify_size\r\n"));
        }
        msg
    };
    send(
        mta(&server, false),
        "client.example",
        "a@open.dmarc.test",
        &forged("forged-held", 0),
    )
    .expect(250, "2.0.0");
    // Larger than max_verify_size: streamed unverified, still stripped.
    send(
        mta(&server, false),
        "client.example",
        "a@open.dmarc.test",
        &forged("forged-big", 200),
    )
    .expect(250, "2.0.0");
    let got = hop.wait_for(2, WAIT);
    for subject in ["forged-held", "forged-big"] {
        let m = by_subject(&got, subject);
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            !text.contains("bank.example") && !text.contains("(folded)"),
            "{text}"
        );
        assert!(
            text.contains("Authentication-Results: other.example; spf=pass"),
            "{text}"
        );
        assert_eq!(result_of(m, "spf"), "pass");
    }
    let big = our_results(by_subject(&got, "forged-big"));
    assert!(
        big.contains("dkim=none (not verified: message too large)"),
        "{big}"
    );
    assert_eq!(result_of(by_subject(&got, "forged-held"), "dkim"), "none");
}

#[test]
fn forged_results_are_removed_without_sender_auth_too() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let config = format!(
        "{}\n{}",
        config_text("", 1_000_000),
        delivery_section(&[("example.org", hop.addr, "none")], "")
    );
    let server = TestServer::start_with("auth-forged-plain", &config);
    let msg = format!(
        "Authentication-Results: mx.example.org; dkim=pass\r\n{}",
        message("a@example.net", "forged-plain")
    );
    send(
        server.addr(Role::Mta),
        "client.example",
        "a@example.net",
        &msg,
    )
    .expect(250, "2.0.0");
    let got = hop.wait_for(1, WAIT);
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(!text.contains("Authentication-Results"), "{text}");
}

#[test]
fn checks_need_a_dns_table_and_honor_needs_an_mta_listener() {
    let setup = common::Setup::new(
        "auth-config",
        &format!("{}\n[sender_auth]\ndkim = true\n", config_text("", 10_000)),
    );
    let err = smtp_relay::config::Config::load(&setup.config).expect_err("no [dns]");
    assert!(err.to_string().contains("sender_auth.dkim"), "{err}");
    assert!(err.to_string().contains("[dns]"), "{err}");
    let honor_on_submission = "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\n\
                               allow = [\"0.0.0.0/0\"]\ndmarc_policy = \"honor\"\n";
    setup.rewrite(&config_text(honor_on_submission, 10_000));
    let err = smtp_relay::config::Config::load(&setup.config).expect_err("honor on 587");
    assert!(err.to_string().contains("dmarc_policy"), "{err}");
    // An empty table without [dns] is fine: it only sets the authserv-id for the stripping.
    setup.rewrite(&format!(
        "{}\n[sender_auth]\nauthserv_id = \"auth.example.org\"\n",
        config_text("", 10_000)
    ));
    let c = smtp_relay::config::Config::load(&setup.config).expect("valid");
    assert_eq!(
        c.sender_auth.expect("table").authserv_id,
        "auth.example.org"
    );
}

#[test]
fn spf_does_not_hold_up_pipelined_commands() {
    // DNS that never answers: SPF takes its whole deadline, but only after the message.
    let silent = SilentDns::start();
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let dns = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 10000\n",
        silent.addr
    );
    let server = relay(
        "auth-pipelining",
        &dns,
        "[sender_auth]\nspf = true\ncheck_timeout_ms = 4000\n",
        &hop,
    );
    let mut c = Client::connect(mta(&server, false));
    c.ehlo();
    let started = Instant::now();
    c.send_raw(b"MAIL FROM:<a@pipelined.spf.test>\r\nRCPT TO:<user@example.org>\r\nNOOP\r\n");
    c.read_reply().expect(250, "2.1.0");
    c.read_reply().expect(250, "2.1.5");
    c.read_reply().expect(250, "2.0.0");
    let replies = started.elapsed();
    // Far below the 4 s the lookup takes: the replies did not wait for it.
    assert!(replies < Duration::from_secs(2), "{replies:?}");
    // RSET ends the transaction (and its lookup); a new one works as usual.
    c.cmd("RSET").expect(250, "2.0.0");
    let r = c.send_mail(
        "a@pipelined.spf.test",
        &["user@example.org"],
        message("a@pipelined.spf.test", "pipelined").as_bytes(),
    );
    r.expect(250, "2.0.0");
    let got = hop.wait_for(1, WAIT);
    assert_eq!(result_of(by_subject(&got, "pipelined"), "spf"), "temperror");
}

#[test]
fn authenticated_and_trusted_clients_are_not_checked_but_still_stripped() {
    let ed = DkimKey::ed25519();
    let nsd = start_nsd(&zones(&ed, None));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay_with(
        "auth-scope",
        "trusted_networks = [\"127.0.0.2/32\"]",
        &nsd.dns_section(),
        "[sender_auth]\nspf = true\ndkim = true\ndmarc = true\n",
        &hop,
    );
    let forged = |subject: &str| {
        format!(
            "Authentication-Results: mx.example.org; spf=pass\r\n{}",
            message("alice@example.org", subject)
        )
    };
    let mut c = Client::connect_from(mta(&server, true), "127.0.0.2".parse().expect("ip"));
    c.ehlo();
    c.send_mail(
        "a@fail.spf.test",
        &["user@example.org"],
        forged("trusted").as_bytes(),
    )
    .expect(250, "2.0.0");
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &server.setup.ca());
    c.ehlo();
    c.auth_plain("alice", common::PASSWORD).expect(235, "2.7.0");
    c.send_mail(
        "alice@example.org",
        &["user@example.org"],
        forged("authenticated").as_bytes(),
    )
    .expect(250, "2.0.0");
    let got = hop.wait_for(2, WAIT);
    for subject in ["trusted", "authenticated"] {
        let text = String::from_utf8_lossy(&by_subject(&got, subject).data).into_owned();
        assert!(
            !text.contains("Authentication-Results"),
            "{subject}: {text}"
        );
    }
}

#[test]
fn a_trusted_arc_sealer_turns_a_dmarc_reject_into_the_header() {
    use mail_auth::arc::ArcSealer;
    use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};
    let ed = DkimKey::ed25519();
    let nsd = start_nsd(&zones(&ed, None));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay(
        "auth-arc",
        &nsd.dns_section(),
        "[sender_auth]\ndmarc = true\narc = true\narc_trusted_sealers = [\"dkim.test\"]\n",
        &hop,
    );
    let honor = mta(&server, true);
    // A list at dkim.test forwarded it: it checked the original and sealed its results.
    let seal = |subject: &str, sealer: &str| {
        let original = message("a@reject.dmarc.test", subject);
        let parsed = AuthenticatedMessage::parse(original.as_bytes()).expect("parse");
        let results = AuthenticationResults::new(sealer);
        let DkimKey::Ed25519(pkcs8) = &ed else {
            unreachable!()
        };
        let set = ArcSealer::from_key(Ed25519Key::from_pkcs8_der(pkcs8).expect("key"))
            .domain(sealer)
            .selector("ed")
            .headers(["From", "To", "Subject"])
            .seal(&parsed, &results, &ArcOutput::default())
            .expect("seal");
        format!("{}{}{original}", set.to_header(), results.to_header())
    };
    send(
        honor,
        "client.example",
        "b@pass.spf.test",
        &seal("arc-trusted", "dkim.test"),
    )
    .expect(250, "2.0.0");
    // The same forwarding by a sealer not on the list: refused as any DMARC reject.
    let untrusted = seal("arc-untrusted", "reject.dmarc.test");
    send(honor, "client.example", "b@pass.spf.test", &untrusted).expect(550, "5.7.1");
    let got = hop.wait_for(1, WAIT);
    let m = by_subject(&got, "arc-trusted");
    assert_eq!(result_of(m, "arc"), "pass", "{}", our_results(m));
    assert_eq!(result_of(m, "dmarc"), "fail");
    assert!(
        String::from_utf8_lossy(&m.data)
            .contains("X-Gatekeeper-Quarantine: dmarc=fail policy=reject domain=reject.dmarc.test")
    );
}

#[test]
fn verification_runs_on_the_bytes_as_received_before_the_forged_field_goes() {
    // The signer covered a (forged) A-R field of ours: verifying after removing it would
    // break the signature. The relay verifies first, then removes it.
    let ed = DkimKey::ed25519();
    let nsd = start_nsd(&zones(&ed, None));
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let server = relay(
        "auth-original",
        &nsd.dns_section(),
        "[sender_auth]\ndkim = true\n",
        &hop,
    );
    let msg = format!(
        "Authentication-Results: mx.example.org; dkim=pass header.d=bank.example\r\n{}",
        message("a@dkim.test", "signed-forgery")
    );
    let signed = ed.sign_headers(
        &msg,
        "dkim.test",
        "ed",
        &["From", "Subject", "Authentication-Results"],
    );
    send(
        mta(&server, false),
        "client.example",
        "a@dkim.test",
        &signed,
    )
    .expect(250, "2.0.0");
    let got = hop.wait_for(1, WAIT);
    let m = by_subject(&got, "signed-forgery");
    assert_eq!(result_of(m, "dkim"), "pass", "{}", our_results(m));
    assert!(!String::from_utf8_lossy(&m.data).contains("bank.example"));
}
