//! Connection-time screening of strangers on `mta` listeners, postscreen's job in-process: the
//! DNS lists of `[screen]` asked in parallel while the greeting is held back, their weights
//! summed (DNSBL up, DNSWL down) against the threshold, the verdict kept per client address for
//! `cache_secs`. The pre-greet wait runs in the server next to [`Screen::connect`]; the HELO
//! judge ([`helo`]) runs in the session.

pub mod dnsbl;
pub mod helo;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use ipnet::IpNet;
use tokio::task::JoinSet;
use tracing::warn;

use crate::bans::sources::{CAPACITY, Sources};
use crate::check::{Check, CheckResult};
use crate::config::screen::{HeloCheck, ZoneConfig};
use crate::config::{DnsConfig, Role, ScreenConfig};
use crate::reply::Reply;
use dnsbl::ZoneAnswer;

/// The lists' verdict on one client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// DNSBL entries that list the client, with their weights.
    pub listed: Vec<(String, i64)>,
    /// DNSWL entries that list the client, with their weights.
    pub welcome: Vec<(String, i64)>,
    /// Zones that gave no usable answer (counted 0).
    pub temperror: Vec<String>,
    pub score: i64,
    pub threshold: i64,
}

impl Decision {
    pub fn blocked(&self) -> bool {
        self.score >= self.threshold
    }

    /// The zone named in the refusal: the heaviest listing, the first written on a tie.
    pub fn blocked_by(&self) -> Option<&str> {
        if !self.blocked() {
            return None;
        }
        let mut best: Option<&(String, i64)> = None;
        for l in &self.listed {
            if best.is_none_or(|b| l.1 > b.1) {
                best = Some(l);
            }
        }
        best.map(|(zone, _)| zone.as_str())
    }

    /// `554 5.7.1` naming the client and a zone, when the score reached the threshold.
    pub fn refusal(&self, client: IpAddr) -> Option<Reply> {
        let zone = self.blocked_by()?;
        Some(Reply::new(
            554,
            "5.7.1",
            format!(
                "Service unavailable; client [{}] blocked using {zone}",
                client.to_canonical()
            ),
        ))
    }
}

/// A verdict kept for a while.
struct Cached {
    until: Instant,
    decision: Arc<Decision>,
}

/// The screening of a server. Inert without `[screen]`.
pub struct Screen {
    config: Option<ScreenConfig>,
    resolver: Option<TokioResolver>,
    trusted: Vec<IpNet>,
    cache: Mutex<Sources<Cached>>,
}

impl Screen {
    /// `dns` must be there when `config` has zones (the config validation sees to it).
    pub fn new(
        config: Option<&ScreenConfig>,
        dns: Option<&DnsConfig>,
        trusted: &[IpNet],
    ) -> anyhow::Result<Screen> {
        let has_zones = config.is_some_and(|c| !c.dnsbl.is_empty() || !c.dnswl.is_empty());
        let resolver = match dns {
            Some(dns) if has_zones => Some(crate::dns::from_config(dns)?),
            None if has_zones => anyhow::bail!("[screen] DNS lists need a [dns] table"),
            _ => None,
        };
        Ok(Screen {
            config: config.cloned(),
            resolver,
            trusted: trusted.to_vec(),
            cache: Mutex::new(Sources::new(CAPACITY)),
        })
    }

    /// Whether a connection from `ip` to a listener of `role` is screened: strangers on
    /// `mta` listeners, never `trusted_networks`.
    pub fn applies(&self, role: Role, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.config.is_some() && role == Role::Mta && !self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The greeting delay of the pre-greet test, when `[screen]` turns it on.
    pub fn pre_greet_delay(&self) -> Option<Duration> {
        self.config.as_ref()?.pre_greet_delay
    }

    pub fn helo(&self) -> HeloCheck {
        self.config.as_ref().map_or(HeloCheck::Off, |c| c.helo)
    }

    /// The lists' verdict on `client`, from the cache or asked now (bounded by
    /// `dnsbl_timeout_ms`); `None` without lists. Logs one audit line per decision.
    pub async fn connect(&self, client: SocketAddr) -> Option<Arc<Decision>> {
        let config = self.config.as_ref()?;
        let resolver = self.resolver.as_ref()?;
        let ip = client.ip().to_canonical();
        let now = Instant::now();
        if let Some(hit) = self.cached(ip, now) {
            crate::audit::screen(client, &hit, true);
            return Some(hit);
        }
        let decision = Arc::new(ask(config, resolver, ip).await);
        crate::audit::screen(client, &decision, false);
        // A list that did not answer may list the client: ask again next time.
        if !config.cache.is_zero() && (decision.temperror.is_empty() || decision.blocked()) {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache.put(
                ip,
                Cached {
                    until: now + config.cache,
                    decision: decision.clone(),
                },
            );
        }
        Some(decision)
    }

    fn cached(&self, ip: IpAddr, now: Instant) -> Option<Arc<Decision>> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = cache.take(ip).filter(|c| c.until > now)?;
        let decision = hit.decision.clone();
        cache.put(ip, hit);
        Some(decision)
    }
}

/// Runs the pre-greet wait (`Some(talked)`, `None`: the client left) and the lists' verdict
/// together. A client that talks first or leaves is answered at once, without waiting for the
/// lists (their verdict no longer matters, and a talker would only send more meanwhile); one
/// that waits gets the lists' verdict too.
pub async fn before_greeting(
    pre_greet: impl Future<Output = Option<bool>>,
    lists: impl Future<Output = Option<Arc<Decision>>>,
) -> (Option<bool>, Option<Arc<Decision>>) {
    tokio::pin!(pre_greet, lists);
    let mut decided: Option<Option<Arc<Decision>>> = None;
    loop {
        tokio::select! {
            talked = &mut pre_greet => {
                return match (talked, decided) {
                    (Some(false), Some(decision)) => (talked, decision),
                    (Some(false), None) => (talked, lists.await),
                    _ => (talked, None),
                };
            }
            decision = &mut lists, if decided.is_none() => decided = Some(decision),
        }
    }
}

/// Counts `pre_greet` for a client that was held back: it talked first or it waited.
pub fn pre_greet_result(talked: bool) {
    crate::metrics::check(
        Check::PreGreet,
        if talked {
            CheckResult::Talker
        } else {
            CheckResult::Pass
        },
    );
}

/// Asks every zone at once (each distinct zone once) and sums the weights.
async fn ask(config: &ScreenConfig, resolver: &TokioResolver, ip: IpAddr) -> Decision {
    let mut zones: Vec<&str> = Vec::new();
    for z in config.dnsbl.iter().chain(&config.dnswl) {
        if !zones.contains(&z.zone.as_str()) {
            zones.push(&z.zone);
        }
    }
    let mut queries = JoinSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let (resolver, zone) = (resolver.clone(), (*zone).to_owned());
        queries.spawn(async move { (i, dnsbl::lookup(&resolver, ip, &zone).await) });
    }
    let mut answers: Vec<Option<ZoneAnswer>> = vec![None; zones.len()];
    let _ = tokio::time::timeout(config.dnsbl_timeout, async {
        while let Some(done) = queries.join_next().await {
            if let Ok((i, answer)) = done {
                answers[i] = Some(answer);
            }
        }
    })
    .await;
    // Dropping the set aborts the lookups still running.
    drop(queries);
    let answer_of = |zone: &str| -> ZoneAnswer {
        zones
            .iter()
            .position(|z| *z == zone)
            .and_then(|i| answers[i].clone())
            .unwrap_or_else(|| ZoneAnswer::Temperror("no answer in time".to_owned()))
    };
    let mut decision = Decision {
        listed: Vec::new(),
        welcome: Vec::new(),
        temperror: Vec::new(),
        score: 0,
        threshold: config.threshold,
    };
    for (check, entries) in [(Check::Dnsbl, &config.dnsbl), (Check::Dnswl, &config.dnswl)] {
        for entry in entries {
            let result = judge(entry, &answer_of(&entry.zone), ip);
            crate::metrics::check(check, result);
            match result {
                CheckResult::Listed if check == Check::Dnsbl => {
                    decision.score += entry.weight;
                    decision.listed.push((entry.zone.clone(), entry.weight));
                }
                CheckResult::Listed => {
                    decision.score -= entry.weight;
                    decision.welcome.push((entry.zone.clone(), entry.weight));
                }
                CheckResult::Temperror if !decision.temperror.contains(&entry.zone) => {
                    decision.temperror.push(entry.zone.clone());
                }
                _ => {}
            }
        }
    }
    decision
}

/// What one zone entry makes of its zone's answer.
fn judge(entry: &ZoneConfig, answer: &ZoneAnswer, ip: IpAddr) -> CheckResult {
    match answer {
        ZoneAnswer::Codes(codes) if codes.iter().any(|c| entry.counts(*c)) => CheckResult::Listed,
        ZoneAnswer::Codes(_) | ZoneAnswer::NotListed => CheckResult::NotListed,
        ZoneAnswer::Temperror(why) => {
            warn!(event = "dnsbl_temperror", client = %ip, zone = %entry.zone, error = %why,
                "DNS list gave no usable answer: counted 0");
            CheckResult::Temperror
        }
        ZoneAnswer::Ignored(addresses) => {
            let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            warn!(event = "dnsbl_error_answer", client = %ip, zone = %entry.zone,
                answer = %addresses.join(","),
                "DNS list answered with an error code or outside 127.0.0.0/8 (not a listing; \
                 does the list refuse our resolver?): counted 0");
            CheckResult::Ignored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(zone: &str, codes: &[&str]) -> ZoneConfig {
        ZoneConfig {
            zone: zone.into(),
            weight: 2,
            codes: codes
                .iter()
                .map(|c| {
                    let a = c.parse().expect("ip");
                    a..=a
                })
                .collect(),
        }
    }

    #[test]
    fn a_code_filter_decides_what_counts() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let listed = ZoneAnswer::Codes(vec!["127.0.0.9".parse().expect("ip")]);
        assert_eq!(
            judge(&entry("bl.test", &[]), &listed, ip),
            CheckResult::Listed
        );
        assert_eq!(
            judge(&entry("bl.test", &["127.0.0.2"]), &listed, ip),
            CheckResult::NotListed
        );
        assert_eq!(
            judge(&entry("bl.test", &["127.0.0.2", "127.0.0.9"]), &listed, ip),
            CheckResult::Listed
        );
        assert_eq!(
            judge(
                &entry("bl.test", &[]),
                &ZoneAnswer::Ignored(vec!["127.255.255.254".parse().expect("ip")]),
                ip
            ),
            CheckResult::Ignored
        );
    }

    fn blocked() -> Option<Arc<Decision>> {
        Some(Arc::new(Decision {
            listed: vec![("bl.test".into(), 1)],
            welcome: vec![],
            temperror: vec![],
            score: 1,
            threshold: 1,
        }))
    }

    #[tokio::test]
    async fn a_talker_does_not_wait_for_the_lists_and_a_patient_client_gets_their_verdict() {
        // Lists that would take a minute: the talker is answered without them.
        let slow_lists = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            blocked()
        };
        let (talked, decision) = tokio::time::timeout(
            Duration::from_secs(30),
            before_greeting(async { Some(true) }, slow_lists),
        )
        .await
        .expect("the talker waited for the lists");
        assert_eq!((talked, decision), (Some(true), None));
        // Waiting longer than the lists take, or shorter: the verdict is there either way.
        for wait in [1, 60] {
            let pre = async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Some(false)
            };
            let lists = async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                blocked()
            };
            let (talked, decision) = before_greeting(pre, lists).await;
            assert_eq!(talked, Some(false));
            assert!(decision.is_some_and(|d| d.blocked()), "wait {wait}");
        }
    }

    #[test]
    fn the_heaviest_listing_is_named() {
        let d = Decision {
            listed: vec![
                ("a.test".into(), 1),
                ("b.test".into(), 3),
                ("c.test".into(), 3),
            ],
            welcome: vec![],
            temperror: vec![],
            score: 7,
            threshold: 3,
        };
        assert_eq!(d.blocked_by(), Some("b.test"));
        let r = d
            .refusal("::ffff:192.0.2.7".parse().expect("ip"))
            .expect("refused");
        assert_eq!(
            r.to_wire(),
            "554 5.7.1 Service unavailable; client [192.0.2.7] blocked using b.test\r\n"
        );
        let d = Decision { score: 2, ..d };
        assert_eq!(d.refusal("192.0.2.7".parse().expect("ip")), None);
    }
}
