//! A capturing next-hop SMTP server written for the tests (blocking, one
//! thread per connection, independent of the relay's code): ESMTP with
//! optional STARTTLS and AUTH PLAIN, scripted refusals, and a record of
//! every message it took with `250`.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The next hop's side of a connection.
type Stream = super::Stream<rustls::ServerConnection>;

/// One message taken with 250.
#[derive(Debug, Clone)]
pub struct Captured {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth: Option<String>,
    /// Which connection (1-based) carried it.
    pub connection: usize,
}

/// What the server does.
#[derive(Default)]
pub struct Script {
    /// `421` at connect (the next hop is "down"); connections are counted.
    pub down: bool,
    /// RCPT addresses (exact) and the reply they get, e.g. "550 5.1.1 no".
    pub refuse_rcpt: Vec<(String, String)>,
    /// Replies to successive ends of DATA; 250 once empty.
    pub data_replies: VecDeque<String>,
    /// Offer STARTTLS with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require AUTH PLAIN with these credentials before MAIL.
    pub auth: Option<(String, String)>,
    /// The only recipients that exist (compared without case); others get `550 5.1.1`.
    /// `None`: every recipient exists.
    pub known_rcpts: Option<Vec<String>>,
}

struct Shared {
    script: Mutex<Script>,
    captured: Mutex<Vec<Captured>>,
    /// Times of every accepted connection.
    connects: Mutex<Vec<Instant>>,
    data_ends: AtomicUsize,
    /// Every RCPT address, in order (probes included).
    rcpts_seen: Mutex<Vec<String>>,
    /// Every MAIL FROM address, in order.
    mails_seen: Mutex<Vec<String>>,
    stop: AtomicBool,
}

pub struct NextHop {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A rustls server config from the test certificates in `dir`.
pub fn tls_config(dir: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).expect("key");
    server_config(certs, key)
}

/// A rustls server config (ring) presenting `certs`.
pub fn server_config(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::ServerConfig> {
    Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config"),
    )
}

impl NextHop {
    /// Listens on `bind` (e.g. "127.0.0.1:0").
    pub fn start(bind: &str, script: Script) -> NextHop {
        let listener = TcpListener::bind(bind).expect("bind next hop");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            captured: Mutex::new(Vec::new()),
            connects: Mutex::new(Vec::new()),
            data_ends: AtomicUsize::new(0),
            rcpts_seen: Mutex::new(Vec::new()),
            mails_seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let n = {
                    let mut c = s.connects.lock().expect("lock");
                    c.push(Instant::now());
                    c.len()
                };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = session(stream, &s, n);
                });
            }
        });
        NextHop {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared.script.lock().expect("lock")
    }

    pub fn messages(&self) -> Vec<Captured> {
        self.shared.captured.lock().expect("lock").clone()
    }

    pub fn connect_times(&self) -> Vec<Instant> {
        self.shared.connects.lock().expect("lock").clone()
    }

    /// Every RCPT address the hop was sent, in order.
    pub fn rcpts_seen(&self) -> Vec<String> {
        self.shared.rcpts_seen.lock().expect("lock").clone()
    }

    /// Every MAIL FROM address the hop was sent, in order.
    pub fn mails_seen(&self) -> Vec<String> {
        self.shared.mails_seen.lock().expect("lock").clone()
    }

    pub fn data_ends(&self) -> usize {
        self.shared.data_ends.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages arrived (panics after `timeout`).
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Captured> {
        super::wait_for_items("next hop", n, timeout, || self.messages())
    }
}

impl Drop for NextHop {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn say(r: &mut BufReader<Stream>, line: &str) -> std::io::Result<()> {
    let s = r.get_mut();
    s.write_all(format!("{line}\r\n").as_bytes())?;
    s.flush()
}

fn read_line(r: &mut BufReader<Stream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line))
}

fn angle(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_owned()
}

fn session(tcp: TcpStream, s: &Shared, n: usize) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    tcp.set_nodelay(true)?;
    let mut r = BufReader::new(Stream::Plain(tcp));
    if s.script.lock().expect("lock").down {
        say(&mut r, "421 4.3.2 next hop is down for the test")?;
        return Ok(());
    }
    say(&mut r, "220 nexthop.test ESMTP capture")?;
    let mut tls = false;
    let mut auth: Option<String> = None;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let Some(line) = read_line(&mut r)? else {
            return Ok(());
        };
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        let upper = line.to_ascii_uppercase();
        let (tls_cfg, want_auth) = {
            let sc = s.script.lock().expect("lock");
            (sc.tls.clone(), sc.auth.clone())
        };
        if upper.starts_with("EHLO") {
            let mut lines = vec![
                "250-nexthop.test".to_owned(),
                "250-8BITMIME".into(),
                "250-SIZE 100000000".into(),
            ];
            if tls_cfg.is_some() && !tls {
                lines.push("250-STARTTLS".into());
            }
            if want_auth.is_some() && tls {
                lines.push("250-AUTH PLAIN".into());
            }
            lines.push("250 ENHANCEDSTATUSCODES".into());
            let all: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            r.get_mut().write_all(all.as_bytes())?;
            r.get_mut().flush()?;
        } else if upper.starts_with("HELO") {
            say(&mut r, "250 nexthop.test")?;
        } else if upper == "STARTTLS" {
            let Some(cfg) = tls_cfg.filter(|_| !tls) else {
                say(&mut r, "502 5.5.1 no")?;
                continue;
            };
            say(&mut r, "220 2.0.0 go ahead")?;
            let Stream::Plain(tcp) = std::mem::replace(r.get_mut(), Stream::Gone) else {
                return Ok(());
            };
            let conn = rustls::ServerConnection::new(cfg).map_err(std::io::Error::other)?;
            r = BufReader::new(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))));
            tls = true;
            from = None;
            rcpts.clear();
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64ct::Encoding as _;
            let decoded = base64ct::Base64::decode_vec(&line[11..]).unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
            match (&want_auth, parts.as_slice()) {
                (Some((u, p)), [_, user, pass])
                    if tls && user == &u.as_bytes() && pass == &p.as_bytes() =>
                {
                    auth = Some(u.clone());
                    say(&mut r, "235 2.7.0 ok")?;
                }
                _ => say(&mut r, "535 5.7.8 bad credentials")?,
            }
        } else if upper.starts_with("MAIL FROM:") {
            s.mails_seen.lock().expect("lock").push(angle(&line));
            if want_auth.is_some() && auth.is_none() {
                say(&mut r, "530 5.7.0 authentication required")?;
                continue;
            }
            from = Some(angle(&line));
            rcpts.clear();
            say(&mut r, "250 2.1.0 ok")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = angle(&line);
            let refusal = {
                let sc = s.script.lock().expect("lock");
                sc.refuse_rcpt
                    .iter()
                    .find(|(a, _)| *a == addr)
                    .map(|(_, reply)| reply.clone())
                    .or_else(|| {
                        let known = sc.known_rcpts.as_ref()?;
                        (!known.iter().any(|k| k.eq_ignore_ascii_case(&addr)))
                            .then(|| format!("550 5.1.1 <{addr}>: no such user here"))
                    })
            };
            s.rcpts_seen.lock().expect("lock").push(addr.clone());
            match refusal {
                Some(reply) => say(&mut r, &reply)?,
                None if from.is_some() => {
                    rcpts.push(addr);
                    say(&mut r, "250 2.1.5 ok")?;
                }
                None => say(&mut r, "503 5.5.1 MAIL first")?,
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                say(&mut r, "554 5.5.1 no valid recipients")?;
                continue;
            }
            say(&mut r, "354 go ahead")?;
            let mut data = Vec::new();
            loop {
                let Some(l) = read_line(&mut r)? else {
                    return Ok(());
                };
                assert!(
                    l.ends_with(b"\r\n"),
                    "next hop got a line without CRLF: {l:?}"
                );
                if l == b".\r\n" {
                    break;
                }
                let l = l.strip_prefix(b".").unwrap_or(&l);
                data.extend_from_slice(l);
            }
            s.data_ends.fetch_add(1, Ordering::SeqCst);
            let reply = s
                .script
                .lock()
                .expect("lock")
                .data_replies
                .pop_front()
                .unwrap_or_else(|| "250 2.0.0 captured".into());
            if reply.starts_with('2') {
                s.captured.lock().expect("lock").push(Captured {
                    from: from.take().unwrap_or_default(),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                    tls,
                    auth: auth.clone(),
                    connection: n,
                });
            }
            from = None;
            rcpts.clear();
            say(&mut r, &reply)?;
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            say(&mut r, "250 2.0.0 ok")?;
        } else if upper == "NOOP" {
            say(&mut r, "250 2.0.0 ok")?;
        } else if upper == "QUIT" {
            say(&mut r, "221 2.0.0 bye")?;
            return Ok(());
        } else {
            say(&mut r, "500 5.5.2 unknown")?;
        }
    }
}
