//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/deleterange`, `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/revoke`, and the streaming
//! `/v3/watch`), on HTTP/1.1 with hyper and tokio-rustls, both already in the tree: no gRPC stack,
//! no protoc at build time (see the README's "Fleet" section for the measurement behind the
//! choice).
//!
//! The members are tried in order; the one that answered last is tried first next time. Keys and
//! values travel base64-encoded, 64-bit numbers as JSON strings (the gateway's protobuf mapping).
//! With `user` and `password_file`, a token from `/v3/auth/authenticate` goes with every request
//! (etcd ignores a client certificate's CommonName on the gateway, so RBAC through the gateway is
//! by user and password; the certificate authenticates the connection).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::Mutex};

use gatekeeper_support::fleet_config::FleetConfig;

/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one member may take to answer a request before the next member is asked. A write
/// that reaches a follower just after the leader died is forwarded to the dead leader and lost:
/// etcd answers "request timed out" only after its own request timeout (5 s + 2 election
/// timeouts), long after another member could have taken the write. A healthy member commits in
/// milliseconds (etcd warns from 100 ms on), so a second is ample; asking again is safe (a put
/// of the same value again changes nothing; a lease granted twice leaves one unused lease, which
/// ends with its TTL).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long reading an answer's body may take once it started (a full read of a large prefix).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The revision asked for is gone (compacted): read everything again.
#[derive(Debug, thiserror::Error)]
#[error("revision {asked} was compacted (the oldest kept is {compacted})")]
pub struct Compacted {
    pub asked: i64,
    pub compacted: i64,
}

/// One key and its value, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

/// One change from a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

/// A member's address.
#[derive(Clone, Debug)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            bail!("{url}: not https://HOST:PORT");
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{url}: no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port: port.parse().with_context(|| format!("{url}: port"))?,
        })
    }

    fn name(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

/// The client; cheap to clone (shared state behind an `Arc`).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    tls: Option<tokio_rustls::TlsConnector>,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    /// The member that answered last.
    current: AtomicUsize,
    /// The connection unary requests share, and the member it goes to.
    conn: Mutex<Option<(usize, SendRequest<Full<Bytes>>)>>,
}

/// An HTTP/1.1 connection over `stream`, driven by a task of its own.
async fn http1<S>(stream: S, endpoint: &Endpoint) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("{}: HTTP", endpoint.name()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// The rustls client config of `fleet`: its CA (else the system's trust store) and client
/// certificate.
fn tls_config(fleet: &FleetConfig) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &fleet.ca_file {
        Some(file) => {
            for cert in CertificateDer::pem_file_iter(file)
                .with_context(|| format!("reading fleet.ca_file {}", file.display()))?
            {
                let cert = cert.with_context(|| format!("parsing {}", file.display()))?;
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!(
                    "fleet.ca_file {} holds no usable certificate",
                    file.display()
                );
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match (&fleet.cert_file, &fleet.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading fleet.cert_file {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading fleet.key_file {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not go together")?
        }
        _ => builder.with_no_client_auth(),
    })
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading fleet.password_file {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

impl Client {
    /// A client for `fleet`'s members (nothing is connected yet).
    pub fn new(fleet: &FleetConfig) -> anyhow::Result<Client> {
        Client::with_credentials(fleet, None)
    }

    /// [`Client::new`] with another identity than `fleet.user` (the admin CLI's).
    pub fn with_credentials(
        fleet: &FleetConfig,
        credentials: Option<(String, String)>,
    ) -> anyhow::Result<Client> {
        let endpoints = fleet
            .endpoints
            .iter()
            .map(|e| Endpoint::parse(e))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tls = if endpoints.iter().any(|e| e.tls) {
            Some(tokio_rustls::TlsConnector::from(Arc::new(tls_config(
                fleet,
            )?)))
        } else {
            None
        };
        let credentials = match credentials {
            Some(c) => Some(c),
            None => match (&fleet.user, &fleet.password_file) {
                (Some(user), Some(file)) => Some((user.clone(), read_password(file)?)),
                _ => None,
            },
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                tls,
                credentials,
                token: Mutex::new(None),
                current: AtomicUsize::new(0),
                conn: Mutex::new(None),
            }),
        })
    }

    /// The members, as configured.
    pub fn endpoints(&self) -> String {
        self.inner
            .endpoints
            .iter()
            .map(Endpoint::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn connect(&self, at: usize) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let endpoint = &self.inner.endpoints[at];
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
        )
        .await
        .map_err(|_| anyhow!("{}: connect timed out", endpoint.name()))?
        .with_context(|| format!("{}: connect", endpoint.name()))?;
        let _ = tcp.set_nodelay(true);
        let send = if endpoint.tls {
            let connector = self
                .inner
                .tls
                .as_ref()
                .ok_or_else(|| anyhow!("no TLS config"))?;
            let name = ServerName::try_from(endpoint.host.clone())
                .with_context(|| format!("{}: server name", endpoint.name()))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| anyhow!("{}: TLS handshake timed out", endpoint.name()))?
                .with_context(|| format!("{}: TLS handshake", endpoint.name()))?;
            http1(stream, endpoint).await?
        } else {
            http1(tcp, endpoint).await?
        };
        Ok(send)
    }

    fn request(
        &self,
        at: usize,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let endpoint = &self.inner.endpoints[at];
        let mut builder = Request::post(path)
            .header(
                hyper::header::HOST,
                format!("{}:{}", endpoint.host, endpoint.port),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            builder = builder.header(hyper::header::AUTHORIZATION, token);
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
    }

    /// The token for the next request, authenticating first when the client has credentials.
    async fn token(&self) -> anyhow::Result<Option<String>> {
        let Some((user, password)) = &self.inner.credentials else {
            return Ok(None);
        };
        let mut token = self.inner.token.lock().await;
        if let Some(t) = token.as_ref() {
            return Ok(Some(t.clone()));
        }
        let answer = self
            .send(
                "/v3/auth/authenticate",
                &json!({"name": user, "password": password}),
                None,
            )
            .await
            .with_context(|| format!("authenticating as etcd user {user}"))?;
        let t = answer["token"]
            .as_str()
            .ok_or_else(|| anyhow!("authenticating as {user}: no token in the answer"))?
            .to_string();
        *token = Some(t.clone());
        Ok(Some(t))
    }

    /// One unary call: `body` to `path`, the JSON answer, trying each member in turn.
    pub async fn call(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let token = self.token().await?;
        match self.send(path, body, token.as_deref()).await {
            Err(err) if is_token_error(&err) && self.inner.credentials.is_some() => {
                *self.inner.token.lock().await = None;
                let token = self.token().await?;
                self.send(path, body, token.as_deref()).await
            }
            other => other,
        }
    }

    async fn send(&self, path: &str, body: &Value, token: Option<&str>) -> anyhow::Result<Value> {
        let count = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for step in 0..count {
            let at = (first + step) % count;
            let mut conn = self.inner.conn.lock().await;
            let reuse = matches!(&*conn, Some((i, s)) if *i == at && !s.is_closed());
            if !reuse {
                *conn = None;
                match self.connect(at).await {
                    Ok(send) => *conn = Some((at, send)),
                    Err(err) => {
                        last_err = Some(err);
                        continue;
                    }
                }
            }
            let Some((_, send)) = conn.as_mut() else {
                continue;
            };
            let request = self.request(at, path, body, token);
            let sent = async {
                let response = tokio::time::timeout(ANSWER_TIMEOUT, async {
                    send.ready().await?;
                    send.send_request(request).await
                })
                .await
                .map_err(|_| anyhow!("no answer within {ANSWER_TIMEOUT:?}"))??;
                let status = response.status();
                let bytes = tokio::time::timeout(BODY_TIMEOUT, response.into_body().collect())
                    .await
                    .map_err(|_| anyhow!("the answer took longer than {BODY_TIMEOUT:?}"))??
                    .to_bytes();
                anyhow::Ok((status, bytes))
            }
            .await;
            match sent {
                Ok((status, bytes)) => {
                    self.inner.current.store(at, Ordering::Relaxed);
                    let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
                        anyhow!(
                            "{}{path}: HTTP {status}: {}",
                            self.inner.endpoints[at].name(),
                            String::from_utf8_lossy(&bytes).trim()
                        )
                    })?;
                    if !status.is_success() || value.get("error").is_some() {
                        return Err(server_error(&value, status.as_u16()));
                    }
                    return Ok(value);
                }
                Err(err) => {
                    // The connection may still carry the lost request's answer: a new one.
                    *conn = None;
                    last_err = Some(anyhow!("{}{path}: {err}", self.inner.endpoints[at].name()));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no etcd endpoint")))
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> anyhow::Result<(Vec<KeyValue>, i64)> {
        let answer = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
            )
            .await?;
        let revision = num(&answer["header"]["revision"]);
        let kvs = answer["kvs"]
            .as_array()
            .map(|all| all.iter().filter_map(key_value).collect())
            .unwrap_or_default();
        Ok((kvs, revision))
    }

    /// Puts `key` = `value`, attached to `lease` (0: none); the revision of the write.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> anyhow::Result<i64> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", &body).await?;
        Ok(num(&answer["header"]["revision"]))
    }

    /// Puts every `(key, value)` attached to `lease`, in one transaction.
    pub async fn put_all(&self, puts: &[(String, Vec<u8>)], lease: i64) -> anyhow::Result<i64> {
        let success: Vec<Value> = puts
            .iter()
            .map(|(key, value)| {
                let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value)});
                if lease != 0 {
                    put["lease"] = json!(lease.to_string());
                }
                json!({"request_put": put})
            })
            .collect();
        let answer = self
            .call("/v3/kv/txn", &json!({"success": success}))
            .await?;
        Ok(num(&answer["header"]["revision"]))
    }

    /// Deletes `key`; whether it was there.
    pub async fn delete(&self, key: &str) -> anyhow::Result<bool> {
        let answer = self
            .call("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(num(&answer["deleted"]) > 0)
    }

    /// The value of `key`, if any.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<KeyValue>> {
        let answer = self
            .call("/v3/kv/range", &json!({"key": b64(key.as_bytes())}))
            .await?;
        Ok(answer["kvs"]
            .as_array()
            .and_then(|all| all.first())
            .and_then(key_value))
    }

    /// A new lease of `ttl_secs`; its id.
    pub async fn grant(&self, ttl_secs: u64) -> anyhow::Result<i64> {
        let answer = self
            .call("/v3/lease/grant", &json!({"TTL": ttl_secs.to_string()}))
            .await?;
        let id = num(&answer["ID"]);
        if id == 0 {
            bail!("etcd granted no lease: {answer}");
        }
        Ok(id)
    }

    /// Ends lease `id` now (its keys go).
    pub async fn revoke(&self, id: i64) -> anyhow::Result<()> {
        self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .await?;
        Ok(())
    }

    /// Watches every key under `prefix` from `start_revision` on (events of that revision
    /// included), on a connection of its own. A revision already compacted fails with
    /// [`Compacted`] (at once, or as the stream's first item).
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> anyhow::Result<Watch> {
        let token = self.token().await?;
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }});
        let count = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for step in 0..count {
            let at = (first + step) % count;
            let mut send = match self.connect(at).await {
                Ok(send) => send,
                Err(err) => {
                    last_err = Some(err);
                    continue;
                }
            };
            let request = self.request(at, "/v3/watch", &body, token.as_deref());
            let response = tokio::time::timeout(ANSWER_TIMEOUT, async {
                send.ready().await?;
                send.send_request(request).await
            })
            .await;
            match response {
                Ok(Ok(response)) if response.status().is_success() => {
                    self.inner.current.store(at, Ordering::Relaxed);
                    let mut watch = Watch {
                        body: response.into_body(),
                        buffer: Vec::new(),
                        pending: std::collections::VecDeque::new(),
                        member: self.inner.endpoints[at].name(),
                        start_revision,
                        _send: send,
                    };
                    // The first message says whether the watch was created.
                    match tokio::time::timeout(ANSWER_TIMEOUT, watch.created()).await {
                        Ok(created) => created?,
                        Err(_) => {
                            last_err = Some(anyhow!(
                                "{}/v3/watch: not created within {ANSWER_TIMEOUT:?}",
                                self.inner.endpoints[at].name()
                            ));
                            continue;
                        }
                    }
                    return Ok(watch);
                }
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let bytes = response
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let err = server_error(&value, status);
                    if is_token_error(&err) {
                        *self.inner.token.lock().await = None;
                    }
                    return Err(err);
                }
                Ok(Err(err)) => {
                    last_err = Some(anyhow!(
                        "{}/v3/watch: {err}",
                        self.inner.endpoints[at].name()
                    ));
                }
                Err(_) => {
                    last_err = Some(anyhow!(
                        "{}/v3/watch: no answer within {ANSWER_TIMEOUT:?}",
                        self.inner.endpoints[at].name()
                    ));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no etcd endpoint")))
    }
}

/// One batch of watch events, all of one revision or a progress notice.
#[derive(Debug, Default)]
pub struct WatchBatch {
    /// The store's revision when the batch was sent: everything up to it has been seen.
    pub revision: i64,
    pub events: Vec<Event>,
}

/// A running watch: batches of events in revision order.
pub struct Watch {
    body: Incoming,
    buffer: Vec<u8>,
    pending: std::collections::VecDeque<Value>,
    member: String,
    start_revision: i64,
    _send: SendRequest<Full<Bytes>>,
}

impl Watch {
    /// The member the watch runs on.
    pub fn member(&self) -> &str {
        &self.member
    }

    async fn message(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if let Some(value) = self.pending.pop_front() {
                return Ok(Some(value));
            }
            // Whole JSON documents from the front of the buffer.
            let mut stream =
                serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
            let mut used = 0;
            loop {
                match stream.next() {
                    Some(Ok(value)) => {
                        used = stream.byte_offset();
                        self.pending.push_back(value);
                    }
                    Some(Err(err)) if err.is_eof() => break,
                    Some(Err(err)) => bail!("{}: undecodable watch message: {err}", self.member),
                    None => break,
                }
            }
            self.buffer.drain(..used);
            if !self.pending.is_empty() {
                continue;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => bail!("{}: the watch stream broke: {err}", self.member),
                None => return Ok(None),
            }
        }
    }

    async fn created(&mut self) -> anyhow::Result<()> {
        let Some(message) = self.message().await? else {
            bail!("{}: the watch ended before it started", self.member);
        };
        let result = check_result(&message, &self.member, self.start_revision)?;
        if result["created"].as_bool() != Some(true) {
            // Not the creation notice: keep it for the caller.
            self.pending.push_front(message);
        }
        Ok(())
    }

    /// The next batch; `None` when the stream ended (the member went away: watch again).
    pub async fn next(&mut self) -> anyhow::Result<Option<WatchBatch>> {
        let Some(message) = self.message().await? else {
            return Ok(None);
        };
        let result = check_result(&message, &self.member, self.start_revision)?;
        let mut batch = WatchBatch {
            revision: num(&result["header"]["revision"]),
            events: Vec::new(),
        };
        for event in result["events"].as_array().into_iter().flatten() {
            let kv = &event["kv"];
            let key =
                String::from_utf8_lossy(&unb64(kv["key"].as_str().unwrap_or(""))).into_owned();
            if event["type"].as_str() == Some("DELETE") {
                batch.events.push(Event::Delete {
                    key,
                    mod_revision: num(&kv["mod_revision"]),
                });
            } else if let Some(kv) = key_value(kv) {
                batch.events.push(Event::Put(kv));
            }
        }
        Ok(Some(batch))
    }
}

/// The `result` of a watch message, or the error it carries.
fn check_result<'a>(message: &'a Value, member: &str, asked: i64) -> anyhow::Result<&'a Value> {
    if let Some(error) = message.get("error") {
        return Err(server_error(error, num(&error["http_code"]) as u16));
    }
    let result = &message["result"];
    let compacted = num(&result["compact_revision"]);
    if compacted > 0 {
        return Err(Compacted { asked, compacted }.into());
    }
    if result["canceled"].as_bool() == Some(true) {
        bail!(
            "{member}: the watch was canceled: {}",
            result["cancel_reason"]
                .as_str()
                .unwrap_or("no reason given")
        );
    }
    Ok(result)
}

fn server_error(value: &Value, status: u16) -> anyhow::Error {
    let message = value["message"]
        .as_str()
        .or(value["error"].as_str())
        .map_or_else(|| value.to_string(), str::to_string);
    if message.contains("required revision has been compacted") {
        return Compacted {
            asked: 0,
            compacted: 0,
        }
        .into();
    }
    anyhow!("etcd refused the request (HTTP {status}): {message}")
}

fn is_token_error(err: &anyhow::Error) -> bool {
    let text = err.to_string();
    text.contains("invalid auth token") || text.contains("user name is empty")
}

fn key_value(kv: &Value) -> Option<KeyValue> {
    let key = kv["key"].as_str()?;
    Some(KeyValue {
        key: String::from_utf8_lossy(&unb64(key)).into_owned(),
        value: unb64(kv["value"].as_str().unwrap_or("")),
        mod_revision: num(&kv["mod_revision"]),
        lease: num(&kv["lease"]),
    })
}

/// A 64-bit number the gateway wrote as a string (or a number).
pub fn num(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The `range_end` that makes a range cover every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (how the gateway carries bytes).
pub fn b64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); bad characters are skipped.
pub fn unb64(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = B64.iter().position(|&b| b == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "/gatekeeper/bans/203.0.113.9/32",
        ] {
            assert_eq!(unb64(&b64(text.as_bytes())), text.as_bytes(), "{text}");
        }
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(unb64("L2drLw=="), b"/gk/");
    }

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end("/gk/"), b"/gk0");
        assert_eq!(num(&json!("42")), 42);
        assert_eq!(num(&json!(7)), 7);
        assert_eq!(num(&Value::Null), 0);
    }
}
