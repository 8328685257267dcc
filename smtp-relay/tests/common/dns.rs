//! A tiny authoritative DNS server on loopback UDP for the tests: MX and A
//! records from a table, NXDOMAIN for unknown names, empty NOERROR for
//! other types. Stops on drop.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Record {
    Mx(u16, String),
    A(Ipv4Addr),
}

pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xC0 != 0 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    Some((labels.join("."), pos))
}

fn write_name(out: &mut Vec<u8>, name: &str) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn answer(query: &[u8], table: &[(String, Record)]) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let (name, pos) = read_name(query, 12)?;
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question = query.get(12..pos + 4)?;
    let known = table.iter().any(|(n, _)| *n == name);
    let mut answers = Vec::new();
    for (n, rec) in table.iter().filter(|(n, _)| *n == name) {
        let (rtype, rdata) = match rec {
            Record::Mx(pref, host) if qtype == 15 => {
                let mut d = pref.to_be_bytes().to_vec();
                write_name(&mut d, host);
                (15u16, d)
            }
            Record::A(ip) if qtype == 1 => (1u16, ip.octets().to_vec()),
            _ => continue,
        };
        let mut a = Vec::new();
        write_name(&mut a, n);
        a.extend_from_slice(&rtype.to_be_bytes());
        a.extend_from_slice(&1u16.to_be_bytes());
        a.extend_from_slice(&60u32.to_be_bytes());
        a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        a.extend_from_slice(&rdata);
        answers.push(a);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    let rcode: u16 = if known { 0 } else { 3 };
    // QR, AA, RD copied, RA.
    let rd = u16::from(query[2] & 1) << 8;
    out.extend_from_slice(&(0x8480 | rd | rcode).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(question);
    for a in answers {
        out.extend_from_slice(&a);
    }
    Some(out)
}

impl DnsServer {
    /// `table`: (name without trailing dot, record).
    pub fn start(table: Vec<(&str, Record)>) -> DnsServer {
        let table: Vec<(String, Record)> = table
            .into_iter()
            .map(|(n, r)| (n.to_ascii_lowercase(), r))
            .collect();
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &table) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        DnsServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
