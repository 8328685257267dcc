//! Connections per destination: each destination has a job channel and at
//! most `connections_per_destination` worker tasks, each owning one SMTP
//! connection that it reuses (RSET between messages) while jobs keep
//! coming and closes after `connection_idle` without work.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::client::{ClientError, ConnectOptions, SmtpClient, TlsClients};
use super::dns::{Dns, DnsError};
use super::route::{self, NextHop};
use super::tls_policy::{self, Applied, HostPlan, Policies, TlsResult};
use crate::config::TlsMode;
use crate::envelope::{Answer, EnhancedCode, HostResponse, LocalFinding, RcptStatus};

/// What happened to one recipient in one attempt: the next hop took it
/// (with its reply), or it waits for a retry, or it failed for good — each
/// with the answer that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(HostResponse),
    Deferred(Answer),
    Failed(Answer),
}

impl Outcome {
    fn from_reply(reply: &HostResponse) -> Outcome {
        if reply.is_positive() {
            Outcome::Delivered(reply.clone())
        } else if reply.is_permanent() {
            Outcome::Failed(Answer::Remote(reply.clone()))
        } else {
            Outcome::Deferred(Answer::Remote(reply.clone()))
        }
    }

    /// A temporary problem with `host` (when one was reached) and no reply.
    fn deferred(host: Option<SocketAddr>, enhanced: Option<[u8; 3]>, text: String) -> Outcome {
        Outcome::Deferred(Answer::Local(LocalFinding {
            host,
            enhanced: enhanced.map(EnhancedCode),
            text,
        }))
    }

    /// The recipient's new state.
    pub fn status(&self) -> RcptStatus {
        match self {
            Outcome::Delivered(_) => RcptStatus::Delivered,
            Outcome::Deferred(_) => RcptStatus::Pending,
            Outcome::Failed(_) => RcptStatus::Failed,
        }
    }

    /// The answer to record for the recipient.
    pub fn answer(&self) -> Answer {
        match self {
            Outcome::Delivered(r) => Answer::Remote(r.clone()),
            Outcome::Deferred(a) | Outcome::Failed(a) => a.clone(),
        }
    }
}

/// A message for one destination: the recipients (indices into the
/// envelope) still to deliver there.
pub struct Job {
    /// For the TLS audit line.
    pub queue_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub eight_bit: bool,
    pub message: Arc<Vec<u8>>,
    pub reply: oneshot::Sender<JobResult>,
}

/// The attempt's outcome per recipient (same order as `Job::recipients`);
/// each names the host it came from, if one was reached.
#[derive(Debug)]
pub struct JobResult {
    pub outcomes: Vec<Outcome>,
}

/// Settings every connection needs.
pub struct Settings {
    pub helo: String,
    pub per_destination: usize,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub idle: Duration,
    pub tls: TlsClients,
    /// DANE and MTA-STS: which TLS each MX host gets.
    pub policies: Policies,
}

/// DANE's client configs for one host; `authenticated`: the certificate is checked (a usable
/// TLSA record), else TLS is only mandatory (RFC 7672 2.2: records, none usable).
struct DaneClients {
    clients: TlsClients,
    authenticated: bool,
}

/// An open connection and what its TLS was, for the audit line of each job it carries.
struct Connected {
    client: SmtpClient,
    mx: String,
    applied: Applied,
    result: TlsResult,
    detail: String,
}

#[derive(Default)]
struct Counts {
    workers: usize,
    /// Jobs sent and not yet taken by a worker.
    queued: usize,
    /// Workers waiting for a job.
    idle: usize,
}

struct Destination {
    hop: NextHop,
    tx: mpsc::UnboundedSender<Job>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>,
    counts: Mutex<Counts>,
}

pub struct Pool {
    settings: Arc<Settings>,
    dns: Arc<Dns>,
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    pub fn new(settings: Settings, dns: Arc<Dns>) -> Arc<Pool> {
        Arc::new(Pool {
            settings: Arc::new(settings),
            dns,
            destinations: Mutex::new(HashMap::new()),
        })
    }

    /// Hands `job` to the destination's workers, starting one if every
    /// worker is busy and the limit allows.
    pub fn submit(self: &Arc<Self>, hop: &NextHop, job: Job) {
        let dest = {
            let mut map = lock(&self.destinations);
            map.entry(hop.key.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Arc::new(Destination {
                        hop: hop.clone(),
                        tx,
                        rx: tokio::sync::Mutex::new(rx),
                        counts: Mutex::new(Counts::default()),
                    })
                })
                .clone()
        };
        let mut counts = lock(&dest.counts);
        if dest.tx.send(job).is_err() {
            // The receiver lives in `dest`, so this cannot happen.
            return;
        }
        counts.queued += 1;
        if counts.queued > counts.idle && counts.workers < self.settings.per_destination {
            counts.workers += 1;
            let (pool, dest) = (self.clone(), dest.clone());
            tokio::spawn(async move { pool.worker(dest).await });
        }
    }

    async fn worker(self: Arc<Self>, dest: Arc<Destination>) {
        let mut conn: Option<Connected> = None;
        loop {
            let job = {
                lock(&dest.counts).idle += 1;
                let mut rx = dest.rx.lock().await;
                let job = match tokio::time::timeout(self.settings.idle, rx.recv()).await {
                    Ok(Some(job)) => Some(job),
                    Ok(None) | Err(_) => None,
                };
                let job = {
                    let mut counts = lock(&dest.counts);
                    counts.idle -= 1;
                    // Re-check under the counts lock so a job sent while we
                    // decided to stop is not left without a worker.
                    match job.or_else(|| rx.try_recv().ok()) {
                        Some(job) => {
                            counts.queued = counts.queued.saturating_sub(1);
                            Some(job)
                        }
                        None => {
                            counts.workers -= 1;
                            None
                        }
                    }
                };
                drop(rx);
                match job {
                    Some(job) => job,
                    None => {
                        if let Some(c) = conn.take() {
                            c.client.quit().await;
                        }
                        return;
                    }
                }
            };
            let result = self.run_job(&dest.hop, &mut conn, &job).await;
            let _ = job.reply.send(result);
        }
    }

    async fn run_job(&self, hop: &NextHop, conn: &mut Option<Connected>, job: &Job) -> JobResult {
        if let Some(c) = conn.as_mut()
            && c.client.rset().await.is_err()
        {
            *conn = None;
        }
        if conn.is_none() {
            match self.connect(hop, &job.queue_id).await {
                Ok(c) => *conn = Some(c),
                Err(outcome) => {
                    return JobResult {
                        outcomes: vec![outcome; job.recipients.len()],
                    };
                }
            }
        }
        let Some(connected) = conn.as_mut() else {
            return JobResult {
                outcomes: vec![
                    Outcome::deferred(None, None, "no connection".into());
                    job.recipients.len()
                ],
            };
        };
        let c = &mut connected.client;
        let peer = c.peer();
        tls_policy::audit(
            &job.queue_id,
            &connected.mx,
            Some(peer),
            connected.applied,
            c.tls_version(),
            connected.result,
            &connected.detail,
        );
        let recipients: Vec<&str> = job.recipients.iter().map(String::as_str).collect();
        match c
            .send(&job.sender, &recipients, job.eight_bit, &job.message)
            .await
        {
            Ok(tx) => JobResult {
                outcomes: outcomes(&tx, job.recipients.len()),
            },
            Err(e) => {
                *conn = None;
                JobResult {
                    outcomes: vec![
                        Outcome::deferred(
                            Some(peer),
                            None,
                            format!("lost connection: {e}")
                        );
                        job.recipients.len()
                    ],
                }
            }
        }
    }

    /// Tries the hop's addresses in order, as its TLS policy allows; the first that greets us
    /// wins. On failure, the outcome every recipient gets.
    async fn connect(&self, hop: &NextHop, queue_id: &str) -> Result<Connected, Outcome> {
        let targets = match route::resolve(&self.dns, &hop.targets).await {
            Ok(t) => t,
            Err(DnsError::Permanent(e)) => {
                return Err(Outcome::Failed(Answer::local(
                    Some([5, 1, 2]),
                    e.to_string(),
                )));
            }
            Err(e @ DnsError::Temporary(_)) => {
                return Err(Outcome::deferred(None, Some([4, 4, 3]), e.to_string()));
            }
        };
        let plan = self.settings.policies.plan(hop).await;
        let mut last = Outcome::deferred(None, Some([4, 4, 1]), "no next hop reachable".into());
        for target in &targets {
            // DANE (RFC 7672) goes first: a host with validated TLSA records gets mandatory TLS
            // with DANE's certificate check; the others follow `plan` (see `Plan::host`).
            let dane = match self.dane(hop, target).await {
                Ok(dane) => dane,
                Err(e) => {
                    let text = e.to_string();
                    tls_policy::audit(
                        queue_id,
                        &target.name,
                        Some(target.addr),
                        Applied::Dane,
                        None,
                        TlsResult::Failed,
                        &text,
                    );
                    last = Outcome::deferred(Some(target.addr), Some([4, 4, 3]), text);
                    continue;
                }
            };
            let (applied, wire, testing) = match (&dane, plan.host(&target.name)) {
                (Some(_), _) => (Applied::Dane, TlsMode::Required, false),
                (None, HostPlan::Skip { applied, reason }) => {
                    let mx = &target.name;
                    tls_policy::audit(
                        queue_id,
                        mx,
                        Some(target.addr),
                        applied,
                        None,
                        TlsResult::MxMismatch,
                        &reason,
                    );
                    // RFC 3463 X.7.5: a security requirement (here: of the policy) not met.
                    last = Outcome::deferred(None, Some([4, 7, 5]), reason);
                    continue;
                }
                (
                    None,
                    HostPlan::Connect {
                        applied,
                        wire,
                        testing,
                    },
                ) => (applied, wire, testing),
            };
            let verified = dane.as_ref().is_none_or(|d| d.authenticated);
            let tls_configs = dane.as_ref().map_or(&self.settings.tls, |d| &d.clients);
            let mut tls = wire;
            let mut detail = String::new();
            loop {
                let opts = ConnectOptions {
                    helo: &self.settings.helo,
                    server_name: &target.name,
                    tls,
                    auth: hop.auth.as_ref(),
                    connect_timeout: self.settings.connect_timeout,
                    reply_timeout: self.settings.reply_timeout,
                    tls_configs,
                };
                match SmtpClient::connect(target.addr, &opts).await {
                    Ok(client) => {
                        let result = match (client.is_tls(), tls) {
                            (false, _) => TlsResult::Plaintext,
                            (true, TlsMode::Required) if verified => TlsResult::Verified,
                            (true, _) => TlsResult::Encrypted,
                        };
                        return Ok(Connected {
                            client,
                            mx: target.name.clone(),
                            applied,
                            result,
                            detail,
                        });
                    }
                    // MTA-STS testing: report what enforce would refuse, then deliver anyway.
                    Err(e @ (ClientError::TlsHandshake(_) | ClientError::TlsRequired(_)))
                        if testing && tls == TlsMode::Required =>
                    {
                        let policy = plan.mta_sts().map(ToString::to_string).unwrap_or_default();
                        warn!(event = "mta_sts_testing", queue_id, mx = %target.name,
                            next_hop = %target.addr, policy, error = %e,
                            "TLS would fail under enforce (testing mode: delivered anyway)");
                        detail = format!("would fail under enforce: {e}");
                        tls = TlsMode::Opportunistic;
                    }
                    // Opportunistic TLS that fails: this host in plaintext.
                    Err(ClientError::TlsHandshake(e)) if tls == TlsMode::Opportunistic => {
                        debug!(event = "tls_fallback", next_hop = %target.addr, error = %e);
                        tls = TlsMode::None;
                    }
                    Err(e) => {
                        debug!(event = "connect_failed", next_hop = %target.addr, error = %e);
                        let tls_failure = matches!(
                            e,
                            ClientError::TlsHandshake(_) | ClientError::TlsRequired(_)
                        );
                        // DANE: TLS with a matching certificate or nothing (RFC 7672 2.2), so
                        // never the plaintext fallback above (its wire mode is `Required`).
                        let (text, enhanced) = match (tls_failure, plan.mta_sts()) {
                            (true, _) if applied == Applied::Dane => {
                                (format!("DANE: MX host {}: {e}", target.name), [4, 7, 5])
                            }
                            (true, Some(sts)) if matches!(applied, Applied::MtaSts { .. }) => {
                                (format!("{sts}: MX host {}: {e}", target.name), [4, 7, 5])
                            }
                            _ => (e.to_string(), [4, 4, 1]),
                        };
                        if tls_failure {
                            tls_policy::audit(
                                queue_id,
                                &target.name,
                                Some(target.addr),
                                applied,
                                None,
                                TlsResult::Failed,
                                &text,
                            );
                        }
                        // A 5xx greeting from one MX is no reason to give up
                        // on the others; only the last word counts.
                        last = Outcome::deferred(Some(target.addr), Some(enhanced), text);
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// DANE for a host when the hop's mode asks for it (`tls = "dane"`): the client configs
    /// that check its certificate against its DNSSEC-validated TLSA records, or `None` (no
    /// usable answer: the other policies decide).
    async fn dane(
        &self,
        hop: &NextHop,
        target: &route::Target,
    ) -> Result<Option<DaneClients>, super::dane::LookupFailed> {
        use super::dane::DaneTls;
        let Some(dane) = self.settings.policies.dane.as_ref() else {
            return Ok(None);
        };
        if hop.tls != TlsMode::Dane {
            return Ok(None);
        }
        let base = &self.settings.tls;
        let (verified, authenticated) = match dane
            .for_host(&target.name, target.addr.port(), &base.verified)
            .await?
        {
            DaneTls::Off => return Ok(None),
            DaneTls::Authenticated(config) => (config, true),
            DaneTls::EncryptOnly => (base.unverified.clone(), false),
        };
        Ok(Some(DaneClients {
            clients: TlsClients {
                verified,
                unverified: base.unverified.clone(),
            },
            authenticated,
        }))
    }
}

/// Per-recipient outcomes of a transaction: a MAIL refusal applies to all;
/// otherwise each RCPT's refusal, else the end-of-DATA reply.
fn outcomes(tx: &super::client::Transaction, n: usize) -> Vec<Outcome> {
    if !tx.mail.is_positive() {
        return vec![Outcome::from_reply(&tx.mail); n];
    }
    (0..n)
        .map(|i| match tx.rcpts.get(i) {
            Some(r) if !r.is_positive() => Outcome::from_reply(r),
            Some(r) => match &tx.data {
                Some(d) if d.code == 354 => Outcome::deferred(
                    Some(d.host),
                    None,
                    format!("unexpected reply after DATA: {d}"),
                ),
                Some(d) => Outcome::from_reply(d),
                None => Outcome::deferred(Some(r.host), None, "no DATA reply".into()),
            },
            None => Outcome::deferred(Some(tx.mail.host), None, "no RCPT reply".into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::client::Transaction;
    use super::*;

    fn r(code: u16, text: &str) -> HostResponse {
        let parsed =
            crate::envelope::parse_reply_text(&format!("{code} {text}"), true).expect("reply");
        HostResponse::new("127.0.0.1:25".parse().expect("addr"), parsed)
    }

    /// Each outcome as (state, answer text), the way the queue records it.
    fn seen(outcomes: Vec<Outcome>) -> Vec<(RcptStatus, String)> {
        outcomes
            .iter()
            .map(|o| (o.status(), o.answer().to_string()))
            .collect()
    }

    #[test]
    fn outcome_mapping() {
        use RcptStatus::{Delivered, Failed, Pending};
        let tx = Transaction {
            mail: r(250, "ok"),
            rcpts: vec![r(250, "ok"), r(550, "5.1.1 unknown"), r(450, "4.2.0 busy")],
            data: Some(r(250, "2.0.0 queued")),
        };
        assert_eq!(
            seen(outcomes(&tx, 3)),
            vec![
                (Delivered, "250 2.0.0 queued".into()),
                (Failed, "550 5.1.1 unknown".into()),
                (Pending, "450 4.2.0 busy".into()),
            ]
        );
        let tx = Transaction {
            mail: r(452, "4.3.1 full"),
            rcpts: vec![],
            data: None,
        };
        assert_eq!(
            seen(outcomes(&tx, 2)),
            vec![(Pending, "452 4.3.1 full".into()); 2]
        );
        let tx = Transaction {
            mail: r(250, "ok"),
            rcpts: vec![r(250, "ok")],
            data: Some(r(554, "5.6.0 no")),
        };
        assert_eq!(
            seen(outcomes(&tx, 1)),
            vec![(Failed, "554 5.6.0 no".into())]
        );
        // Every answer names the host it came from.
        assert!(
            outcomes(&tx, 1)
                .iter()
                .all(|o| o.answer().host() == Some("127.0.0.1:25".parse().expect("addr")))
        );
    }
}
