//! SMTP smuggling: every published fake end-of-data variant, sent with a
//! smuggled second transaction behind it. The relay must refuse the
//! message with the bare line ending as a whole, run none of the smuggled
//! commands, and accept the clean message the client sends next: exactly
//! one message per variant reaches the next hop, and it is the clean one.

mod common;

use std::time::Duration;

use common::nexthop::{NextHop, Script};
use common::{Client, TestServer, config_with, delivery_section, split_received};
use smtp_relay::config::Role;

/// Fake ends: none contains a real CRLF . CRLF (`\r\r\n.\r\n` does, so
/// it is a genuine end of data and not in this list).
const VARIANTS: &[&[u8]] = &[
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\r\n",
    b"\r.\n",
    b"\n.\n\r",
    b"\r\n.\r\r\n",
    b"\r\n.\n\r\n",
    b"\n\r.\r\n",
    b"\r\n\n.\r\n",
];

#[test]
fn every_fake_end_of_data_is_refused_and_nothing_is_smuggled() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let routes = [
        ("example.org", hop.addr, "none"),
        ("other.example", hop.addr, "none"),
    ];
    let server = TestServer::start_with(
        "smuggling",
        &config_with("", &delivery_section(&routes, "")),
    );
    for (i, variant) in VARIANTS.iter().enumerate() {
        let mut c = Client::connect(server.addr(Role::Mta));
        c.ehlo();
        c.cmd("MAIL FROM:<a@sender.example>").expect(250, "2.1.0");
        c.cmd("RCPT TO:<alice@example.org>").expect(250, "2.1.5");
        assert_eq!(c.cmd("DATA").code, 354);
        let mut data = format!("Subject: variant {i}\r\n\r\nfirst part").into_bytes();
        data.extend_from_slice(variant);
        data.extend_from_slice(
            b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n\
              Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\n",
        );
        c.send_raw(&data);
        let r = c.read_reply();
        assert_eq!((r.code, i), (550, i), "variant {variant:?}: {r:?}");
        // The next reply answers NOOP: no smuggled command ran.
        let r = c.cmd("NOOP");
        assert_eq!(r.text(), "2.0.0 OK", "variant {variant:?}");
        let clean = format!("Subject: variant {i}\r\n\r\nclean body {i}\r\n");
        c.send_mail("a@sender.example", &["alice@example.org"], clean.as_bytes())
            .expect(250, "2.0.0");
        c.cmd("QUIT");
        let got = hop.wait_for(i + 1, Duration::from_secs(15));
        let m = &got[i];
        assert_eq!(m.from, "a@sender.example", "variant {variant:?}");
        assert_eq!(m.rcpts, vec!["alice@example.org"], "variant {variant:?}");
        assert_eq!(
            split_received(&m.data).1,
            clean.as_bytes(),
            "variant {variant:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let all = hop.messages();
    assert_eq!(all.len(), VARIANTS.len(), "exactly one message per variant");
    for m in &all {
        let text = String::from_utf8_lossy(&m.data);
        assert!(!text.contains("smuggled"), "{text}");
        assert!(!m.rcpts.iter().any(|r| r.contains("victim")));
    }
}
