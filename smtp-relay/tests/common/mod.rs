//! Test support: temp dirs, certificates made at test time with rcgen, a
//! config writer, an in-process server on ephemeral loopback ports, and a
//! small blocking SMTP client over rustls (written here, independent of the
//! server's code paths).

#![allow(dead_code)]

pub mod aiosmtpd;
pub mod ban_socket;
pub mod dkimpy;
pub mod dns;
pub mod https_policy;
pub mod logs;
pub mod nexthop;
pub mod process;
pub mod slapd;
pub mod unbound;

// NSD and the Debian package check are shared with the gatekeeper's tests.
#[allow(unused_imports)] // not every test binary uses both
pub use gatekeeper_tests::{debian, nsd};

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHasher as _, SaltString, rand_core::OsRng};
use smtp_relay::config::Role;
use smtp_relay::server::Server;
use smtp_relay::spool::Spool;

pub const PASSWORD: &str = "correct horse";

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "smtp-relay-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`: a test CA and a
/// leaf for localhost, 127.0.0.1 and ::1 signed by it.
/// A self-signed test CA named `name`: its certificate, and the issuer that signs leaves.
pub fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    (ca_cert, Issuer::new(ca_params, ca_key))
}

pub fn write_certs(dir: &Path) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let (ca_cert, issuer) = test_ca("smtp-relay test CA");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca");
    std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write key");
}

/// An argon2id hash with tiny parameters, so tests stay fast.
pub fn cheap_hash(password: &str) -> String {
    let params = argon2::Params::new(64, 1, 1, None).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string()
}

/// A config with one listener per role on 127.0.0.1 and ::1 (ephemeral
/// ports), users alice and bob, local domain example.org.
pub fn config_text(extra_listeners: &str, max_size: u64) -> String {
    let alice = cheap_hash(PASSWORD);
    let bob = cheap_hash("bobs password");
    format!(
        r#"
hostname = "mx.example.org"
spool_dir = "spool"
local_domains = ["example.org", "Example.NET"]
max_message_size = {max_size}
command_timeout_secs = 10
auth_failure_delay_ms = 20

[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
address = "127.0.0.1:0"
role = "mta"
allow = ["127.0.0.0/8"]

[[listener]]
address = "[::1]:0"
role = "mta"
allow = ["::1/128"]

[[listener]]
address = "127.0.0.1:0"
role = "submission"
allow = ["0.0.0.0/0"]

[[listener]]
address = "[::1]:0"
role = "submission"
allow = ["::/0"]

[[listener]]
address = "127.0.0.1:0"
role = "submissions"
allow = ["127.0.0.1/32"]

[[listener]]
address = "[::1]:0"
role = "submissions"
allow = ["::1/128"]
{extra_listeners}

[[user]]
name = "alice"
password_hash = "{alice}"
senders = ["alice@example.org", "alice.smith@example.net"]

[[user]]
name = "bob"
password_hash = "{bob}"
senders = ["bob@example.org"]
"#
    )
}

/// The standard test config with `top` keys (before any table) and a
/// `[delivery]` section (or anything else) appended.
pub fn config_with(top: &str, tail: &str) -> String {
    format!("{top}\n{}\n{tail}\n", config_text("", 10_000))
}

/// A `[delivery]` section with fast retries and `routes` as
/// (domain, next hop, tls mode); `extra` goes into the table.
pub fn delivery_section(routes: &[(&str, SocketAddr, &str)], extra: &str) -> String {
    let mut s = format!(
        "[delivery]\nretry_initial_secs = 0.3\nretry_max_secs = 2.0\nconnect_timeout_secs = 5\nreply_timeout_secs = 10\nconnection_idle_secs = 2.0\n{extra}\n"
    );
    for (domain, hop, tls) in routes {
        s.push_str(&format!(
            "[[delivery.route]]\ndomain = \"{domain}\"\nhost = \"{}\"\nport = {}\ntls = \"{tls}\"\n\n",
            hop.ip(),
            hop.port()
        ));
    }
    s
}

/// Certificates and a config file in a fresh temp dir.
pub struct Setup {
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(tag: &str, config: &str) -> Setup {
        let dir = TempDir::new(tag);
        write_certs(dir.path());
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, config).expect("write config");
        Setup { dir, config: path }
    }

    /// The spool, read-only: opening it for writing would clear `tmp/`
    /// under a running relay.
    pub fn spool(&self) -> Spool {
        Spool::at(&self.dir.path().join("spool"))
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Rewrites the config file (same certificates and spool).
    pub fn rewrite(&self, config: &str) {
        std::fs::write(&self.config, config).expect("write config");
    }
}

/// The relay running in-process on its own runtime; stopped on drop.
pub struct TestServer {
    pub setup: Setup,
    pub addrs: Vec<(SocketAddr, Role)>,
    pub metrics: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    done: Option<std::sync::mpsc::Receiver<anyhow::Result<()>>>,
}

impl TestServer {
    pub fn start(tag: &str) -> TestServer {
        Self::start_with(tag, &config_text("", 10_000))
    }

    pub fn start_with(tag: &str, config: &str) -> TestServer {
        Self::start_in(Setup::new(tag, config))
    }

    /// Stops this server and starts a new one on the same directory (and
    /// spool) with `config`. Listener ports change.
    pub fn restart(mut self, config: &str) -> TestServer {
        self.stop().expect("clean stop");
        let setup = std::mem::replace(
            &mut self.setup,
            Setup {
                dir: TempDir(PathBuf::new()),
                config: PathBuf::new(),
            },
        );
        setup.rewrite(config);
        drop(self);
        Self::start_in(setup)
    }

    pub fn start_in(setup: Setup) -> TestServer {
        logs::init();
        let prepared = smtp_relay::prepare(&setup.config).expect("config valid");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime
            .block_on(async { Server::bind(prepared) })
            .expect("bind");
        let addrs = server.local_addrs();
        let metrics = server.metrics_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let result = server
                .run(async {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = done_tx.send(result);
        });
        TestServer {
            setup,
            addrs,
            metrics,
            stop: Some(stop_tx),
            runtime: Some(runtime),
            done: Some(done_rx),
        }
    }

    /// Every listener of `role`.
    pub fn listeners(&self, role: Role) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .filter(|(_, r)| *r == role)
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn addr(&self, role: Role) -> SocketAddr {
        self.listeners(role)[0]
    }

    /// Stops the server and returns once it has finished.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.done.take() {
            Some(done) => done
                .recv_timeout(Duration::from_secs(40))
                .map_err(|e| anyhow::anyhow!("server did not stop: {e}"))?,
            None => Ok(()),
        };
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        result
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A reply as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Asserts the code and that the first line starts with `enhanced`.
    #[track_caller]
    pub fn expect(&self, code: u16, enhanced: &str) -> &Self {
        assert_eq!(self.code, code, "reply {self:?}");
        assert!(
            self.lines.iter().all(|l| l.starts_with(enhanced)),
            "expected enhanced code {enhanced} in {self:?}"
        );
        self
    }
}

/// A test connection, plain or TLS; `C` is rustls' client or server
/// connection, so the client here and the next hop share it.
pub enum Stream<C> {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<C, TcpStream>>),
    /// Taken apart for a TLS upgrade.
    Gone,
}

impl<C, S> Read for Stream<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Gone => Err(std::io::Error::other("gone")),
        }
    }
}

impl<C, S> Write for Stream<C>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Gone => Err(std::io::Error::other("gone")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Gone => Ok(()),
        }
    }
}

/// Polls `items` until it holds at least `n` (panics after `timeout`,
/// naming `what`).
#[track_caller]
#[allow(dead_code)] // not every test binary waits for a next hop
pub fn wait_for_items<T>(
    what: &str,
    n: usize,
    timeout: Duration,
    items: impl Fn() -> Vec<T>,
) -> Vec<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let m = items();
        if m.len() >= n {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} got {} message(s), expected {n}",
            m.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn tls_wrap(tcp: TcpStream, ca: &Path) -> Stream<rustls::ClientConnection> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(tls_client(ca), name).expect("tls client");
    Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

/// A minimal blocking SMTP client.
pub struct Client {
    r: BufReader<Stream<rustls::ClientConnection>>,
    pub greeting: Reply,
}

impl Client {
    fn tcp(addr: SocketAddr) -> TcpStream {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        tcp
    }

    /// Connects in plaintext from the local address `source` (e.g.
    /// 127.0.0.2, to act as another client) and reads the greeting.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind source");
        socket.connect(&addr.into()).expect("connect");
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut c = Client {
            r: BufReader::new(Stream::Plain(tcp)),
            greeting: Reply {
                code: 0,
                lines: vec![],
            },
        };
        c.greeting = c.read_reply();
        c
    }

    /// Connects in plaintext and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Client {
        let mut c = Client {
            r: BufReader::new(Stream::Plain(Self::tcp(addr))),
            greeting: Reply {
                code: 0,
                lines: vec![],
            },
        };
        c.greeting = c.read_reply();
        c
    }

    /// Connects with implicit TLS (port 465 style) and reads the greeting.
    pub fn connect_tls(addr: SocketAddr, ca: &Path) -> Client {
        let mut c = Client {
            r: BufReader::new(tls_wrap(Self::tcp(addr), ca)),
            greeting: Reply {
                code: 0,
                lines: vec![],
            },
        };
        c.greeting = c.read_reply();
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.r.get_mut();
        s.write_all(bytes).expect("write");
        s.flush().expect("flush");
    }

    /// Reads one (possibly multi-line) reply; code 0 means the server closed.
    pub fn read_reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) => return Reply { code: 0, lines },
                Ok(_) => {}
                // A silent server is a failure, not a close.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("timed out waiting for a reply")
                }
                // Reset or TLS close without close_notify: closed.
                Err(_) => return Reply { code: 0, lines },
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end_matches("\r\n");
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).expect("code");
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if !more {
                return Reply { code, lines };
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    pub fn ehlo(&mut self) -> Reply {
        let r = self.cmd("EHLO client.example");
        assert_eq!(r.code, 250, "{r:?}");
        r
    }

    /// STARTTLS and handshake; panics unless the server says 220.
    pub fn starttls(&mut self, ca: &Path) {
        self.cmd("STARTTLS").expect(220, "2.0.0");
        self.upgrade_after_220(ca);
    }

    /// Runs the TLS handshake after the server's 220 to STARTTLS.
    pub fn upgrade_after_220(&mut self, ca: &Path) {
        assert!(self.r.buffer().is_empty(), "data after 220 to STARTTLS");
        let stream = std::mem::replace(self.r.get_mut(), Stream::Gone);
        let Stream::Plain(tcp) = stream else {
            panic!("STARTTLS on a TLS stream")
        };
        self.r = BufReader::new(tls_wrap(tcp, ca));
    }

    pub fn auth_plain(&mut self, user: &str, password: &str) -> Reply {
        let token = b64(format!("\0{user}\0{password}").as_bytes());
        self.cmd(&format!("AUTH PLAIN {token}"))
    }

    pub fn auth_login(&mut self, user: &str, password: &str) -> Reply {
        let r = self.cmd("AUTH LOGIN");
        assert_eq!(r.code, 334, "{r:?}");
        assert_eq!(r.lines, vec![b64(b"Username:")]);
        let r = self.cmd(&b64(user.as_bytes()));
        assert_eq!(r.code, 334, "{r:?}");
        assert_eq!(r.lines, vec![b64(b"Password:")]);
        self.cmd(&b64(password.as_bytes()))
    }

    /// MAIL, RCPT..., DATA with client-side dot-stuffing of `message`
    /// (CRLF lines). Returns the final reply, or the first refusal.
    pub fn send_mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if r.code != 250 {
            return r;
        }
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            if r.code != 250 {
                return r;
            }
        }
        let r = self.cmd("DATA");
        if r.code != 354 {
            return r;
        }
        self.send_raw(&dot_stuff(message));
        self.send_raw(b".\r\n");
        self.read_reply()
    }
}

/// RFC 5321 4.5.2 transparency, as a client does it.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.ends_with(b"\r\n") && !message.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub fn b64(data: &[u8]) -> String {
    use base64ct::Encoding as _;
    base64ct::Base64::encode_string(data)
}

/// The queue id from `250 2.0.0 Ok: queued as ID`.
pub fn queue_id(reply: &Reply) -> String {
    assert_eq!(reply.code, 250, "{reply:?}");
    reply
        .text()
        .rsplit(' ')
        .next()
        .expect("queue id")
        .to_owned()
}

/// Splits a stored message into our Received header and the rest.
pub fn split_received(eml: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(eml);
    assert!(text.starts_with("Received: from "), "{text}");
    // The header ends at the first CRLF not followed by a tab.
    let mut end = 0;
    while let Some(pos) = eml[end..].windows(2).position(|w| w == b"\r\n") {
        end += pos + 2;
        if eml.get(end) != Some(&b'\t') {
            break;
        }
    }
    (
        String::from_utf8_lossy(&eml[..end]).into_owned(),
        eml[end..].to_vec(),
    )
}

/// Whether a test that needs root may run: as root yes; otherwise it says
/// SKIP with the reason (the line `cargo xtask test` counts), and under CI
/// (`CI=true`), where every root test must run, it fails instead.
#[allow(dead_code)] // not every test binary has a root test
pub fn root_tests_enabled(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = format!("needs root ({why})");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {reason}, and CI must run every root test");
    }
    eprintln!("SKIP {test}: {reason}; run `sudo -E cargo test -p smtp-relay`");
    false
}
