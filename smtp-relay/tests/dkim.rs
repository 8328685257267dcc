//! DKIM signing end to end: keys made by `smtp-relay dkim keygen` (the real CLI), their records
//! as it prints them served by NSD on loopback, the relay in-process signing at delivery, and
//! the scripted next hop capturing what left. Each delivered signature is verified twice: by
//! mail-auth's verifier and by Python's dkimpy, an independent implementation. `dkim check`
//! runs against the same NSD.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::nexthop::{Captured, NextHop, Script};
use common::nsd::Nsd;
use common::{Client, PASSWORD, TempDir, TestServer, config_text, delivery_section};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use smtp_relay::config::Role;
use smtp_relay::dkim::keys::Algorithm;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");
const WAIT: Duration = Duration::from_secs(20);

/// Runs `smtp-relay dkim keygen` in `dir`; returns the key file and the zone line it printed.
fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{domain}.{selector}.key"));
    let out = Command::new(BIN)
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--key-file"])
        .arg(&key)
        .output()
        .expect("run smtp-relay dkim keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("utf-8");
    (key, line.trim().to_owned())
}

fn dkim_table(keys: &[(&str, &str, &Path)]) -> String {
    keys.iter()
        .map(|(domain, selector, key)| {
            format!(
                "[[dkim.key]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\n",
                key.display()
            )
        })
        .collect()
}

/// A message with a unique subject (how the test finds it at the next hop).
fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@test>\r\nDate: Sun, 29 Nov 2026 20:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello.\r\nA second  line   with spaces.  \r\n\r\n"
    )
}

fn by_subject<'a>(got: &'a [Captured], subject: &str) -> &'a Captured {
    let needle = format!("Subject: {subject}\r\n");
    got.iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains(&needle))
        .unwrap_or_else(|| panic!("no message {subject} at the next hop"))
}

/// The names of the header fields, in order.
fn field_names(data: &[u8]) -> Vec<String> {
    let parsed = mail_parser::MessageParser::default()
        .parse(data)
        .expect("message parses");
    parsed.headers_raw().map(|(n, _)| n.to_owned()).collect()
}

/// mail-auth's verdicts on every DKIM-Signature (top first), via NSD.
fn mail_auth_verify(data: &[u8], nsd: &Nsd) -> Vec<(String, bool)> {
    let resolver =
        smtp_relay::dns::resolver(&[nsd.addr], Duration::from_secs(2), 2, 0).expect("resolver");
    let auth = MessageAuthenticator(resolver);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let msg = AuthenticatedMessage::parse(data).expect("parses");
    runtime.block_on(async {
        auth.verify_dkim(&msg)
            .await
            .iter()
            .map(|o| {
                let sig = o.signature().map_or_else(String::new, |s| {
                    format!(
                        "{}/{}",
                        s.s,
                        if s.a == mail_auth::common::crypto::Algorithm::Ed25519Sha256 {
                            "ed25519"
                        } else {
                            "rsa"
                        }
                    )
                });
                (sig, *o.result() == DkimResult::Pass)
            })
            .collect()
    })
}

fn dkimpy_verify(data: &[u8], nsd: &Nsd, dir: &Path, name: &str) -> Vec<bool> {
    let file = dir.join(name);
    std::fs::write(&file, data).expect("write message");
    common::dkimpy::verify(&file, nsd.addr)
}

/// The `h=` tag of the first DKIM-Signature, lowercased names.
fn signed_headers(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let start = text.find("DKIM-Signature:").expect("signature");
    let field: String = text[start..]
        .split("\r\n")
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with([' ', '\t']))
        .map(|(_, l)| l.trim())
        .collect();
    let h = field
        .split(';')
        .find_map(|t| t.trim().strip_prefix("h="))
        .expect("h= tag");
    h.split(':')
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}

#[test]
fn submissions_are_signed_with_ed25519_and_rsa_and_verify_with_mail_auth_and_dkimpy() {
    common::dkimpy::ensure_installed();
    let dir = TempDir::new("dkim-keys");
    let (ed_key, ed_line) = keygen(dir.path(), "example.org", "ed1", "ed25519");
    let (rsa_key, rsa_line) = keygen(dir.path(), "example.org", "rsa1", "rsa");
    let nsd = Nsd::start(&[("example.org", &format!("{ed_line}\n{rsa_line}\n"))]);
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let config = format!(
        "{}\n{}\n{}\n{}",
        config_text("", 1_000_000),
        nsd.dns_section(),
        dkim_table(&[
            ("example.org", "ed1", &ed_key),
            ("example.org", "rsa1", &rsa_key)
        ]),
        delivery_section(
            &[
                ("example.org", hop.addr, "none"),
                ("remote.test", hop.addr, "none")
            ],
            ""
        )
    );
    let server = TestServer::start_with("dkim-sign", &config);

    // An authenticated user relays out.
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &server.setup.ca());
    c.ehlo();
    c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
    let signed = message("alice@example.org", "bob@remote.test", "dkim-signed");
    c.send_mail("alice@example.org", &["bob@remote.test"], signed.as_bytes())
        .expect(250, "2.0.0");
    c.cmd("QUIT");
    // A stranger on port 25 to a local user, claiming the same From domain: never signed.
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    let stranger = message("alice@example.org", "user@example.org", "dkim-stranger");
    c.send_mail(
        "x@elsewhere.test",
        &["user@example.org"],
        stranger.as_bytes(),
    )
    .expect(250, "2.0.0");
    c.cmd("QUIT");

    let got = hop.wait_for(2, WAIT);
    let m = by_subject(&got, "dkim-signed");
    let names = field_names(&m.data);
    assert_eq!(
        names.get(..3),
        Some(&["DKIM-Signature", "DKIM-Signature", "Received"].map(String::from)[..]),
        "two signatures on top of our Received: {names:?}"
    );
    let h = signed_headers(&m.data);
    assert_eq!(
        h.iter().filter(|n| *n == "from").count(),
        2,
        "From over-signed: {h:?}"
    );
    for name in ["subject", "date", "to", "message-id"] {
        assert!(h.iter().any(|n| n == name), "{name} signed: {h:?}");
    }
    assert!(!h.iter().any(|n| n == "received"), "{h:?}");
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("c=relaxed/relaxed"), "{text}");

    let mut verdicts = mail_auth_verify(&m.data, &nsd);
    verdicts.sort();
    assert_eq!(
        verdicts,
        vec![
            ("ed1/ed25519".to_owned(), true),
            ("rsa1/rsa".to_owned(), true)
        ],
        "mail-auth verifies both signatures"
    );
    assert_eq!(
        dkimpy_verify(&m.data, &nsd, dir.path(), "signed.eml"),
        vec![true, true],
        "dkimpy verifies both signatures"
    );

    // The same bytes with one body line changed fail both verifiers.
    let altered = String::from_utf8_lossy(&m.data).replace("Hello.", "Hullo.");
    assert!(
        mail_auth_verify(altered.as_bytes(), &nsd)
            .iter()
            .all(|(_, pass)| !pass)
    );
    assert_eq!(
        dkimpy_verify(altered.as_bytes(), &nsd, dir.path(), "altered.eml"),
        vec![false, false]
    );

    let local = by_subject(&got, "dkim-stranger");
    assert!(
        !String::from_utf8_lossy(&local.data).contains("DKIM-Signature"),
        "stranger mail signed: {}",
        String::from_utf8_lossy(&local.data)
    );
    let lines = common::logs::lines_with(&["event=\"dkim_signed\"", "keys=ed1/ed25519,rsa1/rsa"]);
    assert!(!lines.is_empty(), "a log line per signed message");
}

#[test]
fn trusted_networks_are_signed_and_other_from_domains_are_not() {
    let dir = TempDir::new("dkim-trusted-keys");
    let (ed_key, ed_line) = keygen(dir.path(), "example.net", "t1", "ed25519");
    let nsd = Nsd::start(&[("example.net", &format!("{ed_line}\n"))]);
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let config = format!(
        "trusted_networks = [\"127.0.0.0/8\"]\n{}\n{}\n{}\n{}",
        config_text("", 1_000_000),
        nsd.dns_section(),
        dkim_table(&[("example.net", "t1", &ed_key)]),
        delivery_section(&[("remote.test", hop.addr, "none")], "")
    );
    let server = TestServer::start_with("dkim-trusted", &config);
    let signed_before = smtp_relay::metrics::dkim_signed_count(Algorithm::Ed25519);
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    // A subdomain is signed with its parent's key (DMARC relaxed alignment).
    let msg = message("app@mail.example.net", "bob@remote.test", "dkim-trusted");
    c.send_mail("app@mail.example.net", &["bob@remote.test"], msg.as_bytes())
        .expect(250, "2.0.0");
    let other = message("app@elsewhere.test", "bob@remote.test", "dkim-other-domain");
    c.send_mail("app@elsewhere.test", &["bob@remote.test"], other.as_bytes())
        .expect(250, "2.0.0");
    c.cmd("QUIT");
    let got = hop.wait_for(2, WAIT);
    let m = by_subject(&got, "dkim-trusted");
    assert_eq!(
        mail_auth_verify(&m.data, &nsd),
        vec![("t1/ed25519".to_owned(), true)]
    );
    assert!(String::from_utf8_lossy(&m.data).contains("d=example.net"));
    let o = by_subject(&got, "dkim-other-domain");
    assert!(!String::from_utf8_lossy(&o.data).contains("DKIM-Signature"));
    assert!(smtp_relay::metrics::dkim_signed_count(Algorithm::Ed25519) > signed_before);
}

#[test]
fn keygen_writes_a_private_key_and_check_compares_the_published_records() {
    let dir = TempDir::new("dkim-check");
    let (good, good_line) = keygen(dir.path(), "example.org", "good", "ed25519");
    let (rsa, rsa_line) = keygen(dir.path(), "example.org", "rsa", "rsa");
    let (other, _) = keygen(dir.path(), "example.org", "other", "ed25519");
    let (_, other_line) = keygen(dir.path(), "example.org", "mismatch", "ed25519");
    let (missing, _) = keygen(dir.path(), "example.org", "missing", "rsa");
    for key in [&good, &rsa, &other, &missing] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(key).expect("key file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        let pem = std::fs::read_to_string(key).expect("read key");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    }
    // Handed to the relay's user (here nobody): chown needs root.
    if common::root_tests_enabled("keygen --owner", "chown of the key file") {
        let owned = dir.path().join("owned.key");
        let out = Command::new(BIN)
            .args([
                "dkim",
                "keygen",
                "--domain",
                "example.org",
                "--selector",
                "o",
            ])
            .args(["--owner", "nobody", "--key-file"])
            .arg(&owned)
            .output()
            .expect("run keygen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nobody = Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .expect("id");
        let uid: u32 = String::from_utf8_lossy(&nobody.stdout)
            .trim()
            .parse()
            .expect("uid");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&owned).expect("key")),
            uid
        );
    }
    // An existing key is never overwritten.
    let again = Command::new(BIN)
        .args([
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "good",
            "--key-file",
        ])
        .arg(&good)
        .output()
        .expect("run keygen");
    assert!(!again.status.success());
    // "mismatch" publishes another key than the file configured under that selector.
    let mismatch_line = other_line.clone();
    let nsd = Nsd::start(&[(
        "example.org",
        &format!("{good_line}\n{rsa_line}\n{mismatch_line}\n"),
    )]);
    let write_config = |name: &str, keys: &[(&str, &str, &Path)]| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "{}\n{}\n{}",
                config_text("", 10_000),
                nsd.dns_section(),
                dkim_table(keys)
            ),
        )
        .expect("write config");
        common::write_certs(dir.path());
        path
    };
    let check = |config: &Path| {
        let out = Command::new(BIN)
            .args(["dkim", "check", "--config"])
            .arg(config)
            .output()
            .expect("run dkim check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let all_good = write_config(
        "good.toml",
        &[("example.org", "good", &good), ("example.org", "rsa", &rsa)],
    );
    let (ok, out, err) = check(&all_good);
    assert!(ok, "{out}{err}");
    assert!(out.contains("good._domainkey.example.org: OK"), "{out}");
    assert!(out.contains("rsa._domainkey.example.org: OK"), "{out}");

    let bad = write_config(
        "bad.toml",
        &[
            ("example.org", "good", &good),
            ("example.org", "mismatch", &other),
            ("example.org", "missing", &missing),
        ],
    );
    let (ok, out, err) = check(&bad);
    assert!(!ok, "{out}");
    assert!(out.contains("good._domainkey.example.org: OK"), "{out}");
    assert!(
        out.contains("mismatch._domainkey.example.org: MISMATCH"),
        "{out}"
    );
    assert!(
        out.contains("missing._domainkey.example.org: MISSING"),
        "{out}"
    );
    assert!(err.contains("2 of 3 DKIM key(s)"), "{err}");
}
