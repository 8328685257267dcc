//! The metrics HTTP endpoint: `GET /metrics` answers with what the daemon's scrape function
//! renders, anything else with 404. One request per connection (no keep-alive); the request is
//! parsed (within [`HEADER_TIMEOUT`]) before anything is rendered; at most [`MAX_CONNECTIONS`]
//! connections are served at once (more are closed at once, counted in one WARN a minute); a slow
//! client is cut off. With [`serve_cached`], one rendered snapshot answers every scrape for a
//! while, and concurrent scrapes wait for one render instead of starting their own: a loop of
//! local connections costs one render per `fresh_for`, whatever its rate.

use std::{
    convert::Infallible,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one connection may last in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; Prometheus needs one per scraper.
pub const MAX_CONNECTIONS: usize = 16;
/// How often refused connections are reported.
const REFUSED_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Serves `GET /metrics` on `listener` until the task is dropped; each request calls `scrape`
/// for the body (Prometheus text format 0.0.4). A failed scrape answers 500 and is logged.
pub async fn serve<S, F>(listener: TcpListener, scrape: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<String>> + Send + 'static,
{
    let scrape = move || {
        let text = scrape();
        async move { text.await.map(Bytes::from) }
    };
    serve_bytes(listener, scrape).await;
}

/// As [`serve`], but a rendered snapshot answers every request for `fresh_for` after it was
/// rendered, and concurrent requests share one render. For a `scrape` that is expensive (a walk
/// over every allowlist entry).
pub async fn serve_cached<S, F>(listener: TcpListener, scrape: S, fresh_for: Duration)
where
    S: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<String>> + Send + 'static,
{
    let cache = Arc::new(Cache {
        scrape,
        fresh_for,
        last: tokio::sync::Mutex::new(None),
    });
    serve_bytes(listener, move || {
        let cache = Arc::clone(&cache);
        async move { cache.get().await }
    })
    .await;
}

/// The last rendered snapshot and when it was rendered.
struct Cache<S> {
    scrape: S,
    fresh_for: Duration,
    /// Held while rendering, so concurrent requests wait for that render (single flight).
    last: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

impl<S, F> Cache<S>
where
    S: Fn() -> F,
    F: Future<Output = anyhow::Result<String>>,
{
    async fn get(&self) -> anyhow::Result<Bytes> {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < self.fresh_for
        {
            return Ok(text.clone());
        }
        let text = Bytes::from((self.scrape)().await?);
        *last = Some((Instant::now(), text.clone()));
        Ok(text)
    }
}

async fn serve_bytes<S, F>(listener: TcpListener, scrape: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<Bytes>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused = Refused::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(event = "metrics_error", error = %err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Closed unanswered: a flood costs an accept and a close, nothing more.
            drop(tcp);
            refused.count();
            continue;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| answer(request, scrape.clone()));
            let connection = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(client = %peer, error = %err, "metrics connection failed"),
                Err(_) => debug!(client = %peer, "metrics connection timed out"),
            }
        });
    }
}

/// Connections closed because [`MAX_CONNECTIONS`] were busy, reported at most once a minute.
#[derive(Default)]
struct Refused {
    since_report: u64,
    reported_at: Option<Instant>,
}

impl Refused {
    fn count(&mut self) {
        self.since_report += 1;
        if self
            .reported_at
            .is_none_or(|at| at.elapsed() >= REFUSED_REPORT_INTERVAL)
        {
            warn!(
                event = "metrics_busy",
                refused = self.since_report,
                max_connections = MAX_CONNECTIONS,
                "metrics connections closed unanswered: too many at once (reported at most once a minute)"
            );
            self.since_report = 0;
            self.reported_at = Some(Instant::now());
        }
    }
}

async fn answer<S, F>(
    request: Request<Incoming>,
    scrape: S,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    S: Fn() -> F,
    F: Future<Output = anyhow::Result<Bytes>>,
{
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "only GET /metrics is here\n"));
    }
    match scrape().await {
        Ok(body) => Ok(with_type(StatusCode::OK, super::CONTENT_TYPE, body)),
        Err(err) => {
            warn!(event = "metrics_error", error = %format!("{err:#}"), "reading metrics failed");
            Ok(plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading metrics failed; see the daemon's log\n",
            ))
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut out))
            .await
            .expect("the server closes the connection after one answer")
            .expect("read");
        out
    }

    #[tokio::test]
    async fn answers_metrics_404_and_500_and_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = healthy.clone();
        let server = tokio::spawn(serve(listener, move || {
            let ok = flag.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                anyhow::ensure!(ok, "maps unreadable");
                Ok("demo_total 1\n".to_string())
            }
        }));

        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\ndemo_total 1\n"), "{ok}");
        let missing = get(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 404"), "{post}");
        healthy.store(false, std::sync::atomic::Ordering::Relaxed);
        let failed = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(failed.starts_with("HTTP/1.1 500"), "{failed}");
        let garbage = get(addr, "NONSENSE\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        server.abort();
    }

    #[tokio::test]
    async fn a_cached_snapshot_answers_for_a_second_and_is_rendered_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let renders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&renders);
        let server = tokio::spawn(serve_cached(
            listener,
            move || {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(format!("renders {n}\n"))
                }
            },
            Duration::from_secs(1),
        ));
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let answers = futures_join(addr, request, 8).await;
        assert!(
            answers.iter().all(|a| a.ends_with("renders 1\n")),
            "{answers:?}"
        );
        assert_eq!(renders.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(get(addr, request).await.ends_with("renders 2\n"));
        server.abort();
    }

    /// `n` concurrent requests.
    async fn futures_join(addr: SocketAddr, request: &'static str, n: usize) -> Vec<String> {
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(async move { get(addr, request).await }))
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.expect("task"));
        }
        answers
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, || async { Ok("up 1\n".to_string()) }));
        // Connections that never send a request hold every slot.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut out)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed unanswered: {read:?} {out:?}"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.ends_with("up 1\n"), "{ok}");
        server.abort();
    }
}
