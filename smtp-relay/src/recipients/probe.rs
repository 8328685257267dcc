//! Recipient verification against the next hop (Postfix's `reject_unverified_recipient`): an
//! RCPT probe to the route mail for the domain takes (never public MX), answered from a cache
//! with a positive, a negative and a short tempfail TTL.
//!
//! Bounded work: concurrent RCPTs for the same address share one probe (single flight), at most
//! `probe_concurrency` probes run at once over the process, and each RCPT waits at most
//! `probe_timeout` (for a permit and the whole probe). A hop that cannot be reached is
//! remembered as down for the tempfail TTL, so a storm of RCPTs for different addresses does not
//! become a storm of connections to a dead host. Anything but a 2xx or 5xx answer to RCPT is
//! "unavailable": the client gets `451 4.4.3`, never `250`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};
use tracing::debug;

use crate::config::{Config, HopConfig, RecipientsConfig, TlsMode};
use crate::delivery::client::{ClientError, ConnectOptions, SmtpClient, TlsClients};
use crate::delivery::dns::Dns;
use crate::delivery::route::{self, Targets};
use crate::metrics;

/// What the next hop said about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx to RCPT.
    Known,
    /// 5xx to RCPT: the reply.
    Unknown(String),
    /// No answer about the recipient: why.
    Unavailable(String),
}

/// Probes under way, by lowercased address.
type Inflight = Mutex<HashMap<String, Arc<OnceCell<Answer>>>>;

/// One RCPT's share of a probe. Dropping it (answered, or the session went away) takes the
/// probe out of the map, so abandoned probes cannot pile up there.
struct Flight<'a> {
    map: &'a Inflight,
    key: &'a str,
    cell: Arc<OnceCell<Answer>>,
}

impl<'a> Flight<'a> {
    fn join(map: &'a Inflight, key: &'a str) -> Flight<'a> {
        let cell = lock(map)
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        Flight { map, key, cell }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        if map
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(self.key);
        }
    }
}

/// Probes and their cached answers, one per process.
pub struct Prober {
    dns: Dns,
    tls: TlsClients,
    helo: String,
    connect_timeout: Duration,
    reply_timeout: Duration,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    tempfail_ttl: Duration,
    /// Held from connect to the end of QUIT: it bounds connections to next hops.
    permits: Arc<Semaphore>,
    cache: Mutex<super::cache::Cache<Answer>>,
    /// Probes under way; later askers wait for the same answer.
    inflight: Inflight,
    /// Hops (`host:port`) that could not be reached, until when they count as down.
    down: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hop_key(hop: &HopConfig) -> String {
    format!("{}:{}", hop.host, hop.port)
}

impl Prober {
    pub fn new(config: &Config, r: &RecipientsConfig) -> anyhow::Result<Prober> {
        let delivery = config.delivery.as_ref();
        let nameservers = delivery.map_or(&[][..], |d| &d.nameservers[..]);
        Ok(Prober {
            dns: Dns::new(nameservers)?,
            tls: crate::delivery::tls::clients(delivery.and_then(|d| d.ca_file.as_deref()))?,
            helo: config.hostname.clone(),
            connect_timeout: delivery.map_or(r.probe_timeout, |d| d.connect_timeout),
            reply_timeout: delivery.map_or(r.probe_timeout, |d| d.reply_timeout),
            timeout: r.probe_timeout,
            positive_ttl: r.positive_ttl,
            negative_ttl: r.negative_ttl,
            tempfail_ttl: r.tempfail_ttl,
            permits: Arc::new(Semaphore::new(r.probe_concurrency)),
            cache: Mutex::new(super::cache::Cache::new(r.cache_entries)),
            inflight: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
        })
    }

    /// What `hop` says about `address`: from the cache, from a probe under way, or from a new
    /// probe.
    pub async fn verify(&self, address: &str, hop: &HopConfig) -> Answer {
        let key = address.to_ascii_lowercase();
        if let Some(answer) = lock(&self.cache).get(&key, Instant::now()) {
            metrics::recipient_cache(true);
            return answer;
        }
        metrics::recipient_cache(false);
        let flight = Flight::join(&self.inflight, &key);
        // If the session running the probe goes away, the next waiter runs it instead.
        flight
            .cell
            .get_or_init(|| self.probe_and_remember(&key, address, hop))
            .await
            .clone()
    }

    async fn probe_and_remember(&self, key: &str, address: &str, hop: &HopConfig) -> Answer {
        let connecting = AtomicBool::new(false);
        let probe = self.probe(address, hop, &connecting);
        let answer = match tokio::time::timeout(self.timeout, probe).await {
            Ok(answer) => answer,
            Err(_) => {
                // Down only when the hop itself was slow, not when the wait was for a permit.
                if connecting.load(Ordering::Relaxed) {
                    self.mark_down(hop);
                }
                Answer::Unavailable(format!(
                    "no answer from the next hop within {:?}",
                    self.timeout
                ))
            }
        };
        let ttl = match answer {
            Answer::Known => self.positive_ttl,
            Answer::Unknown(_) => self.negative_ttl,
            Answer::Unavailable(_) => self.tempfail_ttl,
        };
        if !ttl.is_zero() {
            lock(&self.cache).put(key.to_owned(), answer.clone(), Instant::now() + ttl);
        }
        answer
    }

    fn mark_down(&self, hop: &HopConfig) {
        if !self.tempfail_ttl.is_zero() {
            lock(&self.down).insert(hop_key(hop), Instant::now() + self.tempfail_ttl);
        }
    }

    fn is_down(&self, hop: &HopConfig) -> bool {
        let mut down = lock(&self.down);
        let key = hop_key(hop);
        match down.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(&key);
                false
            }
            None => false,
        }
    }

    /// One probe, waiting for a permit first; `connecting` is set once it has one.
    async fn probe(&self, address: &str, hop: &HopConfig, connecting: &AtomicBool) -> Answer {
        if self.is_down(hop) {
            return Answer::Unavailable(format!(
                "next hop {} unreachable (remembered for {:?})",
                hop_key(hop),
                self.tempfail_ttl
            ));
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return Answer::Unavailable("shutting down".into());
        };
        connecting.store(true, Ordering::Relaxed);
        let mut client = match self.connect(hop).await {
            Ok(c) => c,
            Err(e) => {
                drop(permit);
                self.mark_down(hop);
                return Answer::Unavailable(e);
            }
        };
        let answer = match client.probe(address).await {
            Ok(reply) if (200..300).contains(&reply.code) => Answer::Known,
            Ok(reply) if (500..600).contains(&reply.code) => Answer::Unknown(reply.to_string()),
            Ok(reply) => Answer::Unavailable(reply.to_string()),
            Err(e) => Answer::Unavailable(e.to_string()),
        };
        // The answer is in: a hop slow to say goodbye must not delay it (or time it out).
        tokio::spawn(async move {
            client.quit().await;
            drop(permit);
        });
        answer
    }

    /// The first of the hop's addresses that greets us (as delivery connects: TLS per the
    /// hop, opportunistic TLS falls back to plaintext), or why none did.
    async fn connect(&self, hop: &HopConfig) -> Result<SmtpClient, String> {
        let targets = Targets::Host {
            host: hop.host.clone(),
            port: hop.port,
        };
        let targets = route::resolve(&self.dns, &targets)
            .await
            .map_err(|e| e.to_string())?;
        let mut last = format!("next hop {} not reachable", hop_key(hop));
        for target in &targets {
            let mut tls = hop.tls;
            loop {
                let opts = ConnectOptions {
                    helo: &self.helo,
                    server_name: &target.name,
                    tls,
                    auth: hop.auth.as_ref(),
                    connect_timeout: self.connect_timeout,
                    reply_timeout: self.reply_timeout,
                    tls_configs: &self.tls,
                };
                match SmtpClient::connect(target.addr, &opts).await {
                    Ok(c) => return Ok(c),
                    Err(ClientError::TlsHandshake(e))
                        if matches!(
                            tls,
                            TlsMode::Opportunistic | TlsMode::MtaSts | TlsMode::Dane
                        ) =>
                    {
                        debug!(event = "probe_tls_fallback", next_hop = %target.addr, error = %e);
                        tls = TlsMode::None;
                    }
                    Err(e) => {
                        last = format!("next hop {}: {e}", target.addr);
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::recipients::{Directory, RecipientResult};

    /// A next hop on loopback that knows alice, holds every RCPT answer back `delay` (or
    /// never greets), and counts connections and how many were open at once.
    struct Hop {
        addr: std::net::SocketAddr,
        connections: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
    }

    async fn hop(delay: Duration, silent: bool) -> Hop {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (c, m) = (connections.clone(), most_at_once.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let (r, mut w) = tcp.into_split();
                    if silent {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let mut lines = BufReader::new(r).lines();
                    let mut counted = true;
                    let _ = w.write_all(b"220 hop.test\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply = if upper.starts_with("RCPT") {
                            tokio::time::sleep(delay).await;
                            if upper.contains("<ALICE@") {
                                "250 2.1.5 ok"
                            } else {
                                "550 5.1.1 unknown"
                            }
                        } else if upper == "QUIT" {
                            // Closed before the client hears so: it may connect again at once.
                            open.fetch_sub(1, Ordering::SeqCst);
                            counted = false;
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            "250 ok"
                        };
                        let _ = w.write_all(format!("{reply}\r\n").as_bytes()).await;
                    }
                    if counted {
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Hop {
            addr,
            connections,
            most_at_once,
        }
    }

    fn directory(hop: std::net::SocketAddr, extra: &str) -> Arc<Directory> {
        let text = format!(
            "hostname = \"mx.example.org\"\nspool_dir = \"s\"\nlocal_domains = [\"example.org\"]\n\
             [tls]\ncert = \"c\"\nkey = \"k\"\n\
             [[listener]]\naddress = \"127.0.0.1:25\"\nrole = \"mta\"\nallow = [\"0.0.0.0/0\"]\n\
             [delivery]\nconnect_timeout_secs = 5\nreply_timeout_secs = 5\n\
             [[delivery.route]]\ndomain = \"example.org\"\nhost = \"{}\"\nport = {}\ntls = \"none\"\n\
             [recipients]\n{extra}\n\
             [[recipients.domain]]\ndomain = \"example.org\"\nsource = \"verify\"\n",
            hop.ip(),
            hop.port()
        );
        let config =
            Config::parse(&text, std::path::Path::new("/nonexistent/relay.toml")).expect("config");
        Arc::new(Directory::new(&config).expect("directory").expect("some"))
    }

    async fn results(d: &Arc<Directory>, addresses: &[String]) -> Vec<RecipientResult> {
        let tasks: Vec<_> = addresses
            .iter()
            .map(|a| {
                let (d, a) = (d.clone(), a.clone());
                tokio::spawn(async move { d.verify(&a).await.result })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    }

    #[tokio::test]
    async fn concurrent_rcpts_for_one_address_share_one_probe() {
        let h = hop(Duration::from_millis(300), false).await;
        let d = directory(h.addr, "");
        let same = vec!["alice@example.org".to_owned(); 5];
        assert_eq!(results(&d, &same).await, [RecipientResult::Known; 5]);
        assert_eq!(h.connections.load(Ordering::SeqCst), 1);
        let other = vec![
            "Nobody@example.org".to_owned(),
            "nobody@EXAMPLE.org".to_owned(),
        ];
        assert_eq!(results(&d, &other).await, [RecipientResult::Unknown; 2]);
        assert_eq!(h.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn probes_run_at_most_probe_concurrency_at_once() {
        let h = hop(Duration::from_millis(100), false).await;
        let d = directory(h.addr, "probe_concurrency = 2");
        let many: Vec<String> = (0..6).map(|i| format!("u{i}@example.org")).collect();
        assert_eq!(results(&d, &many).await, [RecipientResult::Unknown; 6]);
        assert_eq!(h.connections.load(Ordering::SeqCst), 6);
        assert!(h.most_at_once.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn a_silent_hop_is_unverified_after_probe_timeout() {
        let h = hop(Duration::ZERO, true).await;
        let d = directory(h.addr, "probe_timeout_secs = 0.3");
        let got = tokio::time::timeout(Duration::from_secs(10), d.verify("alice@example.org"))
            .await
            .expect("bounded by probe_timeout_secs");
        assert_eq!(got.result, RecipientResult::Unverified);
        assert!(
            got.detail.contains("no answer from the next hop"),
            "{got:?}"
        );
    }
}
