//! The company directory (`[directory]`, issue 20) against a real OpenLDAP slapd on
//! loopback, driven by Python's smtplib (not our code): AUTH binds as the directory user,
//! MAIL FROM is bound to the entry's addresses, RCPT checks the directory, and a directory
//! that is down gives 454 / 451 and queues nothing.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::slapd::{self, RELAY_GROUP, Slapd};
use common::{Setup, TestServer, cheap_hash};
use serde_json::{Value, json};
use smtp_relay::config::Role;

const OTHER_GROUP: &str = "cn=sales,ou=groups,dc=example,dc=org";

/// The AD-shaped directory: alice (alias a.smith@), bob, carol (disabled), dave (not in
/// the relay group), and erin, a plain OpenLDAP user.
fn ad_directory() -> Slapd {
    let people = |n: &str| format!("cn={n},ou=people,dc=example,dc=org");
    // The relay group as a groupOfNames (group_search): alice and erin, not frank.
    let mut ldif = slapd::base_ldif(&[&people("alice"), "uid=erin,ou=people,dc=example,dc=org"]);
    ldif.push_str(&slapd::ad_user(
        "alice",
        "alice pw",
        "alice@example.org",
        &["a.smith@example.org"],
        512,
        &[RELAY_GROUP],
    ));
    ldif.push_str(&slapd::ad_user(
        "bob",
        "bob pw",
        "bob@example.org",
        &[],
        512,
        &[RELAY_GROUP],
    ));
    ldif.push_str(&slapd::ad_user(
        "carol",
        "carol pw",
        "carol@example.org",
        &[],
        514,
        &[RELAY_GROUP],
    ));
    ldif.push_str(&slapd::ad_user(
        "dave",
        "dave pw",
        "dave@example.org",
        &[],
        512,
        &[OTHER_GROUP],
    ));
    ldif.push_str(&slapd::plain_user("erin", "erin pw", "erin@example.org"));
    ldif.push_str(&slapd::plain_user("frank", "frank pw", "frank@example.org"));
    Slapd::start(&ldif)
}

/// A relay with submission and mta listeners on 127.0.0.1, a local user `local`, the
/// directory given by `directory` (a `[directory]` table) and example.org's recipients
/// checked against it.
fn relay(tag: &str, directory: impl FnOnce(&std::path::Path) -> String) -> TestServer {
    let setup = Setup::new(tag, "");
    let hash = cheap_hash("local pw");
    let text = format!(
        r#"
hostname = "mx.example.org"
spool_dir = "spool"
local_domains = ["example.org"]
command_timeout_secs = 20
auth_failure_delay_ms = 1
auth_max_failures = 1000

[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
address = "127.0.0.1:0"
role = "submission"
allow = ["127.0.0.0/8"]

[[listener]]
address = "127.0.0.1:0"
role = "mta"
allow = ["127.0.0.0/8"]

[[user]]
name = "local"
password_hash = "{hash}"
senders = ["local@example.org"]

[recipients]
unknown_max = 100
unknown_delay_ms = 0

[[recipients.domain]]
domain = "example.org"
source = "directory"

{}
"#,
        directory(setup.dir.path())
    );
    setup.rewrite(&text);
    TestServer::start_in(setup)
}

/// Runs `plan` over STARTTLS sessions with Python's smtplib; one [code, text] per step.
fn smtplib(server: &TestServer, addr: SocketAddr, plan: Value) -> Vec<(i64, String)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/smtplib_directory.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(server.setup.ca())
        .arg(plan.to_string())
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "smtplib client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(i64, String)> =
        serde_json::from_slice(&out.stdout).expect("JSON from the smtplib client");
    v
}

fn codes(steps: &[(i64, String)]) -> Vec<i64> {
    steps.iter().map(|(c, _)| *c).collect()
}

fn queued(server: &TestServer) -> Vec<smtp_relay::spool::Envelope> {
    let spool = server.setup.spool();
    let ids = spool.queued_ids().expect("spool");
    ids.iter()
        .map(|id| spool.read_envelope(id).expect("envelope"))
        .collect()
}

#[test]
fn directory_users_log_in_send_as_their_alias_and_nobody_else_gets_in() {
    let slapd = ad_directory();
    // The first server is down: failover to the second (StartTLS on ldap://).
    let dead = format!("ldaps://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    });
    let server = relay("dir-ad", |d| {
        slapd.directory_section(
            d,
            &[&dead, &slapd.ldap_url],
            &format!("relay_group = \"{RELAY_GROUP}\""),
        )
    });
    let submission = server.addr(Role::Submission);
    let r = smtplib(
        &server,
        submission,
        json!([
            ["login", "alice", "alice pw"],
            ["mail", "a.smith@example.org"],
            ["rcpt", "friend@other.example"],
            ["rcpt", "bob@example.org"],
            ["data"],
            ["mail", "bob@example.org"],
            ["new"],
            ["login", "alice", "wrong pw"],
            ["new"],
            ["login", "alice", ""],
            ["new"],
            ["login", "carol", "carol pw"],
            ["new"],
            ["login", "dave", "dave pw"],
            ["new"],
            ["login", "*)(sAMAccountName=*", "alice pw"],
            ["new"],
            ["login", "*", "alice pw"],
            ["new"],
            // Unescaped, `ali*` would match alice alone and log in with her password.
            ["login", "ali*", "alice pw"],
            ["new"],
            ["login", "erin", "erin pw"],
            ["new"],
            ["login", "alice@corp.example.org", "alice pw"],
            ["mail", "alice@example.org"],
            ["rcpt", "a.smith@example.org"],
            ["rcpt", "nobody@example.org"],
            ["rcpt", "carol@example.org"],
            ["rcpt", "postmaster@example.org"],
            ["new"],
            ["login", "local", "local pw"],
            ["mail", "local@example.org"],
        ]),
    );
    assert_eq!(
        codes(&r),
        [
            235, 250, 250, 250, 250, 553, // alice as her alias, not as bob
            220, 535, // wrong password
            220, 535, // empty password: never an unauthenticated bind
            220, 535, // disabled (userAccountControl 514)
            220, 535, // not in the relay group
            220, 535, // injected filter
            220, 535, // a wildcard
            220, 535, // a wildcard that would match alice alone
            220, 535, // a plain inetOrgPerson entry is not (objectClass=user)
            220, 235, 250, 250, 550, 550, 250, // UPN login; directory recipients
            220, 235, 250, // [[user]] tables keep working beside the directory
        ],
        "{r:?}"
    );
    assert!(r[5].1.contains("5.7.1"), "{r:?}");
    assert!(r[26].1.contains("5.1.1"), "{r:?}");
    // The message alice sent as her alias is queued under her login.
    let envelopes = queued(&server);
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].user.as_deref(), Some("alice"));
    assert_eq!(envelopes[0].sender, "a.smith@example.org");
    let audit = common::logs::lines_with(&["event=\"auth\"", "reason=\"disabled\""]);
    assert!(!audit.is_empty(), "the audit line names why");
    let audit = common::logs::lines_with(&["event=\"auth\"", "reason=\"not_in_relay_group\""]);
    assert!(!audit.is_empty(), "the audit line names why");
    assert!(
        smtp_relay::directory::metrics::lookup_count(
            smtp_relay::directory::metrics::Kind::Login,
            smtp_relay::directory::metrics::Outcome::Found
        ) >= 2
    );
}

#[test]
fn a_directory_that_is_down_refuses_logins_and_recipients_temporarily() {
    let mut slapd = ad_directory();
    let server = relay("dir-down", |d| {
        slapd.directory_section(d, &[&slapd.ldaps_url], "")
    });
    let submission = server.addr(Role::Submission);
    let mta = server.addr(Role::Mta);
    // Up: a login and a recipient work (over ldaps://).
    let r = smtplib(&server, submission, json!([["login", "bob", "bob pw"]]));
    assert_eq!(codes(&r), [235], "{r:?}");
    // A restart between two logins leaves the relay's idle connections dead: no 454, no WARN.
    slapd.restart();
    let r = smtplib(&server, submission, json!([["login", "bob", "bob pw"]]));
    assert_eq!(codes(&r), [235], "{r:?}");
    let url = slapd.ldaps_url.clone();
    let down = || common::logs::lines_with(&["directory_down", &url]);
    assert!(down().is_empty());
    slapd.stop();
    for _ in 0..2 {
        let r = smtplib(
            &server,
            submission,
            json!([["login", "bob", "bob pw"], ["login", "alice", "wrong"]]),
        );
        assert_eq!(codes(&r), [454, 454], "{r:?}");
        assert!(r[0].1.contains("4.7.0"), "{r:?}");
        let r = smtplib(
            &server,
            mta,
            json!([
                ["mail", "sender@other.example"],
                ["rcpt", "alice@example.org"],
                ["rcpt", "nobody@example.org"],
                ["data"]
            ]),
        );
        assert_eq!(codes(&r), [250, 451, 451, 554], "{r:?}");
        assert!(r[1].1.contains("4.4.3"), "{r:?}");
    }
    assert!(queued(&server).is_empty(), "nothing queued");
    let warns = down();
    assert_eq!(warns.len(), 1, "one WARN per outage: {warns:?}");

    // Back: logins and recipients work again, without a restart of the relay.
    slapd.restart();
    let r = smtplib(
        &server,
        submission,
        json!([
            ["login", "bob", "bob pw"],
            ["mail", "bob@example.org"],
            ["rcpt", "alice@example.org"],
            ["rcpt", "nobody@example.org"]
        ]),
    );
    assert_eq!(codes(&r), [235, 250, 250, 550], "{r:?}");
    assert_eq!(common::logs::lines_with(&["directory_up", &url]).len(), 1);
}

#[test]
fn openldap_schema_with_a_group_search_and_the_test_command() {
    let slapd = ad_directory();
    let extra = format!(
        "schema = \"openldap\"\nrelay_group = \"{RELAY_GROUP}\"\n\
         group_membership = \"group_search\""
    );
    let server = relay("dir-openldap", |d| {
        slapd.directory_section(d, &[&slapd.ldaps_url], &extra)
    });
    // erin is a member of the relay group (groupOfNames); frank is not.
    let r = smtplib(
        &server,
        server.addr(Role::Submission),
        json!([
            ["login", "erin", "erin pw"],
            ["mail", "erin@example.org"],
            ["new"],
            ["login", "frank", "frank pw"]
        ]),
    );
    assert_eq!(codes(&r), [235, 250, 220, 535], "{r:?}");

    let test = |user: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .args(["directory", "--config"])
            .arg(&server.setup.config)
            .args(["test", "--user", user])
            .output()
            .expect("run smtp-relay");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(slapd::SERVICE_PASSWORD), "{text}");
        text
    };
    let erin = test("erin");
    assert!(erin.contains("service bind: OK"), "{erin}");
    assert!(
        erin.contains("dn: uid=erin,ou=people,dc=example,dc=org"),
        "{erin}"
    );
    assert!(erin.contains("addresses: erin@example.org"), "{erin}");
    assert!(erin.contains("disabled: no"), "{erin}");
    assert!(erin.contains("relay group: yes"), "{erin}");
    let frank = test("frank");
    assert!(frank.contains("relay group: no"), "{frank}");
    assert!(frank.contains("may log in: no"), "{frank}");
    let nobody = test("nobody");
    assert!(nobody.contains("not usable: no_such_user"), "{nobody}");
}

#[test]
fn check_warns_about_plaintext_ldap_and_refuses_it_off_loopback() {
    let setup = Setup::new("dir-check", "");
    std::fs::write(setup.dir.path().join("ldap.pw"), "secret\n").expect("write");
    let config = |server: &str| {
        format!(
            "hostname = \"mx.example.org\"\nspool_dir = \"spool\"\nlocal_domains = [\"example.org\"]\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\nallow = [\"127.0.0.0/8\"]\n\
             [directory]\nservers = [\"{server}\"]\ninsecure_plaintext = true\n\
             bind_dn = \"cn=svc,dc=example,dc=org\"\nbind_password_file = \"ldap.pw\"\n\
             base_dn = \"dc=example,dc=org\"\n"
        )
    };
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .args(["check", "--config"])
            .arg(&setup.config)
            .output()
            .expect("run smtp-relay")
    };
    setup.rewrite(&config("ldap://127.0.0.1:389"));
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("insecure_plaintext"),
        "{stderr}"
    );
    setup.rewrite(&config("ldap://dc1.example.org"));
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("directory.servers[0]")
            && stderr.contains("only allowed for a server on loopback"),
        "{stderr}"
    );
}

#[test]
fn a_directory_that_does_not_answer_times_out_into_454_and_451() {
    // Accepts connections and never says a word: the TLS handshake waits for its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ldaps://{}", silent.local_addr().expect("addr"));
    let server = relay("dir-slow", |d| {
        std::fs::write(d.join("ldap.pw"), "secret\n").expect("write");
        format!(
            "[directory]\nservers = [\"{url}\"]\nbind_dn = \"cn=svc,dc=example,dc=org\"\n\
             bind_password_file = \"ldap.pw\"\nbase_dn = \"dc=example,dc=org\"\ntimeout_ms = 500\n"
        )
    });
    let started = std::time::Instant::now();
    let r = smtplib(
        &server,
        server.addr(Role::Submission),
        json!([
            ["login", "alice", "alice pw"],
            ["new"],
            ["mail", "x@other.example"]
        ]),
    );
    assert_eq!(codes(&r)[..2], [454, 220], "{r:?}");
    let r = smtplib(
        &server,
        server.addr(Role::Mta),
        json!([["mail", "x@other.example"], ["rcpt", "alice@example.org"]]),
    );
    assert_eq!(codes(&r), [250, 451], "{r:?}");
    // Four lookups (PLAIN, LOGIN, RCPT), each bounded by timeout_ms.
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    assert!(queued(&server).is_empty());
    drop(silent);
}
