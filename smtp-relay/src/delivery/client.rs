//! The SMTP client side: one connection to a next hop, EHLO (HELO as a
//! fallback), STARTTLS per the hop's [`TlsMode`], AUTH PLAIN inside TLS,
//! and transactions (MAIL, RCPT..., DATA with dot-stuffing), reusable with
//! RSET. Replies are read with bounded lines and RFC 5321 4.5.3.2 waits.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use crate::config::TlsMode;
use crate::envelope::HostResponse;

/// RFC 5321 4.5.3.2.6: wait up to 10 minutes for the reply to the final dot.
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
/// Most octets of one reply we buffer (smtp-proto bounds the text at 4 KiB;
/// this bounds what we keep raw for the EHLO keywords).
const MAX_REPLY_OCTETS: usize = 64 * 1024;

/// Why a connection or transaction failed before the next hop could give
/// an answer about the recipients. All of these are temporary except a
/// permanent greeting or EHLO refusal, which [`ClientError::permanent`] tells.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{stage} refused: {reply}")]
    Refused {
        stage: &'static str,
        reply: HostResponse,
    },
    #[error("TLS required but {0}")]
    TlsRequired(String),
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(io::Error),
}

impl ClientError {
    /// Only an explicit 5xx reply is permanent.
    pub fn permanent(&self) -> bool {
        matches!(self, ClientError::Refused { reply, .. } if reply.is_permanent())
    }
}

/// The connection to the next hop: the relay's own stream type, client side.
type Stream = crate::conn::MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// What the next hop announced in its EHLO reply.
#[derive(Debug, Default, Clone)]
pub struct Extensions {
    pub starttls: bool,
    pub eight_bit: bool,
    pub size: bool,
    pub auth_plain: bool,
}

impl Extensions {
    /// The keywords of a complete `250` EHLO reply, parsed by smtp-proto.
    /// A reply it cannot parse announces nothing: we then use no extension,
    /// which every server accepts (and `tls = "required"` defers).
    fn parse(raw: &[u8]) -> Extensions {
        match smtp_proto::EhloResponse::parse(&mut raw.iter()) {
            Ok(ehlo) => Extensions {
                starttls: ehlo.has_capability(smtp_proto::EXT_START_TLS),
                eight_bit: ehlo.has_capability(smtp_proto::EXT_8BIT_MIME),
                size: ehlo.has_capability(smtp_proto::EXT_SIZE),
                auth_plain: ehlo.auth_mechanisms & smtp_proto::AUTH_PLAIN != 0,
            },
            Err(e) => {
                debug!(event = "ehlo_unparsed", error = ?e);
                Extensions::default()
            }
        }
    }
}

/// Per-connection settings.
pub struct ConnectOptions<'a> {
    /// Our name for EHLO.
    pub helo: &'a str,
    /// The next hop's name, for certificate checks with `TlsMode::Required`.
    pub server_name: &'a str,
    pub tls: TlsMode,
    pub auth: Option<&'a (String, String)>,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    /// Verifying and non-verifying TLS client configs.
    pub tls_configs: &'a TlsClients,
}

/// The two TLS client configs: one verifying certificates against the CA
/// file, one that only encrypts (opportunistic TLS, RFC 7435).
#[derive(Clone)]
pub struct TlsClients {
    pub verified: Arc<rustls::ClientConfig>,
    pub unverified: Arc<rustls::ClientConfig>,
}

/// The replies of one transaction: MAIL, each RCPT in order, and the end
/// of DATA (or the DATA command's refusal); `data` is `None` when no
/// recipient was accepted.
#[derive(Debug)]
pub struct Transaction {
    pub mail: HostResponse,
    pub rcpts: Vec<HostResponse>,
    pub data: Option<HostResponse>,
}

/// One open, greeted connection to a next hop.
pub struct SmtpClient {
    stream: Stream,
    buf: Vec<u8>,
    peer: SocketAddr,
    ext: Extensions,
    reply_timeout: Duration,
    tls: bool,
    /// The negotiated TLS version, e.g. `TLSv1_3`.
    tls_version: Option<&'static str>,
}

impl SmtpClient {
    /// Connects, reads the greeting, says EHLO, runs STARTTLS and AUTH as
    /// configured.
    pub async fn connect(
        addr: SocketAddr,
        opts: &ConnectOptions<'_>,
    ) -> Result<SmtpClient, ClientError> {
        let tcp = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(|e| ClientError::Connect(addr, e))?;
        let _ = tcp.set_nodelay(true);
        let mut c = SmtpClient {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(1024),
            peer: addr,
            ext: Extensions::default(),
            reply_timeout: opts.reply_timeout,
            tls: false,
            tls_version: None,
        };
        let greeting = c.read_reply("greeting", opts.reply_timeout).await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        c.hello(opts.helo).await?;
        match opts.tls {
            TlsMode::None => {}
            // Policy modes are resolved by `delivery::tls_policy` before connecting; given
            // here unresolved (recipient probes), they are opportunistic.
            TlsMode::Opportunistic | TlsMode::MtaSts | TlsMode::Dane if !c.ext.starttls => {}
            TlsMode::Required if !c.ext.starttls => {
                return Err(ClientError::TlsRequired("STARTTLS not offered".into()));
            }
            mode => c.starttls(opts, mode).await?,
        }
        if let Some((user, password)) = opts.auth {
            c.auth_plain(user, password).await?;
        }
        Ok(c)
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn tls_version(&self) -> Option<&'static str> {
        self.tls_version
    }

    async fn hello(&mut self, helo: &str) -> Result<(), ClientError> {
        self.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let (reply, raw) = self.read_reply_raw("EHLO", self.reply_timeout).await?;
        if reply.code == 250 {
            self.ext = Extensions::parse(&raw);
            return Ok(());
        }
        let reply = self.command(&format!("HELO {helo}"), "HELO").await?;
        if reply.code != 250 {
            return Err(ClientError::Refused {
                stage: "HELO",
                reply,
            });
        }
        self.ext = Extensions::default();
        Ok(())
    }

    async fn starttls(
        &mut self,
        opts: &ConnectOptions<'_>,
        mode: TlsMode,
    ) -> Result<(), ClientError> {
        let reply = self.command("STARTTLS", "STARTTLS").await?;
        if reply.code != 220 {
            if mode == TlsMode::Required {
                return Err(ClientError::TlsRequired(format!(
                    "STARTTLS refused: {reply}"
                )));
            }
            return Ok(());
        }
        if !self.buf.is_empty() {
            return Err(ClientError::Protocol(
                "data pipelined after the 220 to STARTTLS".into(),
            ));
        }
        let (config, name) = match mode {
            TlsMode::Required => (
                opts.tls_configs.verified.clone(),
                rustls::pki_types::ServerName::try_from(opts.server_name.to_owned()).map_err(
                    |_| ClientError::TlsRequired(format!("bad server name {:?}", opts.server_name)),
                )?,
            ),
            _ => (
                opts.tls_configs.unverified.clone(),
                rustls::pki_types::ServerName::try_from(opts.server_name.to_owned())
                    .unwrap_or_else(|_| {
                        rustls::pki_types::ServerName::IpAddress(self.peer.ip().into())
                    }),
            ),
        };
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Switching) else {
            return Err(ClientError::Protocol("TLS already active".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.reply_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Timeout("TLS handshake"))?
            .map_err(ClientError::TlsHandshake)?;
        self.tls_version = tls.get_ref().1.protocol_version().and_then(|v| v.as_str());
        self.stream = Stream::Tls(Box::new(tls));
        self.tls = true;
        self.hello(opts.helo).await
    }

    async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        if !self.tls {
            return Err(ClientError::TlsRequired(
                "AUTH configured and the session is not encrypted".into(),
            ));
        }
        if !self.ext.auth_plain {
            return Err(ClientError::Protocol("AUTH PLAIN not offered".into()));
        }
        let token = crate::auth::encode(format!("\0{user}\0{password}").as_bytes());
        let reply = self.command(&format!("AUTH PLAIN {token}"), "AUTH").await?;
        if reply.code != 235 {
            return Err(ClientError::Refused {
                stage: "AUTH",
                reply,
            });
        }
        Ok(())
    }

    /// One transaction. `message` has CRLF line endings; it is dot-stuffed
    /// here. Network trouble is `Err`; replies (good or bad) are `Ok`.
    pub async fn send(
        &mut self,
        sender: &str,
        recipients: &[&str],
        eight_bit: bool,
        message: &[u8],
    ) -> Result<Transaction, ClientError> {
        let mut mail = format!("MAIL FROM:<{sender}>");
        if self.ext.size {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        if eight_bit && self.ext.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        let mail = self.command(&mail, "MAIL").await?;
        if mail.code != 250 {
            return Ok(Transaction {
                mail,
                rcpts: Vec::new(),
                data: None,
            });
        }
        let mut rcpts = Vec::with_capacity(recipients.len());
        for r in recipients {
            rcpts.push(self.command(&format!("RCPT TO:<{r}>"), "RCPT").await?);
        }
        if !rcpts.iter().any(|r| r.code == 250 || r.code == 251) {
            return Ok(Transaction {
                mail,
                rcpts,
                data: None,
            });
        }
        let go = self.command("DATA", "DATA").await?;
        if go.code != 354 {
            return Ok(Transaction {
                mail,
                rcpts,
                data: Some(go),
            });
        }
        let wire = dot_stuff(message);
        self.write(&wire).await?;
        let end = self.read_reply("end of data", DATA_END_TIMEOUT).await?;
        Ok(Transaction {
            mail,
            rcpts,
            data: Some(end),
        })
    }

    /// RSET before reusing the connection; `Err` means do not reuse it.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        let reply = self.command("RSET", "RSET").await?;
        if reply.code != 250 {
            return Err(ClientError::Refused {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    /// QUIT and close, best effort.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.write(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply("QUIT", Duration::from_secs(5)).await;
            }
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        tokio::time::timeout(self.reply_timeout, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout("write"))??;
        Ok(())
    }

    async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<HostResponse, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(stage, self.reply_timeout).await
    }

    async fn read_reply(
        &mut self,
        stage: &'static str,
        wait: Duration,
    ) -> Result<HostResponse, ClientError> {
        Ok(self.read_reply_raw(stage, wait).await?.0)
    }

    /// Reads one reply with smtp-proto's incremental parser; also returns
    /// the reply's raw octets (for the EHLO keywords). Bytes after the
    /// reply stay buffered.
    async fn read_reply_raw(
        &mut self,
        stage: &'static str,
        wait: Duration,
    ) -> Result<(HostResponse, Vec<u8>), ClientError> {
        tokio::time::timeout(wait, async {
            let mut receiver = ResponseReceiver::default();
            let mut raw = Vec::new();
            loop {
                if !self.buf.is_empty() {
                    let mut bytes = self.buf.iter();
                    let parsed = receiver.parse(&mut bytes);
                    let used = self.buf.len() - bytes.len();
                    raw.extend(self.buf.drain(..used));
                    match parsed {
                        Ok(reply) if (200..600).contains(&reply.code) => {
                            return Ok((HostResponse::new(self.peer, reply), raw));
                        }
                        Ok(reply) => {
                            return Err(ClientError::Protocol(format!(
                                "bad reply code {}",
                                reply.code
                            )));
                        }
                        Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                        Err(e) => {
                            return Err(ClientError::Protocol(format!("bad reply: {e:?}")));
                        }
                    }
                    if raw.len() > MAX_REPLY_OCTETS {
                        return Err(ClientError::Protocol("reply too long".into()));
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(ClientError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by the next hop",
                    )));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(stage))?
    }

    /// Recipient verification (`[recipients] source = "verify"`): `MAIL FROM:<>`, `RCPT TO`,
    /// then `RSET`, never DATA. Returns the reply to RCPT. A refused MAIL says nothing about
    /// the recipient, so it is an `Err` (`Refused`), as is any trouble on the connection.
    pub async fn probe(&mut self, recipient: &str) -> Result<HostResponse, ClientError> {
        let mail = self.command("MAIL FROM:<>", "MAIL").await?;
        if mail.code != 250 {
            return Err(ClientError::Refused {
                stage: "MAIL",
                reply: mail,
            });
        }
        let rcpt = self
            .command(&format!("RCPT TO:<{recipient}>"), "RCPT")
            .await?;
        // The answer is in; a hop that fumbles RSET changes nothing about it.
        let _ = self.rset().await;
        Ok(rcpt)
    }
}

/// RFC 5321 4.5.2 transparency plus the terminating `.CRLF`. The stored
/// message uses CRLF line endings; a missing final CRLF is added.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut at_line_start = true;
    let mut rest = message;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(pos) => {
                out.extend_from_slice(&rest[..pos + 2]);
                rest = &rest[pos + 2..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                rest = &[];
            }
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\nx"), b"..\r\nx\r\n.\r\n");
        // A dot not at a line start is left alone.
        assert_eq!(dot_stuff(b"a.b\r\n"), b"a.b\r\n.\r\n");
    }

    #[test]
    fn extensions_from_the_ehlo_reply() {
        let e = Extensions::parse(
            b"250-mx.example\r\n250-STARTTLS\r\n250-auth login plain\r\n250-SIZE 1000\r\n250 8BITMIME\r\n",
        );
        assert!(e.starttls && e.auth_plain && e.size && e.eight_bit);
        let e = Extensions::parse(b"250-mx.example\r\n250 AUTH LOGIN\r\n");
        assert!(!e.starttls && !e.auth_plain && !e.size && !e.eight_bit);
    }

    /// Replies come in pieces; the parser keeps what follows the reply.
    #[tokio::test]
    async fn replies_are_read_across_reads_and_keep_what_follows() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            for part in [
                &b"550-5.1.1 no such"[..],
                b" user\r\n550 5.1.1 really\r\n220 next",
            ] {
                s.write_all(part).await.expect("write");
                s.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s.write_all(b"\r\n999 bad\r\n").await.expect("write");
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut c = SmtpClient {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            peer: addr,
            ext: Extensions::default(),
            reply_timeout: Duration::from_secs(5),
            tls: false,
            tls_version: None,
        };
        let r = c
            .read_reply("test", Duration::from_secs(5))
            .await
            .expect("reply");
        assert_eq!(r.host, addr);
        assert_eq!(r.to_string(), "550 5.1.1 no such user really");
        assert!(r.is_permanent() && !r.is_positive());
        let r = c
            .read_reply("test", Duration::from_secs(5))
            .await
            .expect("reply");
        assert_eq!((r.code, r.text.as_str()), (220, "next"));
        let e = c
            .read_reply("test", Duration::from_secs(5))
            .await
            .expect_err("999");
        assert!(matches!(e, ClientError::Protocol(_)), "{e}");
        server.await.expect("server");
    }
}
