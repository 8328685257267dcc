//! Bounces: RFC 3464 delivery status notifications (multipart/report,
//! RFC 6522) for the recipients that failed, sent from the null sender to
//! the original sender, with the original headers attached.

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
    let failed: Vec<&Recipient> = env
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Failed)
        .collect();
    if failed.is_empty() {
        return None;
    }
    let boundary = format!("{}/{}", env.id, hostname);
    let date = crate::clock::rfc5322(now);
    let mut human = String::new();
    human.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message (queue id {}) could not be delivered to one or more\r\n\
         recipients. It is attached below.\r\n\r\n",
        env.id
    ));
    let mut per_rcpt = String::new();
    let unknown = Answer::local(Some([5, 0, 0]), "delivery failed");
    for r in &failed {
        let answer = r.last.as_ref().unwrap_or(&unknown);
        let reply = answer.to_string();
        human.push_str(&format!("<{}>: {}\r\n", field(&r.address), field(&reply)));
        per_rcpt.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            field(&r.address),
            answer.failure_status()
        ));
        if let Some(host) = answer.host() {
            per_rcpt.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        let kind = match answer {
            Answer::Remote(_) => "smtp",
            Answer::Local(_) => "x-local",
        };
        per_rcpt.push_str(&format!("Diagnostic-Code: {kind}; {}\r\n", field(&reply)));
        per_rcpt.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }
    let mut out = Vec::new();
    out.extend_from_slice(
        format!(
            "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
             To: <{sender}>\r\n\
             Subject: Undelivered Mail Returned to Sender\r\n\
             Date: {date}\r\n\
             Message-ID: <{id}.bounce@{hostname}>\r\n\
             Auto-Submitted: auto-replied\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status;\r\n\
             \tboundary=\"{boundary}\"\r\n\
             \r\n\
             This is a MIME-encapsulated message.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             Content-Description: Notification\r\n\
             \r\n\
             {human}\
             \r\n\
             --{boundary}\r\n\
             Content-Type: message/delivery-status\r\n\
             Content-Description: Delivery report\r\n\
             \r\n\
             Reporting-MTA: dns; {hostname}\r\n\
             X-Queue-ID: {id}\r\n\
             Arrival-Date: {arrival}\r\n\
             {per_rcpt}\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/rfc822-headers\r\n\
             Content-Description: Undelivered message headers\r\n\
             \r\n",
            sender = field(&env.sender),
            id = env.id,
            arrival = crate::clock::rfc5322(env.received_at),
        )
        .as_bytes(),
    );
    out.extend_from_slice(headers(message));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
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
    };
    Some((bounce_env, out))
}

#[cfg(test)]
mod tests {
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
        assert!(text.contains("multipart/report; report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; gone@other.example\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1"));
        assert!(text.contains("Remote-MTA: dns; 127.0.0.1:25"));
        assert!(!text.contains("ok@other.example"), "only failed recipients");
        assert!(text.contains("Subject: hello\r\n"));
        assert!(!text.contains("secret body"), "headers only");
        assert!(text.ends_with("--ABC123/mx.example.org--\r\n"));
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
}
