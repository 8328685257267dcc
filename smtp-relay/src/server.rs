//! Listeners and the per-connection loop: access ranges at accept, TLS
//! (implicit or STARTTLS), SASL exchanges, DATA into the spool, graceful
//! shutdown.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::admission::Admission;
use crate::auth::{self, Mechanism, SaslError};
use crate::bans::{BanClient, Bans};
use crate::config::{DmarcPolicy, Limits, ListenerConfig, Role};
use crate::conn::{Conn, DataRead, Line, Stream};
use crate::data::{Decoder, Outcome};
use crate::delivery::Queue;
use crate::disconnect::Disconnect;
use crate::message_sink::MessageSink;
use crate::refusal::{MessageOutcome, Refusal};
use crate::reply::Reply;
use crate::screen::Screen;
use crate::sender_auth::message::{DmarcAction, Verdict};
use crate::sender_auth::{SenderAuth, SessionAuth, TransactionAuth};
use crate::session::{Action, Policy, Session};
use crate::spool::{Envelope, Spool};
use crate::throttle::AuthThrottle;
use crate::{Prepared, audit};

/// SASL responses may be longer (RFC 4954 4: 12288 octets allowed).
const AUTH_LINE_LIMIT: usize = 12_288;
/// How long a stopping server waits for sessions in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

struct Shared {
    policy: Arc<Policy>,
    tls: crate::tls::TlsStore,
    spool: Spool,
    timeout: Duration,
    connections: Arc<Semaphore>,
    limits: Limits,
    /// Sessions per client address.
    per_client: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    throttle: AuthThrottle,
    /// Evidence for bans at XDP (inert without `[bans]`).
    bans: Bans,
    /// The delivery queue; `None` without a `[delivery]` table.
    pub(crate) queue: Option<Queue>,
    /// Connection-time screening (inert without `[screen]`).
    screen: Screen,
    /// SPF/DKIM/DMARC/ARC; `None` without a check switched on.
    sender_auth: Option<Arc<SenderAuth>>,
    /// Ours: `Authentication-Results:` fields claiming it are removed from every message.
    authserv_id: String,
}

/// Bound listeners, ready to serve.
pub struct Server {
    listeners: Vec<(TcpListener, ListenerConfig)>,
    shared: Arc<Shared>,
    metrics: Option<TcpListener>,
    control: Option<tokio::net::UnixListener>,
    /// The ban socket task, with `[bans]`.
    ban_client: Option<BanClient>,
    /// The spool's lock, held while we run.
    _lock: gatekeeper_support::lock::Lock,
}

/// Binds one listening socket. IPv6 sockets are V6ONLY so `[::]:25` and
/// `0.0.0.0:25` can both be configured.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A plain listening socket for the metrics endpoint.
fn bind_plain(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    info!(event = "metrics_listening", address = %l.local_addr()?);
    TcpListener::from_std(l)
}

impl Server {
    /// Opens the spool and binds every listener; on any error nothing
    /// listens (already bound sockets are dropped). Needs a Tokio runtime.
    pub fn bind(prepared: Prepared) -> anyhow::Result<Server> {
        let config = &prepared.config;
        let spool = Spool::open(&config.spool_dir)
            .with_context(|| format!("{}: spool_dir", config.path.display()))?;
        let lock = crate::control::lock_spool(&config.spool_dir)
            .with_context(|| format!("{}: spool_dir", config.path.display()))?;
        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let listener = bind(l.address).with_context(|| {
                format!(
                    "{}: listener #{} ({}, {}): cannot listen",
                    config.path.display(),
                    i + 1,
                    l.address,
                    l.role
                )
            })?;
            let mut l = l.clone();
            // Port 0 means "any": record the port we actually got.
            l.address = listener.local_addr()?;
            listeners.push((listener, l));
        }
        let metrics = match config.metrics_listen {
            Some(addr) => Some(bind_plain(addr).with_context(|| {
                format!(
                    "{}: metrics_listen {addr}: cannot listen",
                    config.path.display()
                )
            })?),
            None => None,
        };
        let (queue, control) = match &config.delivery {
            Some(d) => {
                let queue = Queue::new(
                    spool.clone(),
                    d.clone(),
                    &config.hostname,
                    &config.local_domains,
                    prepared.dkim.clone(),
                )
                .with_context(|| format!("{}: [delivery]", config.path.display()))?;
                let control = crate::control::bind(&config.spool_dir)?;
                (Some(queue), Some(control))
            }
            None => {
                warn!(
                    event = "no_delivery",
                    "no [delivery] configured: accepted mail stays in the spool"
                );
                (None, None)
            }
        };
        let (bans, ban_client) = Bans::new(config.bans.as_ref());
        let mut policy = Policy::from_config(config, prepared.users.clone());
        policy.recipients = crate::recipients::Directory::new(config)
            .with_context(|| format!("{}: [recipients]", config.path.display()))?
            .map(|mut r| {
                if let Some(d) = &prepared.directory {
                    r.use_company_directory(d.clone());
                }
                Arc::new(r)
            });
        policy.directory = prepared.directory.clone();
        for warning in crate::directory::warnings(config) {
            warn!(event = "directory_insecure", "{warning}");
        }
        let screen = Screen::new(
            config.screen.as_ref(),
            config.dns.as_ref(),
            &config.trusted_networks,
        )
        .with_context(|| format!("{}: [screen]", config.path.display()))?;
        let sender_auth = sender_auth(config)?;
        let authserv_id = config
            .sender_auth
            .as_ref()
            .map_or_else(|| config.hostname.clone(), |s| s.authserv_id.clone());
        Ok(Server {
            metrics,
            control,
            ban_client,
            _lock: lock,
            listeners,
            shared: Arc::new(Shared {
                policy: Arc::new(policy),
                tls: prepared.tls,
                spool,
                timeout: config.command_timeout,
                connections: Arc::new(Semaphore::new(config.max_connections)),
                limits: config.limits.clone(),
                per_client: std::sync::Mutex::new(std::collections::HashMap::new()),
                throttle: AuthThrottle::new(
                    config.limits.auth_delay,
                    config.limits.auth_max_failures,
                    config.limits.auth_window,
                ),
                bans,
                queue,
                screen,
                sender_auth,
                authserv_id,
            }),
        })
    }

    /// The metrics endpoint's bound address, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound addresses and their roles, in config order.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, Role)> {
        self.listeners
            .iter()
            .map(|(_, l)| (l.address, l.role))
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets idle
    /// sessions go with 421 and waits (bounded) for the others.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let status = listening_status(&self.local_addrs());
        let mut helpers = JoinSet::new();
        if let Some(l) = self.metrics {
            helpers.spawn(crate::metrics::serve(l));
        }
        helpers.spawn(reload_on_sighup(self.shared.clone(), status.clone()));
        if let Some(client) = self.ban_client {
            helpers.spawn(client.run());
        }
        let queue_task = self.shared.queue.clone().map(|queue| {
            if let Some(control) = self.control {
                helpers.spawn(crate::control::serve(control, queue.clone()));
            }
            tokio::spawn(queue.run(stop_rx.clone(), SHUTDOWN_GRACE))
        });
        let mut tasks = JoinSet::new();
        for (listener, config) in self.listeners {
            audit::listening(config.address, config.role.as_str());
            tasks.spawn(accept_loop(
                listener,
                config,
                self.shared.clone(),
                stop_rx.clone(),
            ));
        }
        // Every listener was bound and listening since `bind` (the kernel queues connections
        // from then on) and has its accept loop now; the spool, control socket and metrics
        // endpoint too. systemd (Type=notify) reports the unit started only now.
        gatekeeper_support::notify::ready(&status);
        shutdown.await;
        info!(
            event = "shutdown",
            "stopping: no new connections, finishing sessions"
        );
        gatekeeper_support::notify::stopping("stopping: finishing sessions");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                event = "shutdown",
                "grace period over, aborting remaining sessions"
            );
            tasks.abort_all();
        }
        if let Some(q) = queue_task {
            let _ = q.await;
        }
        helpers.abort_all();
        info!(event = "shutdown", "stopped");
        Ok(())
    }
}

/// The checks of `[sender_auth]` over the `[dns]` resolver, when any is on.
fn sender_auth(config: &crate::config::Config) -> anyhow::Result<Option<Arc<SenderAuth>>> {
    let Some(sa) = config.sender_auth.as_ref().filter(|sa| sa.any()) else {
        return Ok(None);
    };
    // Validation already refused a check without [dns]; say so again rather than panic.
    let dns = config.dns.as_ref().with_context(|| {
        format!(
            "{}: [sender_auth] needs a [dns] table",
            config.path.display()
        )
    })?;
    let resolver = crate::dns::from_config(dns)
        .with_context(|| format!("{}: [dns]", config.path.display()))?;
    Ok(Some(Arc::new(SenderAuth::new(
        resolver,
        sa.clone(),
        &config.hostname,
    ))))
}

/// SIGHUP (`systemctl reload`): check the certificate and key now rather
/// than at the next handshake, so a deploy hook sees the outcome in the log.
/// Without this handler SIGHUP would end the process.
async fn reload_on_sighup(shared: Arc<Shared>, status: String) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            warn!(event = "reload", error = %e, "cannot install the SIGHUP handler");
            return;
        }
    };
    while hup.recv().await.is_some() {
        gatekeeper_support::notify::reloading("SIGHUP: checking the certificate and key");
        let _ = shared.tls.acceptor();
        info!(
            event = "reload",
            "SIGHUP: certificate and key checked (gatekeeper allowlists are followed anyway); \
             other settings take effect on restart"
        );
        gatekeeper_support::notify::ready(&status);
    }
}

/// `STATUS=` for systemd: where the relay listens, and as what.
fn listening_status(listening: &[(SocketAddr, Role)]) -> String {
    let all: Vec<String> = listening
        .iter()
        .map(|(address, role)| format!("{address} ({})", role.as_str()))
        .collect();
    format!("serving on {}", all.join(", "))
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(
    listener: TcpListener,
    config: ListenerConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut admission = Admission::new(&config);
    let config = Arc::new(config);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // E.g. out of file descriptors: back off, keep serving.
                        warn!(event = "accept_error", listener = %config.address, error = %e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                shared.bans.connection(peer.ip());
                if !admission.admits(peer.ip()) {
                    audit::peer_refused(peer, config.address);
                    sessions.spawn(refuse(tcp, config.role, shared.policy.hostname.clone()));
                    continue;
                }
                let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                    warn!(event = "too_many_connections", client = %peer, listener = %config.address);
                    crate::metrics::refused(Refusal::TooManyConnections);
                    sessions.spawn(busy(tcp, config.role));
                    continue;
                };
                let Some(slot) = ClientSlot::take(&shared, peer.ip()) else {
                    audit::too_many_from_client(peer, config.address);
                    drop(permit);
                    sessions.spawn(busy(tcp, config.role));
                    continue;
                };
                let (config, shared, stop) = (config.clone(), shared.clone(), stop.clone());
                sessions.spawn(async move {
                    handle(tcp, peer, &config, &shared, stop).await;
                    drop(slot);
                    drop(permit);
                });
            }
        }
    }
    while sessions.join_next().await.is_some() {}
}

/// One session counted against its client address; released on drop.
struct ClientSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl ClientSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        let mut map = shared
            .per_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= shared.limits.per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// `554 5.7.1` for a peer outside the ranges. On 465 the client expects a
/// TLS handshake and could not read a plaintext reply; there we close
/// without exposing the TLS stack to unadmitted peers.
async fn refuse(mut tcp: TcpStream, role: Role, hostname: String) {
    if role != Role::Submissions {
        let reply = Reply::new(554, "5.7.1", format!("{hostname} access denied"));
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tcp.write_all(reply.to_wire().as_bytes()),
        )
        .await;
    }
    let _ = tcp.shutdown().await;
}

async fn busy(mut tcp: TcpStream, role: Role) {
    if role != Role::Submissions {
        let reply = Reply::new(421, "4.7.0", "Too many connections, try later");
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tcp.write_all(reply.to_wire().as_bytes()),
        )
        .await;
    }
    let _ = tcp.shutdown().await;
}

async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) {
    audit::connect(peer, config.address, config.role.as_str());
    let _ = tcp.set_nodelay(true);
    let implicit_tls = config.role == Role::Submissions;
    let local_ip = tcp.local_addr().ok().map(|a| a.ip());
    let screened = shared.screen.applies(config.role, peer.ip());
    // On 465 the client speaks first (TLS), so there is no greeting to talk before.
    let pre_greet = match shared.bans.pre_greet_delay() {
        _ if implicit_tls => None,
        Some(delay) => Some(delay),
        None if screened => shared.screen.pre_greet_delay(),
        None => None,
    };
    // The DNS lists are asked while the greeting is held back: no added wait.
    let (talked, lists) = crate::screen::before_greeting(
        async {
            match pre_greet {
                Some(delay) => talks_before_greeting(&tcp, delay).await,
                None => Some(false),
            }
        },
        async {
            match screened {
                true => shared.screen.connect(peer).await,
                false => None,
            }
        },
    )
    .await;
    let Some(talked_first) = talked else {
        audit::disconnect(peer, false, None, Disconnect::Eof);
        return;
    };
    if pre_greet.is_some() {
        crate::screen::pre_greet_result(talked_first);
    }
    let mut conn = Conn::new(Stream::Plain(tcp), shared.timeout);
    if talked_first {
        audit::pre_greet(peer);
        shared.bans.pre_greet(peer.ip());
        conn.queue(&Reply::new(
            554,
            "5.5.1",
            "Protocol error: input before the greeting",
        ));
        conn.close().await;
        audit::disconnect(peer, false, None, Disconnect::PreGreet);
        return;
    }
    if let Some(refusal) = lists.and_then(|d| d.refusal(peer.ip())) {
        conn.queue(&refusal);
        conn.close().await;
        audit::disconnect(peer, false, None, Disconnect::Screened);
        return;
    }
    if implicit_tls {
        if let Err(e) = conn
            .start_tls(&shared.tls.acceptor(), shared.limits.tls_handshake)
            .await
        {
            audit::tls_failed(peer, &e.to_string());
            audit::disconnect(peer, false, None, Disconnect::TlsFailed);
            return;
        }
        audit::tls_started(peer, conn.tls_version().as_deref().unwrap_or("unknown"));
    }
    let mut session = Session::new(
        shared.policy.clone(),
        config.role,
        config.address,
        peer,
        implicit_tls,
    );
    if let Some(ip) = local_ip {
        session.set_local_ip(ip);
    }
    conn.queue(&session.greeting());
    let mut checks = SessionAuth::new(shared.sender_auth.clone(), config.role, config.dmarc_policy);
    let reason = match serve(&mut conn, &mut session, shared, &mut stop, &mut checks).await {
        Ok(reason) => reason,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            crate::metrics::refused(Refusal::Timeout);
            conn.queue(&Reply::new(421, "4.4.2", "Timeout, closing connection"));
            Disconnect::Timeout
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Disconnect::EofInData,
        Err(_) => Disconnect::IoError,
    };
    conn.close().await;
    audit::disconnect(peer, session.tls(), session.user(), reason);
}

/// Holds the greeting back for `delay`: whether the client sent anything meanwhile (a
/// pre-greet talker, as spam bots that do not wait for the server are), or `None` when it
/// left. A talker's input so far is read and dropped, so closing after our reply ends with a
/// FIN the client can read the reply before, not a reset.
async fn talks_before_greeting(tcp: &TcpStream, delay: Duration) -> Option<bool> {
    let mut byte = [0u8; 1];
    tokio::select! {
        () = tokio::time::sleep(delay) => Some(false),
        peeked = tcp.peek(&mut byte) => match peeked {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let mut sink = [0u8; 4096];
                for _ in 0..16 {
                    if !matches!(tcp.try_read(&mut sink), Ok(n) if n > 0) {
                        break;
                    }
                }
                Some(true)
            }
        },
    }
}

/// The command loop. Returns why the session ended.
async fn serve(
    conn: &mut Conn,
    session: &mut Session,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    checks: &mut SessionAuth,
) -> io::Result<Disconnect> {
    loop {
        let line = tokio::select! {
            line = conn.read_line(shared.limits.command_line) => line?,
            () = stopped(stop) => {
                conn.queue(&Reply::new(421, "4.3.2", "Service shutting down, try later"));
                return Ok(Disconnect::Shutdown);
            }
        };
        let command = match line {
            Line::Line(l) => crate::command::parse(&l),
            Line::TooLong => Err(crate::command::CommandError::LineTooLong),
            Line::Eof => return Ok(Disconnect::Eof),
        };
        let had_transaction = session.sender().is_some();
        let mut action = session.handle(command);
        checks.after_command(
            had_transaction,
            session.sender(),
            session.client().ip(),
            session.helo().unwrap_or_default(),
            session.user().is_some() || session.trusted(),
        );
        if let Action::Auth { mechanism, initial } = action {
            action = authenticate(conn, session, shared, mechanism, initial).await?;
        }
        match action {
            Action::Reply(reply) => conn.queue(&reply),
            // `authenticate` never asks for another exchange; answer safely.
            Action::Auth { .. } => conn.queue(&Reply::new(451, "4.3.0", "Internal error")),
            Action::Close(reply) => {
                conn.queue(&reply);
                return Ok(Disconnect::Closed);
            }
            Action::StartTls(reply) => {
                conn.queue(&reply);
                if conn.has_buffered_input() {
                    audit::starttls_injection(session.client());
                }
                if let Err(e) = conn
                    .start_tls(&shared.tls.acceptor(), shared.limits.tls_handshake)
                    .await
                {
                    audit::tls_failed(session.client(), &e.to_string());
                    return Ok(Disconnect::TlsFailed);
                }
                audit::tls_started(
                    session.client(),
                    conn.tls_version().as_deref().unwrap_or("unknown"),
                );
                session.tls_started();
            }
            Action::Data(reply, envelope) => {
                let policy = checks.dmarc_policy;
                receive(
                    conn,
                    session,
                    shared,
                    reply,
                    *envelope,
                    checks.take(),
                    policy,
                )
                .await?;
            }
            Action::VerifyRcpt(pending) => {
                if verify_rcpt(conn, session, shared, *pending).await {
                    return Ok(Disconnect::RecipientHarvest);
                }
            }
        }
    }
}

/// Checks a local recipient (`[recipients]`), holds an unknown one's answer back as the
/// harvest tarpit says, and queues the reply. True when the session must close.
async fn verify_rcpt(
    conn: &mut Conn,
    session: &mut Session,
    shared: &Shared,
    pending: crate::session::PendingRcpt,
) -> bool {
    let verdict = match &shared.policy.recipients {
        Some(directory) => directory.verify(&pending.address).await,
        None => crate::recipients::Verdict::accepted(),
    };
    if verdict.result == crate::recipients::RecipientResult::Unknown {
        shared.bans.unknown_recipient(session.client().ip());
    }
    let (action, delay) = session.rcpt_verified(pending, &verdict);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match action {
        Action::Close(reply) => {
            conn.queue(&reply);
            true
        }
        Action::Reply(reply) => {
            conn.queue(&reply);
            false
        }
        _ => {
            conn.queue(&Reply::new(451, "4.3.0", "Internal error"));
            false
        }
    }
}

/// Runs a SASL exchange and verifies the credentials; returns the action
/// for the final reply.
async fn authenticate(
    conn: &mut Conn,
    session: &mut Session,
    shared: &Shared,
    mechanism: Mechanism,
    initial: Option<String>,
) -> io::Result<Action> {
    let client = session.client();
    let credentials = match mechanism {
        Mechanism::Plain => {
            let response = match initial {
                Some(r) => Ok(r),
                None => challenge(conn, "").await?,
            };
            response.and_then(|r| auth::parse_plain(&auth::decode_response(&r)?))
        }
        Mechanism::Login => {
            let user = match initial {
                Some(r) => Ok(r),
                None => challenge(conn, "Username:").await?,
            }
            .and_then(|r| auth::parse_login_field(auth::decode_response(&r)?));
            match user {
                Ok(user) => challenge(conn, "Password:")
                    .await?
                    .and_then(|r| auth::parse_login_field(auth::decode_response(&r)?))
                    .map(|pass| (user, pass)),
                Err(e) => Err(e),
            }
        }
    };
    let (user, password) = match credentials {
        Ok(c) => c,
        Err(SaslError::Cancelled) => {
            audit::auth_failed(client, None, mechanism.name(), "cancelled");
            return Ok(Action::Reply(Reply::new(
                501,
                "5.7.0",
                "Authentication cancelled",
            )));
        }
        Err(e) => {
            audit::auth_failed(client, None, mechanism.name(), &e.to_string());
            shared.bans.auth_failed(client.ip());
            return Ok(session.auth_failed());
        }
    };
    // Brute force: no password check while the address or the name has
    // too many recent failures; the same answer whether the user exists.
    if shared.throttle.blocked(client.ip(), &user) {
        audit::auth_throttled(client, Some(&user));
        // Held at 454, a guesser still shows what it is: count it towards a ban.
        shared.bans.auth_failed(client.ip());
        return Ok(Action::Reply(Reply::new(
            454,
            "4.7.0",
            "Temporary authentication failure, try again later",
        )));
    }
    // `[[user]]` tables first; a name they do not have goes to the directory.
    let verified = match session.directory() {
        Some(directory) if !session.users().contains(&user) => {
            match directory.login(&user, &password).await {
                Ok(crate::directory::Login::Accepted(account)) => Ok(account.addresses),
                Ok(crate::directory::Login::Refused(why)) => Err(why.as_str()),
                Err(e) => {
                    audit::auth_failed(client, Some(&user), mechanism.name(), &e.to_string());
                    return Ok(Action::Reply(Reply::new(
                        454,
                        "4.7.0",
                        "Temporary authentication failure, try again later",
                    )));
                }
            }
        }
        _ => match session.users().verify(&user, &password).await {
            true => Ok(Vec::new()),
            false => Err("bad credentials"),
        },
    };
    match verified {
        Ok(addresses) => {
            shared.throttle.succeeded(client.ip(), &user);
            audit::auth_succeeded(client, &user, mechanism.name());
            Ok(Action::Reply(
                session.directory_auth_succeeded(user, addresses),
            ))
        }
        Err(why) => refuse_login(session, shared, client, &user, mechanism, why).await,
    }
}

/// A wrong password or an account that may not log in: the same 535 for all, after the
/// brute-force delay.
async fn refuse_login(
    session: &mut Session,
    shared: &Shared,
    client: SocketAddr,
    user: &str,
    mechanism: Mechanism,
    why: &str,
) -> io::Result<Action> {
    let delay = shared.throttle.failed(client.ip(), user);
    audit::auth_failed(client, Some(user), mechanism.name(), why);
    shared.bans.auth_failed(client.ip());
    tokio::time::sleep(delay).await;
    Ok(session.auth_failed())
}

/// Sends a 334 challenge and reads the response line. A too-long line is
/// a malformed response.
async fn challenge(conn: &mut Conn, prompt: &str) -> io::Result<Result<String, SaslError>> {
    conn.queue(&Reply::bare(334, vec![auth::encode(prompt.as_bytes())]));
    match conn.read_line(AUTH_LINE_LIMIT).await? {
        Line::Line(l) => Ok(String::from_utf8(l).map_err(|_| SaslError::Base64)),
        Line::TooLong => Ok(Err(SaslError::Malformed)),
        Line::Eof => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed during AUTH",
        )),
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Keeps a string safe inside a header comment.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The trace header we prepend (RFC 5321 4.4, RFC 3848 protocol names).
pub fn received_header(
    session: &Session,
    queue_id: &str,
    tls_version: Option<&str>,
    now: u64,
) -> String {
    let mut comment = Vec::new();
    if let Some(v) = tls_version {
        comment.push(format!("using {}", comment_safe(v)));
    }
    if let Some(user) = session.user() {
        comment.push(format!("authenticated user {}", comment_safe(user)));
    }
    let comment = if comment.is_empty() {
        String::new()
    } else {
        format!("\r\n\t({})", comment.join("; "))
    };
    format!(
        "Received: from {} ({})\r\n\tby {} (smtp-relay) with {} id {}{};\r\n\t{}\r\n",
        session.helo().unwrap_or("unknown"),
        address_literal(session.client().ip()),
        session.hostname(),
        session.protocol(),
        queue_id,
        comment,
        crate::clock::rfc5322(now)
    )
}

/// `451 4.3.0` when the spool fails us.
fn local_error() -> (Reply, MessageOutcome) {
    (
        Reply::new(451, "4.3.0", "Local error in processing, try later"),
        MessageOutcome::Refused(Refusal::LocalError),
    )
}

/// The DATA phase: 354, read to the real end into the spool, then 250 with
/// the queue id only once the message is durable.
///
/// With sender authentication the message is held (up to `max_verify_size`) and verified on
/// the bytes as received; our `Received:` and `Authentication-Results:` then go on top. Without
/// it, or for SPF alone, our fields are written first and the message streams. Either way the
/// client's `Authentication-Results:` claiming our authserv-id are removed.
async fn receive(
    conn: &mut Conn,
    session: &mut Session,
    shared: &Shared,
    go_ahead: Reply,
    envelope: Envelope,
    mut checks: Option<TransactionAuth>,
    dmarc_policy: DmarcPolicy,
) -> io::Result<()> {
    session.data_done();
    let writer = match shared.spool.begin().await {
        Ok(w) => w,
        Err(e) => {
            error!(event = "spool_error", client = %session.client(), error = %e);
            conn.queue(&Reply::new(
                451,
                "4.3.0",
                "Local error in processing, try later",
            ));
            return Ok(());
        }
    };
    let id = writer.id().to_owned();
    let received = received_header(
        session,
        &id,
        conn.tls_version().as_deref(),
        envelope.received_at,
    );
    let hold = checks
        .as_ref()
        .filter(|c| c.verify_message)
        .map(|c| usize::try_from(c.auth.config().max_verify_size).unwrap_or(usize::MAX));
    let mut verdict: Option<Verdict> = None;
    let (mut sink, header_written) = match hold {
        Some(limit) => (
            MessageSink::holding(writer, &shared.authserv_id, limit),
            Ok(()),
        ),
        None => {
            let mut sink = MessageSink::streaming(writer, &shared.authserv_id);
            let mut prefix = received.clone();
            if let Some(c) = checks.as_mut() {
                // SPF alone: its result (started at MAIL FROM) goes on top, then the stream.
                c.wait_spf().await;
                let v = c.auth.without_message(c.spf());
                prefix.push_str(&v.header);
                verdict = Some(v);
            }
            let written = sink.write_ours(prefix.as_bytes()).await;
            (sink, written)
        }
    };
    conn.queue(&go_ahead);
    let mut decoder =
        Decoder::with_line_limit(shared.policy.max_message_size, shared.limits.text_line);
    let command_timeout = conn.timeout();
    conn.set_timeout(shared.limits.data_timeout);
    let mut spilled = Ok(());
    let read = loop {
        match conn.read_data(&mut decoder, &mut sink).await {
            Ok(DataRead::SinkFull) => {
                // Too large to verify: our fields with SPF only, then the rest streams.
                let Some(c) = checks.as_mut() else {
                    break Err(io::Error::other("a sink held data without checks"));
                };
                c.wait_spf().await;
                let v = c.auth.without_message(c.spf());
                let prefix = format!("{received}{}", v.header);
                verdict = Some(v);
                if let Err(e) = sink.spill(prefix.as_bytes()).await {
                    spilled = Err(e);
                }
            }
            Ok(DataRead::Done(outcome, result)) => break Ok((outcome, result)),
            Err(e) => break Err(e),
        }
    };
    conn.set_timeout(command_timeout);
    let (outcome, sink_result) = read?;
    if decoder.smuggling_attempt() {
        audit::smuggling_attempt(session.client(), session.tls(), session.user());
        shared.bans.smuggling(session.client().ip());
    }
    let mut sink_result = header_written.and(spilled).and(sink_result);
    if let (Outcome::Complete { .. }, Ok(())) = (&outcome, &sink_result) {
        sink_result = finish_message(
            &mut sink,
            &received,
            checks.as_mut(),
            dmarc_policy,
            &mut verdict,
        )
        .await;
    }
    if sink.removed() > 0 {
        warn!(event = "forged_authentication_results", client = %session.client(), queue_id = %id,
            removed = sink.removed(), "removed Authentication-Results fields claiming our authserv-id");
    }
    if let Some(v) = &verdict {
        audit::check(session.client(), &id, v);
    }
    let rejected = verdict.as_ref().and_then(|v| match &v.action {
        DmarcAction::Reject { domain } => Some(domain.clone()),
        _ => None,
    });
    let writer = sink.into_writer();
    let sink = sink_result;
    let size = match outcome {
        Outcome::Complete { size } => size,
        _ => 0,
    };
    let (reply, counted) = match (outcome, sink) {
        (Outcome::TooBig, _) => (
            Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ),
            MessageOutcome::Refused(Refusal::MessageTooBig),
        ),
        (Outcome::LineTooLong, _) => (
            Reply::new(
                500,
                "5.5.6",
                format!(
                    "Line too long (at most {} octets with CRLF)",
                    shared.limits.text_line
                ),
            ),
            MessageOutcome::Refused(Refusal::LineTooLong),
        ),
        (Outcome::BareLineEnding, _) => (
            Reply::new(
                550,
                "5.6.0",
                "Bare CR or LF in message data not allowed; use CRLF line endings",
            ),
            MessageOutcome::Refused(Refusal::BareLineEnding),
        ),
        (Outcome::Complete { .. }, Err(e)) => {
            error!(event = "spool_error", client = %session.client(), queue_id = %id, error = %e);
            local_error()
        }
        // Nothing spooled (the writer's temp file goes with it), nothing bounced.
        (Outcome::Complete { .. }, Ok(())) if rejected.is_some() => (
            Reply::new(
                550,
                "5.7.1",
                format!(
                    "Message rejected: DMARC policy of {} (p=reject)",
                    rejected.unwrap_or_default()
                ),
            ),
            MessageOutcome::Refused(Refusal::DmarcReject),
        ),
        (Outcome::Complete { .. }, Ok(())) => match writer.commit(envelope.clone()).await {
            Ok(()) => {
                if envelope.recipients.iter().any(|r| !r.local) {
                    crate::metrics::RELAYED.inc();
                }
                if let Some(queue) = &shared.queue {
                    queue.enqueued(&id, envelope.received_at);
                }
                (
                    Reply::new(250, "2.0.0", format!("Ok: queued as {id}")),
                    MessageOutcome::Queued,
                )
            }
            Err(e) => {
                error!(event = "spool_error", client = %session.client(), queue_id = %id, error = %e);
                local_error()
            }
        },
    };
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    audit::message(&audit::MessageEvent {
        client: session.client(),
        tls: session.tls(),
        user: session.user(),
        queue_id: &id,
        sender: &envelope.sender,
        recipients: &recipients,
        size,
        outcome: counted,
        reply: &reply,
    });
    conn.queue(&reply);
    Ok(())
}

/// A message read completely: verified if it was held, then our fields and the message go to
/// the spool (unless DMARC says reject), and the last partial line is flushed.
async fn finish_message(
    sink: &mut MessageSink,
    received: &str,
    checks: Option<&mut TransactionAuth>,
    dmarc_policy: DmarcPolicy,
    verdict: &mut Option<Verdict>,
) -> io::Result<()> {
    if let Some(held) = sink.take_held() {
        let Some(c) = checks else {
            return Err(io::Error::other("a sink held data without checks"));
        };
        c.wait_spf().await;
        let auth = &c.auth;
        let v = auth
            .verify(&held, c.identity.ip, c.spf(), dmarc_policy)
            .await;
        let reject = matches!(v.action, DmarcAction::Reject { .. });
        let mut prefix = format!("{received}{}", v.header);
        if let DmarcAction::Quarantine { policy, domain } = &v.action {
            prefix.push_str(&format!(
                "{}: dmarc=fail policy={policy} domain={domain}\r\n",
                auth.config().quarantine_header
            ));
        }
        *verdict = Some(v);
        if reject {
            return Ok(());
        }
        sink.write_ours(prefix.as_bytes()).await?;
        sink.write(&held).await?;
    }
    sink.finish().await
}
