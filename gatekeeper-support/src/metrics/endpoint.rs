//! The metrics HTTP endpoint: `GET /metrics` answers with what the daemon's scrape function
//! renders, anything else with 404. One request per connection (no keep-alive), and a slow
//! client is cut off, so a scraper cannot tie up the daemon.

use std::{convert::Infallible, future::Future, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `listener` until the task is dropped; each request calls `scrape`
/// for the body (Prometheus text format 0.0.4). A failed scrape answers 500 and is logged.
pub async fn serve<S, F>(listener: TcpListener, scrape: S)
where
    S: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = anyhow::Result<String>> + Send + 'static,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(event = "metrics_error", error = %err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
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

async fn answer<S, F>(
    request: Request<Incoming>,
    scrape: S,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    S: Fn() -> F,
    F: Future<Output = anyhow::Result<String>>,
{
    if request.method() != Method::GET || request.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "only GET /metrics is here\n"));
    }
    match scrape().await {
        Ok(body) => Ok(with_type(
            StatusCode::OK,
            super::CONTENT_TYPE,
            Bytes::from(body),
        )),
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
}
