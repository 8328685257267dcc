//! Bounces: RFC 3464 delivery status notifications (multipart/report,
//! RFC 6522) for the recipients that failed, sent from the null sender to
//! the original sender, with the original headers attached.

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

/// The RFC 3463 status for a failure reply: its enhanced code when it has
/// one, else `5.0.0` (or `4.4.7` for an expired message).
fn status(reply: &str) -> String {
    let is_code = |word: &str| {
        let parts: Vec<&str> = word.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    // "550 5.1.1 ..." from a next hop, or "4.4.7 ..." from us.
    let mut words = reply.split(' ');
    let first = words.next().unwrap_or("");
    let word = if is_code(first) {
        Some(first)
    } else {
        words.next().filter(|w| is_code(w))
    };
    match word {
        // A temporary code that led to a failure means expiry.
        Some(w) if w.starts_with('4') => "4.4.7".into(),
        Some(w) => w.to_owned(),
        None => "5.0.0".into(),
    }
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
    for r in &failed {
        let reply = r.reply.as_deref().unwrap_or("5.0.0 delivery failed");
        human.push_str(&format!("<{}>: {}\r\n", field(&r.address), field(reply)));
        per_rcpt.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            field(&r.address),
            status(reply)
        ));
        if let Some(hop) = &r.next_hop
            && hop != "none"
        {
            per_rcpt.push_str(&format!("Remote-MTA: dns; {}\r\n", field(hop)));
        }
        if reply
            .get(..3)
            .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
        {
            per_rcpt.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", field(reply)));
        } else {
            per_rcpt.push_str(&format!("Diagnostic-Code: x-local; {}\r\n", field(reply)));
        }
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
        client_addr: "local".into(),
        helo: hostname.to_owned(),
        listener: "queue".into(),
        role: "bounce".into(),
        tls: false,
        user: None,
        received_at: now,
        received_at_rfc3339: crate::clock::rfc3339(now),
        size: 0,
        body: "8BITMIME".into(),
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
        rcpts[0].reply = Some("550 5.1.1 <gone@other.example>: no such user".into());
        rcpts[0].next_hop = Some("127.0.0.1:25".into());
        rcpts[1].status = RcptStatus::Delivered;
        Envelope {
            version: 1,
            id: "ABC123".into(),
            sender: "alice@example.org".into(),
            recipients: rcpts,
            client_addr: "127.0.0.1:1".into(),
            helo: "c".into(),
            listener: "127.0.0.1:25".into(),
            role: "mta".into(),
            tls: false,
            user: None,
            received_at: 0,
            received_at_rfc3339: String::new(),
            size: 0,
            body: "7BIT".into(),
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
        assert_eq!(status("451 4.4.1 timeout"), "4.4.7");
        assert_eq!(status("no code"), "5.0.0");
        assert_eq!(status("4.4.7 message expired in the queue"), "4.4.7");
        assert_eq!(status("554 5.7.1 <x>: relay denied"), "5.7.1");
    }
}
