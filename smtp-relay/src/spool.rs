//! The spool: where accepted messages wait for the delivery worker.
//!
//! Layout of `spool_dir`:
//! - `tmp/`: files being written; anything here after a crash is garbage
//!   and is removed when the spool is opened.
//! - `<id>.eml`: the message as stored (our `Received:` header, then the
//!   client's bytes after dot-unstuffing, CRLF line endings).
//! - `<id>.env`: the JSON [`Envelope`]. It is written last, so a message is
//!   queued exactly when its `.env` exists; an `.eml` without `.env` is an
//!   incomplete leftover.
//!
//! Each file is written under `tmp/`, created `O_EXCL|O_NOFOLLOW` and 0600 (a
//! name planted there, link or file, fails the write instead of being
//! followed); a commit thread makes a whole batch
//! of waiting messages durable at once (group commit: one `syncfs`, the
//! renames, message before envelope, one directory fsync). Only then do
//! their clients get `250`, so a `250` survives a crash or power loss.
//! - `free/`: the files of delivered messages, kept for new messages to be
//!   written into (see [`free`]).

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use gatekeeper_support::atomic;
use tokio::io::AsyncWriteExt as _;

pub use crate::envelope::{ENVELOPE_VERSION, Envelope, RcptStatus, Recipient};

mod free;
use free::Free;

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// Group commit; `None` for read-only handles ([`Spool::at`]).
    committer: Option<std::sync::Arc<Committer>>,
    /// Spent files to write new messages into; `None` for read-only handles.
    free: Option<std::sync::Arc<Free>>,
}

/// One message waiting for the group commit.
struct CommitRequest {
    id: String,
    env_json: Vec<u8>,
    done: tokio::sync::oneshot::Sender<io::Result<()>>,
}

/// Group commit: a thread takes every commit waiting, writes their
/// envelopes to `tmp/`, makes all of the batch's files durable with one
/// `syncfs` (one journal commit instead of several fsyncs per message),
/// renames them into place (message first, envelope last), fsyncs the
/// directory once, and only then answers every message of the batch.
struct Committer {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<CommitRequest>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

/// Most messages in one group commit.
const MAX_BATCH: usize = 256;

impl Committer {
    fn start(dir: PathBuf, free: std::sync::Arc<Free>) -> io::Result<Committer> {
        let (tx, rx) = std::sync::mpsc::channel::<CommitRequest>();
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    let result = commit_batch(&dir, &free, &batch);
                    for r in batch {
                        let answer = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        let _ = r.done.send(answer);
                    }
                }
            })?;
        Ok(Committer {
            tx: std::sync::Mutex::new(tx),
        })
    }
}

/// `syncfs(2)` on the spool's filesystem: writes back and waits for every
/// dirty file there, and commits the journal.
fn syncfs(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = fs::File::open(dir)?;
    // SAFETY: the descriptor is valid for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn commit_batch(dir: &Path, free: &Free, batch: &[CommitRequest]) -> io::Result<()> {
    let result = (|| {
        for r in batch {
            let mut f = free.create(&dir.join("tmp").join(format!("{}.env", r.id)))?;
            f.write_all(&r.env_json)?;
            f.set_len(r.env_json.len() as u64)?;
        }
        syncfs(dir)?;
        for r in batch {
            fs::rename(
                dir.join("tmp").join(format!("{}.eml", r.id)),
                dir.join(format!("{}.eml", r.id)),
            )?;
        }
        for r in batch {
            fs::rename(
                dir.join("tmp").join(format!("{}.env", r.id)),
                dir.join(format!("{}.env", r.id)),
            )?;
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        // Leave no half-queued message behind: nobody got a 250.
        for r in batch {
            let _ = fs::remove_file(dir.join(format!("{}.env", r.id)));
            let _ = fs::remove_file(dir.join("tmp").join(format!("{}.env", r.id)));
            let _ = fs::remove_file(dir.join(format!("{}.eml", r.id)));
            let _ = fs::remove_file(dir.join("tmp").join(format!("{}.eml", r.id)));
        }
    }
    result
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh queue id: microseconds, process id and a counter, in hex. Unique
/// per host; files are also created with `create_new` so a clash fails
/// instead of overwriting.
fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{micros:X}{:05X}{:04X}",
        std::process::id() & 0xF_FFFF,
        n & 0xFFFF
    )
}

/// Whether `id` has the form of a queue id (also keeps paths inside the
/// spool: no separators, no dots).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Creates `dir` (and its parents) if needed. Mail is private: directories
/// 0700, files 0600 (new ones only; an existing directory keeps the mode the
/// admin gave it).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Spool {
    /// Creates the directories if needed and removes stale temp files.
    pub fn open(dir: &Path) -> anyhow::Result<Spool> {
        let tmp = dir.join("tmp");
        create_private_dir(&tmp)
            .with_context(|| format!("creating spool directory {}", tmp.display()))?;
        for entry in fs::read_dir(&tmp).with_context(|| format!("reading {}", tmp.display()))? {
            let path = entry?.path();
            fs::remove_file(&path)
                .with_context(|| format!("removing stale spool file {}", path.display()))?;
        }
        sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        let free = std::sync::Arc::new(
            Free::open(dir).with_context(|| format!("opening {}/free", dir.display()))?,
        );
        let committer = Committer::start(dir.to_owned(), free.clone())
            .with_context(|| format!("starting the commit thread for {}", dir.display()))?;
        Ok(Spool {
            dir: dir.to_owned(),
            committer: Some(std::sync::Arc::new(committer)),
            free: Some(free),
        })
    }

    /// A spool handle for reading only (no directories created, no temp
    /// files removed): for the `queue` commands next to a running relay.
    pub fn at(dir: &Path) -> Spool {
        Spool {
            dir: dir.to_owned(),
            committer: None,
            free: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new message; the returned writer takes the message bytes.
    pub async fn begin(&self) -> io::Result<SpoolWriter> {
        let id = new_id();
        let tmp_eml = self.dir.join("tmp").join(format!("{id}.eml"));
        let file = match self.free.clone() {
            Some(free) => {
                let path = tmp_eml.clone();
                let file = tokio::task::spawn_blocking(move || free.create(&path))
                    .await
                    .map_err(io::Error::other)??;
                tokio::fs::File::from_std(file)
            }
            None => {
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&tmp_eml)
                    .await?
            }
        };
        Ok(SpoolWriter {
            id,
            dir: self.dir.clone(),
            committer: self.committer.clone(),
            tmp_eml: Some(tmp_eml),
            file: tokio::io::BufWriter::with_capacity(64 * 1024, file),
            size: 0,
        })
    }

    /// Ids of the queued (complete) messages, sorted.
    pub fn queued_ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".env"))
                && is_valid_id(id)
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Reads a queued message: envelope and message bytes.
    pub fn read(&self, id: &str) -> anyhow::Result<(Envelope, Vec<u8>)> {
        anyhow::ensure!(is_valid_id(id), "invalid queue id {id:?}");
        let env_path = self.dir.join(format!("{id}.env"));
        let eml_path = self.dir.join(format!("{id}.eml"));
        let env = Envelope::from_json(
            &fs::read(&env_path).with_context(|| format!("reading {}", env_path.display()))?,
        )
        .with_context(|| format!("parsing {}", env_path.display()))?;
        let eml = fs::read(&eml_path).with_context(|| format!("reading {}", eml_path.display()))?;
        anyhow::ensure!(
            env.size == eml.len() as u64,
            "{}: size {} does not match envelope size {}",
            eml_path.display(),
            eml.len(),
            env.size
        );
        Ok((env, eml))
    }

    /// Reads only the envelope of a queued message.
    pub fn read_envelope(&self, id: &str) -> anyhow::Result<Envelope> {
        anyhow::ensure!(is_valid_id(id), "invalid queue id {id:?}");
        let env_path = self.dir.join(format!("{id}.env"));
        Envelope::from_json(
            &fs::read(&env_path).with_context(|| format!("reading {}", env_path.display()))?,
        )
        .with_context(|| format!("parsing {}", env_path.display()))
    }

    /// Replaces `<id>.env` atomically: temp file under `tmp/` (swept at
    /// start-up), fsync, rename, fsync of the directory. A crash leaves
    /// either the old or the new envelope.
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        if !is_valid_id(&env.id) {
            return Err(io::Error::other(format!("invalid queue id {:?}", env.id)));
        }
        let json = serde_json::to_vec_pretty(env).map_err(io::Error::other)?;
        let path = self.dir.join(format!("{}.env", env.id));
        atomic::replace_staged_in(&path, &self.dir.join("tmp"), &json)?;
        Ok(())
    }

    /// Takes a message out of the queue: envelope first (so it is no
    /// longer queued), then the message file, then fsync of the directory.
    /// The files go to `free/` for reuse (unlinked by read-only handles).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        if !is_valid_id(id) {
            return Err(io::Error::other(format!("invalid queue id {id:?}")));
        }
        for name in [format!("{id}.env"), format!("{id}.eml")] {
            let path = self.dir.join(name);
            let removed = match &self.free {
                Some(free) => free.keep(&path),
                None => fs::remove_file(&path),
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.dir)
    }

    /// Removes message files without an envelope: leftovers of a crash
    /// before the `250` (never acknowledged, so nobody expects them).
    pub fn remove_orphans(&self) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".eml"))
                && is_valid_id(id)
                && !self.dir.join(format!("{id}.env")).exists()
            {
                fs::remove_file(self.dir.join(name.as_os_str()))?;
                removed.push(id.to_owned());
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Queues a message we generate ourselves (a bounce), durably, and
    /// returns its id.
    pub async fn enqueue(&self, env: Envelope, message: &[u8]) -> io::Result<String> {
        let mut writer = self.begin().await?;
        let id = writer.id().to_owned();
        writer.write(message).await?;
        writer.commit(env).await?;
        Ok(id)
    }
}

/// A message being written. Dropping it without [`SpoolWriter::commit`]
/// removes the temp file, so an aborted DATA leaves nothing behind.
pub struct SpoolWriter {
    id: String,
    dir: PathBuf,
    committer: Option<std::sync::Arc<Committer>>,
    tmp_eml: Option<PathBuf>,
    file: tokio::io::BufWriter<tokio::fs::File>,
    size: u64,
}

impl SpoolWriter {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes).await?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Makes the message durable: message file first, envelope last, each
    /// fsynced and renamed into place with the directory fsynced after.
    /// `env.size` and `env.id` are filled in here.
    pub async fn commit(mut self, mut env: Envelope) -> io::Result<()> {
        self.file.flush().await?;
        // A reused spool file may be longer than this message.
        self.file.get_ref().set_len(self.size).await?;
        env.id = self.id.clone();
        env.size = self.size;
        if let Some(committer) = self.committer.clone() {
            let env_json = serde_json::to_vec_pretty(&env).map_err(io::Error::other)?;
            let (done, wait) = tokio::sync::oneshot::channel();
            let request = CommitRequest {
                id: self.id.clone(),
                env_json,
                done,
            };
            committer
                .tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(request)
                .map_err(|_| io::Error::other("spool commit thread is gone"))?;
            // From here the commit thread owns the temp file.
            self.tmp_eml = None;
            return wait
                .await
                .map_err(|_| io::Error::other("spool commit thread is gone"))?;
        }
        self.file.get_ref().sync_all().await?;
        let tmp_eml = self
            .tmp_eml
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        let dir = self.dir.clone();
        let id = self.id.clone();
        let result = tokio::task::spawn_blocking(move || -> io::Result<()> {
            let outcome = (|| {
                fs::rename(&tmp_eml, dir.join(format!("{id}.eml")))?;
                sync_dir(&dir)?;
                let json = serde_json::to_vec_pretty(&env).map_err(io::Error::other)?;
                let tmp_env = dir.join("tmp").join(format!("{id}.env"));
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&tmp_env)?;
                f.write_all(&json)?;
                f.sync_all()?;
                fs::rename(&tmp_env, dir.join(format!("{id}.env")))?;
                sync_dir(&dir)
            })();
            if outcome.is_err() {
                // Leave no half-queued message behind.
                let _ = fs::remove_file(dir.join("tmp").join(format!("{id}.env")));
                let _ = fs::remove_file(dir.join(format!("{id}.env")));
                let _ = fs::remove_file(&tmp_eml);
                let _ = fs::remove_file(dir.join(format!("{id}.eml")));
            }
            outcome
        })
        .await;
        result.map_err(io::Error::other)?
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if let Some(path) = self.tmp_eml.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("smtp-relay-spool-{tag}-{}", new_id()));
            fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: String::new(),
            sender: "a@example.org".into(),
            recipients: vec![Recipient::new("b@example.net".into(), false)],
            client_addr: "127.0.0.1:1234".parse().ok(),
            helo: "client.example".into(),
            listener: "127.0.0.1:25".parse().ok(),
            role: Some(crate::config::Role::Mta),
            tls: true,
            user: Some("alice".into()),
            received_at: 1,
            received_at_rfc3339: "1970-01-01T00:00:01Z".into(),
            size: 0,
            body: crate::envelope::BodyType::EightBitMime,
            attempts: 0,
            next_attempt: 0,
            is_bounce: false,
            trusted: false,
        }
    }

    #[tokio::test]
    async fn update_replaces_envelope_and_remove_takes_both_files() {
        let tmp = TempDir::new("upd");
        let spool = Spool::open(&tmp.0).expect("open");
        let id = spool
            .enqueue(envelope(), b"Subject: x\r\n\r\nhi\r\n")
            .await
            .expect("enqueue");
        let mut env = spool.read_envelope(&id).expect("env");
        assert_eq!(env.recipients[0].status, RcptStatus::Pending);
        env.recipients[0].status = RcptStatus::Delivered;
        env.recipients[0].last = Some(crate::envelope::Answer::local(None, "250 ok"));
        env.attempts = 1;
        spool.update(&env).expect("update");
        let again = spool.read_envelope(&id).expect("env");
        assert_eq!(again, env);
        assert!(!again.has_pending());
        // An orphan .eml (crash before 250) is removed, queued ones are not.
        fs::write(tmp.0.join("ORPHAN1.eml"), b"x").expect("w");
        assert_eq!(spool.remove_orphans().expect("orphans"), vec!["ORPHAN1"]);
        assert!(tmp.0.join(format!("{id}.eml")).exists());
        spool.remove(&id).expect("remove");
        assert!(spool.queued_ids().expect("list").is_empty());
        assert!(!tmp.0.join(format!("{id}.eml")).exists());
        assert!(
            spool
                .update(&Envelope {
                    id: "../x".into(),
                    ..env
                })
                .is_err()
        );
    }

    #[tokio::test]
    async fn removed_files_are_reused_cut_to_the_new_length() {
        let tmp = TempDir::new("reuse");
        let spool = Spool::open(&tmp.0).expect("open");
        let long = spool
            .enqueue(envelope(), &b"Subject: long\r\n\r\n".repeat(500))
            .await
            .expect("enqueue");
        spool.remove(&long).expect("remove");
        let free = spool.free.as_ref().expect("free");
        assert_eq!(free.len(), 2);
        assert!(!tmp.0.join(format!("{long}.env")).exists());
        // The delivered message does not stay readable in the pool.
        let sizes = |dir: &Path| -> Vec<u64> {
            fs::read_dir(dir)
                .expect("free/")
                .map(|e| e.expect("entry").metadata().expect("metadata").len())
                .collect()
        };
        assert_eq!(sizes(&tmp.0.join("free")), vec![0, 0]);
        // Both spent files are written into again: the message and its envelope.
        let short = spool
            .enqueue(envelope(), b"Subject: x\r\n\r\nhi\r\n")
            .await
            .expect("enqueue");
        assert_eq!(free.len(), 0);
        let (env, bytes) = spool.read(&short).expect("read");
        assert_eq!(bytes, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(env.id, short);
        // A restart takes the spent files it finds into the pool.
        spool.remove(&short).expect("remove");
        drop(spool);
        // A crash between a move into the pool and its emptying: emptied at start.
        fs::write(tmp.0.join("free").join(new_id()), b"Subject: left over\r\n").expect("plant");
        let again = Spool::open(&tmp.0).expect("reopen");
        assert_eq!(again.free.as_ref().expect("free").len(), 3);
        assert_eq!(sizes(&tmp.0.join("free")), vec![0, 0, 0]);
        assert!(again.queued_ids().expect("list").is_empty());
    }

    #[tokio::test]
    async fn write_commit_read_roundtrip() {
        let tmp = TempDir::new("rt");
        let spool = Spool::open(&tmp.0).expect("open");
        let mut w = spool.begin().await.expect("begin");
        let id = w.id().to_owned();
        w.write(b"Subject: hi\r\n\r\n").await.expect("write");
        w.write(b"body\r\n").await.expect("write");
        // Not queued before commit.
        assert!(spool.queued_ids().expect("list").is_empty());
        w.commit(envelope()).await.expect("commit");
        assert_eq!(spool.queued_ids().expect("list"), vec![id.clone()]);
        let (env, eml) = spool.read(&id).expect("read");
        assert_eq!(eml, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(env.size, eml.len() as u64);
        assert_eq!(env.id, id);
        assert_eq!(env.user.as_deref(), Some("alice"));
        assert!(
            fs::read_dir(tmp.0.join("tmp"))
                .expect("tmp")
                .next()
                .is_none()
        );
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let tmp = TempDir::new("drop");
        let spool = Spool::open(&tmp.0).expect("open");
        let mut w = spool.begin().await.expect("begin");
        w.write(b"partial").await.expect("write");
        drop(w);
        assert!(spool.queued_ids().expect("list").is_empty());
        assert!(
            fs::read_dir(tmp.0.join("tmp"))
                .expect("tmp")
                .next()
                .is_none()
        );
        // tmp/ and free/ only.
        assert_eq!(fs::read_dir(&tmp.0).expect("dir").count(), 2);
    }

    #[tokio::test]
    async fn open_removes_stale_temp_files_and_ids_are_unique() {
        let tmp = TempDir::new("stale");
        fs::create_dir_all(tmp.0.join("tmp")).expect("mkdir");
        fs::write(tmp.0.join("tmp/OLD.eml"), b"x").expect("write");
        let spool = Spool::open(&tmp.0).expect("open");
        assert!(!tmp.0.join("tmp/OLD.eml").exists());
        let a = spool.begin().await.expect("a");
        let b = spool.begin().await.expect("b");
        assert_ne!(a.id(), b.id());
        assert!(is_valid_id(a.id()));
    }

    #[test]
    fn read_rejects_bad_ids_and_size_mismatch() {
        let tmp = TempDir::new("bad");
        let spool = Spool::open(&tmp.0).expect("open");
        assert!(spool.read("../etc/passwd").is_err());
        let mut env = envelope();
        env.size = 99;
        fs::write(
            tmp.0.join("X1.env"),
            serde_json::to_vec(&env).expect("json"),
        )
        .expect("w");
        fs::write(tmp.0.join("X1.eml"), b"short").expect("w");
        assert!(spool.read("X1").is_err());
    }
}
