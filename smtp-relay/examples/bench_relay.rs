//! `cargo xtask bench relay`: throughput, latency and memory of the relay
//! binary with durable queueing, forwarding to a sink on loopback.
//!
//! usage: bench_relay --relay PATH [--messages N] [--sessions N] [--only directory|delivery] [--json FILE]
//!        bench_relay --mta ADDR --sink-port P [--messages N] [--name NAME] [--json FILE]
//!
//! The second form measures another MTA (e.g. Postfix) already listening on
//! ADDR and relaying `example.org` to 127.0.0.1:P, where this program runs
//! the sink; the 1000-session phase is skipped then.
//!
//! Phases: 10 and 50 concurrent clients, one 4 KB message per connection
//! (messages/second and p50/p99 from the end of DATA to the 250), then
//! `--sessions` (1000) sessions open at once (peak RSS of the relay). Every
//! accepted message must reach the sink. `--json FILE` also writes the
//! figures there, for the benchmark report.
//!
//! With NSD installed (`cargo xtask setup`), a second relay then runs the 10- and 50-client
//! phases with `[sender_auth]` on (SPF, DKIM, DMARC against NSD on loopback, every message
//! DKIM-signed with Ed25519): its figures are reported as a ratio against the plain ones of
//! the same run.
//!
//! Then the 10- and 50-client phases end to end (until the sink has every message), unsigned,
//! DKIM-signing with Ed25519 and with Ed25519 + RSA-2048, each with the relay's CPU time per
//! message, and the cost of one signature.
//!
//! Last, logins against the company directory (OpenLDAP slapd on loopback, see
//! `support/bench_directory.rs`); `--only directory` runs that phase alone, `--only delivery`
//! only the end-to-end phases (unsigned, Ed25519, Ed25519 + RSA-2048; see `with_dkim_signing`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64ct::Encoding as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

// The tests' Debian package check (the slapd fixture uses it) and NSD fixture (real
// authoritative DNS on loopback), shared with the gatekeeper's tests.
use gatekeeper_tests::{debian, nsd};

/// The tests' slapd fixture (it needs `TempDir` and `write_certs` from here), for the
/// directory phase.
#[allow(dead_code)] // the tests' helpers beyond the bench's needs
#[path = "../tests/common/slapd.rs"]
mod slapd;

#[path = "support/bench_directory.rs"]
mod directory;

/// The temp directory `slapd.rs` expects from its parent (as in the tests).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("smtp-relay-bench-{tag}-{}", std::process::id()));
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
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What the sink counts: every message, and those that arrive DKIM-signed (a
/// `DKIM-Signature:` field on top, where the relay puts its signatures).
#[derive(Clone, Default)]
struct Sunk {
    count: Arc<AtomicU64>,
    signed: Arc<AtomicU64>,
}

/// A next hop that takes everything: 250 to each command, counts messages.
async fn sink(listener: TcpListener, sunk: Sunk) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let sunk = sunk.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let (r, mut w) = tcp.into_split();
            let mut r = BufReader::new(r);
            if w.write_all(b"220 sink\r\n").await.is_err() {
                return;
            }
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let upper = line.to_ascii_uppercase();
                let reply: &[u8] = if upper.starts_with(b"EHLO") {
                    b"250-sink\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n"
                } else if upper.starts_with(b"DATA") {
                    if w.write_all(b"354 go\r\n").await.is_err() {
                        return;
                    }
                    let mut first = true;
                    loop {
                        line.clear();
                        match r.read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == b".\r\n" {
                            break;
                        }
                        if first && line.to_ascii_lowercase().starts_with(b"dkim-signature:") {
                            sunk.signed.fetch_add(1, Ordering::Relaxed);
                        }
                        first = false;
                    }
                    sunk.count.fetch_add(1, Ordering::Relaxed);
                    b"250 2.0.0 sunk\r\n"
                } else if upper.starts_with(b"QUIT") {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 2.0.0 ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> anyhow::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).unwrap_or("").parse()?);
        }
    }
}

/// One session: one message; returns the time from end of DATA to 250.
async fn send_one(
    addr: SocketAddr,
    body: &[u8],
    hold: Option<Arc<tokio::sync::Barrier>>,
) -> anyhow::Result<Duration> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    anyhow::ensure!(reply(&mut r).await? == 220, "no greeting");
    if let Some(b) = hold {
        b.wait().await;
    }
    w.write_all(b"EHLO bench.example\r\n").await?;
    anyhow::ensure!(reply(&mut r).await? == 250, "EHLO");
    w.write_all(b"MAIL FROM:<bench@sender.example>\r\n").await?;
    anyhow::ensure!(reply(&mut r).await? == 250, "MAIL");
    w.write_all(b"RCPT TO:<sink@example.org>\r\n").await?;
    anyhow::ensure!(reply(&mut r).await? == 250, "RCPT");
    w.write_all(b"DATA\r\n").await?;
    anyhow::ensure!(reply(&mut r).await? == 354, "DATA");
    w.write_all(body).await?;
    let t = Instant::now();
    w.write_all(b".\r\n").await?;
    let code = reply(&mut r).await?;
    let latency = t.elapsed();
    anyhow::ensure!(code == 250, "end of data: {code}");
    w.write_all(b"QUIT\r\n").await?;
    let _ = reply(&mut r).await;
    Ok(latency)
}

fn body() -> Vec<u8> {
    let mut b =
        b"From: bench@sender.example\r\nTo: sink@example.org\r\nSubject: bench\r\n\r\n".to_vec();
    while b.len() < 4096 - 80 {
        b.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ab\r\n",
        );
    }
    b
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_second.max(1) as f64)
}

struct Relay(Child);
impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ca.pem`, and `cert.pem`/`key.pem` for localhost and 127.0.0.1 signed by it (the
/// directory phase's client and the relay's LDAP client verify them).
fn write_certs(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca");
    std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
}

/// Starts the relay and returns it with its mta port (from the log) and a count of the log
/// lines that contain `passed` (e.g. checks that passed), when given.
fn start_relay(
    bin: &Path,
    config: &Path,
    passed: Option<&'static str>,
) -> anyhow::Result<(Relay, SocketAddr, Arc<AtomicU64>)> {
    start_relay_logging(bin, config, passed, AUDIT_LOG)
}

/// The relay's log filter in the bench: warnings and the audit lines.
const AUDIT_LOG: &str = "warn,audit=info";

/// [`start_relay`] with the log filter `log` (`RUST_LOG`).
fn start_relay_logging(
    bin: &Path,
    config: &Path,
    passed: Option<&'static str>,
    log: &str,
) -> anyhow::Result<(Relay, SocketAddr, Arc<AtomicU64>)> {
    use std::io::BufRead as _;
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let relay = Relay(child);
    let addr = loop {
        let line = lines.next().context("relay exited before listening")??;
        if line.contains("event=\"listening\"")
            && let Some(a) = line
                .split(" address=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
        {
            break a.parse::<SocketAddr>()?;
        }
    };
    // Keep draining the log so the relay never blocks on a full pipe.
    let matched = Arc::new(AtomicU64::new(0));
    let counter = matched.clone();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if passed.is_some_and(|p| line.contains(p)) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok((relay, addr, matched))
}

async fn phase(
    addr: SocketAddr,
    clients: usize,
    total: usize,
    body: Arc<Vec<u8>>,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, body) = (next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                lat.push(send_one(addr, &body, None).await?);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    Ok((rate, all))
}

async fn wait_count(count: &AtomicU64, n: u64, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < n {
        if started.elapsed() > limit {
            bail!("sink got {} of {n} messages", count.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

/// The 10- and 50-client phases; returns how many messages were sent and one
/// JSON object per phase.
async fn measure(
    addr: SocketAddr,
    messages: usize,
    count: &AtomicU64,
    what: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u64, Vec<serde_json::Value>)> {
    let body = Arc::new(body);
    // Another relay may have run before on the same sink: count from here.
    let base = count.load(Ordering::Relaxed);
    println!("bench: {what}: 4 KB messages, one per connection, forwarded to a sink on loopback");
    let mut sent = 0u64;
    let mut phases = Vec::new();
    for clients in [10usize, 50] {
        // Warm-up, not measured.
        phase(addr, clients, clients * 2, body.clone()).await?;
        sent += (clients * 2) as u64;
        let (rate, lat) = phase(addr, clients, messages, body.clone()).await?;
        sent += messages as u64;
        phases.push(serde_json::json!({
            "clients": clients,
            "messages": lat.len(),
            "messages_per_second": rate,
            "p50_ms": percentile(&lat, 0.50).as_secs_f64() * 1000.0,
            "p99_ms": percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        }));
        println!(
            "  {clients:>2} clients: {:>7.1} msg/s accepted   end-of-DATA->250 p50 {:>6.2} ms  p99 {:>6.2} ms   ({} messages)",
            rate,
            percentile(&lat, 0.50).as_secs_f64() * 1000.0,
            percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            lat.len()
        );
    }
    let waited = wait_count(count, base + sent, Duration::from_secs(300)).await?;
    println!(
        "  all {sent} messages reached the sink ({:.1}s after the last 250)",
        waited.as_secs_f64()
    );
    Ok((sent, phases))
}

/// Stops the relay and checks that `expected` of its log lines matched `start_relay`'s pattern.
fn stop_and_count(
    relay: Relay,
    matched: &AtomicU64,
    expected: u64,
    what: &str,
) -> anyhow::Result<()> {
    drop(relay);
    // The log pipe is drained by a thread: give it a moment after the relay's exit.
    std::thread::sleep(Duration::from_millis(200));
    let got = matched.load(Ordering::Relaxed);
    anyhow::ensure!(got == expected, "only {got} of {expected} messages {what}");
    Ok(())
}

/// Writes the figures for `cargo xtask bench report`.
fn write_json(path: Option<&Path>, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut relay_bin: Option<PathBuf> = None;
    let mut mta: Option<SocketAddr> = None;
    let mut sink_port = 0u16;
    let mut messages = 3000usize;
    let mut sessions = 1000usize;
    let mut json: Option<PathBuf> = None;
    let mut name = String::from("the MTA at --mta");
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().context("missing value")?;
        match a.as_str() {
            "--relay" => relay_bin = Some(PathBuf::from(v)),
            "--mta" => mta = Some(v.parse()?),
            "--sink-port" => sink_port = v.parse()?,
            "--messages" => messages = v.parse()?,
            "--sessions" => sessions = v.parse()?,
            "--json" => json = Some(PathBuf::from(v)),
            "--name" => name = v,
            "--only" => only = Some(v),
            _ => bail!(
                "usage: bench_relay --relay PATH [--messages N] [--sessions N] [--only directory|delivery] [--json FILE]\n       \
                 bench_relay --mta ADDR --sink-port P [--messages N] [--name NAME] [--json FILE]"
            ),
        }
    }
    if let Some(addr) = mta {
        let sunk = Sunk::default();
        let sink_listener = TcpListener::bind(("127.0.0.1", sink_port)).await?;
        tokio::spawn(sink(sink_listener, sunk.clone()));
        let (_, phases) = measure(addr, messages, &sunk.count, &name, body()).await?;
        return write_json(
            json.as_deref(),
            &serde_json::json!({ "name": name, "phases": phases }),
        );
    }
    let relay_bin = relay_bin.context("--relay PATH (or --mta ADDR) is required")?;
    let dir = std::env::temp_dir().join(format!("smtp-relay-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    write_certs(&dir);
    if only.as_deref() == Some("directory") {
        let logins = directory::measure(&relay_bin, &dir).await?;
        return write_json(
            json.as_deref(),
            &serde_json::json!({ "name": "smtp-relay", "directory": logins }),
        );
    }
    let sunk = Sunk::default();
    let count = sunk.count.clone();
    let sink_listener = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink_listener.local_addr()?;
    tokio::spawn(sink(sink_listener, sunk.clone()));
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"bench.example\"\nspool_dir = \"spool\"\nlocal_domains = [\"example.org\"]\n\
             max_connections = {}\nmax_connections_per_client = {}\n\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"mta\"\nallow = [\"127.0.0.0/8\"]\n\n\
             [delivery]\nconnections_per_destination = 8\nmax_deliveries = 64\nretry_initial_secs = 1.0\n\n\
             [[delivery.route]]\ndomain = \"example.org\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            sessions + 100,
            sessions + 100,
            sink_addr.port()
        ),
    )?;
    if only.as_deref() == Some("delivery") {
        let dkim_signing =
            with_dkim_signing(&relay_bin, &dir, &config, messages, &sunk, &[]).await?;
        return write_json(
            json.as_deref(),
            &serde_json::json!({ "name": "smtp-relay", "dkim_signing": dkim_signing }),
        );
    }
    let (relay, addr, _) = start_relay(&relay_bin, &config, None)?;
    let pid = relay.0.id();
    let (mut sent, phases) = measure(
        addr,
        messages,
        &count,
        "smtp-relay, durable queue (synced before 250)",
        body(),
    )
    .await?;
    let body = Arc::new(body());

    // Many sessions at once: all greeted, then all send.
    let barrier = Arc::new(tokio::sync::Barrier::new(sessions + 1));
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (b, body) = (barrier.clone(), body.clone());
        tasks.push(tokio::spawn(
            async move { send_one(addr, &body, Some(b)).await },
        ));
    }
    barrier.wait().await;
    let rss_open = rss_kb(pid, "VmRSS:");
    let mut errors = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(_))) {
            errors += 1;
        }
    }
    sent += (sessions - errors) as u64;
    wait_count(&count, sent, Duration::from_secs(120)).await?;
    let peak = rss_kb(pid, "VmHWM:");
    println!(
        "  {sessions} concurrent sessions: {} errors; relay RSS with all open {:.1} MB, peak RSS (VmHWM) {:.1} MB",
        errors,
        rss_open as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(relay);
    anyhow::ensure!(errors == 0, "{errors} sessions failed");
    let sender_auth =
        with_sender_auth(&relay_bin, &dir, &config, messages, &count, sent, &phases).await?;
    let dkim_signing =
        with_dkim_signing(&relay_bin, &dir, &config, messages, &sunk, &phases).await?;
    let logins = directory::measure(&relay_bin, &dir).await?;
    write_json(
        json.as_deref(),
        &serde_json::json!({
            "name": "smtp-relay",
            "phases": phases,
            "dkim_signing": dkim_signing,
            "directory": logins,
            "sessions": {
                "open": sessions,
                "errors": errors,
                "rss_mb": rss_open as f64 / 1024.0,
                "peak_rss_mb": peak as f64 / 1024.0,
            },
            "sender_auth": sender_auth,
        }),
    )
}

/// The 10- and 50-client phases again, on a relay with SPF, DKIM and DMARC on (answers from
/// NSD on loopback) and DKIM-signed messages; `Null` without NSD. Each phase carries its ratio
/// to the plain figure (`plain`) of this run.
async fn with_sender_auth(
    relay_bin: &Path,
    dir: &Path,
    plain_config: &Path,
    messages: usize,
    count: &AtomicU64,
    sent: u64,
    plain: &[serde_json::Value],
) -> anyhow::Result<serde_json::Value> {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter as _;
    if !Path::new("/usr/sbin/nsd").exists() {
        println!("  SKIP sender authentication phase: NSD is not installed (cargo xtask setup)");
        return Ok(serde_json::Value::Null);
    }
    let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = base64ct::Base64::encode_string(&key.public_key());
    let zone = format!(
        "@ IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n\
         bench._domainkey IN TXT \"v=DKIM1; k=ed25519; p={public}\"\n\
         _dmarc IN TXT \"v=DMARC1; p=reject\"\n"
    );
    // `example` is served too, so DMARC's walk up the tree ends in NXDOMAIN, not REFUSED.
    // A DNSBL that lists someone else: the relay asks it for every new client address.
    let dns = nsd::Nsd::start(&[
        ("sender.example", zone.as_str()),
        ("example", ""),
        ("bl.bench.test", "2.0.0.127 IN A 127.0.0.2\n"),
    ]);
    let plain_body = body();
    let signature = mail_auth::dkim::DkimSigner::from_key(key)
        .domain("sender.example")
        .selector("bench")
        .headers(["From", "To", "Subject"])
        .sign(&plain_body)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(&plain_body);
    let config = dir.join("relay-auth.toml");
    let text = std::fs::read_to_string(plain_config)?
        .replace("spool_dir = \"spool\"", "spool_dir = \"spool-auth\"");
    std::fs::write(
        &config,
        format!(
            "{text}\n{}\n[sender_auth]\nspf = true\ndkim = true\ndmarc = true\n\n\
             [screen]\n[[screen.dnsbl]]\nzone = \"bl.bench.test\"\n",
            dns.dns_section()
        ),
    )?;
    // The checks must really pass (not end in temperror): count their audit lines.
    let passed = "spf=\"pass\" dkim=\"pass\" arc=\"off\" dmarc=\"pass\"";
    let (relay, addr, checked) = start_relay(relay_bin, &config, Some(passed))?;
    anyhow::ensure!(
        count.load(Ordering::Relaxed) >= sent,
        "the sink is behind before the sender_auth phase"
    );
    let (checked_sent, phases) = measure(
        addr,
        messages,
        count,
        "smtp-relay with SPF+DKIM+DMARC and a DNSBL (NSD on loopback, Ed25519-signed)",
        signed,
    )
    .await?;
    // The checks must really pass (not end in temperror).
    stop_and_count(relay, &checked, checked_sent, "passed SPF, DKIM and DMARC")?;
    let phases: Vec<serde_json::Value> = phases
        .into_iter()
        .map(|mut p| {
            let base = plain
                .iter()
                .find(|b| b["clients"] == p["clients"])
                .and_then(|b| b["messages_per_second"].as_f64());
            let rate = p["messages_per_second"].as_f64();
            if let (Some(base), Some(rate)) = (base, rate) {
                println!(
                    "  {} clients: {:.2}x the plain figure of this run",
                    p["clients"],
                    rate / base
                );
                p["ratio_to_plain"] = serde_json::json!(rate / base);
            }
            p
        })
        .collect();
    Ok(serde_json::json!({ "checks": "spf+dkim+dmarc+dnsbl", "phases": phases }))
}

/// The 10- and 50-client phases end to end, on a relay that delivers everything it accepts:
/// first unsigned (no `[dkim]`: the delivery pipeline alone), then DKIM-signing every message
/// at delivery with an Ed25519 key, then with an Ed25519 and an RSA-2048 key (dual
/// signatures; keys made here). Mail from 127.0.0.1 is `trusted_networks`, so it is signed.
/// Besides the accepted rate, the end-to-end rate: messages over the time until the sink has
/// them all (signing happens at delivery, after the `250`). The sink checks that every message
/// of a signing phase arrived signed. Then the signing cost per message, in-process with the
/// relay's own signer.
async fn with_dkim_signing(
    relay_bin: &Path,
    dir: &Path,
    plain_config: &Path,
    messages: usize,
    sunk: &Sunk,
    plain: &[serde_json::Value],
) -> anyhow::Result<serde_json::Value> {
    use smtp_relay::config::{DkimConfig, DkimKeyConfig};
    use smtp_relay::dkim::keys::{Algorithm, generate};
    let mut keys = Vec::new();
    for (algorithm, selector) in [(Algorithm::Ed25519, "ed"), (Algorithm::Rsa, "rsa")] {
        let path = dir.join(format!("dkim-{selector}.pem"));
        std::fs::write(&path, generate(algorithm)?)?;
        keys.push(DkimKeyConfig {
            domain: "sender.example".into(),
            selector: selector.into(),
            private_key: path,
        });
    }
    let body = Arc::new(body());
    let count = &*sunk.count;
    let mut phases = Vec::new();
    // Unsigned, Ed25519 alone, then dual signatures (each message signed twice).
    for (set, which) in [
        ("none", &keys[..0]),
        ("ed25519", &keys[..1]),
        ("ed25519+rsa2048", &keys[..]),
    ] {
        let config = dir.join(format!("relay-dkim-{}.toml", which.len()));
        let mut text = std::fs::read_to_string(plain_config)?
            .replace(
                "spool_dir = \"spool\"",
                &format!("spool_dir = \"spool-dkim-{}\"", which.len()),
            )
            .replacen("\n\n", "\ntrusted_networks = [\"127.0.0.0/8\"]\n\n", 1);
        if !which.is_empty() {
            text.push_str("\n[dkim]\n");
        }
        for k in which {
            text.push_str(&format!(
                "[[dkim.key]]\ndomain = \"{}\"\nselector = \"{}\"\nprivate_key = \"{}\"\n",
                k.domain,
                k.selector,
                k.private_key.display()
            ));
        }
        std::fs::write(&config, text)?;
        let (relay, addr, _) = start_relay(relay_bin, &config, None)?;
        let pid = relay.0.id();
        let what = if which.is_empty() {
            "unsigned".to_owned()
        } else {
            format!("signing every message ({set})")
        };
        println!("bench: smtp-relay end to end, {what}: 4 KB messages, one per connection");
        let before = count.load(Ordering::Relaxed);
        let signed_before = sunk.signed.load(Ordering::Relaxed);
        let mut sent = 0u64;
        for clients in [10usize, 50] {
            phase(addr, clients, clients * 2, body.clone()).await?;
            sent += (clients * 2) as u64;
            // The warm-up's messages out of the way, so the end-to-end clock starts clean.
            wait_count(count, before + sent, Duration::from_secs(60)).await?;
            let base = before + sent;
            let (started, cpu_before) = (Instant::now(), cpu_time(pid));
            let (rate, lat) = phase(addr, clients, messages, body.clone()).await?;
            sent += messages as u64;
            wait_count(count, base + messages as u64, Duration::from_secs(300)).await?;
            let end_to_end = messages as f64 / started.elapsed().as_secs_f64();
            // The relay's own CPU per message (receiving, queueing, signing, delivering): a
            // figure the load of other processes on the machine moves less than the rates.
            let cpu_us = (cpu_time(pid) - cpu_before).as_secs_f64() * 1e6 / messages as f64;
            let base_rate = plain
                .iter()
                .find(|b| b["clients"] == clients)
                .and_then(|b| b["messages_per_second"].as_f64())
                .unwrap_or(f64::NAN);
            println!(
                "  {clients:>2} clients: {rate:>7.1} msg/s accepted, {end_to_end:>7.1} msg/s end to end \
                 ({:.2}x the plain accepted figure)   p50 {:>6.2} ms  p99 {:>6.2} ms   relay CPU {cpu_us:.0} µs/msg",
                end_to_end / base_rate,
                percentile(&lat, 0.50).as_secs_f64() * 1000.0,
                percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            );
            phases.push(serde_json::json!({
                "keys": set,
                "clients": clients,
                "messages": lat.len(),
                "messages_per_second": rate,
                "end_to_end_per_second": end_to_end,
                "p50_ms": percentile(&lat, 0.50).as_secs_f64() * 1000.0,
                "p99_ms": percentile(&lat, 0.99).as_secs_f64() * 1000.0,
                "ratio_to_plain": end_to_end / base_rate,
                "relay_cpu_us_per_message": cpu_us,
            }));
        }
        drop(relay);
        // Every message must really have been signed (or, unsigned, none).
        let signed = sunk.signed.load(Ordering::Relaxed) - signed_before;
        let expected = if which.is_empty() { 0 } else { sent };
        anyhow::ensure!(
            signed == expected,
            "{signed} of {sent} messages arrived DKIM-signed, expected {expected}"
        );
    }
    // The cost of signing alone: the relay's signer over the same 4 KB message.
    let mut message =
        b"Received: from bench (localhost [127.0.0.1])\r\n\tby bench.example\r\n".to_vec();
    message.extend_from_slice(&body);
    let mut cost = serde_json::Map::new();
    for (name, which) in [
        ("ed25519", &keys[..1]),
        ("rsa2048", &keys[1..]),
        ("both", &keys[..]),
    ] {
        let signer = smtp_relay::dkim::Signer::from_config(&DkimConfig {
            keys: which.to_vec(),
        })?;
        let rounds = if name == "ed25519" { 2000 } else { 300 };
        let started = Instant::now();
        for _ in 0..rounds {
            signer.sign(&message)?.context("no signature")?;
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        println!("  signing one 4 KB message ({name}): {us:.0} µs");
        cost.insert(name.into(), serde_json::json!(us));
    }
    Ok(serde_json::json!({
        "phases": phases,
        "sign_us": cost,
    }))
}
