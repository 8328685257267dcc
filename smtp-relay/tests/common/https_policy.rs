//! An HTTPS server for MTA-STS policies (blocking, rustls, one thread per connection), written
//! for the tests and independent of the relay's client: it answers
//! `GET /.well-known/mta-sts.txt` with the response given for the `Host:` it is asked for
//! (see [`policy_response`]; any other response to test the fetch's limits), and counts
//! requests. Stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct PolicyServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PolicyServer {
    /// Serves `responses` (host name `mta-sts.<domain>` → whole HTTP response) with `tls`.
    pub fn start(
        bind: &str,
        tls: Arc<rustls::ServerConfig>,
        policies: HashMap<String, String>,
    ) -> PolicyServer {
        let listener = TcpListener::bind(bind).expect("bind policy server");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (requests.clone(), stop.clone());
        let policies = Arc::new(policies);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (tls, policies, count) = (tls.clone(), policies.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, tls, &policies, &count);
                });
            }
        });
        PolicyServer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// `200 OK`, `Content-Type: text/plain` with `body`.
pub fn policy_response(body: &str) -> String {
    response("200 OK", "text/plain", body)
}

pub fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Location: https://mta-sts.enforce.example/.well-known/mta-sts.txt\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    policies: &HashMap<String, String>,
    count: &AtomicUsize,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut request_line = String::new();
    stream.read_line(&mut request_line)?;
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("host")
        {
            host = v.trim().to_owned();
        }
    }
    count.fetch_add(1, Ordering::SeqCst);
    let found = request_line.starts_with("GET /.well-known/mta-sts.txt ");
    let response = match policies.get(&host) {
        Some(response) if found => response.clone(),
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let stream = stream.get_mut();
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    stream.conn.send_close_notify();
    stream.flush()
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
