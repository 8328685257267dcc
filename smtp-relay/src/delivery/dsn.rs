//! Bounces: RFC 3464 delivery status notifications for the recipients that
//! failed, in an RFC 6522 `multipart/report` built with mail-builder (which
//! picks each part's encoding and a random boundary), sent from the null
//! sender to the original sender with the original headers attached.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::MimePart;

use crate::envelope::{Answer, BodyType};
use crate::spool::{ENVELOPE_VERSION, Envelope, RcptStatus, Recipient};

/// Lines in the report are kept under this many octets.
const MAX_FIELD: usize = 900;

/// Printable ASCII only, one line, bounded.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_FIELD)
        .collect()
}

/// The header block of a message (up to the first empty line).
fn headers(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(pos) => &message[..pos + 2],
        None => message,
    }
}

/// A failed recipient and the answer that failed it.
struct Failure<'a> {
    address: &'a str,
    answer: &'a Answer,
}

/// Builds the bounce for the failed recipients of `env`. Returns `None`
/// when nothing failed or the sender is null (never bounce a bounce).
pub fn bounce(
    hostname: &str,
    local_domains: &[String],
    env: &Envelope,
    message: &[u8],
    now: u64,
) -> Option<(Envelope, Vec<u8>)> {
    if env.null_sender() {
        return None;
    }
    let unknown = Answer::local(Some([5, 0, 0]), "delivery failed");
    let failed: Vec<Failure> = env
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Failed)
        .map(|r| Failure {
            address: &r.address,
            answer: r.last.as_ref().unwrap_or(&unknown),
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    let report = report(hostname, env, &failed, headers(message), now);
    let sender_domain = super::route::domain_of(&env.sender).to_ascii_lowercase();
    let bounce_env = Envelope {
        version: ENVELOPE_VERSION,
        id: String::new(),
        sender: String::new(),
        recipients: vec![Recipient::new(
            env.sender.clone(),
            local_domains.contains(&sender_domain),
        )],
        client_addr: None,
        helo: hostname.to_owned(),
        listener: None,
        role: None,
        tls: false,
        user: None,
        received_at: now,
        received_at_rfc3339: crate::clock::rfc3339(now),
        size: 0,
        body: BodyType::EightBitMime,
        attempts: 0,
        next_attempt: 0,
        is_bounce: true,
        trusted: false,
    };
    Some((bounce_env, report))
}

/// The whole message: headers and the three parts of the report.
fn report(
    hostname: &str,
    env: &Envelope,
    failed: &[Failure],
    original_headers: &[u8],
    now: u64,
) -> Vec<u8> {
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "us-ascii"),
                human_readable(hostname, env, failed),
            )
            .header("Content-Description", Text::new("Notification")),
            // Binary contents, so no charset is added; 7bit because every
            // field is printable ASCII on lines under 1000 octets (RFC 3464
            // 2.1.2 wants no other encoding here).
            MimePart::new(
                "message/delivery-status",
                delivery_status(hostname, env, failed, now).into_bytes(),
            )
            .header("Content-Description", Text::new("Delivery report"))
            .transfer_encoding("7bit"),
            // A text type: mail-builder keeps plain headers as they are and
            // encodes 8-bit or overlong lines (quoted-printable).
            MimePart::new("text/rfc822-headers", original_headers.to_vec()).header(
                "Content-Description",
                Text::new("Undelivered message headers"),
            ),
        ],
    );
    let mut out = Vec::new();
    MessageBuilder::new()
        .from((
            "Mail Delivery System".to_owned(),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(field(&env.sender))
        .subject("Undelivered Mail Returned to Sender")
        .date(now)
        .message_id(format!("{}.bounce@{hostname}", env.id))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(body)
        .serialize(&mut out);
    out
}

/// The first part: what happened, for people.
fn human_readable(hostname: &str, env: &Envelope, failed: &[Failure]) -> String {
    let mut text = format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message (queue id {}) could not be delivered to one or more\r\n\
         recipients. Its headers are attached below.\r\n\r\n",
        env.id
    );
    for f in failed {
        text.push_str(&format!(
            "<{}>: {}\r\n",
            field(f.address),
            field(&f.answer.to_string())
        ));
    }
    text
}

/// The second part (RFC 3464 2.2, 2.3): per-message fields, then one group
/// of fields per failed recipient, each group after an empty line.
fn delivery_status(hostname: &str, env: &Envelope, failed: &[Failure], now: u64) -> String {
    let date = crate::clock::rfc5322(now);
    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\n\
         X-Queue-ID: {}\r\n\
         Arrival-Date: {}\r\n",
        env.id,
        crate::clock::rfc5322(env.received_at),
    );
    for f in failed {
        let reply = field(&f.answer.to_string());
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            field(f.address),
            f.answer.failure_status()
        ));
        if let Some(host) = f.answer.host() {
            status.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        let kind = match f.answer {
            Answer::Remote(_) => "smtp",
            Answer::Local(_) => "x-local",
        };
        status.push_str(&format!("Diagnostic-Code: {kind}; {reply}\r\n"));
        status.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }
    status
}

#[cfg(test)]
mod tests {
    use mail_parser::{MessageParser, MimeHeaders as _};

    use super::*;

    fn env() -> Envelope {
        let mut rcpts = vec![
            Recipient::new("gone@other.example".into(), false),
            Recipient::new("ok@other.example".into(), false),
        ];
        rcpts[0].status = RcptStatus::Failed;
        let reply =
            crate::envelope::parse_reply_text("550 5.1.1 <gone@other.example>: no such user", true)
                .expect("reply");
        rcpts[0].last = Some(Answer::Remote(crate::envelope::HostResponse::new(
            "127.0.0.1:25".parse().expect("addr"),
            reply,
        )));
        rcpts[1].status = RcptStatus::Delivered;
        Envelope {
            version: 1,
            id: "ABC123".into(),
            sender: "alice@example.org".into(),
            recipients: rcpts,
            client_addr: "127.0.0.1:1".parse().ok(),
            helo: "c".into(),
            listener: "127.0.0.1:25".parse().ok(),
            role: Some(crate::config::Role::Mta),
            tls: false,
            user: None,
            received_at: 0,
            received_at_rfc3339: String::new(),
            size: 0,
            body: BodyType::SevenBit,
            attempts: 1,
            next_attempt: 0,
            is_bounce: false,
            trusted: false,
        }
    }

    #[test]
    fn report_structure() {
        let msg = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nsecret body\r\n";
        let (benv, bytes) =
            bounce("mx.example.org", &["example.org".into()], &env(), msg, 100).expect("bounce");
        let text = String::from_utf8(bytes).expect("ascii");
        assert!(benv.sender.is_empty() && benv.is_bounce);
        assert_eq!(benv.recipients[0].address, "alice@example.org");
        assert!(benv.recipients[0].local);
        let parsed = MessageParser::default()
            .parse(text.as_bytes())
            .expect("parses");
        let ctype = parsed.content_type().expect("content type");
        assert_eq!(
            (ctype.ctype(), ctype.subtype()),
            ("multipart", Some("report"))
        );
        assert_eq!(ctype.attribute("report-type"), Some("delivery-status"));
        let boundary = ctype.attribute("boundary").expect("boundary");
        assert!(text.contains("Final-Recipient: rfc822; gone@other.example\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"));
        assert!(text.contains("Remote-MTA: dns; 127.0.0.1:25"));
        assert!(!text.contains("ok@other.example"), "only failed recipients");
        assert!(text.contains("Subject: hello\r\n"));
        assert!(!text.contains("secret body"), "headers only");
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert!(text.lines().all(|l| l.len() < 998));
        // Never bounce a bounce.
        let mut null = env();
        null.sender.clear();
        assert!(bounce("h", &[], &null, msg, 0).is_none());
        // Statuses of other answers: a temporary code that led to a failure
        // means expiry; no code is 5.0.0.
        let host = "127.0.0.1:25".parse().expect("addr");
        let status = |reply: &str| {
            let parsed = crate::envelope::parse_reply_text(reply, true).expect("reply");
            Answer::Remote(crate::envelope::HostResponse::new(host, parsed))
                .failure_status()
                .to_string()
        };
        assert_eq!(status("451 4.4.1 timeout"), "4.4.7");
        assert_eq!(status("550 no code"), "5.0.0");
        assert_eq!(
            Answer::local(Some([4, 4, 7]), "message expired in the queue")
                .failure_status()
                .to_string(),
            "4.4.7"
        );
        assert_eq!(status("554 5.7.1 <x>: relay denied"), "5.7.1");
    }

    /// The parts of a parsed bounce: (type/subtype, decoded contents).
    fn parts(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let parsed = MessageParser::default().parse(bytes).expect("parses");
        parsed
            .parts
            .iter()
            .skip(1) // the multipart/report itself
            .map(|part| {
                let ct = part.content_type().expect("content type");
                (
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()),
                    part.contents().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn bounce_parses_as_an_rfc3464_report() {
        let msg = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nsecret body\r\n";
        let mut env = env();
        // A second failure, found by the relay itself (no host answered).
        env.recipients
            .push(Recipient::new("late@other.example".into(), false));
        env.recipients[2].status = RcptStatus::Failed;
        env.recipients[2].last = Some(Answer::local(Some([4, 4, 7]), "message expired"));
        let (_, bytes) =
            bounce("mx.example.org", &["example.org".into()], &env, msg, 100).expect("bounce");
        let parsed = MessageParser::default().parse(&bytes).expect("parses");
        assert_eq!(
            parsed
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("MAILER-DAEMON@mx.example.org")
        );
        assert_eq!(
            parsed
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("alice@example.org")
        );
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(parsed.message_id(), Some("ABC123.bounce@mx.example.org"));
        assert_eq!(
            parsed.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(parsed.date().map(|d| d.to_timestamp()), Some(100));

        let parts = parts(&bytes);
        let types: Vec<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        let human = String::from_utf8_lossy(&parts[0].1);
        assert!(human.contains("<gone@other.example>: 550 5.1.1"), "{human}");
        assert!(human.contains("<late@other.example>:"), "{human}");

        // Per-message fields, then one group per failed recipient.
        let status = String::from_utf8(parts[1].1.clone()).expect("ascii");
        let groups: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 3, "{status}");
        assert!(groups[0].starts_with("Reporting-MTA: dns; mx.example.org\r\n"));
        assert!(groups[0].contains("X-Queue-ID: ABC123"));
        assert!(groups[0].contains("Arrival-Date: "));
        assert!(groups[1].starts_with("Final-Recipient: rfc822; gone@other.example\r\n"));
        for needle in [
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; 127.0.0.1:25",
            "Diagnostic-Code: smtp; 550 5.1.1",
            "Last-Attempt-Date: ",
        ] {
            assert!(groups[1].contains(needle), "{needle} in {}", groups[1]);
        }
        assert!(groups[2].starts_with("Final-Recipient: rfc822; late@other.example\r\n"));
        assert!(groups[2].contains("Status: 4.4.7"));
        assert!(groups[2].contains("Diagnostic-Code: x-local; "));
        assert!(!groups[2].contains("Remote-MTA"), "no host answered");

        // The original headers, exactly, and nothing of the body.
        assert_eq!(parts[2].1, b"Subject: hello\r\nFrom: alice@example.org\r\n");
    }

    #[test]
    fn eight_bit_and_long_headers_are_encoded_and_come_back_intact() {
        let long = "x".repeat(1500);
        let msg =
            format!("Subject: Gr\u{fc}\u{df}e aus K\u{f6}ln\r\nX-Long: {long}\r\n\r\nbody\r\n");
        let (_, bytes) =
            bounce("mx.example.org", &[], &env(), msg.as_bytes(), 100).expect("bounce");
        assert!(bytes.is_ascii(), "the whole bounce is 7-bit");
        let text = String::from_utf8(bytes.clone()).expect("ascii");
        assert!(text.lines().all(|l| l.len() < 998));
        let parts = parts(&bytes);
        assert_eq!(parts[2].0, "text/rfc822-headers");
        let (headers, _) = msg.split_once("\r\n\r\n").expect("blank line");
        assert_eq!(parts[2].1, format!("{headers}\r\n").into_bytes());
    }

    #[test]
    fn peer_text_cannot_break_the_report() {
        // An answer text with CR, LF and a fake field stays one field.
        let mut env = env();
        env.recipients[0].last = Some(Answer::local(
            Some([5, 1, 1]),
            "no\r\n--x--\r\nAction: delivered",
        ));
        let (_, bytes) =
            bounce("mx.example.org", &[], &env, b"Subject: s\r\n\r\n", 1).expect("bounce");
        let parts = parts(&bytes);
        assert_eq!(parts.len(), 3);
        let status = String::from_utf8_lossy(&parts[1].1);
        let actions: Vec<&str> = status
            .lines()
            .filter(|l| l.starts_with("Action:"))
            .collect();
        assert_eq!(actions, ["Action: failed"], "{status}");
    }
}
