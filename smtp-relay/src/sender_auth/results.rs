//! The `Authentication-Results:` field we prepend (RFC 8601), one method per folded line in the
//! order spf, dkim, arc, dmarc. mail-auth writes each entry; this module puts them together and
//! adds the entries mail-auth has no output for (no signature at all, a message too large).

use std::net::IpAddr;

use mail_auth::{ArcOutput, AuthenticationResults, DkimOutput, DmarcOutput, SpfOutput};

use super::spf::SpfIdentity;

/// Builds the field for `authserv_id`.
pub struct ResultsBuilder<'a> {
    id: &'a str,
    entries: String,
}

impl<'a> ResultsBuilder<'a> {
    pub fn new(authserv_id: &'a str) -> ResultsBuilder<'a> {
        ResultsBuilder {
            id: authserv_id,
            entries: String::new(),
        }
    }

    /// One entry as mail-auth writes it (`;\r\n\tmethod=...`), without the authserv-id.
    fn push(&mut self, ar: AuthenticationResults<'_>) {
        let text = ar.to_string();
        self.entries
            .push_str(text.strip_prefix(self.id).unwrap_or(&text));
    }

    pub fn spf(&mut self, spf: &SpfOutput, who: &SpfIdentity) {
        let ar = AuthenticationResults::new(self.id);
        self.push(if who.sender.is_empty() {
            ar.with_spf_ehlo_result(spf, who.ip, &who.helo)
        } else {
            ar.with_spf_mailfrom_result(spf, who.ip, &who.sender, &who.helo)
        });
    }

    /// `dkim=none` for an unsigned message (RFC 8601 2.7.1).
    pub fn dkim(&mut self, dkim: &[DkimOutput<'_>], header_from: &str) {
        if dkim.is_empty() {
            self.entries.push_str(";\r\n\tdkim=none");
        } else {
            self.push(AuthenticationResults::new(self.id).with_dkim_results(dkim, header_from));
        }
    }

    pub fn arc(&mut self, arc: &ArcOutput<'_>, ip: IpAddr) {
        self.push(AuthenticationResults::new(self.id).with_arc_result(arc, ip));
    }

    pub fn dmarc(&mut self, dmarc: &DmarcOutput) {
        if dmarc.domain().is_empty() {
            // No (single-domain) From: DMARC does not apply.
            self.entries.push_str(";\r\n\tdmarc=none");
        } else {
            self.push(AuthenticationResults::new(self.id).with_dmarc_result(dmarc));
        }
    }

    /// `method=none (why)` for a method that ran on nothing.
    pub fn not_verified(&mut self, method: &str, why: &str) {
        self.entries
            .push_str(&format!(";\r\n\t{method}=none ({why})"));
    }

    /// The whole field, CRLF-terminated; `none` when no method ran (RFC 8601 2.2).
    pub fn header(&self) -> String {
        if self.entries.is_empty() {
            format!("Authentication-Results: {}; none\r\n", self.id)
        } else {
            format!("Authentication-Results: {}{}\r\n", self.id, self.entries)
        }
    }
}
