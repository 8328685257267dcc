//! Why the relay refused a peer, a command or a message: the label values
//! of `smtp_relay_refused_total{reason=...}`, named once here (snake_case
//! of the variant names).

/// A refusal reason.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum Refusal {
    PeerNotAllowed,
    TooManyConnections,
    RelayDenied,
    SenderNotOwned,
    MessageTooBig,
    BareLineEnding,
    TooManyErrors,
    LocalError,
    TooManyCommands,
    LineTooLong,
    AuthThrottled,
    Timeout,
    /// RCPT for a local recipient that does not exist (`550 5.1.1`).
    UnknownRecipient,
    /// RCPT for a local recipient the next hop could not confirm (`451 4.4.3`).
    RecipientUnverified,
    /// Too many unknown recipients in one session (`421 4.7.0`).
    RecipientHarvest,
    /// The DNS lists' score reached `[screen] threshold` (`554 5.7.1` at connect).
    Dnsbl,
    /// A stranger's EHLO/HELO name was bad or ours (`[screen] helo = "reject"`).
    HeloRejected,
    DmarcReject,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How a DATA phase ended, as counted: queued, or refused for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    Queued,
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator as _;

    use super::*;

    #[test]
    fn names_are_the_documented_labels() {
        let names: Vec<&str> = Refusal::iter().map(Refusal::as_str).collect();
        assert_eq!(
            names,
            [
                "peer_not_allowed",
                "too_many_connections",
                "relay_denied",
                "sender_not_owned",
                "message_too_big",
                "bare_line_ending",
                "too_many_errors",
                "local_error",
                "too_many_commands",
                "line_too_long",
                "auth_throttled",
                "timeout",
                "unknown_recipient",
                "recipient_unverified",
                "recipient_harvest",
                "dnsbl",
                "helo_rejected",
                "dmarc_reject",
            ]
        );
    }
}
