//! Which TLS policy applies to a delivery, and the audit of what each attempt got.
//!
//! The configured mode of the next hop ([`TlsMode`], `tls` of a route or `mx_tls`) picks the
//! policies consulted, strongest first: DANE (RFC 7672, which takes precedence over MTA-STS,
//! RFC 8461 2), then the recipient domain's MTA-STS policy, then opportunistic TLS.
//! [`Plan::host`] then says, per MX host, whether to try it and how: the [`Applied`] policy
//! and the STARTTLS behaviour on the wire.

use std::sync::Arc;

use tracing::{info, warn};

use super::mta_sts::{Applicable, Mode, MtaSts};
use super::route::NextHop;
use crate::config::TlsMode;

/// The policy a delivery attempt ran under (the `policy` of the audit line and the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Usable TLSA records of the MX host (RFC 7672).
    Dane,
    MtaSts {
        mode: Mode,
    },
    Opportunistic,
    Required,
    None,
}

impl Applied {
    pub fn label(self) -> &'static str {
        match self {
            Applied::Dane => "dane",
            Applied::MtaSts {
                mode: Mode::Enforce,
            } => "mta_sts_enforce",
            Applied::MtaSts {
                mode: Mode::Testing,
            } => "mta_sts_testing",
            // A policy in mode none is no policy; not reached, named for completeness.
            Applied::MtaSts { mode: Mode::None } => "opportunistic",
            Applied::Opportunistic => "opportunistic",
            Applied::Required => "required",
            Applied::None => "none",
        }
    }

    pub const LABELS: [&'static str; 6] = [
        "dane",
        "mta_sts_enforce",
        "mta_sts_testing",
        "opportunistic",
        "required",
        "none",
    ];
}

/// How one delivery attempt's TLS ended (the `result` of the audit line and the metric).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum TlsResult {
    /// TLS with a certificate verified for the host's name.
    Verified,
    /// TLS, certificate not checked (or checked and failed under MTA-STS testing).
    Encrypted,
    Plaintext,
    /// The policy's TLS requirement was not met: the host was not used.
    Failed,
    /// The MX host is not named by the enforced MTA-STS policy: not tried.
    MxMismatch,
}

impl TlsResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What to do with one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPlan {
    /// Do not connect; `reason` names the policy.
    Skip { applied: Applied, reason: String },
    /// Connect with `wire` STARTTLS behaviour (`Required`: verified for the host's name).
    /// `testing`: a failed verification is reported, then the host is tried opportunistically.
    Connect {
        applied: Applied,
        wire: TlsMode,
        testing: bool,
    },
}

/// The policies of one destination, looked up once per connection attempt.
#[derive(Debug, Clone)]
pub struct Plan {
    configured: TlsMode,
    sts: Option<Applicable>,
}

/// The policy sources: DANE's TLSA lookups (`None` without nameservers) and MTA-STS (with its
/// cache).
pub struct Policies {
    pub dane: Option<super::dane::Dane>,
    pub mta_sts: Option<Arc<MtaSts>>,
}

impl Policies {
    /// Looks up what `hop` is subject to.
    pub async fn plan(&self, hop: &NextHop) -> Plan {
        let consult_sts = matches!(hop.tls, TlsMode::MtaSts | TlsMode::Dane);
        let sts = match (&self.mta_sts, &hop.policy_domain) {
            (Some(sts), Some(domain)) if consult_sts => sts.policy(domain).await,
            _ => None,
        };
        Plan {
            configured: hop.tls,
            sts,
        }
    }
}

impl Plan {
    /// The MTA-STS policy in force, for deferral texts.
    pub fn mta_sts(&self) -> Option<&Applicable> {
        self.sts.as_ref()
    }

    pub fn host(&self, name: &str) -> HostPlan {
        let fixed = |applied, wire| HostPlan::Connect {
            applied,
            wire,
            testing: false,
        };
        match self.configured {
            TlsMode::None => return fixed(Applied::None, TlsMode::None),
            TlsMode::Required => return fixed(Applied::Required, TlsMode::Required),
            TlsMode::Opportunistic => {
                return fixed(Applied::Opportunistic, TlsMode::Opportunistic);
            }
            // DANE's seam: with `tls = "dane"`, the pool asks DANE first (`delivery::dane`,
            // `Dane::for_host`); a host whose answer is `DaneTls::Authenticated` or
            // `EncryptOnly` is `Applied::Dane` (wire `Required` with DANE's client configs)
            // and never gets here. `DaneTls::Off` (no validated TLSA records) lands here:
            // MTA-STS, then opportunistic TLS.
            TlsMode::Dane | TlsMode::MtaSts => {}
        }
        let Some(sts) = &self.sts else {
            return fixed(Applied::Opportunistic, TlsMode::Opportunistic);
        };
        let mode = sts.policy.mode;
        let applied = Applied::MtaSts { mode };
        let matches = sts.policy.allows(name);
        match mode {
            Mode::Enforce if !matches => HostPlan::Skip {
                applied,
                reason: format!("{sts}: MX host {name} is not in the policy"),
            },
            Mode::Enforce => fixed(applied, TlsMode::Required),
            Mode::Testing => {
                if !matches {
                    warn!(event = "mta_sts_testing", domain = %sts.domain, id = %sts.id, mx = name,
                        "MX host not in the policy (testing mode: delivered anyway)");
                }
                HostPlan::Connect {
                    applied,
                    wire: TlsMode::Required,
                    testing: true,
                }
            }
            Mode::None => fixed(Applied::Opportunistic, TlsMode::Opportunistic),
        }
    }
}

/// One line per delivery attempt and host (`event="delivery_tls"`), and the metric.
pub fn audit(
    queue_id: &str,
    mx: &str,
    addr: Option<std::net::SocketAddr>,
    applied: Applied,
    tls_version: Option<&str>,
    result: TlsResult,
    detail: &str,
) {
    crate::metrics::delivery_tls(applied.label(), result);
    let addr = addr.map_or_else(|| "none".to_owned(), |a| a.to_string());
    let tls_version = tls_version.unwrap_or("none");
    let (policy, result) = (applied.label(), result.as_str());
    match result {
        "failed" | "mx_mismatch" => warn!(target: "delivery", event = "delivery_tls", queue_id,
            mx, next_hop = %addr, policy, tls_version, result, detail, "TLS policy"),
        _ => info!(target: "delivery", event = "delivery_tls", queue_id, mx, next_hop = %addr,
            policy, tls_version, result, detail, "TLS policy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::mta_sts::Policy;

    fn plan(configured: TlsMode, mode: Option<Mode>) -> Plan {
        Plan {
            configured,
            sts: mode.map(|mode| Applicable {
                domain: "example.org".into(),
                id: "1".into(),
                policy: Policy {
                    mode,
                    mx: vec!["*.example.org".into()],
                    max_age: 86400,
                },
            }),
        }
    }

    #[test]
    fn decisions() {
        let enforce = plan(TlsMode::MtaSts, Some(Mode::Enforce));
        assert!(matches!(
            enforce.host("mx.example.org"),
            HostPlan::Connect {
                wire: TlsMode::Required,
                testing: false,
                ..
            }
        ));
        let HostPlan::Skip { reason, .. } = enforce.host("mx.evil.example") else {
            panic!("not skipped")
        };
        assert!(
            reason.contains("MTA-STS policy of example.org (id 1, mode enforce)"),
            "{reason}"
        );
        assert!(matches!(
            plan(TlsMode::MtaSts, Some(Mode::Testing)).host("mx.evil.example"),
            HostPlan::Connect { testing: true, .. }
        ));
        // The route's own mode wins over any policy.
        for (mode, applied) in [
            (TlsMode::None, Applied::None),
            (TlsMode::Required, Applied::Required),
            (TlsMode::Opportunistic, Applied::Opportunistic),
        ] {
            assert!(matches!(
                plan(mode, Some(Mode::Enforce)).host("mx.evil.example"),
                HostPlan::Connect { applied: a, .. } if a == applied
            ));
        }
        assert!(matches!(
            plan(TlsMode::MtaSts, None).host("mx.evil.example"),
            HostPlan::Connect {
                applied: Applied::Opportunistic,
                wire: TlsMode::Opportunistic,
                ..
            }
        ));
    }
}
