//! The queue envelope (`<id>.env`, JSON) and the delivery state it carries:
//! per recipient a [`RcptStatus`] and the last [`Answer`] about it, which is
//! either a next hop's [`HostResponse`] (with the host that gave it) or the
//! relay's own finding (DNS, connection, expiry).
//!
//! Version 2 stores typed fields (role, body type, answers with their host).
//! Version 1 files, written by earlier relays, are still read: see
//! [`Envelope::from_json`] and [`v1`].

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::Role;

/// Current envelope format version; bump on incompatible changes.
pub const ENVELOPE_VERSION: u32 = 2;

/// `MAIL ... BODY=` as declared by the client (RFC 6152).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr,
)]
pub enum BodyType {
    #[default]
    #[serde(rename = "7BIT")]
    #[strum(serialize = "7BIT")]
    SevenBit,
    #[serde(rename = "8BITMIME")]
    #[strum(serialize = "8BITMIME")]
    EightBitMime,
}

/// Where one recipient stands. A message leaves the spool once no
/// recipient is `pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not yet accepted by a next hop; retried.
    #[default]
    Pending,
    /// The next hop said `250` for it (after DATA).
    Delivered,
    /// Refused permanently or expired; bounced to the sender.
    Failed,
}

/// An RFC 3463 enhanced status code (`class.subject.detail`), stored as
/// its text form `"5.1.1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedCode(pub [u8; 3]);

impl EnhancedCode {
    /// From smtp-proto's `esc` field, where `[0, 0, 0]` means "none".
    pub fn from_esc(esc: [u8; 3]) -> Option<EnhancedCode> {
        (esc[0] != 0).then_some(EnhancedCode(esc))
    }

    pub fn class(self) -> u8 {
        self.0[0]
    }

    /// Parses `"5.1.1"` (with smtp-proto, like every reply we read).
    pub fn parse(text: &str) -> Option<EnhancedCode> {
        let reply = parse_reply_text(text, false)?;
        reply.message.is_empty().then_some(())?;
        EnhancedCode::from_esc(reply.esc)
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [c, s, d] = self.0;
        write!(f, "{c}.{s}.{d}")
    }
}

impl Serialize for EnhancedCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnhancedCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        EnhancedCode::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not an enhanced status code"))
        })
    }
}

/// One line of `text` as an SMTP reply parsed by smtp-proto: with its
/// three-digit code when `with_code`, else (code 0) just an optional
/// enhanced code and text.
pub(crate) fn parse_reply_text(
    text: &str,
    with_code: bool,
) -> Option<smtp_proto::Response<String>> {
    let (mut receiver, wire) = if with_code {
        (
            smtp_proto::response::parser::ResponseReceiver::default(),
            format!("{text}\r\n"),
        )
    } else {
        (
            smtp_proto::response::parser::ResponseReceiver::from_code(0),
            format!(" {text}\r\n"),
        )
    };
    receiver.parse(&mut wire.as_bytes().iter()).ok()
}

/// Longest reply text kept (and logged) per answer.
const MAX_TEXT: usize = 900;

/// Printable ASCII on one line, bounded: safe for logs, headers and DSNs.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => ' ',
            c if c.is_control() || !c.is_ascii() => '?',
            c => c,
        })
        .take(MAX_TEXT)
        .collect()
}

/// A reply from a next hop, and which host gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResponse {
    /// The address that answered.
    pub host: SocketAddr,
    pub code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<EnhancedCode>,
    /// The text after code and enhanced code; lines of a multi-line reply
    /// are joined with `\n`.
    pub text: String,
}

impl HostResponse {
    /// From a reply smtp-proto parsed.
    pub fn new(host: SocketAddr, reply: smtp_proto::Response<String>) -> HostResponse {
        HostResponse {
            host,
            code: reply.code,
            enhanced: EnhancedCode::from_esc(reply.esc),
            text: reply.message,
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for HostResponse {
    /// One line: code, enhanced code and text, control characters replaced.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {e} {}", self.code, one_line(&self.text)),
            None => write!(f, "{} {}", self.code, one_line(&self.text)),
        }
    }
}

/// Why there is no next-hop reply about a recipient: DNS trouble, no host
/// reachable, a lost connection, expiry in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFinding {
    /// The host we were talking to, if a connection was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<SocketAddr>,
    /// The status for a bounce, when the finding has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<EnhancedCode>,
    pub text: String,
}

impl fmt::Display for LocalFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{e} {}", one_line(&self.text)),
            None => f.write_str(&one_line(&self.text)),
        }
    }
}

/// The last word about a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Answer {
    /// The next hop replied.
    Remote(HostResponse),
    /// No reply from a next hop; what the relay found instead.
    Local(LocalFinding),
}

impl Answer {
    /// A local finding without a host.
    pub fn local(enhanced: Option<[u8; 3]>, text: impl Into<String>) -> Answer {
        Answer::Local(LocalFinding {
            host: None,
            enhanced: enhanced.map(EnhancedCode),
            text: text.into(),
        })
    }

    /// The host this is about, if one was reached.
    pub fn host(&self) -> Option<SocketAddr> {
        match self {
            Answer::Remote(r) => Some(r.host),
            Answer::Local(l) => l.host,
        }
    }

    pub fn enhanced(&self) -> Option<EnhancedCode> {
        match self {
            Answer::Remote(r) => r.enhanced,
            Answer::Local(l) => l.enhanced,
        }
    }

    /// The RFC 3463 status of a failed recipient in a bounce: the enhanced
    /// code when there is one (a temporary one means the message expired:
    /// `4.4.7`), else `5.0.0`.
    pub fn failure_status(&self) -> EnhancedCode {
        match self.enhanced() {
            Some(e) if e.class() == 4 => EnhancedCode([4, 4, 7]),
            Some(e) if e.class() == 5 => e,
            _ => EnhancedCode([5, 0, 0]),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Remote(r) => r.fmt(f),
            Answer::Local(l) => l.fmt(f),
        }
    }
}

/// One recipient. `local` tells whether the address is in one of our local
/// domains; `status` and `last` are the delivery state, written back
/// atomically after every attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub local: bool,
    #[serde(default)]
    pub status: RcptStatus,
    /// The last answer about this recipient (the next hop's or ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Answer>,
}

impl Recipient {
    /// A new, pending recipient.
    pub fn new(address: String, local: bool) -> Recipient {
        Recipient {
            address,
            local,
            status: RcptStatus::Pending,
            last: None,
        }
    }

    /// The last answer on one line, as logged.
    pub fn last_reply(&self) -> Option<String> {
        self.last.as_ref().map(Answer::to_string)
    }
}

/// The JSON envelope stored as `<id>.env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub id: String,
    /// Reverse-path; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Client address as seen by the listener; `None` for messages the
    /// relay made itself (bounces).
    pub client_addr: Option<SocketAddr>,
    pub helo: String,
    /// Listener address and role that accepted the message; `None` for
    /// bounces.
    pub listener: Option<SocketAddr>,
    pub role: Option<Role>,
    pub tls: bool,
    /// Authenticated user, if any.
    pub user: Option<String>,
    /// Unix seconds and the same instant in RFC 3339.
    pub received_at: u64,
    pub received_at_rfc3339: String,
    /// Size of `<id>.eml` in octets.
    pub size: u64,
    /// As declared by MAIL BODY=.
    pub body: BodyType,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds of the next attempt (0: as soon as possible).
    #[serde(default)]
    pub next_attempt: u64,
    /// Set on bounces we generate, so that the queue can tell them apart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_bounce: bool,
    /// The client was in `trusted_networks` (with `user`: a submission, so DKIM signs it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted: bool,
}

impl Envelope {
    /// Whether the sender is the null reverse-path `<>`.
    pub fn null_sender(&self) -> bool {
        self.sender.is_empty()
    }

    /// Whether the client authenticated or was in `trusted_networks`: mail we may sign.
    pub fn submitted(&self) -> bool {
        self.user.is_some() || self.trusted
    }

    /// Whether some recipient still waits for delivery.
    pub fn has_pending(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.status == RcptStatus::Pending)
    }

    /// Reads an envelope of any version this relay knows (1 or 2) and
    /// returns it in the current form; the next rewrite stores it as
    /// version 2.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Envelope> {
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let Probe { version } = serde_json::from_slice(bytes)?;
        match version {
            ENVELOPE_VERSION => Ok(serde_json::from_slice(bytes)?),
            1 => Ok(serde_json::from_slice::<v1::Envelope>(bytes)?.upgrade()),
            other => anyhow::bail!(
                "envelope version {other} is not supported (this relay reads 1 and {ENVELOPE_VERSION})"
            ),
        }
    }
}

/// Version 1 envelopes: role, body, addresses and the per-recipient
/// `reply`/`next_hop` as plain strings (`"none"` when no host answered).
pub mod v1 {
    use serde::Deserialize;

    use super::{Answer, BodyType, HostResponse, LocalFinding, RcptStatus, parse_reply_text};
    use crate::config::Role;

    #[derive(Debug, Deserialize)]
    pub struct Recipient {
        pub address: String,
        pub local: bool,
        #[serde(default)]
        pub status: RcptStatus,
        #[serde(default)]
        pub reply: Option<String>,
        #[serde(default)]
        pub next_hop: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Envelope {
        pub id: String,
        pub sender: String,
        pub recipients: Vec<Recipient>,
        pub client_addr: String,
        pub helo: String,
        pub listener: String,
        pub role: String,
        pub tls: bool,
        pub user: Option<String>,
        pub received_at: u64,
        pub received_at_rfc3339: String,
        pub size: u64,
        pub body: String,
        #[serde(default)]
        pub attempts: u32,
        #[serde(default)]
        pub next_attempt: u64,
        #[serde(default)]
        pub is_bounce: bool,
    }

    /// A v1 reply string: `"550 5.1.1 text"` from a next hop (when
    /// `next_hop` names it), else our own `"4.4.1 text"` or plain text.
    fn answer(reply: &str, next_hop: Option<&str>) -> Answer {
        let host = next_hop.and_then(|h| h.parse().ok());
        let has_code = reply.len() >= 3 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit);
        if let (true, Some(host)) = (has_code, host)
            && let Some(parsed) = parse_reply_text(reply, true)
        {
            return Answer::Remote(HostResponse::new(host, parsed));
        }
        match parse_reply_text(reply, false) {
            Some(parsed) => Answer::Local(LocalFinding {
                host,
                enhanced: super::EnhancedCode::from_esc(parsed.esc),
                text: parsed.message,
            }),
            None => Answer::Local(LocalFinding {
                host,
                enhanced: None,
                text: reply.to_owned(),
            }),
        }
    }

    impl Envelope {
        pub fn upgrade(self) -> super::Envelope {
            let role = match self.role.as_str() {
                "bounce" => None,
                name => name.parse::<Role>().ok(),
            };
            let body = match self.body.as_str() {
                "8BITMIME" => BodyType::EightBitMime,
                _ => BodyType::SevenBit,
            };
            super::Envelope {
                version: super::ENVELOPE_VERSION,
                id: self.id,
                sender: self.sender,
                recipients: self
                    .recipients
                    .into_iter()
                    .map(|r| super::Recipient {
                        last: r
                            .reply
                            .as_deref()
                            .map(|reply| answer(reply, r.next_hop.as_deref())),
                        address: r.address,
                        local: r.local,
                        status: r.status,
                    })
                    .collect(),
                client_addr: self.client_addr.parse().ok(),
                helo: self.helo,
                listener: self.listener.parse().ok(),
                role,
                tls: self.tls,
                user: self.user,
                received_at: self.received_at,
                received_at_rfc3339: self.received_at_rfc3339,
                size: self.size,
                body,
                attempts: self.attempts,
                next_attempt: self.next_attempt,
                is_bounce: self.is_bounce,
                trusted: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{
  "version": 1,
  "id": "ABC1",
  "sender": "alice@example.org",
  "recipients": [
    { "address": "gone@other.example", "local": false, "status": "failed",
      "reply": "550 5.1.1 <gone@other.example>: no such user", "next_hop": "192.0.2.25:25" },
    { "address": "later@other.example", "local": false, "status": "pending",
      "reply": "4.4.1 192.0.2.26:25: connect refused", "next_hop": "none" },
    { "address": "bob@example.org", "local": true }
  ],
  "client_addr": "192.0.2.7:50123",
  "helo": "client.example",
  "listener": "0.0.0.0:587",
  "role": "submission",
  "tls": true,
  "user": "alice",
  "received_at": 1795827723,
  "received_at_rfc3339": "2026-11-28T01:02:03Z",
  "size": 1234,
  "body": "8BITMIME",
  "attempts": 2,
  "next_attempt": 1795827800
}"#;

    #[test]
    fn version_1_is_read_into_typed_fields() {
        let env = Envelope::from_json(V1.as_bytes()).expect("v1");
        assert_eq!(env.version, ENVELOPE_VERSION);
        assert_eq!(env.role, Some(Role::Submission));
        assert_eq!(env.body, BodyType::EightBitMime);
        assert_eq!(env.client_addr, "192.0.2.7:50123".parse().ok());
        assert_eq!(env.attempts, 2);
        let Some(Answer::Remote(r)) = &env.recipients[0].last else {
            panic!("a next-hop reply: {:?}", env.recipients[0]);
        };
        assert_eq!(r.host, "192.0.2.25:25".parse().expect("addr"));
        assert_eq!((r.code, r.enhanced), (550, Some(EnhancedCode([5, 1, 1]))));
        assert_eq!(r.text, "<gone@other.example>: no such user");
        let Some(Answer::Local(l)) = &env.recipients[1].last else {
            panic!("a local finding: {:?}", env.recipients[1]);
        };
        assert_eq!((l.host, l.enhanced), (None, Some(EnhancedCode([4, 4, 1]))));
        assert_eq!(env.recipients[2].last, None);
        // Written back, it is version 2 and reads the same.
        let json = serde_json::to_vec(&env).expect("json");
        assert_eq!(Envelope::from_json(&json).expect("v2"), env);
    }

    #[test]
    fn unknown_versions_are_refused() {
        let e = Envelope::from_json(br#"{"version": 9}"#).expect_err("v9");
        assert!(e.to_string().contains("version 9"), "{e}");
    }

    #[test]
    fn answers_print_on_one_line_and_give_bounce_statuses() {
        let host: SocketAddr = "127.0.0.1:25".parse().expect("addr");
        let r = |code, esc, text: &str| {
            Answer::Remote(HostResponse::new(
                host,
                smtp_proto::Response {
                    code,
                    esc,
                    message: text.into(),
                },
            ))
        };
        let a = r(550, [5, 1, 1], "no such user\nreally");
        assert_eq!(a.to_string(), "550 5.1.1 no such user really");
        assert_eq!(a.failure_status().to_string(), "5.1.1");
        let a = r(550, [0, 0, 0], "no\x1b such user 1.2");
        assert_eq!(a.to_string(), "550 no? such user 1.2");
        assert_eq!(a.failure_status().to_string(), "5.0.0");
        assert_eq!(
            r(451, [4, 4, 1], "timeout").failure_status().to_string(),
            "4.4.7"
        );
        let expired = Answer::local(Some([4, 4, 7]), "message expired in the queue");
        assert_eq!(expired.to_string(), "4.4.7 message expired in the queue");
        assert_eq!(expired.failure_status().to_string(), "4.4.7");
        assert_eq!(
            Answer::local(None, "no code").failure_status().to_string(),
            "5.0.0"
        );
        assert_eq!(EnhancedCode::parse("5.7.1"), Some(EnhancedCode([5, 7, 1])));
        assert_eq!(EnhancedCode::parse("5.7.1 text"), None);
        assert_eq!(EnhancedCode::parse("junk"), None);
    }
}
