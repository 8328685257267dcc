//! A capturing SMTP next hop: accepts every message and keeps it, so a test or the demo can show
//! what the relay delivered. Plain ESMTP, no TLS, no AUTH: it stands for an internal server.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns::Netns;

/// One delivered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, dot-unstuffed, with CRLF line ends.
    pub data: Vec<u8>,
}

/// The running sink; stops accepting when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
}

impl SmtpSink {
    /// Listens on `addr` inside `ns` (port 0 picks one).
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<SmtpSink> {
        let listener = ns
            .run(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding the SMTP sink to {addr}"))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (store, stopping) = (Arc::clone(&messages), Arc::clone(&stop));
        thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let store = Arc::clone(&store);
                        thread::spawn(move || {
                            let _ = serve(stream, &store);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(SmtpSink {
            addr,
            messages,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<Captured> {
        self.messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Waits until at least `count` messages arrived.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<Captured>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return Ok(messages);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the next hop received {} of {count} messages within {timeout:?}",
                messages.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, store: &Mutex<Vec<Captured>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 next-hop.example ESMTP capture\r\n")?;
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-next-hop.example\r\n250-8BITMIME\r\n250 PIPELINING\r\n",
            "HELO" | "NOOP" => b"250 ok\r\n",
            "RSET" => {
                from.clear();
                to.clear();
                b"250 ok\r\n"
            }
            "MAIL" => {
                from = angle(&command);
                b"250 ok\r\n"
            }
            "RCPT" => {
                to.push(angle(&command));
                b"250 ok\r\n"
            }
            "DATA" => {
                writer.write_all(b"354 go ahead\r\n")?;
                let data = read_data(&mut reader)?;
                if let Ok(mut messages) = store.lock() {
                    messages.push(Captured {
                        from: std::mem::take(&mut from),
                        to: std::mem::take(&mut to),
                        data,
                    });
                }
                b"250 2.0.0 captured\r\n"
            }
            "QUIT" => {
                writer.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => b"502 5.5.1 not here\r\n",
        };
        writer.write_all(reply)?;
    }
}

/// The address between `<` and `>` of a MAIL or RCPT command.
fn angle(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(open), Some(close)) if open < close => command[open + 1..close].to_string(),
        _ => String::new(),
    }
}

fn read_data(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(data);
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        let unstuffed = if line.starts_with(b"..") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}
