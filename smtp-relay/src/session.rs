//! The SMTP session state machine, without I/O: it takes parsed commands
//! and answers with an [`Action`] for the connection loop to carry out.
//! Keeping it pure makes the policy (who may relay, when AUTH is allowed)
//! testable command by command.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::address::{Class, Path};
use crate::audit;
use crate::auth::{Mechanism, Users};
use crate::check::CheckResult;
use crate::command::{Command, CommandError, Param};
use crate::config::screen::HeloCheck;
use crate::config::{Config, Role};
use crate::envelope::BodyType;
use crate::recipients::harvest::{Harvest, Step};
use crate::recipients::{Directory, RecipientResult, Verdict};
use crate::refusal::Refusal;
use crate::reply::Reply;
use crate::spool::{ENVELOPE_VERSION, Envelope, Recipient};

/// Settings shared by all sessions of a server.
pub struct Policy {
    pub hostname: String,
    pub local_domains: Vec<String>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub trusted_networks: Vec<IpNet>,
    pub users: Arc<Users>,
    /// Error replies before the session is closed.
    pub max_errors: u32,
    /// Commands per transaction: since the session began or the last
    /// transaction ended (end of DATA, or RSET with a transaction open).
    pub max_commands: u32,
    /// Which local recipients exist (`[recipients]`); `None` accepts every local part.
    pub recipients: Option<Arc<Directory>>,
    /// The HELO check on strangers of `mta` listeners (`[screen] helo`).
    pub helo_check: HeloCheck,
    /// The company directory (`[directory]`): users beside the `[[user]]` tables.
    pub directory: Option<crate::directory::Shared>,
}

impl Policy {
    pub fn from_config(config: &Config, users: Arc<Users>) -> Policy {
        Policy {
            hostname: config.hostname.clone(),
            local_domains: config.local_domains.clone(),
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
            trusted_networks: config.trusted_networks.clone(),
            users,
            max_errors: config.limits.errors,
            max_commands: config.limits.commands,
            recipients: None,
            helo_check: config.screen.as_ref().map_or(HeloCheck::Off, |s| s.helo),
            directory: None,
        }
    }

    /// Whether anyone can log in: `[[user]]` tables or the directory.
    fn auth_enabled(&self) -> bool {
        !self.users.is_empty() || self.directory.is_some()
    }

    /// The domain used for `<Postmaster>`.
    fn postmaster_domain(&self) -> &str {
        self.local_domains
            .first()
            .map(String::as_str)
            .unwrap_or(&self.hostname)
    }
}

/// What the connection loop must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the reply, read the next command.
    Reply(Reply),
    /// Send the reply, then close the connection.
    Close(Reply),
    /// Send the reply, run the TLS handshake, then call
    /// [`Session::tls_started`].
    StartTls(Reply),
    /// Run the SASL exchange, verify, then call [`Session::auth_succeeded`]
    /// or [`Session::auth_failed`].
    Auth {
        mechanism: Mechanism,
        initial: Option<String>,
    },
    /// Send the 354 reply, read the message, spool it with this envelope,
    /// then call [`Session::data_done`].
    Data(Reply, Box<Envelope>),
    /// Check that this local recipient exists ([`Directory::verify`], which may probe the
    /// next hop), then call [`Session::rcpt_verified`].
    VerifyRcpt(Box<PendingRcpt>),
}

/// A local recipient waiting for [`Directory::verify`].
#[derive(Debug, PartialEq, Eq)]
pub struct PendingRcpt {
    pub address: String,
}

/// After this many failed AUTH attempts the client is disconnected.
const MAX_AUTH_FAILURES: u32 = 3;

struct Transaction {
    sender: String,
    body: BodyType,
    recipients: Vec<Recipient>,
}

/// One connection's SMTP state.
pub struct Session {
    policy: Arc<Policy>,
    role: Role,
    listener: SocketAddr,
    client: SocketAddr,
    tls: bool,
    /// Whether the connection can still switch to TLS.
    starttls_available: bool,
    helo: Option<(String, bool)>,
    user: Option<String>,
    trusted: bool,
    transaction: Option<Transaction>,
    errors: u32,
    /// Commands since the session began or the last transaction ended.
    commands: u32,
    auth_failures: u32,
    /// Unknown recipients in this session.
    harvest: Harvest,
    /// The address the client connected to, when known (a HELO claiming it is ours).
    local_ip: Option<IpAddr>,
    /// A directory user's addresses (lowercased), for the sender binding.
    directory_senders: Vec<String>,
}

fn r(code: u16, enhanced: &'static str, text: &str) -> Action {
    Action::Reply(Reply::new(code, enhanced, text))
}

fn in_nets(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

impl Session {
    /// `tls` is true when the connection is already encrypted (port 465).
    pub fn new(
        policy: Arc<Policy>,
        role: Role,
        listener: SocketAddr,
        client: SocketAddr,
        tls: bool,
    ) -> Session {
        let trusted = in_nets(&policy.trusted_networks, client.ip());
        Session {
            policy,
            role,
            listener,
            client,
            tls,
            starttls_available: !tls,
            helo: None,
            user: None,
            trusted,
            transaction: None,
            errors: 0,
            commands: 0,
            auth_failures: 0,
            harvest: Harvest::default(),
            local_ip: None,
            directory_senders: Vec::new(),
        }
    }

    /// The address the client connected to (the listener may be a wildcard).
    pub fn set_local_ip(&mut self, ip: IpAddr) {
        self.local_ip = Some(ip);
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }
    pub fn tls(&self) -> bool {
        self.tls
    }
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|(h, _)| h.as_str())
    }
    pub fn users(&self) -> Arc<Users> {
        self.policy.users.clone()
    }
    pub fn directory(&self) -> Option<crate::directory::Shared> {
        self.policy.directory.clone()
    }
    pub fn hostname(&self) -> &str {
        &self.policy.hostname
    }
    /// The open transaction's sender (`""` for `<>`); `None` outside a transaction.
    pub fn sender(&self) -> Option<&str> {
        self.transaction.as_ref().map(|t| t.sender.as_str())
    }
    /// Whether the client is in `trusted_networks`.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// RFC 3848 protocol name for the Received header.
    pub fn protocol(&self) -> &'static str {
        match (
            self.helo.as_ref().is_some_and(|(_, e)| *e),
            self.tls,
            self.user.is_some(),
        ) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, false, true) => "ESMTPA",
            (true, true, false) => "ESMTPS",
            (true, true, true) => "ESMTPSA",
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::bare(
            220,
            vec![format!("{} ESMTP smtp-relay ready", self.policy.hostname)],
        )
    }

    /// AUTH is offered only inside TLS and only where users exist.
    fn auth_offered(&self) -> bool {
        self.tls && self.policy.auth_enabled()
    }

    fn ehlo_reply(&self, name: &str) -> Reply {
        let mut lines = vec![
            format!(
                "{} greets {} [{}]",
                self.policy.hostname,
                name,
                self.client.ip()
            ),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.policy.max_message_size),
            "8BITMIME".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
        ];
        if self.starttls_available {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        lines.push("HELP".to_owned());
        Reply::bare(250, lines)
    }

    /// Handles one command (or parse error).
    pub fn handle(&mut self, cmd: Result<Command, CommandError>) -> Action {
        self.commands += 1;
        if self.commands > self.policy.max_commands {
            audit::too_many_commands(self.client, self.tls, self.user.as_deref());
            return Action::Close(Reply::new(421, "4.7.0", "Too many commands, closing"));
        }
        let action = match cmd {
            Ok(cmd) => self.command(cmd),
            Err(CommandError::Unknown) => r(500, "5.5.2", "Command not recognized"),
            Err(CommandError::LineTooLong) => r(500, "5.5.6", "Line too long"),
            Err(CommandError::Syntax(why)) => {
                Action::Reply(Reply::new(501, "5.5.4", format!("Syntax error: {why}")))
            }
            Err(CommandError::Address(crate::address::AddressError::NonAscii)) => r(
                553,
                "5.6.7",
                "Non-ASCII addresses are not permitted (no SMTPUTF8)",
            ),
            Err(CommandError::Address(e)) => {
                Action::Reply(Reply::new(501, "5.1.3", format!("Bad address syntax: {e}")))
            }
        };
        if let Action::Reply(reply) = &action
            && reply.code >= 500
        {
            self.errors += 1;
            if self.errors >= self.policy.max_errors {
                audit::too_many_errors(self.client, self.tls, self.user.as_deref());
                return Action::Close(Reply::new(421, "4.7.0", "Too many errors, closing"));
            }
        }
        action
    }

    fn command(&mut self, cmd: Command) -> Action {
        match cmd {
            Command::Ehlo(name) => {
                if let Some(refused) = self.judge_helo(&name) {
                    return refused;
                }
                self.transaction = None;
                let reply = self.ehlo_reply(&name);
                self.helo = Some((name, true));
                Action::Reply(reply)
            }
            Command::Helo(name) => {
                if let Some(refused) = self.judge_helo(&name) {
                    return refused;
                }
                self.transaction = None;
                self.helo = Some((name, false));
                Action::Reply(Reply::bare(250, vec![self.policy.hostname.clone()]))
            }
            Command::StartTls => {
                if self.tls {
                    r(503, "5.5.1", "Already using TLS")
                } else if !self.starttls_available {
                    r(454, "4.7.0", "TLS not available")
                } else if self.transaction.is_some() {
                    r(
                        503,
                        "5.5.1",
                        "STARTTLS not allowed during a mail transaction",
                    )
                } else {
                    Action::StartTls(Reply::new(220, "2.0.0", "Ready to start TLS"))
                }
            }
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
            Command::Mail { path, params } => self.mail(path, &params),
            Command::Rcpt { path, params } => self.rcpt(path, &params),
            Command::Data => self.data(),
            Command::Rset => {
                // A transaction that ended starts the command budget over;
                // RSET alone does not, or NOOP/RSET loops would never end.
                if self.transaction.take().is_some() {
                    self.commands = 0;
                }
                r(250, "2.0.0", "OK")
            }
            Command::Noop => r(250, "2.0.0", "OK"),
            Command::Quit => Action::Close(Reply::new(221, "2.0.0", "Bye")),
            Command::Vrfy => r(252, "2.5.0", "Cannot VRFY user, but will accept message"),
            Command::Help => Action::Reply(Reply {
                code: 214,
                enhanced: Some("2.0.0"),
                lines: vec![
                    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
                        .to_owned(),
                    "See RFC 5321".to_owned(),
                ],
            }),
            Command::NotImplemented(_) => r(502, "5.5.1", "Command not implemented"),
        }
    }

    /// The `[screen] helo` check of a stranger on an `mta` listener: the refusal under
    /// `reject` when the name is junk or ours; audited (and counted) either way.
    fn judge_helo(&self, name: &str) -> Option<Action> {
        if self.policy.helo_check == HeloCheck::Off
            || self.role != Role::Mta
            || self.trusted
            || self.user.is_some()
        {
            return None;
        }
        let mut addresses = vec![self.listener.ip()];
        addresses.extend(self.local_ip);
        addresses.retain(|a| !a.is_unspecified());
        let result = crate::screen::helo::judge(
            name,
            &crate::screen::helo::Ours {
                hostname: &self.policy.hostname,
                local_domains: &self.policy.local_domains,
                addresses: &addresses,
            },
        );
        crate::metrics::check(crate::check::Check::Helo, result);
        let reply = match result {
            CheckResult::Pass => return None,
            CheckResult::Ours => Reply::new(550, "5.7.1", "HELO name is ours"),
            _ => Reply::new(501, "5.5.2", "Invalid HELO name (RFC 5321 4.1.3)"),
        };
        if self.policy.helo_check == HeloCheck::Log {
            audit::helo(self.client, name, result, None);
            return None;
        }
        audit::helo(self.client, name, result, Some(&reply));
        Some(Action::Reply(reply))
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Action {
        if !self.tls {
            return r(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            );
        }
        if !self.helo.as_ref().is_some_and(|(_, esmtp)| *esmtp) {
            return r(503, "5.5.1", "Send EHLO first");
        }
        if self.user.is_some() {
            return r(503, "5.5.1", "Already authenticated");
        }
        if self.transaction.is_some() {
            return r(503, "5.5.1", "AUTH not allowed during a mail transaction");
        }
        if !self.policy.auth_enabled() {
            return r(502, "5.5.1", "Authentication not enabled");
        }
        match Mechanism::from_name(mechanism) {
            Some(mechanism) => Action::Auth { mechanism, initial },
            None => r(504, "5.5.4", "Unrecognized authentication mechanism"),
        }
    }

    /// Records a successful AUTH and returns the 235 reply.
    pub fn auth_succeeded(&mut self, user: String) -> Reply {
        self.user = Some(user);
        Reply::new(235, "2.7.0", "Authentication successful")
    }

    /// A successful AUTH; a directory user may also send as `addresses` (lowercased; empty
    /// for `[[user]]` users, whose `senders` apply).
    pub fn directory_auth_succeeded(&mut self, user: String, addresses: Vec<String>) -> Reply {
        self.directory_senders = addresses;
        self.auth_succeeded(user)
    }

    /// Records a failed AUTH; closes after too many.
    pub fn auth_failed(&mut self) -> Action {
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            Action::Close(Reply::new(421, "4.7.0", "Too many authentication failures"))
        } else {
            r(535, "5.7.8", "Authentication credentials invalid")
        }
    }

    /// After a successful handshake: RFC 3207 says forget everything learnt
    /// before, the client must EHLO again.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.starttls_available = false;
        self.helo = None;
        self.user = None;
        self.directory_senders.clear();
        self.transaction = None;
    }

    fn mail(&mut self, path: Path, params: &[Param]) -> Action {
        if self.helo.is_none() {
            return r(503, "5.5.1", "Send EHLO/HELO first");
        }
        if self.transaction.is_some() {
            return r(503, "5.5.1", "Nested MAIL command");
        }
        if self.role.requires_auth() && self.user.is_none() {
            return r(530, "5.7.0", "Authentication required");
        }
        let mut body = BodyType::SevenBit;
        for p in params {
            match (p.key.as_str(), p.value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.policy.max_message_size => {
                        return r(
                            552,
                            "5.3.4",
                            "Message size exceeds fixed maximum message size",
                        );
                    }
                    Ok(_) => {}
                    Err(_) => return r(501, "5.5.4", "Bad SIZE parameter"),
                },
                ("SIZE", None) => return r(501, "5.5.4", "SIZE needs a value"),
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => body = BodyType::SevenBit,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    body = BodyType::EightBitMime;
                }
                ("BODY", _) => return r(501, "5.5.4", "Bad BODY parameter"),
                // RFC 4954 5: accepted and not passed on (we add our own).
                ("AUTH", Some(_)) => {}
                ("SMTPUTF8", _) => return r(555, "5.6.7", "SMTPUTF8 not supported"),
                _ => return r(555, "5.5.4", "Unsupported MAIL parameter"),
            }
        }
        if matches!(path, Path::Postmaster) {
            return r(501, "5.1.7", "Bad sender address syntax");
        }
        if let Some(user) = &self.user {
            // An authenticated user may only use their own addresses.
            let owned = match &path {
                Path::Mailbox {
                    mailbox,
                    source_route: false,
                } => mailbox.plain_form().is_some_and(|p| {
                    self.policy.users.may_send_as(user, &p)
                        || self
                            .directory_senders
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(&p))
                }),
                _ => false,
            };
            if !owned {
                audit::sender_refused(self.client, user, &path.address(""));
                return r(
                    553,
                    "5.7.1",
                    "Sender address not owned by authenticated user",
                );
            }
        }
        self.transaction = Some(Transaction {
            sender: path.address(self.policy.postmaster_domain()),
            body,
            recipients: Vec::new(),
        });
        r(250, "2.1.0", "Sender OK")
    }

    fn rcpt(&mut self, path: Path, params: &[Param]) -> Action {
        let may_relay = self.user.is_some() || self.trusted;
        let Some(tx) = self.transaction.as_mut() else {
            return r(503, "5.5.1", "Need MAIL before RCPT");
        };
        if !params.is_empty() {
            return r(555, "5.5.4", "Unsupported RCPT parameter");
        }
        if matches!(path, Path::Null) {
            return r(501, "5.1.3", "Null recipient not allowed");
        }
        if tx.recipients.len() >= self.policy.max_recipients {
            return r(452, "4.5.3", "Too many recipients");
        }
        let address = path.address(self.policy.postmaster_domain());
        let local = path.classify(&self.policy.local_domains) == Class::Local;
        if !local && !may_relay {
            audit::relay_denied(self.client, self.tls, &tx.sender, &address);
            return r(554, "5.7.1", "Relay access denied");
        }
        if local
            && self
                .policy
                .recipients
                .as_ref()
                .is_some_and(|d| d.checks(&address))
        {
            return Action::VerifyRcpt(Box::new(PendingRcpt { address }));
        }
        tx.recipients.push(Recipient::new(address, local));
        r(250, "2.1.5", "Recipient OK")
    }

    /// The answer to a RCPT that needed [`Action::VerifyRcpt`], and how long to hold it back
    /// (the harvest tarpit). Unknown recipients count towards closing the session.
    pub fn rcpt_verified(&mut self, pending: PendingRcpt, verdict: &Verdict) -> (Action, Duration) {
        let Some(tx) = self.transaction.as_mut() else {
            return (r(503, "5.5.1", "Need MAIL before RCPT"), Duration::ZERO);
        };
        let address = pending.address;
        let (reply, reason, delay) = match verdict.result {
            RecipientResult::Known => {
                tx.recipients.push(Recipient::new(address, true));
                return (r(250, "2.1.5", "Recipient OK"), Duration::ZERO);
            }
            RecipientResult::Unverified => (
                Reply::new(
                    451,
                    "4.4.3",
                    "Recipient verification unavailable, try later",
                ),
                Refusal::RecipientUnverified,
                Duration::ZERO,
            ),
            RecipientResult::Unknown => {
                let (delay, max) = self
                    .policy
                    .recipients
                    .as_ref()
                    .map_or((Duration::ZERO, u32::MAX), |d| {
                        (d.unknown_delay, d.unknown_max)
                    });
                match self.harvest.unknown(delay, max) {
                    Step::Refuse(delay) => (
                        Reply::new(
                            550,
                            "5.1.1",
                            format!("<{address}>: Recipient address rejected: User unknown"),
                        ),
                        Refusal::UnknownRecipient,
                        delay,
                    ),
                    Step::Close => (
                        Reply::new(421, "4.7.0", "Too many unknown recipients, closing"),
                        Refusal::UnknownRecipient,
                        Duration::ZERO,
                    ),
                }
            }
        };
        audit::recipient_refused(
            &audit::RecipientEvent {
                client: self.client,
                tls: self.tls,
                user: self.user.as_deref(),
                sender: &tx.sender,
                recipient: &address,
                result: verdict.result.as_str(),
                source: verdict.source.into(),
                detail: &verdict.detail,
                reply: &reply,
            },
            reason,
        );
        if reply.code == 421 {
            audit::recipient_harvest(
                self.client,
                self.tls,
                self.user.as_deref(),
                self.harvest.count(),
            );
            return (Action::Close(reply), Duration::ZERO);
        }
        (Action::Reply(reply), delay)
    }

    fn data(&mut self) -> Action {
        let Some(tx) = self.transaction.as_ref() else {
            return r(503, "5.5.1", "Need MAIL before DATA");
        };
        if tx.recipients.is_empty() {
            return r(554, "5.5.1", "No valid recipients");
        }
        let now = crate::clock::unix_now();
        let env = Envelope {
            version: ENVELOPE_VERSION,
            id: String::new(),
            sender: tx.sender.clone(),
            recipients: tx.recipients.clone(),
            client_addr: Some(self.client),
            helo: self.helo().unwrap_or_default().to_owned(),
            listener: Some(self.listener),
            role: Some(self.role),
            tls: self.tls,
            user: self.user.clone(),
            received_at: now,
            received_at_rfc3339: crate::clock::rfc3339(now),
            size: 0,
            body: tx.body,
            attempts: 0,
            next_attempt: 0,
            is_bounce: false,
            trusted: self.trusted,
        };
        Action::Data(
            Reply::bare(354, vec!["End data with <CR><LF>.<CR><LF>".to_owned()]),
            Box::new(env),
        )
    }

    /// Ends the transaction after DATA, whatever its outcome. The command
    /// budget starts over: `max_commands` counts per transaction, so a
    /// sender may reuse one connection for any number of messages.
    pub fn data_done(&mut self) {
        self.transaction = None;
        self.commands = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;
    use crate::config::UserConfig;

    const HASH_PW: &str = "s3cret";

    fn policy(trusted: Vec<IpNet>) -> Arc<Policy> {
        static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let hash = HASH.get_or_init(|| {
            use argon2::password_hash::{PasswordHasher as _, SaltString, rand_core::OsRng};
            let params = argon2::Params::new(64, 1, 1, None).expect("params");
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(HASH_PW.as_bytes(), &SaltString::generate(&mut OsRng))
                .expect("hash")
                .to_string()
        });
        let users = Users::from_config(&[UserConfig {
            name: "alice".into(),
            password_hash: hash.clone(),
            senders: vec!["alice@example.org".into()],
        }])
        .expect("users");
        Arc::new(Policy {
            hostname: "mx.example.org".into(),
            local_domains: vec!["example.org".into()],
            max_message_size: 1000,
            max_recipients: 3,
            trusted_networks: trusted,
            users: Arc::new(users),
            max_errors: 20,
            max_commands: 1000,
            recipients: None,
            helo_check: HeloCheck::Off,
            directory: None,
        })
    }

    fn session(role: Role, tls: bool) -> Session {
        Session::new(
            policy(vec![]),
            role,
            "127.0.0.1:25".parse().expect("addr"),
            "192.0.2.7:4000".parse().expect("addr"),
            tls,
        )
    }

    /// Sends a command line; returns the reply code (0 for non-reply actions).
    fn code(s: &mut Session, line: &str) -> u16 {
        match s.handle(parse(line.as_bytes())) {
            Action::Reply(r) | Action::Close(r) | Action::StartTls(r) | Action::Data(r, _) => {
                r.code
            }
            Action::Auth { .. } | Action::VerifyRcpt(_) => 0,
        }
    }

    fn reply(s: &mut Session, line: &str) -> Reply {
        match s.handle(parse(line.as_bytes())) {
            Action::Reply(r) | Action::Close(r) | Action::StartTls(r) | Action::Data(r, _) => r,
            Action::Auth { .. } | Action::VerifyRcpt(_) => panic!("unexpected action"),
        }
    }

    #[test]
    fn out_of_order_commands_get_503() {
        let mut s = session(Role::Mta, false);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 503);
        assert_eq!(code(&mut s, "RCPT TO:<a@example.org>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "EHLO c.example"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<a@example.org>"), 503);
        assert_eq!(code(&mut s, "DATA"), 503);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 503);
        assert_eq!(code(&mut s, "DATA"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<b@example.org>"), 250);
        assert_eq!(code(&mut s, "DATA"), 354);
        s.data_done();
        assert_eq!(code(&mut s, "RCPT TO:<b@example.org>"), 503);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 250);
        assert_eq!(code(&mut s, "RSET"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<b@example.org>"), 503);
    }

    #[test]
    fn unknown_and_unimplemented() {
        let mut s = session(Role::Mta, false);
        let r = reply(&mut s, "XYZZY");
        assert_eq!((r.code, r.enhanced), (500, Some("5.5.2")));
        let r = reply(&mut s, "EXPN staff");
        assert_eq!((r.code, r.enhanced), (502, Some("5.5.1")));
        assert_eq!(code(&mut s, "VRFY bob"), 252);
        assert_eq!(code(&mut s, "NOOP"), 250);
        assert_eq!(code(&mut s, "HELP"), 214);
        assert_eq!(code(&mut s, "QUIT"), 221);
    }

    #[test]
    fn too_many_errors_closes() {
        let mut s = session(Role::Mta, false);
        assert!(matches!(s.handle(Err(CommandError::LineTooLong)),
            Action::Reply(r) if r.code == 500 && r.enhanced == Some("5.5.6")));
        for _ in 0..20 - 2 {
            assert!(matches!(s.handle(parse(b"BOGUS")), Action::Reply(_)));
        }
        assert!(matches!(s.handle(parse(b"BOGUS")), Action::Close(r) if r.code == 421));
    }

    #[test]
    fn commands_count_per_transaction() {
        let mut s = session(Role::Mta, false);
        code(&mut s, "EHLO c.example");
        // 1,000 allowed per transaction; 500 messages are 1,500 commands.
        for _ in 0..500 {
            assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 250);
            assert_eq!(code(&mut s, "RCPT TO:<b@example.org>"), 250);
            assert_eq!(code(&mut s, "DATA"), 354);
            s.data_done();
        }
        for _ in 0..600 {
            assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 250);
            assert_eq!(code(&mut s, "RSET"), 250);
        }
        // Without a transaction RSET starts nothing over.
        for _ in 0..500 {
            assert_eq!(code(&mut s, "RSET"), 250);
            assert_eq!(code(&mut s, "NOOP"), 250);
        }
        assert!(matches!(s.handle(parse(b"NOOP")), Action::Close(r) if r.code == 421));
    }

    #[test]
    fn ehlo_advertises_auth_only_inside_tls() {
        let mut s = session(Role::Mta, false);
        let plain = reply(&mut s, "EHLO c.example").lines.join("\n");
        assert!(plain.contains("STARTTLS"));
        assert!(plain.contains("PIPELINING") && plain.contains("SIZE 1000"));
        assert!(plain.contains("8BITMIME") && plain.contains("ENHANCEDSTATUSCODES"));
        assert!(!plain.contains("AUTH"));
        assert!(!plain.contains("SMTPUTF8"));
        let r = reply(&mut s, "AUTH PLAIN AGFsaWNlAHMzY3JldA==");
        assert_eq!((r.code, r.enhanced), (538, Some("5.7.11")));
        assert!(matches!(s.handle(parse(b"STARTTLS")), Action::StartTls(_)));
        s.tls_started();
        // EHLO again is required after STARTTLS.
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 503);
        let tls = reply(&mut s, "EHLO c.example").lines.join("\n");
        assert!(tls.contains("AUTH PLAIN LOGIN"));
        assert!(!tls.contains("STARTTLS"));
        assert_eq!(code(&mut s, "STARTTLS"), 503);
        assert!(matches!(
            s.handle(parse(b"AUTH PLAIN")),
            Action::Auth {
                mechanism: Mechanism::Plain,
                initial: None
            }
        ));
        assert_eq!(code(&mut s, "AUTH CRAM-MD5"), 504);
    }

    #[test]
    fn unauthenticated_relay_denied_local_accepted() {
        let mut s = session(Role::Mta, false);
        code(&mut s, "EHLO c.example");
        assert_eq!(code(&mut s, "MAIL FROM:<x@sender.example>"), 250);
        let r = reply(&mut s, "RCPT TO:<victim@other.example>");
        assert_eq!((r.code, r.enhanced), (554, Some("5.7.1")));
        assert_eq!(
            code(&mut s, "RCPT TO:<user%other.example@example.org>"),
            554
        );
        assert_eq!(code(&mut s, "RCPT TO:<@example.org:u@other.example>"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<u@example.org.>"), 554);
        assert_eq!(code(&mut s, "RCPT TO:<u@EXAMPLE.org>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<Postmaster>"), 250);
        assert!(matches!(s.handle(parse(b"DATA")), Action::Data(_, env)
            if env.recipients == vec![
                Recipient::new("u@EXAMPLE.org".into(), true),
                Recipient::new("postmaster@example.org".into(), true),
            ] && env.user.is_none() && env.sender == "x@sender.example"));
    }

    #[test]
    fn authenticated_relay_and_sender_binding() {
        let mut s = session(Role::Mta, true);
        code(&mut s, "EHLO c.example");
        let _ = s.auth_succeeded("alice".into());
        assert_eq!(s.protocol(), "ESMTPSA");
        assert_eq!(
            reply(&mut s, "MAIL FROM:<bob@example.org>").enhanced,
            Some("5.7.1")
        );
        assert_eq!(code(&mut s, "MAIL FROM:<bob@example.org>"), 553);
        assert_eq!(code(&mut s, "MAIL FROM:<alice%x@example.org>"), 553);
        assert_eq!(code(&mut s, "MAIL FROM:<>"), 553);
        assert_eq!(code(&mut s, "MAIL FROM:<alice@EXAMPLE.ORG>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<friend@other.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<b@other.example> NOTIFY=NEVER"), 555);
        assert_eq!(code(&mut s, "RCPT TO:<c@other.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<d@other.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<e@other.example>"), 452);
    }

    #[test]
    fn a_directory_user_may_send_as_the_addresses_of_their_entry_only() {
        let mut s = session(Role::Submission, true);
        code(&mut s, "EHLO c.example");
        let _ = s.directory_auth_succeeded(
            "carol".into(),
            vec!["carol@example.org".into(), "c.jones@example.org".into()],
        );
        assert_eq!(code(&mut s, "MAIL FROM:<alice@example.org>"), 553);
        assert_eq!(code(&mut s, "MAIL FROM:<carol@example.org.evil>"), 553);
        assert_eq!(code(&mut s, "MAIL FROM:<C.Jones@Example.ORG>"), 250);
        code(&mut s, "RSET");
        // A new TLS session forgets the login and its addresses.
        s.tls_started();
        code(&mut s, "EHLO c.example");
        assert_eq!(code(&mut s, "MAIL FROM:<carol@example.org>"), 530);
    }

    #[test]
    fn submission_requires_auth_before_mail() {
        for role in [Role::Submission, Role::Submissions] {
            let mut s = session(role, role == Role::Submissions);
            code(&mut s, "EHLO c.example");
            let r = reply(&mut s, "MAIL FROM:<alice@example.org>");
            assert_eq!((r.code, r.enhanced), (530, Some("5.7.0")));
        }
    }

    #[test]
    fn mail_parameters() {
        let mut s = session(Role::Mta, false);
        code(&mut s, "EHLO c.example");
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> SIZE=1001"), 552);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> SIZE=abc"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> SIZE"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> AUTH"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> BODY=BINARYMIME"), 501);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> SMTPUTF8"), 555);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example> FOO=1"), 555);
        assert_eq!(
            code(
                &mut s,
                "MAIL FROM:<a@x.example> SIZE=1000 BODY=8BITMIME AUTH=<>"
            ),
            250
        );
        assert_eq!(code(&mut s, "RCPT TO:<j\u{f6}rg@example.org>"), 553);
    }

    fn helo_session(check: HeloCheck, role: Role, client: &str, trusted: Vec<IpNet>) -> Session {
        let mut p = Arc::try_unwrap(policy(trusted)).unwrap_or_else(|_| panic!("shared policy"));
        p.helo_check = check;
        Session::new(
            Arc::new(p),
            role,
            "0.0.0.0:25".parse().expect("addr"),
            client.parse().expect("addr"),
            false,
        )
    }

    #[test]
    fn helo_check_judges_strangers_on_mta_only() {
        let mut s = helo_session(HeloCheck::Reject, Role::Mta, "192.0.2.7:4000", vec![]);
        s.set_local_ip("198.51.100.25".parse().expect("ip"));
        let r = reply(&mut s, "EHLO mx.example.org");
        assert_eq!((r.code, r.enhanced), (550, Some("5.7.1")));
        assert_eq!(code(&mut s, "HELO [198.51.100.25]"), 550);
        let r = reply(&mut s, "EHLO localhost");
        assert_eq!((r.code, r.enhanced), (501, Some("5.5.2")));
        assert_eq!(
            code(&mut s, "MAIL FROM:<a@x.example>"),
            503,
            "no HELO taken"
        );
        assert_eq!(code(&mut s, "EHLO c.example"), 250);
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 250);
        // Logged only, trusted clients, our users on submission, or the check off: no refusal.
        for mut s in [
            helo_session(HeloCheck::Log, Role::Mta, "192.0.2.7:4000", vec![]),
            helo_session(
                HeloCheck::Reject,
                Role::Mta,
                "192.0.2.7:4000",
                vec!["192.0.2.0/24".parse().expect("net")],
            ),
            helo_session(
                HeloCheck::Reject,
                Role::Submission,
                "192.0.2.7:4000",
                vec![],
            ),
            helo_session(HeloCheck::Off, Role::Mta, "192.0.2.7:4000", vec![]),
        ] {
            assert_eq!(code(&mut s, "EHLO mx.example.org"), 250);
            assert_eq!(code(&mut s, "HELO localhost"), 250);
        }
    }

    #[test]
    fn trusted_networks_may_relay() {
        let mut s = Session::new(
            policy(vec!["192.0.2.0/24".parse().expect("net")]),
            Role::Mta,
            "127.0.0.1:25".parse().expect("addr"),
            "[::ffff:192.0.2.7]:4000".parse().expect("addr"),
            false,
        );
        code(&mut s, "HELO c.example");
        assert_eq!(s.protocol(), "SMTP");
        assert_eq!(code(&mut s, "MAIL FROM:<a@x.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<b@other.example>"), 250);
    }

    #[test]
    fn auth_failures_close_eventually() {
        let mut s = session(Role::Submissions, true);
        assert!(matches!(s.auth_failed(), Action::Reply(r) if r.code == 535));
        assert!(matches!(s.auth_failed(), Action::Reply(r) if r.code == 535));
        assert!(matches!(s.auth_failed(), Action::Close(r) if r.code == 421));
    }

    /// A session whose example.org recipients are checked against a list (unknown_max 4).
    fn checked_session() -> Session {
        let dir = std::env::temp_dir().join(format!("smtp-relay-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("list"), "alice@example.org\n").expect("write");
        let text = "hostname = \"mx.example.org\"\nspool_dir = \"spool\"\n\
            local_domains = [\"example.org\", \"example.net\"]\n\
            [tls]\ncert = \"c\"\nkey = \"k\"\n\
            [[listener]]\naddress = \"127.0.0.1:25\"\nrole = \"mta\"\nallow = [\"0.0.0.0/0\"]\n\
            [recipients]\nunknown_max = 4\nunknown_delay_ms = 100\n\
            [[recipients.domain]]\ndomain = \"example.org\"\nsource = \"list\"\nfile = \"list\"\n";
        let config = Config::parse(text, &dir.join("relay.toml")).expect("config");
        let directory = Directory::new(&config).expect("directory").expect("some");
        let _ = std::fs::remove_dir_all(&dir);
        let mut policy = Arc::into_inner(policy(vec![])).expect("sole owner");
        policy.recipients = Some(Arc::new(directory));
        policy.local_domains = config.local_domains.clone();
        policy.max_recipients = 10;
        Session::new(
            Arc::new(policy),
            Role::Mta,
            "127.0.0.1:25".parse().expect("addr"),
            "192.0.2.7:4000".parse().expect("addr"),
            false,
        )
    }

    fn pending(s: &mut Session, line: &str) -> PendingRcpt {
        match s.handle(parse(line.as_bytes())) {
            Action::VerifyRcpt(p) => *p,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn verdict(result: RecipientResult) -> Verdict {
        Verdict {
            result,
            source: crate::config::recipients::Source::List,
            detail: String::new(),
        }
    }

    #[test]
    fn local_recipients_are_checked_postmaster_and_other_domains_are_not() {
        let mut s = checked_session();
        code(&mut s, "EHLO c.example");
        assert_eq!(code(&mut s, "MAIL FROM:<x@sender.example>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<Postmaster>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<PostMaster@Example.ORG>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<anyone@example.net>"), 250);
        assert_eq!(code(&mut s, "RCPT TO:<victim@other.example>"), 554);
        let p = pending(&mut s, "RCPT TO:<Alice@Example.org>");
        assert_eq!(p.address, "Alice@Example.org");
        let (a, delay) = s.rcpt_verified(p, &verdict(RecipientResult::Known));
        assert!(matches!(a, Action::Reply(r) if r.code == 250) && delay.is_zero());
        let p = pending(&mut s, "RCPT TO:<nobody@example.org>");
        let (a, _) = s.rcpt_verified(p, &verdict(RecipientResult::Unverified));
        assert!(matches!(a, Action::Reply(r) if (r.code, r.enhanced) == (451, Some("4.4.3"))));
        let p = pending(&mut s, "RCPT TO:<nobody@example.org>");
        let (a, _) = s.rcpt_verified(p, &verdict(RecipientResult::Unknown));
        let Action::Reply(r) = a else { panic!("{a:?}") };
        assert_eq!((r.code, r.enhanced), (550, Some("5.1.1")));
        assert_eq!(
            r.lines,
            ["<nobody@example.org>: Recipient address rejected: User unknown"]
        );
        assert!(matches!(s.handle(parse(b"DATA")), Action::Data(_, env)
            if env.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>()
                == ["postmaster@example.org", "PostMaster@Example.ORG", "anyone@example.net",
                    "Alice@Example.org"]));
    }

    #[test]
    fn unknown_recipients_are_slowed_then_the_session_closes() {
        let mut s = checked_session();
        code(&mut s, "EHLO c.example");
        code(&mut s, "MAIL FROM:<x@sender.example>");
        let mut delays = Vec::new();
        for i in 0..4 {
            let p = pending(&mut s, &format!("RCPT TO:<u{i}@example.org>"));
            match s.rcpt_verified(p, &verdict(RecipientResult::Unknown)) {
                (Action::Reply(r), delay) if r.code == 550 => delays.push(delay.as_millis()),
                (Action::Close(r), _) => {
                    assert_eq!((r.code, r.enhanced, i), (421, Some("4.7.0"), 3));
                    assert_eq!(delays, [0, 0, 0]);
                    return;
                }
                other => panic!("{other:?}"),
            }
        }
        panic!("never closed: {delays:?}");
    }
}
