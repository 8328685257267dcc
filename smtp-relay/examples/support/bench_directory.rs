//! The directory phase of `cargo xtask bench relay`: logins against the company directory.
//! The tests' slapd fixture on loopback (ldaps, an AD-shaped entry per user, all in the relay
//! group), the relay with `[directory]` and a submission listener, and a client that offers a
//! fixed rate of whole sessions (connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, QUIT), each with
//! a different user. Reported: the rate sustained, p50/p99 from AUTH to `235`, the relay's RSS.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64ct::Encoding as _;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use super::slapd::{self, RELAY_GROUP, Slapd};

/// Directory users (AUTHs go round them).
const USERS: usize = 100;
/// AUTHs offered per second, and for how long.
const RATE: u64 = 200;
const SECS: u64 = 15;

async fn code<R: AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<u16> {
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

/// One submission session with one AUTH; the time from AUTH to 235.
async fn login(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    user: String,
    password: String,
) -> anyhow::Result<Duration> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut plain = BufReader::new(tcp);
    anyhow::ensure!(code(&mut plain).await? == 220, "greeting");
    plain.write_all(b"EHLO bench.example\r\n").await?;
    anyhow::ensure!(code(&mut plain).await? == 250, "EHLO");
    plain.write_all(b"STARTTLS\r\n").await?;
    anyhow::ensure!(code(&mut plain).await? == 220, "STARTTLS");
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, plain.into_inner())
        .await?;
    let mut s = BufReader::new(stream);
    s.write_all(b"EHLO bench.example\r\n").await?;
    anyhow::ensure!(code(&mut s).await? == 250, "EHLO in TLS");
    let token = base64ct::Base64::encode_string(format!("\0{user}\0{password}").as_bytes());
    let t = Instant::now();
    s.write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())
        .await?;
    let reply = code(&mut s).await?;
    let took = t.elapsed();
    anyhow::ensure!(reply == 235, "AUTH as {user}: {reply}");
    s.write_all(b"QUIT\r\n").await?;
    let _ = code(&mut s).await;
    Ok(took)
}

fn client_tls(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

pub async fn measure(relay_bin: &Path, dir: &Path) -> anyhow::Result<serde_json::Value> {
    // groupOfNames needs a member; the relay reads memberOf (AD style) here anyway.
    let mut ldif = slapd::base_ldif(&["cn=user0,ou=people,dc=example,dc=org"]);
    for i in 0..USERS {
        ldif.push_str(&slapd::ad_user(
            &format!("user{i}"),
            &format!("password {i}"),
            &format!("user{i}@example.org"),
            &[],
            512,
            &[RELAY_GROUP],
        ));
    }
    let ldap = Slapd::start(&ldif);
    let rdir = dir.join("directory");
    std::fs::create_dir_all(&rdir)?;
    super::write_certs(&rdir);
    let section = ldap.directory_section(
        &rdir,
        &[&ldap.ldaps_url],
        &format!("relay_group = \"{RELAY_GROUP}\"\npool_size = 16"),
    );
    let config = rdir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"bench.example\"\nspool_dir = \"spool\"\nlocal_domains = [\"example.org\"]\n\
             max_connections = 2000\nmax_connections_per_client = 2000\n\n\
             [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\nallow = [\"127.0.0.0/8\"]\n\n\
             {section}"
        ),
    )?;
    let (relay, addr, _) = super::start_relay(relay_bin, &config, None)?;
    let pid = relay.0.id();
    let tls = client_tls(&rdir.join("ca.pem"))?;
    let user = |i: u64| {
        let n = i as usize % USERS;
        (format!("user{n}"), format!("password {n}"))
    };
    // Warm-up (connections to slapd, the allocator), not measured.
    for i in 0..20 {
        let (u, p) = user(i);
        login(addr, tls.clone(), u, p)
            .await
            .context("warm-up login")?;
    }
    println!(
        "bench: smtp-relay AUTH against the company directory (OpenLDAP slapd over ldaps on loopback, \
         {USERS} users), {RATE} logins/s offered for {SECS} s, one session each"
    );
    let total = RATE * SECS;
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        ticks.tick().await;
        let (u, p) = user(i);
        tasks.push(tokio::spawn(login(addr, tls.clone(), u, p)));
    }
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(d)) => lat.push(d),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = lat.len() as f64 / elapsed;
    lat.sort();
    let rss = super::rss_kb(pid, "VmRSS:") as f64 / 1024.0;
    let peak = super::rss_kb(pid, "VmHWM:") as f64 / 1024.0;
    let ms = |p: f64| super::percentile(&lat, p).as_secs_f64() * 1000.0;
    println!(
        "  {} logins in {elapsed:.1} s: {rate:.1}/s sustained, AUTH->235 p50 {:.2} ms  p99 {:.2} ms, \
         {errors} errors; relay RSS {rss:.1} MB, peak {peak:.1} MB",
        lat.len(),
        ms(0.50),
        ms(0.99)
    );
    drop(relay);
    if let Some(e) = first_error {
        bail!("{errors} logins failed, the first: {e}");
    }
    Ok(serde_json::json!({
        "users": USERS,
        "offered_per_second": RATE,
        "seconds": SECS,
        "logins": lat.len(),
        "errors": errors,
        "logins_per_second": rate,
        "p50_ms": ms(0.50),
        "p99_ms": ms(0.99),
        "rss_mb": rss,
        "peak_rss_mb": peak,
    }))
}
