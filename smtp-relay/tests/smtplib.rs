//! A second, independent client: Python's smtplib (python3 must be
//! installed; it is on the development machines and in CI).

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{PASSWORD, TestServer, split_received};
use smtp_relay::config::Role;

fn smtplib(
    mode: &str,
    addr: SocketAddr,
    server: &TestServer,
    sender: &str,
    rcpt: &str,
) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/smtplib_client.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(mode)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(server.setup.ca())
        .arg("alice")
        .arg(PASSWORD)
        .arg(sender)
        .arg(rcpt)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "smtplib client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the smtplib client")
}

/// The queue id and stored body for a `data` result.
fn stored(
    server: &TestServer,
    result: &serde_json::Value,
) -> (smtp_relay::spool::Envelope, Vec<u8>) {
    assert_eq!(result["data"][0], 250, "{result}");
    let text = result["data"][1].as_str().expect("data reply");
    let id = text.rsplit(' ').next().expect("id");
    let (env, eml) = server.setup.spool().read(id).expect("queued");
    let (_, body) = split_received(&eml);
    (env, body)
}

#[test]
fn smtplib_submission_with_starttls_and_login() {
    let server = TestServer::start("py587");
    for addr in server.listeners(Role::Submission) {
        let r = smtplib(
            "starttls",
            addr,
            &server,
            "alice@example.org",
            "friend@other.example",
        );
        assert_eq!(r["auth_before_tls"], false, "{r}");
        assert_eq!(r["starttls_offered"], true, "{r}");
        assert_eq!(r["auth_offered"], true, "{r}");
        assert_eq!(r["wrong_password"], 535, "{r}");
        assert_eq!(r["login"], "ok", "{r}");
        assert_eq!(r["mail"], 250, "{r}");
        assert_eq!(r["rcpt"][0], 250, "{r}");
        assert_eq!(r["rcpt_without_mail"], 503, "{r}");
        let (env, body) = stored(&server, &r);
        assert_eq!(env.user.as_deref(), Some("alice"));
        assert_eq!(env.body, smtp_relay::envelope::BodyType::EightBitMime);
        assert!(
            body.ends_with(b"\r\n.starts with a dot\r\n8-bit \xc3\xa4\r\n"),
            "{body:?}"
        );
    }
}

#[test]
fn smtplib_submissions_implicit_tls() {
    let server = TestServer::start("py465");
    for addr in server.listeners(Role::Submissions) {
        let r = smtplib(
            "ssl",
            addr,
            &server,
            "alice@example.org",
            "friend@other.example",
        );
        assert_eq!(r["auth_offered"], true, "{r}");
        assert_eq!(r["wrong_password"], 535, "{r}");
        let (env, _) = stored(&server, &r);
        assert!(env.tls);
        assert_eq!(env.role, Some(smtp_relay::config::Role::Submissions));
    }
}

#[test]
fn smtplib_mta_local_delivery_and_relay_denied() {
    let server = TestServer::start("py25");
    let addr = server.addr(Role::Mta);
    let r = smtplib(
        "plain",
        addr,
        &server,
        "someone@sender.example",
        "alice@example.org",
    );
    assert_eq!(r["auth_before_tls"], false, "{r}");
    assert_eq!(r["auth_offered"], false, "{r}");
    let (env, _) = stored(&server, &r);
    assert_eq!(env.user, None);
    let r = smtplib(
        "plain",
        addr,
        &server,
        "someone@sender.example",
        "victim@other.example",
    );
    assert_eq!(r["rcpt"][0], 554, "{r}");
    assert!(
        r["rcpt"][1]
            .as_str()
            .is_some_and(|t| t.starts_with("5.7.1")),
        "{r}"
    );
    assert!(r.get("data").is_none(), "{r}");
}
