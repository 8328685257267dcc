//! Real TCP endpoints for the end-to-end tests: a banner server and a client that reports
//! whether it got the banner or timed out.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;

/// A TCP server inside a namespace that greets each connection with `220 <name>` and closes it.
pub struct BannerServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl BannerServer {
    /// Listens on `addr` inside `ns` (use `[::]` to accept both families).
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> anyhow::Result<BannerServer> {
        let listener = ns
            .run(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let banner = format!("220 {name} ESMTP test banner\r\n");
        let stop_flag = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(banner.as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(BannerServer { stop, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a connection attempt saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and read this first line.
    Banner(String),
    /// No answer within the timeout: the SYN was dropped.
    TimedOut,
    /// Any other failure (refused, unreachable, ...).
    Failed(String),
}

impl Outcome {
    pub fn is_banner(&self) -> bool {
        matches!(self, Outcome::Banner(line) if line.starts_with("220 "))
    }
}

/// Connects from `source` (an address of `ns`) to `dest` and reads the banner.
pub fn connect(ns: &Netns, source: IpAddr, dest: SocketAddr, timeout: Duration) -> Outcome {
    let result = ns.run(move || connect_from(source, dest, timeout));
    match result {
        Ok(outcome) => outcome,
        Err(err) => Outcome::Failed(format!("{err:#}")),
    }
}

fn connect_from(source: IpAddr, dest: SocketAddr, timeout: Duration) -> Outcome {
    match open(source, dest, timeout) {
        Ok(stream) => read_line(stream, timeout),
        Err(err) if err.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
        Err(err) => Outcome::Failed(err.to_string()),
    }
}

/// Binds to `source` before connecting, so the test picks which address the peer sees.
fn open(source: IpAddr, dest: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&dest.into(), timeout)?;
    Ok(socket.into())
}

fn read_line(mut stream: TcpStream, timeout: Duration) -> Outcome {
    if let Err(err) = stream.set_read_timeout(Some(timeout)) {
        return Outcome::Failed(err.to_string());
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Outcome::TimedOut,
            Err(err) => return Outcome::Failed(err.to_string()),
        }
    }
    Outcome::Banner(String::from_utf8_lossy(&line).trim_end().to_string())
}
