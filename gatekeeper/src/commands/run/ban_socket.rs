//! The ban socket (`ban_socket`): the relay asks for bans here, one JSON line per request (see
//! [`gatekeeper::bans::request`]), and the daemon decides. Who asked is read from the socket
//! (SO_PEERCRED: pid and uid) and named in every log line; who may ask is decided by the socket
//! file's owner, group (`ban_socket_group`) and mode 0660, so a user outside the group cannot
//! connect at all.
//!
//! Requests are served on the daemon's loop; the ban itself (state file write, map update) runs on
//! a blocking thread, like a reload.

use std::{
    ffi::CString,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use gatekeeper::bans::{
    request::{Answer, Checked, Limits, MAX_LINE, RateLimit, Refusal},
    store::{Added, PutError},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{error, info, warn};

use super::scrape::SharedCounts;

/// How long a connection may stay silent before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Makes one ban: the store's add, on a blocking thread.
pub(super) type Apply = Arc<dyn Fn(Checked, String) -> Result<Added, PutError> + Send + Sync>;

/// What the connections share.
#[derive(Clone)]
pub(super) struct BanService {
    /// Replaced at every reload (the allowlist and `never_ban` may change).
    pub limits: Arc<RwLock<Arc<Limits>>>,
    pub rate: Arc<Mutex<RateLimit>>,
    pub counts: SharedCounts,
    pub apply: Apply,
}

/// The group id of `group` (a name, or a number).
fn group_id(group: &str) -> anyhow::Result<libc::gid_t> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = CString::new(group).map_err(|_| anyhow!("ban_socket_group {group:?}"))?;
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives the use of `entry`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        anyhow::bail!("ban_socket_group \"{group}\" is not a group on this system");
    }
    Ok(entry.gr_gid)
}

/// Binds the socket at `path` (mode 0660, group `group`; a stale socket file from an earlier
/// daemon is replaced, anything else there is an error).
pub(super) fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let gid = group.map(group_id).transpose()?;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "ban_socket {}: another process serves it (another gatekeeper daemon?)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "ban_socket {} exists and is not a socket; remove it or choose another path",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("listening on the ban socket {}", path.display()))?;
    // The default umask leaves the socket writable by its owner only until the mode is set.
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Serves `listener` until the daemon stops (the task is aborted with the runtime).
pub(super) fn serve(listener: UnixListener, path: PathBuf, service: BanService) {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let service = service.clone();
                    tokio::spawn(async move { connection(stream, service).await });
                }
                Err(err) => {
                    error!(socket = %path.display(), "accepting on the ban socket failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// Who is on the other end, for the log.
fn requester(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(cred) => match cred.pid() {
            Some(pid) => format!("pid={pid} uid={}", cred.uid()),
            None => format!("uid={}", cred.uid()),
        },
        Err(_) => "unknown".into(),
    }
}

async fn connection(stream: UnixStream, service: BanService) {
    let by = requester(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let answer = match read {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Err(err)) => {
                warn!(requester = %by, "reading a ban request failed: {err}");
                return;
            }
            Ok(Ok(_)) if line.len() > MAX_LINE => {
                let refusal = Refusal::Malformed(format!("a line longer than {MAX_LINE} bytes"));
                let answer = refused(&service, &by, &refusal);
                let _ = send(&mut write, &answer).await;
                return;
            }
            Ok(Ok(_)) => handle(&service, &by, &String::from_utf8_lossy(&line)).await,
        };
        if send(&mut write, &answer).await.is_err() {
            return;
        }
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    answer: &Answer,
) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(answer).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    text.push(b'\n');
    write.write_all(&text).await
}

/// One request line: rate, limits, then the ban.
async fn handle(service: &BanService, by: &str, line: &str) -> Answer {
    let line = line.trim();
    let allowed = service
        .rate
        .lock()
        .map(|mut rate| (rate.take(Instant::now()), rate.per_minute()))
        .unwrap_or((false, 0));
    if !allowed.0 {
        return refused(service, by, &Refusal::RateLimited(allowed.1));
    }
    let limits = match service.limits.read() {
        Ok(limits) => Arc::clone(&limits),
        Err(_) => return refused(service, by, &Refusal::Failed("limits unavailable".into())),
    };
    let checked = match limits.check(line) {
        Ok(checked) => checked,
        Err(refusal) => return refused(service, by, &refusal),
    };
    let apply = Arc::clone(&service.apply);
    let request = checked.clone();
    let who = by.to_string();
    let outcome = tokio::task::spawn_blocking(move || apply(request, who)).await;
    match outcome {
        Ok(Ok(added)) => {
            if let Ok(mut counts) = service.counts.lock() {
                counts.ban_requests_accepted += 1;
            }
            info!(
                requester = %by,
                source = %added.source,
                for_secs = checked.for_secs,
                until_unix = added.until_unix,
                extended = added.extended,
                reason = %checked.reason,
                "banned (ban socket)"
            );
            Answer::banned(added.source, checked.for_secs)
        }
        Ok(Err(PutError::Full { max })) => {
            if let Ok(mut counts) = service.counts.lock() {
                counts.bans_refused_full += 1;
            }
            error!(
                requester = %by,
                source = %checked.source,
                max_bans = max,
                reason = %checked.reason,
                "ban refused: the ban table is full (max_bans); nothing was evicted"
            );
            refused(
                service,
                by,
                &Refusal::Full(format!("the ban table is full (max_bans = {max})")),
            )
        }
        Ok(Err(PutError::Other(err))) => refused(service, by, &Refusal::Failed(format!("{err:#}"))),
        Err(err) => refused(service, by, &Refusal::Failed(err.to_string())),
    }
}

/// Counts and logs a refusal; its answer.
fn refused(service: &BanService, by: &str, refusal: &Refusal) -> Answer {
    if let Ok(mut counts) = service.counts.lock()
        && let Some(at) = Refusal::LABELS.iter().position(|l| *l == refusal.label())
    {
        counts.ban_requests_refused[at] += 1;
    }
    warn!(requester = %by, reason = refusal.label(), "ban request refused: {refusal}");
    Answer::refused(refusal)
}
