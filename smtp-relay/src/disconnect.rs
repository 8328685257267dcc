//! Why a session ended: the `reason` of the audit log's `disconnect` event
//! and the label of `smtp_relay_disconnects_total{reason=...}`, named once
//! here (snake_case of the variant names).

/// A disconnect reason.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount,
)]
#[strum(serialize_all = "snake_case")]
pub enum Disconnect {
    /// The session closed the connection: after QUIT, or with a 421 (too
    /// many errors or commands, AUTH failures).
    Closed,
    /// The client closed the connection between commands.
    Eof,
    /// The client closed the connection in the middle of a message.
    EofInData,
    /// The client said nothing for the command or data timeout.
    Timeout,
    /// The relay is stopping.
    Shutdown,
    /// The TLS handshake (STARTTLS or implicit) failed.
    TlsFailed,
    /// Reading or writing the connection failed.
    IoError,
    /// The client sent input before the greeting (`[bans] pre_greet`).
    PreGreet,
    /// Closed with `421 4.7.0` after `[recipients] unknown_max` unknown recipients.
    RecipientHarvest,
    /// The DNS lists' score reached `[screen] threshold`: refused at connect.
    Screened,
}

impl Disconnect {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator as _;

    use super::*;

    #[test]
    fn names_are_the_documented_reasons() {
        let names: Vec<&str> = Disconnect::iter().map(Disconnect::as_str).collect();
        assert_eq!(
            names,
            [
                "closed",
                "eof",
                "eof_in_data",
                "timeout",
                "shutdown",
                "tls_failed",
                "io_error",
                "pre_greet",
                "recipient_harvest",
                "screened"
            ]
        );
    }
}
