//! Operator access to the queue while the relay runs.
//!
//! The running relay holds an exclusive `flock` on `spool_dir/lock` and
//! listens on the Unix socket `spool_dir/control.sock` (mode 0600, inside
//! the 0700 spool). `queue flush` and `queue remove` send one line there
//! (`flush`, `remove ID`) and print the one-line answer; the relay changes
//! its schedule and the spool itself, so no file is touched by two
//! processes. When no relay runs (the lock can be taken), the commands
//! work on the spool directly while holding the lock. `queue list` and
//! `queue show` only read: envelopes are replaced atomically (rename), so
//! a reader always sees a whole one.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use gatekeeper_support::lock::{self, Lock};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::delivery::{Queue, Removal};
use crate::spool::{Envelope, RcptStatus, Spool, is_valid_id};

pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("control.sock")
}

fn lock_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("lock")
}

/// Takes the spool's exclusive lock (released when dropped, also by a
/// crash). Fails if another process holds it.
pub fn lock_spool(spool_dir: &Path) -> anyhow::Result<Lock> {
    let path = lock_path(spool_dir);
    lock::try_lock_file(&path)
        .with_context(|| format!("locking {}", path.display()))?
        .with_context(|| {
            format!(
                "{} is locked: another smtp-relay uses this spool",
                path.display()
            )
        })
}

/// Binds the control socket (replacing a stale one: we hold the lock).
pub fn bind(spool_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(spool_dir);
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Answers control requests until the task is dropped.
pub async fn serve(listener: UnixListener, queue: Queue) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let queue = queue.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::io::BufReader::new(r).take(256).read_line(&mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let answer = handle(&queue, line.trim_end());
            let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

fn handle(queue: &Queue, line: &str) -> String {
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("flush"), None, None) => {
            let n = queue.flush();
            info!(event = "flush", messages = n, "queue flushed by operator");
            format!("ok {n} message(s) scheduled now")
        }
        (Some("remove"), Some(id), None) if is_valid_id(id) => match queue.remove(id) {
            Ok(Removal::Removed) => format!("ok {id} removed"),
            Ok(Removal::AfterAttempt) => {
                format!("ok {id} will be removed when its delivery attempt ends")
            }
            Ok(Removal::NotFound) => format!("error {id}: no such message"),
            Err(e) => format!("error {id}: {e}"),
        },
        _ => {
            warn!(event = "control_error", request = ?line);
            "error unknown request".into()
        }
    }
}

/// Sends one request to the running relay. `Ok(None)`: no relay listens.
pub fn request(spool_dir: &Path, line: &str) -> anyhow::Result<Option<String>> {
    let path = socket_path(spool_dir);
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    Ok(Some(answer.trim_end().to_owned()))
}

/// With no relay running, the commands write the spool themselves. Files
/// written by another user (typically root, while the relay runs as
/// `smtp-relay`) would be unreadable to the relay at its next start, and a
/// root-owned `lock` file would keep it from starting at all; so only the
/// spool directory's owner may do that.
fn ensure_spool_owner(spool_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = fs::metadata(spool_dir)
        .with_context(|| format!("reading {}", spool_dir.display()))?
        .uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    anyhow::ensure!(
        owner == me,
        "no relay is running, so this would write the spool {} directly, but it belongs to uid \
         {owner} and this runs as uid {me}: run it as the spool's owner, e.g. \
         `runuser -u smtp-relay -- smtp-relay queue ...`, so the relay can still read what it writes",
        spool_dir.display()
    );
    Ok(())
}

/// `flush` or `remove ID`, through the relay if it runs, else directly on
/// the spool under its lock. Returns the message to print.
pub fn command(spool_dir: &Path, line: &str) -> anyhow::Result<String> {
    if let Some(answer) = request(spool_dir, line)? {
        return match answer.strip_prefix("ok ") {
            Some(rest) => Ok(rest.to_owned()),
            None => anyhow::bail!("{}", answer.strip_prefix("error ").unwrap_or(&answer)),
        };
    }
    ensure_spool_owner(spool_dir)?;
    let _lock = lock_spool(spool_dir).context("the relay's control socket does not answer")?;
    let spool = Spool::open(spool_dir)?;
    let mut words = line.split(' ');
    match (words.next(), words.next()) {
        (Some("flush"), _) => {
            let ids = spool.queued_ids()?;
            for id in &ids {
                let mut env = spool.read_envelope(id)?;
                env.next_attempt = 0;
                spool.update(&env)?;
            }
            Ok(format!(
                "{} message(s) will be tried as soon as the relay starts",
                ids.len()
            ))
        }
        (Some("remove"), Some(id)) => {
            anyhow::ensure!(is_valid_id(id), "invalid queue id {id:?}");
            anyhow::ensure!(
                spool_dir.join(format!("{id}.env")).exists(),
                "{id}: no such message"
            );
            spool.remove(id)?;
            Ok(format!("{id} removed"))
        }
        _ => anyhow::bail!("unknown request {line:?}"),
    }
}

/// One line of `queue list`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub id: String,
    pub received_at: String,
    pub age_secs: u64,
    pub size: u64,
    pub sender: String,
    pub pending: Vec<String>,
    pub delivered: usize,
    pub failed: usize,
    pub attempts: u32,
    pub next_attempt: u64,
    pub last_reply: Option<String>,
}

fn summary(env: &Envelope, now: u64) -> Summary {
    let count = |s: RcptStatus| env.recipients.iter().filter(|r| r.status == s).count();
    Summary {
        id: env.id.clone(),
        received_at: env.received_at_rfc3339.clone(),
        age_secs: now.saturating_sub(env.received_at),
        size: env.size,
        sender: env.sender.clone(),
        pending: env
            .recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
            .map(|r| r.address.clone())
            .collect(),
        delivered: count(RcptStatus::Delivered),
        failed: count(RcptStatus::Failed),
        attempts: env.attempts,
        next_attempt: env.next_attempt,
        last_reply: env.recipients.iter().rev().find_map(|r| r.last_reply()),
    }
}

/// Every queued message, oldest id first (envelopes that vanish while we
/// read, because they were delivered, are skipped).
pub fn list(spool_dir: &Path) -> anyhow::Result<Vec<Summary>> {
    let spool = Spool::at(spool_dir);
    let now = crate::clock::unix_now();
    let mut out = Vec::new();
    for id in spool
        .queued_ids()
        .with_context(|| format!("reading {}", spool_dir.display()))?
    {
        if let Ok(env) = spool.read_envelope(&id) {
            out.push(summary(&env, now));
        }
    }
    Ok(out)
}

/// Plain-text table for `queue list`.
pub fn format_list(items: &[Summary]) -> String {
    let mut out = String::new();
    for s in items {
        out.push_str(&format!(
            "{}  {:>8}  {:>6}s  attempts={}  <{}>  -> {}{}\n",
            s.id,
            s.size,
            s.age_secs,
            s.attempts,
            s.sender,
            s.pending.join(", "),
            s.last_reply
                .as_ref()
                .map(|r| format!("\n    last reply: {r}"))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!("{} message(s) in the queue\n", items.len()));
    out
}

/// `queue show ID`: the envelope (JSON) and the message headers.
pub fn show(spool_dir: &Path, id: &str) -> anyhow::Result<String> {
    let spool = Spool::at(spool_dir);
    let (env, eml) = spool.read(id)?;
    let headers = match eml.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &eml[..p + 2],
        None => &eml[..],
    };
    Ok(format!(
        "{}\n\n{}",
        serde_json::to_string_pretty(&env)?,
        String::from_utf8_lossy(headers).replace("\r\n", "\n")
    ))
}
