//! End-to-end sessions against the relay over real loopback sockets
//! (IPv4 and IPv6), with TLS certificates generated at test time.

mod common;

use std::time::Duration;

use common::nexthop::{NextHop, Script};
use common::{
    Client, PASSWORD, TestServer, config_with, delivery_section, queue_id, split_received,
};

/// A next hop that is down (421) until the test has looked at the spool.
fn down_hop() -> NextHop {
    NextHop::start(
        "127.0.0.1:0",
        Script {
            down: true,
            ..Script::default()
        },
    )
}
use smtp_relay::config::Role;

const MESSAGE: &[u8] = b"From: someone@sender.example\r\n\
To: alice@example.org\r\n\
Subject: dots and bytes\r\n\
\r\n\
.a line starting with a dot\r\n\
..two dots\r\n\
.\t\r\n\
middle . dot\r\n\
8-bit: \xc3\xa4\xc3\xb6\xc3\xbc\r\n\
last line\r\n";

/// The relay tricks of the issue, each aimed at an external host.
const TRICKS: &[&str] = &[
    "victim@other.example",
    "victim@sub.example.org",
    "user%other.example@example.org",
    "other.example!user@example.org",
    "\"user@other.example\"@example.org",
    "@example.org,@other.example:user@example.org",
    "@example.org:user@other.example",
    "user@[127.0.0.1]",
    "user@[IPv6:::1]",
    "user@example.org.",
    "user@EXAMPLE.ORG.",
    "\"user%other.example\"@example.org",
];

#[test]
fn unauthenticated_relay_is_refused_on_every_listener() {
    let server = TestServer::start("norelay");
    let ca = server.setup.ca();
    for addr in server.listeners(Role::Mta) {
        let mut c = Client::connect(addr);
        assert_eq!(c.greeting.code, 220);
        c.ehlo();
        c.cmd("MAIL FROM:<someone@sender.example>")
            .expect(250, "2.1.0");
        for trick in TRICKS {
            c.cmd(&format!("RCPT TO:<{trick}>")).expect(554, "5.7.1");
        }
        c.cmd("QUIT").expect(221, "2.0.0");
        // Still refused after STARTTLS without AUTH.
        let mut c = Client::connect(addr);
        c.ehlo();
        c.starttls(&ca);
        c.ehlo();
        c.cmd("MAIL FROM:<someone@sender.example>")
            .expect(250, "2.1.0");
        for trick in TRICKS {
            c.cmd(&format!("RCPT TO:<{trick}>")).expect(554, "5.7.1");
        }
        c.cmd("DATA").expect(554, "5.5.1");
        c.cmd("QUIT").expect(221, "2.0.0");
    }
    for addr in server.listeners(Role::Submission) {
        let mut c = Client::connect(addr);
        c.ehlo();
        c.cmd("MAIL FROM:<alice@example.org>").expect(530, "5.7.0");
        c.starttls(&ca);
        c.ehlo();
        c.cmd("MAIL FROM:<alice@example.org>").expect(530, "5.7.0");
        c.cmd("RCPT TO:<victim@other.example>").expect(503, "5.5.1");
    }
    for addr in server.listeners(Role::Submissions) {
        let mut c = Client::connect_tls(addr, &ca);
        assert_eq!(c.greeting.code, 220);
        c.ehlo();
        c.cmd("MAIL FROM:<alice@example.org>").expect(530, "5.7.0");
    }
    assert!(server.setup.spool().queued_ids().expect("list").is_empty());
}

#[test]
fn local_mail_from_anyone_is_stored_and_forwarded_byte_identical() {
    let hop = down_hop();
    let routes = [
        ("example.org", hop.addr, "none"),
        ("example.net", hop.addr, "none"),
    ];
    let server = TestServer::start_with("local", &config_with("", &delivery_section(&routes, "")));
    let spool = server.setup.spool();
    let mut ids = Vec::new();
    for addr in server.listeners(Role::Mta) {
        let mut c = Client::connect(addr);
        c.ehlo();
        let r = c.send_mail(
            "someone@sender.example",
            &["alice@example.org", "Bob@EXAMPLE.net", "postmaster"],
            MESSAGE,
        );
        r.expect(250, "2.0.0");
        let id = queue_id(&r);
        let (env, eml) = spool.read(&id).expect("queued");
        let (received, body) = split_received(&eml);
        assert_eq!(body, MESSAGE, "message altered in the spool");
        assert!(received.contains("with ESMTP id"), "{received}");
        assert!(received.contains("from client.example"), "{received}");
        let literal = if addr.is_ipv4() {
            "[127.0.0.1]"
        } else {
            "[IPv6:::1]"
        };
        assert!(received.contains(literal), "{received}");
        assert_eq!(env.sender, "someone@sender.example");
        let rcpts: Vec<_> = env
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.local))
            .collect();
        assert_eq!(
            rcpts,
            vec![
                ("alice@example.org", true),
                ("Bob@EXAMPLE.net", true),
                ("postmaster@example.org", true)
            ]
        );
        assert_eq!(env.user, None);
        assert!(!env.tls);
        assert_eq!(env.role, Some(smtp_relay::config::Role::Mta));
        assert_eq!(env.size, eml.len() as u64);
        c.cmd("QUIT").expect(221, "2.0.0");
        ids.push(id);
    }
    assert_eq!(spool.queued_ids().expect("list").len(), 2);
    // The next hop comes back: each message arrives once, unchanged apart
    // from our Received header, for all three recipients.
    hop.script().down = false;
    let got = hop.wait_for(2, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hop.messages().len(), 2, "duplicates at the next hop");
    for m in &got {
        let (received, body) = split_received(&m.data);
        assert_eq!(body, MESSAGE, "message altered on the way");
        assert!(
            ids.iter().any(|id| received.contains(&format!("id {id}"))),
            "{received}"
        );
        assert_eq!(m.from, "someone@sender.example");
        assert_eq!(
            m.rcpts,
            vec![
                "alice@example.org",
                "Bob@EXAMPLE.net",
                "postmaster@example.org"
            ]
        );
    }
}

#[test]
fn auth_is_offered_only_inside_tls_and_checks_passwords() {
    let server = TestServer::start("auth");
    let ca = server.setup.ca();
    for addr in server
        .listeners(Role::Submission)
        .into_iter()
        .chain(server.listeners(Role::Mta))
    {
        let mut c = Client::connect(addr);
        let ehlo = c.ehlo().text();
        assert!(ehlo.contains("STARTTLS"), "{ehlo}");
        assert!(!ehlo.contains("AUTH"), "AUTH offered in plaintext: {ehlo}");
        c.auth_plain("alice", PASSWORD).expect(538, "5.7.11");
        c.cmd("AUTH LOGIN").expect(538, "5.7.11");
        c.starttls(&ca);
        c.cmd("MAIL FROM:<alice@example.org>").expect(503, "5.5.1");
        let ehlo = c.ehlo().text();
        assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
        assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
        c.auth_plain("alice", "wrong password").expect(535, "5.7.8");
        c.auth_login("alice", "wrong password").expect(535, "5.7.8");
        c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
        c.auth_plain("alice", PASSWORD).expect(503, "5.5.1");

        let mut c = Client::connect(addr);
        c.ehlo();
        c.starttls(&ca);
        c.ehlo();
        c.auth_login("nobody", PASSWORD).expect(535, "5.7.8");
        c.auth_login("bob", "bobs password").expect(235, "2.7.0");
    }
    // Three failures end the session.
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &ca);
    c.ehlo();
    c.auth_plain("alice", "x").expect(535, "5.7.8");
    c.auth_plain("alice", "y").expect(535, "5.7.8");
    c.auth_plain("alice", "z").expect(421, "4.7.0");
    assert_eq!(c.read_reply().code, 0, "connection should be closed");
    // Cancel and garbage.
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &ca);
    c.ehlo();
    assert_eq!(c.cmd("AUTH PLAIN").code, 334);
    c.cmd("*").expect(501, "5.7.0");
    c.cmd("AUTH PLAIN !!!notbase64").expect(535, "5.7.8");
    c.cmd("AUTH DIGEST-MD5").expect(504, "5.5.4");
}

#[test]
fn authenticated_relay_is_accepted_sender_bound_and_forwarded() {
    let hop = down_hop();
    let routes = [
        ("example.org", hop.addr, "none"),
        ("other.example", hop.addr, "none"),
    ];
    let server = TestServer::start_with(
        "authrelay",
        &config_with("", &delivery_section(&routes, "")),
    );
    let ca = server.setup.ca();
    let spool = server.setup.spool();
    let mut ids = Vec::new();
    for (addr, implicit) in [
        (server.listeners(Role::Submission)[0], false),
        (server.listeners(Role::Submission)[1], false),
        (server.listeners(Role::Mta)[0], false),
        (server.listeners(Role::Submissions)[0], true),
        (server.listeners(Role::Submissions)[1], true),
    ] {
        let mut c = if implicit {
            Client::connect_tls(addr, &ca)
        } else {
            let mut c = Client::connect(addr);
            c.ehlo();
            c.starttls(&ca);
            c
        };
        let ehlo = c.ehlo().text();
        assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
        c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
        // Sender binding: only alice's own addresses.
        c.cmd("MAIL FROM:<bob@example.org>").expect(553, "5.7.1");
        c.cmd("MAIL FROM:<alice%x@example.org>")
            .expect(553, "5.7.1");
        c.cmd("MAIL FROM:<>").expect(553, "5.7.1");
        let r = c.send_mail(
            "alice.smith@EXAMPLE.NET",
            &["friend@other.example", "user%host@example.org"],
            MESSAGE,
        );
        r.expect(250, "2.0.0");
        let id = queue_id(&r);
        let (env, eml) = spool.read(&id).expect("queued");
        let (received, body) = split_received(&eml);
        assert_eq!(body, MESSAGE);
        assert!(received.contains("with ESMTPSA id"), "{received}");
        assert!(received.contains("authenticated user alice"), "{received}");
        assert!(received.contains("using TLSv1_3"), "{received}");
        assert_eq!(env.user.as_deref(), Some("alice"));
        assert!(env.tls);
        assert_eq!(env.recipients[0].address, "friend@other.example");
        assert!(!env.recipients[0].local);
        assert!(!env.recipients[1].local);
        ids.push(id);
    }
    let mut queued = spool.queued_ids().expect("list");
    queued.sort();
    ids.sort();
    assert_eq!(queued, ids);
    hop.script().down = false;
    let got = hop.wait_for(5, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hop.messages().len(), 5, "duplicates at the next hop");
    let mut arrived: Vec<String> = got
        .iter()
        .map(|m| {
            assert_eq!(m.from, "alice.smith@EXAMPLE.NET");
            assert_eq!(
                m.rcpts,
                vec!["friend@other.example", "user%host@example.org"]
            );
            let (received, body) = split_received(&m.data);
            assert_eq!(body, MESSAGE);
            received
                .split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .expect("id in Received")
                .trim_end_matches(';')
                .to_owned()
        })
        .collect();
    arrived.sort();
    assert_eq!(arrived, ids);
}

/// `senders = ["@example.net"]`: any local part of exactly that domain,
/// case-insensitive; no subdomain, no other domain, no relay trick.
#[test]
fn a_senders_domain_entry_covers_every_address_of_that_domain_only() {
    let config = config_with("", "").replace(
        "senders = [\"bob@example.org\"]",
        "senders = [\"bob@example.org\", \"@Example.NET\"]",
    );
    let server = TestServer::start_with("senderdomain", &config);
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &server.setup.ca());
    c.ehlo();
    c.auth_plain("bob", "bobs password").expect(235, "2.7.0");
    for ok in [
        "anyone@example.net",
        "Someone.Else@EXAMPLE.net",
        "bob@example.org",
    ] {
        c.cmd(&format!("MAIL FROM:<{ok}>")).expect(250, "2.1.0");
        c.cmd("RSET").expect(250, "2.0.0");
    }
    for refused in [
        "anyone@sub.example.net",
        "anyone@example.net.evil.example",
        "alice@example.org",
        "user%other.example@example.net",
        "\"quoted\"@example.net",
        "anyone@example.net.",
        "",
    ] {
        c.cmd(&format!("MAIL FROM:<{refused}>"))
            .expect(553, "5.7.1");
    }
}

#[test]
fn peers_outside_the_ranges_get_554_at_connect() {
    let dir = common::TempDir::new("gk");
    let gk = dir.path().join("gatekeeper.toml");
    std::fs::write(
        &gk,
        "xdp_mode = \"skb\"\ninterfaces = [\"lo\"]\n\n[[allow]]\ncidr = \"198.51.100.0/24\"\ncomment = \"partner\"\n\n[[allow]]\ncidr = \"::1/128\"\n",
    )
    .expect("write gk");
    let extra = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"mta\"\nallow = [\"192.0.2.0/24\"]\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"mta\"\nallow_gatekeeper = [{gk:?}]\n\n\
         [[listener]]\naddress = \"[::1]:0\"\nrole = \"mta\"\nallow_gatekeeper = [{gk:?}]\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"submissions\"\nallow = [\"10.0.0.0/8\"]\n"
    );
    let server = TestServer::start_with("ranges", &common::config_text(&extra, 10_000));
    let extra_addrs: Vec<_> = server.addrs[6..].iter().map(|(a, _)| *a).collect();
    for refused in [extra_addrs[0], extra_addrs[1]] {
        let mut c = Client::connect(refused);
        c.greeting.expect(554, "5.7.1");
        assert_eq!(c.read_reply().code, 0, "should be closed");
    }
    // ::1 is in the gatekeeper allowlist.
    let mut c = Client::connect(extra_addrs[2]);
    assert_eq!(c.greeting.code, 220);
    c.ehlo();
    // 465 outside the ranges: closed without a TLS handshake.
    let mut tcp = std::net::TcpStream::connect(extra_addrs[3]).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut tcp, &mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("got {n} bytes from a refused 465 connection"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// `gatekeeper allow add` rewrites the gatekeeper config (a new file renamed
/// over the old); the running relay admits the new peer from the next
/// connection on, and refuses it again once removed, without a restart.
#[test]
fn gatekeeper_allowlist_changes_apply_to_the_running_relay() {
    let dir = common::TempDir::new("gk-live");
    let gk = dir.path().join("gatekeeper.toml");
    let write = |text: &str| {
        let tmp = dir.path().join("gatekeeper.toml.new");
        std::fs::write(&tmp, text).expect("write gk");
        std::fs::rename(&tmp, &gk).expect("rename gk");
    };
    // A whole gatekeeper config: the relay reads it through the gatekeeper's schema.
    let partner =
        "interfaces = [\"lo\"]\n[[allow]]\ncidr = \"198.51.100.0/24\"\ncomment = \"partner\"\n";
    write(partner);
    let extra = format!(
        "[[listener]]\naddress = \"[::1]:0\"\nrole = \"mta\"\nallow_gatekeeper = [{gk:?}]\n"
    );
    let server = TestServer::start_with("gk-live", &common::config_text(&extra, 10_000));
    let addr = server.addrs[6].0;

    Client::connect(addr).greeting.expect(554, "5.7.1");

    write(&format!(
        "{partner}\n[[allow]]\ncidr = \"::1/128\"\ncomment = \"added\"\n"
    ));
    let mut c = Client::connect(addr);
    assert_eq!(c.greeting.code, 220, "{}", c.greeting.text());
    c.ehlo();
    c.cmd("QUIT");

    // A broken file keeps the ranges in force rather than locking peers out.
    write("[[allow]]\ncidr = \"not a network\"\n");
    assert_eq!(Client::connect(addr).greeting.code, 220);

    write(partner);
    Client::connect(addr).greeting.expect(554, "5.7.1");
}

#[test]
fn smuggling_bare_lf_and_size_limits() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let routes = [
        ("example.org", hop.addr, "none"),
        ("other.example", hop.addr, "none"),
    ];
    let server =
        TestServer::start_with("smuggle", &config_with("", &delivery_section(&routes, "")));
    let spool = server.setup.spool();
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    // A smuggled second message after a fake end of data.
    c.send_raw(
        b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<admin@example.org>\r\n\
          RCPT TO:<victim@other.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n",
    );
    c.read_reply().expect(550, "5.6.0");
    // The next reply is to NOOP: nothing of the smuggled text was run.
    c.cmd("NOOP").expect(250, "2.0.0");
    // Bare CR too.
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    c.send_raw(b"Subject: cr\r\n\r\nbody\r.\r\n.\r\n");
    c.read_reply().expect(550, "5.6.0");
    // Over the size limit (10 000 octets): read to the end, then 552.
    c.cmd("MAIL FROM:<a@sender.example> SIZE=20000")
        .expect(552, "5.3.4");
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
    assert_eq!(c.cmd("DATA").code, 354);
    let line = [b'x'; 98];
    for _ in 0..200 {
        c.send_raw(&line);
        c.send_raw(b"\r\n");
    }
    c.send_raw(b".\r\n");
    c.read_reply().expect(552, "5.3.4");
    // Over-long command line.
    let long = format!("NOOP {}", "a".repeat(600));
    c.cmd(&long).expect(500, "5.5.6");
    c.cmd("NOOP").expect(250, "2.0.0");
    assert!(spool.queued_ids().expect("list").is_empty());
    assert!(
        std::fs::read_dir(spool.dir().join("tmp"))
            .expect("tmp")
            .next()
            .is_none(),
        "refused messages left temp files"
    );
    // Nothing, smuggled or not, reached the next hop.
    std::thread::sleep(Duration::from_millis(300));
    assert!(hop.messages().is_empty(), "{:?}", hop.messages());
    assert!(hop.connect_times().is_empty());
}

#[test]
fn pipelining_and_protocol_errors() {
    let server = TestServer::start("pipe");
    let mut c = Client::connect(server.addr(Role::Mta));
    c.send_raw(
        b"EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\n\
          RCPT TO:<alice@example.org>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n",
    );
    assert_eq!(c.read_reply().code, 250);
    c.read_reply().expect(250, "2.1.0");
    c.read_reply().expect(250, "2.1.5");
    c.read_reply().expect(554, "5.7.1");
    assert_eq!(c.read_reply().code, 354);
    c.send_raw(b"Subject: p\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n");
    c.read_reply().expect(250, "2.0.0");
    c.read_reply().expect(250, "2.0.0");
    c.read_reply().expect(221, "2.0.0");

    let mut c = Client::connect(server.addr(Role::Mta));
    c.cmd("FOOBAR").expect(500, "5.5.2");
    c.cmd("EXPN staff").expect(502, "5.5.1");
    c.cmd("MAIL FROM:<a@sender.example>").expect(503, "5.5.1");
    assert_eq!(c.cmd("HELO client.example").code, 250);
    c.cmd("VRFY alice").expect(252, "2.5.0");
    c.cmd("HELP").expect(214, "2.0.0");
    c.cmd("RCPT TO:<alice@example.org>").expect(503, "5.5.1");
    c.cmd("MAIL FROM:<j\u{f6}rg@sender.example>")
        .expect(553, "5.6.7");
    c.cmd("MAIL FROM:<a@sender.example> SMTPUTF8")
        .expect(555, "5.6.7");
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("RCPT TO:<j\u{f6}rg@example.org>")
        .expect(553, "5.6.7");
    c.cmd("RCPT TO:<broken").expect(501, "5.1.3");
    c.cmd("DATA extra").expect(501, "5.5.4");
}

#[test]
fn starttls_command_injection_is_discarded() {
    let server = TestServer::start("inject");
    let ca = server.setup.ca();
    let mut c = Client::connect(server.addr(Role::Submission));
    c.ehlo();
    // Plaintext pipelined after STARTTLS must not be executed inside TLS.
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<alice@example.org>\r\n");
    c.read_reply().expect(220, "2.0.0");
    c.upgrade_after_220(&ca);
    // The first reply inside TLS answers this NOOP, not the injected MAIL.
    c.cmd("NOOP").expect(250, "2.0.0");
    c.ehlo();
    c.cmd("RCPT TO:<alice@example.org>").expect(503, "5.5.1");
}

/// RFC 3207: after the handshake the session starts over: no EHLO, no
/// transaction, and the EHLO reply changes (no STARTTLS, AUTH offered).
#[test]
fn session_is_reset_after_the_tls_handshake() {
    let server = TestServer::start("tlsreset");
    let ca = server.setup.ca();
    let mut c = Client::connect(server.addr(Role::Mta));
    let before = c.ehlo().text();
    assert!(
        before.contains("STARTTLS") && !before.contains("AUTH"),
        "{before}"
    );
    c.starttls(&ca);
    c.cmd("MAIL FROM:<a@sender.example>").expect(503, "5.5.1");
    let after = c.ehlo().text();
    assert!(
        !after.contains("STARTTLS") && after.contains("AUTH PLAIN LOGIN"),
        "{after}"
    );
    c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
    c.cmd("STARTTLS").expect(503, "5.5.1");
}

#[test]
fn graceful_stop_sends_421_to_idle_sessions() {
    let mut server = TestServer::start("stop");
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    server.stop().expect("server stops cleanly");
    c.read_reply().expect(421, "4.3.2");
}

#[test]
fn idle_clients_time_out_with_421() {
    let config = common::config_text("", 10_000)
        .replace("command_timeout_secs = 10", "command_timeout_secs = 1");
    let server = TestServer::start_with("timeout", &config);
    let started = std::time::Instant::now();
    let mut c = Client::connect(server.addr(Role::Mta));
    c.ehlo();
    c.read_reply().expect(421, "4.4.2");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(c.read_reply().code, 0, "connection should be closed");
}
