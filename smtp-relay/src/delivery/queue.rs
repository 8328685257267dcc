//! The queue manager: schedules queued messages, runs delivery attempts
//! (bounded by `max_deliveries`), records per-recipient state in the spool
//! after every answer, bounces failures, and retries the rest with
//! exponential backoff. The spool is the only state that matters: on
//! start every queued envelope is scheduled again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::dns::Dns;
use super::dsn;
use super::mta_sts::{MtaSts, cache::Cache, fetch::Fetcher};
use super::pool::{Job, Outcome, Pool, Settings};
use super::route::Router;
use super::tls_policy::Policies;
use crate::config::DeliveryConfig;
use crate::envelope::{Answer, BodyType, EnhancedCode, LocalFinding};
use crate::metrics;
use crate::spool::{Envelope, RcptStatus, Spool};

struct State {
    /// Waiting messages and when they are due.
    waiting: HashMap<String, Instant>,
    /// Messages with an attempt in progress.
    active: HashSet<String>,
    /// Removals asked for while an attempt was in progress.
    remove: HashSet<String>,
    /// Enqueue times (Unix seconds) of every known message, for the gauges.
    received: HashMap<String, u64>,
}

struct Inner {
    spool: Spool,
    router: Router,
    pool: Arc<Pool>,
    config: DeliveryConfig,
    hostname: String,
    local_domains: Vec<String>,
    /// Signs submitted mail (`[dkim]`); `None` signs nothing.
    dkim: Option<Arc<crate::dkim::Signer>>,
    state: Mutex<State>,
    wake: Notify,
    slots: Arc<Semaphore>,
}

/// A handle on the running queue (cheap to clone).
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

/// What `remove` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// An attempt is in progress; the message goes when it ends.
    AfterAttempt,
    NotFound,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Delay before attempt `attempts + 1`: initial, doubled each time, capped.
pub fn backoff(config: &DeliveryConfig, attempts: u32) -> Duration {
    let factor = 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
    config.retry_initial.mul_f64(factor).min(config.retry_max)
}

impl Queue {
    /// Builds the queue and schedules everything already in the spool.
    pub fn new(
        spool: Spool,
        config: DeliveryConfig,
        hostname: &str,
        local_domains: &[String],
        dkim: Option<Arc<crate::dkim::Signer>>,
    ) -> anyhow::Result<Queue> {
        let dns = Arc::new(Dns::new(&config.nameservers)?);
        let tls = super::tls::clients(config.ca_file.as_deref())?;
        let policies = Policies {
            dane: super::dane::Dane::new(&config.nameservers)?,
            mta_sts: mta_sts(&config, spool.dir(), &dns, &tls)?,
        };
        let pool = Pool::new(
            Settings {
                helo: hostname.to_owned(),
                per_destination: config.connections_per_destination,
                connect_timeout: config.connect_timeout,
                reply_timeout: config.reply_timeout,
                idle: config.connection_idle,
                tls,
                policies,
            },
            dns,
        );
        for id in spool.remove_orphans()? {
            info!(event = "orphan_removed", queue_id = %id, "message file without envelope (never acknowledged)");
        }
        let mut state = State {
            waiting: HashMap::new(),
            active: HashSet::new(),
            remove: HashSet::new(),
            received: HashMap::new(),
        };
        let now = crate::clock::unix_now();
        for id in spool.queued_ids()? {
            match spool.read_envelope(&id) {
                Ok(env) => {
                    let wait = Duration::from_secs(env.next_attempt.saturating_sub(now));
                    state.waiting.insert(id.clone(), Instant::now() + wait);
                    state.received.insert(id, env.received_at);
                }
                Err(e) => error!(event = "queue_error", queue_id = %id, error = %format!("{e:#}")),
            }
        }
        info!(event = "queue_loaded", messages = state.waiting.len());
        let slots = Arc::new(Semaphore::new(config.max_deliveries));
        Ok(Queue {
            inner: Arc::new(Inner {
                spool,
                router: Router::new(&config),
                pool,
                config,
                hostname: hostname.to_owned(),
                local_domains: local_domains.to_vec(),
                dkim,
                state: Mutex::new(state),
                wake: Notify::new(),
                slots,
            }),
        })
    }

    /// A message was just queued: deliver it now.
    pub fn enqueued(&self, id: &str, received_at: u64) {
        {
            let mut s = lock(&self.inner.state);
            s.waiting.insert(id.to_owned(), Instant::now());
            s.received.insert(id.to_owned(), received_at);
        }
        self.inner.wake.notify_one();
    }

    /// Makes every waiting message due now. Returns how many.
    pub fn flush(&self) -> usize {
        let n = {
            let mut s = lock(&self.inner.state);
            let now = Instant::now();
            for due in s.waiting.values_mut() {
                *due = now;
            }
            s.waiting.len()
        };
        self.inner.wake.notify_one();
        n
    }

    /// Takes a message out of the queue (operator command).
    pub fn remove(&self, id: &str) -> std::io::Result<Removal> {
        let mut s = lock(&self.inner.state);
        if s.active.contains(id) {
            s.remove.insert(id.to_owned());
            return Ok(Removal::AfterAttempt);
        }
        let known = s.waiting.remove(id).is_some();
        s.received.remove(id);
        drop(s);
        let exists = self.inner.spool.dir().join(format!("{id}.env")).exists();
        if known || exists {
            self.inner.spool.remove(id)?;
            info!(event = "removed", queue_id = %id, outcome = "removed", "removed by operator");
            Ok(Removal::Removed)
        } else {
            Ok(Removal::NotFound)
        }
    }

    /// Messages known to the queue (waiting or in an attempt).
    pub fn depth(&self) -> usize {
        let s = lock(&self.inner.state);
        s.waiting.len() + s.active.len()
    }

    fn update_gauges(&self) {
        let s = lock(&self.inner.state);
        metrics::QUEUE_DEPTH.set((s.waiting.len() + s.active.len()) as u64);
        metrics::OLDEST_RECEIVED_AT.set(s.received.values().copied().min().unwrap_or(0));
    }

    /// Runs until `stop` turns true; then lets attempts in progress finish
    /// (up to `grace`) and returns.
    pub async fn run(self, mut stop: watch::Receiver<bool>, grace: Duration) {
        let mut tasks = JoinSet::new();
        loop {
            let (due, next) = self.take_due();
            for (id, permit) in due {
                let q = self.clone();
                tasks.spawn(async move {
                    q.attempt(&id).await;
                    drop(permit);
                    q.inner.wake.notify_one();
                });
            }
            self.update_gauges();
            let sleep = next.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(
                event = "queue_stop",
                "delivery attempts still running; aborted (they will be retried)"
            );
            tasks.abort_all();
        }
    }

    /// Due messages with a delivery slot each, and the next due time among
    /// those left waiting.
    fn take_due(
        &self,
    ) -> (
        Vec<(String, tokio::sync::OwnedSemaphorePermit)>,
        Option<Instant>,
    ) {
        let now = Instant::now();
        let mut s = lock(&self.inner.state);
        let mut ready: Vec<(Instant, String)> = s
            .waiting
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(id, due)| (*due, id.clone()))
            .collect();
        ready.sort();
        let mut out = Vec::new();
        for (_, id) in ready {
            let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
                break;
            };
            s.waiting.remove(&id);
            s.active.insert(id.clone());
            out.push((id, permit));
        }
        // With every slot busy, a due message waits for a slot (the end of
        // an attempt wakes us), not for the clock.
        let next = if self.inner.slots.available_permits() == 0 {
            None
        } else {
            s.waiting.values().copied().min()
        };
        (out, next)
    }

    /// One delivery attempt for every pending recipient of a message.
    async fn attempt(&self, id: &str) {
        let inner = &self.inner;
        let (mut env, message) = match inner.spool.read(id) {
            Ok(m) => m,
            Err(e) => {
                // Gone (removed by hand) or unreadable: forget it.
                warn!(event = "queue_error", queue_id = %id, error = %format!("{e:#}"), "cannot read queued message; dropped from the schedule");
                self.finish(id, None);
                return;
            }
        };
        let message = Arc::new(message);
        let now = crate::clock::unix_now();
        let expired =
            now.saturating_sub(env.received_at) >= inner.config.max_queue_lifetime.as_secs();
        if expired {
            for i in 0..env.recipients.len() {
                let r = &mut env.recipients[i];
                if r.status != RcptStatus::Pending {
                    continue;
                }
                let last = r.last.take();
                let expired_answer = Answer::Local(LocalFinding {
                    host: last.as_ref().and_then(Answer::host),
                    enhanced: Some(EnhancedCode([4, 4, 7])),
                    text: format!(
                        "message expired in the queue; last reply: {}",
                        last.map_or_else(|| "no attempt succeeded".into(), |a| a.to_string())
                    ),
                });
                log_attempt(
                    &env,
                    &env.recipients[i].address,
                    &expired_answer,
                    Attempt::Expired,
                );
                let r = &mut env.recipients[i];
                r.last = Some(expired_answer);
                r.status = RcptStatus::Failed;
                metrics::BOUNCED.inc();
            }
        } else {
            let outgoing = self.signed(&env, &message).await;
            self.deliver_pending(&mut env, &outgoing).await;
        }
        env.attempts += 1;
        let removal_asked = lock(&inner.state).remove.remove(id);
        if removal_asked {
            match self.remove_blocking(id).await {
                Ok(()) => {
                    info!(event = "removed", queue_id = %id, outcome = "removed", "removed by operator after the attempt")
                }
                Err(e) => error!(event = "queue_error", queue_id = %id, error = %e),
            }
            self.finish(id, None);
            return;
        }
        if env.has_pending() {
            let delay = backoff(&inner.config, env.attempts);
            env.next_attempt = now + delay.as_secs();
            if let Err(e) = self.update_blocking(&env).await {
                error!(event = "queue_error", queue_id = %id, error = %e, "cannot record delivery state");
            }
            info!(event = "retry", queue_id = %id, attempts = env.attempts, retry_in = delay.as_secs_f64(), "deferred");
            self.finish(id, Some(Instant::now() + delay));
            return;
        }
        // Every recipient is final: bounce the failed ones, then let go.
        if let Some((benv, bytes)) =
            dsn::bounce(&inner.hostname, &inner.local_domains, &env, &message, now)
        {
            match inner.spool.enqueue(benv.clone(), &bytes).await {
                Ok(bid) => {
                    info!(event = "bounce", queue_id = %id, bounce_id = %bid, sender = ?env.sender, outcome = "queued", "delivery status notification queued");
                    self.enqueued(&bid, benv.received_at);
                }
                Err(e) => {
                    error!(event = "queue_error", queue_id = %id, error = %e, "cannot queue the bounce; retrying later");
                    let delay = backoff(&inner.config, env.attempts);
                    let _ = self.update_blocking(&env).await;
                    self.finish(id, Some(Instant::now() + delay));
                    return;
                }
            }
        } else if env.null_sender()
            && env
                .recipients
                .iter()
                .any(|r| r.status == RcptStatus::Failed)
        {
            warn!(event = "bounce", queue_id = %id, sender = "<>", outcome = "dropped", "failed message with null sender: not bounced");
        }
        match self.remove_blocking(id).await {
            Ok(()) => {
                info!(event = "done", queue_id = %id, attempts = env.attempts, "removed from the queue")
            }
            Err(e) => {
                error!(event = "queue_error", queue_id = %id, error = %e, "cannot remove finished message")
            }
        }
        self.finish(id, None);
    }

    /// The message as it goes out: with our DKIM signatures on top when the client
    /// authenticated or was trusted and its `From:` domain has keys (see `crate::dkim`).
    /// Bounces quote the message as stored. The signature is CPU work (RSA-2048: most of a
    /// millisecond), so it runs on a blocking thread: on the async workers it would hold up
    /// every session and delivery sharing the worker.
    async fn signed(&self, env: &Envelope, message: &Arc<Vec<u8>>) -> Arc<Vec<u8>> {
        let Some(signer) = &self.inner.dkim else {
            return message.clone();
        };
        if !env.submitted() || env.is_bounce {
            return message.clone();
        }
        let (signer, bytes) = (signer.clone(), message.clone());
        let signature = tokio::task::spawn_blocking(move || signer.sign(&bytes))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("signing task: {e}")));
        match signature {
            Ok(Some(signed)) => {
                info!(event = "dkim_signed", queue_id = %env.id, domain = %signed.domain,
                    keys = %signed.keys.join(","), "signed");
                let mut out = Vec::with_capacity(signed.fields.len() + message.len());
                out.extend_from_slice(signed.fields.as_bytes());
                out.extend_from_slice(message);
                Arc::new(out)
            }
            Ok(None) => message.clone(),
            Err(e) => {
                crate::metrics::DKIM_SIGN_FAILED.inc();
                warn!(event = "dkim_sign_failed", queue_id = %env.id, error = %format!("{e:#}"),
                    "sent unsigned");
                message.clone()
            }
        }
    }

    /// Groups the pending recipients by next hop, hands each group to the
    /// pool, and records each answer in the spool as soon as it comes.
    async fn deliver_pending(&self, env: &mut Envelope, message: &Arc<Vec<u8>>) {
        let inner = &self.inner;
        let mut groups: Vec<(super::route::NextHop, Vec<usize>)> = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.status != RcptStatus::Pending {
                continue;
            }
            let hop = inner.router.route(&r.address);
            match groups.iter_mut().find(|(h, _)| h.key == hop.key) {
                Some((_, v)) => v.push(i),
                None => groups.push((hop, vec![i])),
            }
        }
        let mut waiting = Vec::new();
        for (hop, indices) in groups {
            let (tx, rx) = oneshot::channel();
            inner.pool.submit(
                &hop,
                Job {
                    queue_id: env.id.clone(),
                    sender: env.sender.clone(),
                    recipients: indices
                        .iter()
                        .map(|&i| env.recipients[i].address.clone())
                        .collect(),
                    eight_bit: env.body == BodyType::EightBitMime,
                    message: message.clone(),
                    reply: tx,
                },
            );
            waiting.push((indices, rx));
        }
        for (indices, rx) in waiting {
            let Ok(result) = rx.await else {
                continue;
            };
            for (&i, outcome) in indices.iter().zip(&result.outcomes) {
                let answer = outcome.answer();
                let attempt = match outcome {
                    Outcome::Delivered(_) => Attempt::Delivered,
                    Outcome::Deferred(_) => Attempt::Deferred,
                    Outcome::Failed(_) => Attempt::Bounced,
                };
                match attempt {
                    Attempt::Delivered => metrics::DELIVERED.inc(),
                    Attempt::Deferred => metrics::DEFERRED.inc(),
                    Attempt::Bounced | Attempt::Expired => metrics::BOUNCED.inc(),
                }
                log_attempt(env, &env.recipients[i].address, &answer, attempt);
                let r = &mut env.recipients[i];
                r.status = outcome.status();
                r.last = Some(answer);
            }
            // Record the answer now: a crash after this point must not send
            // the message again to recipients that already have it. When
            // every recipient is delivered, removing the envelope (next, in
            // `attempt`) records it sooner than a rewrite would.
            let all_delivered = env
                .recipients
                .iter()
                .all(|r| r.status == RcptStatus::Delivered);
            if !all_delivered
                && result
                    .outcomes
                    .iter()
                    .any(|o| !matches!(o, Outcome::Deferred(_)))
                && let Err(e) = self.update_blocking(env).await
            {
                error!(event = "queue_error", queue_id = %env.id, error = %e, "cannot record delivery state");
            }
        }
    }

    /// Spool writes end in fsync: off the async worker threads.
    async fn update_blocking(&self, env: &Envelope) -> std::io::Result<()> {
        let (spool, env) = (self.inner.spool.clone(), env.clone());
        tokio::task::spawn_blocking(move || spool.update(&env))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn remove_blocking(&self, id: &str) -> std::io::Result<()> {
        let (spool, id) = (self.inner.spool.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || spool.remove(&id))
            .await
            .map_err(std::io::Error::other)?
    }

    fn finish(&self, id: &str, again_at: Option<Instant>) {
        let mut s = lock(&self.inner.state);
        s.active.remove(id);
        match again_at {
            Some(t) => {
                s.waiting.insert(id.to_owned(), t);
            }
            None => {
                s.received.remove(id);
            }
        }
    }
}

/// The MTA-STS policy source when a route or `mx_tls` may consult it: lookups through the
/// delivery nameservers, fetches verified against the same trust anchors as next hops, the
/// cache under `<spool_dir>/mta-sts`.
fn mta_sts(
    config: &DeliveryConfig,
    spool_dir: &std::path::Path,
    dns: &Arc<Dns>,
    tls: &super::client::TlsClients,
) -> anyhow::Result<Option<Arc<MtaSts>>> {
    let used = config.mx_tls.is_policy() || config.routes.iter().any(|(_, h)| h.tls.is_policy());
    if !used {
        return Ok(None);
    }
    let resolver = if config.nameservers.is_empty() {
        None
    } else {
        Some(crate::dns::resolver(
            &config.nameservers,
            Duration::from_secs(5),
            2,
            1024,
        )?)
    };
    let fetcher = Fetcher {
        tls: tls.verified.clone(),
        port: config.mta_sts_port,
        timeout: config.mta_sts_fetch_timeout,
    };
    let cache = Cache::open(spool_dir.join("mta-sts"))?;
    Ok(Some(Arc::new(MtaSts::new(
        resolver,
        dns.clone(),
        fetcher,
        cache,
    ))))
}

/// The `outcome` of a delivery log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
enum Attempt {
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

/// The delivery log: one line per recipient and attempt. `next_hop` is the
/// host the answer came from, `none` when no host was reached.
fn log_attempt(env: &Envelope, recipient: &str, answer: &Answer, attempt: Attempt) {
    let delay = (now_secs_f64() - env.received_at as f64).max(0.0);
    let delay = format!("{delay:.3}");
    let next_hop = answer
        .host()
        .map_or_else(|| "none".to_owned(), |h| h.to_string());
    let next_hop = next_hop.as_str();
    let reply = answer.to_string();
    let outcome: &'static str = attempt.into();
    if attempt == Attempt::Delivered {
        info!(target: "delivery", event = "delivery", queue_id = %env.id, sender = ?env.sender,
            recipient = ?recipient, next_hop, reply = ?reply, delay = %delay, attempt = env.attempts + 1,
            outcome, "delivery attempt");
    } else {
        warn!(target: "delivery", event = "delivery", queue_id = %env.id, sender = ?env.sender,
            recipient = ?recipient, next_hop, reply = ?reply, delay = %delay, attempt = env.attempts + 1,
            outcome, "delivery attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut c = crate::config::DeliveryConfig {
            routes: vec![],
            smarthost: None,
            nameservers: vec![],
            mx_port: 25,
            mx_tls: crate::config::TlsMode::None,
            ca_file: None,
            mta_sts_port: 443,
            mta_sts_fetch_timeout: Duration::from_secs(1),
            connections_per_destination: 1,
            max_deliveries: 1,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            reply_timeout: Duration::from_secs(1),
            connection_idle: Duration::from_secs(1),
        };
        let d: Vec<u64> = (1..=8).map(|a| backoff(&c, a).as_secs()).collect();
        assert_eq!(d, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        c.retry_initial = Duration::from_millis(200);
        assert_eq!(backoff(&c, 1), Duration::from_millis(200));
        assert_eq!(backoff(&c, 1000), Duration::from_secs(3600));
    }
}
