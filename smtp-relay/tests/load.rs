//! Load: 1,000 concurrent sessions from loopback against the relay binary,
//! all greeted before any sends, each sending one 4 KB message: every one
//! gets its 250 and reaches the next hop. Reports the relay's peak RSS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::nexthop::{NextHop, Script};
use common::process::Relay;
use common::{Setup, config_with, delivery_section};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");
const SESSIONS: usize = 1000;

async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3)?.parse().ok();
        }
    }
}

/// One session; `Err` names the step that failed.
async fn session(addr: SocketAddr, n: usize, go: Arc<tokio::sync::Barrier>) -> Result<(), String> {
    // Every task reaches the barrier, even when its connect fails, so a
    // failure cannot hang the others.
    let tcp = tokio::net::TcpStream::connect(addr).await;
    let (tcp, greeting) = match tcp {
        Ok(tcp) => {
            let (r, w) = tcp.into_split();
            let mut r = BufReader::new(r);
            let greeting = reply(&mut r).await;
            (Some((r, w)), greeting)
        }
        Err(_) => (None, None),
    };
    go.wait().await;
    let Some((mut r, mut w)) = tcp else {
        return Err("connect failed".into());
    };
    if greeting != Some(220) {
        return Err(format!("greeting {greeting:?}"));
    }
    let mut body = format!("Subject: load {n}\r\n\r\n").into_bytes();
    while body.len() < 4096 {
        body.extend_from_slice(
            b"load test line ...............................................\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    let steps: [(&[u8], u16); 5] = [
        (b"EHLO load.example\r\n", 250),
        (b"MAIL FROM:<load@sender.example>\r\n", 250),
        (b"RCPT TO:<alice@example.org>\r\n", 250),
        (b"DATA\r\n", 354),
        (&body, 250),
    ];
    for (send, want) in steps {
        w.write_all(send).await.map_err(|e| format!("write: {e}"))?;
        let got = reply(&mut r).await;
        if got != Some(want) {
            return Err(format!("expected {want}, got {got:?}"));
        }
    }
    let _ = w.write_all(b"QUIT\r\n").await;
    Ok(())
}

#[test]
fn thousand_concurrent_sessions_complete_without_errors() {
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let top = format!(
        "max_connections = {}\nmax_connections_per_client = {}",
        SESSIONS + 50,
        SESSIONS + 50
    );
    let setup = Setup::new(
        "load",
        &config_with(
            &top,
            &delivery_section(&[("example.org", hop.addr, "none")], ""),
        ),
    );
    let relay = Relay::start(BIN, &setup.config, 6);
    let addr = relay.addr("mta", true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let results: Vec<Result<(), String>> = runtime.block_on(async {
        let go = Arc::new(tokio::sync::Barrier::new(SESSIONS));
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|n| tokio::spawn(session(addr, n, go.clone())))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        out
    });
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} sessions failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    hop.wait_for(SESSIONS, Duration::from_secs(60));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", relay.child.id())).unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?");
    println!(
        "load test: {SESSIONS} concurrent sessions, 0 errors, all delivered; relay (debug build) {peak}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hop.messages().len(), SESSIONS, "duplicates at the next hop");
}
