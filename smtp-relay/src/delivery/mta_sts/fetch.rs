//! The policy fetch (RFC 8461 3.3): `GET https://mta-sts.<domain>/.well-known/mta-sts.txt` over
//! HTTP/1.1 (hyper's client connection, no pool), the certificate verified against the relay's
//! trust anchors for `mta-sts.<domain>`. Limits: one timeout for the whole fetch, a body cap,
//! status 200 only (no redirects, as the RFC says), `Content-Type: text/plain`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::delivery::dns::Dns;

/// Policies are a few hundred octets; 64 KiB is what common implementations allow.
pub const MAX_POLICY_OCTETS: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("policy host {0}: {1}")]
    Dns(String, String),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0} (redirects are not followed)")]
    Status(u16),
    #[error("Content-Type {0:?} is not text/plain")]
    ContentType(String),
    #[error("policy larger than {MAX_POLICY_OCTETS} octets or unreadable: {0}")]
    Body(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// How policies are fetched.
pub struct Fetcher {
    pub tls: Arc<rustls::ClientConfig>,
    /// 443; other values are for tests and labs (like `mx_port`).
    pub port: u16,
    pub timeout: Duration,
}

impl Fetcher {
    /// The policy text of `domain`.
    pub async fn fetch(&self, dns: &Dns, domain: &str) -> Result<String, FetchError> {
        tokio::time::timeout(self.timeout, self.fetch_unbounded(dns, domain))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn fetch_unbounded(&self, dns: &Dns, domain: &str) -> Result<String, FetchError> {
        let host = format!("mta-sts.{domain}");
        let ips = dns
            .addresses(&host)
            .await
            .map_err(|e| FetchError::Dns(host.clone(), e.to_string()))?;
        let mut last = FetchError::Dns(host.clone(), "no address".into());
        for ip in ips {
            let addr = SocketAddr::new(ip, self.port);
            match self.fetch_from(addr, &host).await {
                Ok(text) => return Ok(text),
                // The next address only when this one could not be reached.
                Err(e @ FetchError::Connect(..)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn fetch_from(&self, addr: SocketAddr, host: &str) -> Result<String, FetchError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| FetchError::Connect(addr, e))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| FetchError::Dns(host.to_owned(), e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls(host.to_owned(), e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        // Drives the connection; ends with it (the fetch's timeout bounds both).
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "smtp-relay")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| FetchError::Http(e.to_string()))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            let content_type = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let media = content_type.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("text/plain") {
                return Err(FetchError::ContentType(content_type));
            }
            let body = Limited::new(response.into_body(), MAX_POLICY_OCTETS)
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|e| FetchError::Body(e.to_string()))
        }
        .await;
        driver.abort();
        result
    }
}
