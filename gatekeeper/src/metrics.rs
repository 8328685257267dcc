//! Prometheus text-format metrics: the filter's counters per interface, the allowlist size, and
//! the daemon's reloads. Served by the daemon on `metrics_listen` (`GET /metrics`).

use std::{fmt::Write as _, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{maps::FilterMaps, stats};

/// Counts the daemon keeps about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonCounts {
    pub reloads: u64,
    pub reload_failures: u64,
    pub attached_interfaces: usize,
}

/// Renders every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render(maps: &FilterMaps, daemon: &DaemonCounts) -> anyhow::Result<String> {
    let all = stats::collect(maps)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP gatekeeper_frames_total Frames the XDP filter judged, by interface, address family and verdict.\n# TYPE gatekeeper_frames_total counter"
    );
    for iface in &all {
        for (family, row) in &iface.counters {
            for (name, value) in row {
                if name.starts_with("events_") {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "gatekeeper_frames_total{{interface=\"{}\",family=\"{family}\",verdict=\"{name}\"}} {value}",
                    escape(&iface.interface)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP gatekeeper_drop_events_total Drop events sent to the daemon or suppressed by the in-kernel rate limit.\n# TYPE gatekeeper_drop_events_total counter"
    );
    for iface in &all {
        for result in ["sent", "suppressed"] {
            let _ = writeln!(
                out,
                "gatekeeper_drop_events_total{{interface=\"{}\",result=\"{result}\"}} {}",
                escape(&iface.interface),
                iface.total(&format!("events_{result}"))
            );
        }
    }
    let entries = maps.entries()?;
    let v4 = entries.iter().filter(|e| e.net.addr().is_ipv4()).count();
    let _ = writeln!(
        out,
        "# HELP gatekeeper_allowlist_entries Entries in the live allowlist.\n# TYPE gatekeeper_allowlist_entries gauge\n\
         gatekeeper_allowlist_entries{{family=\"ipv4\"}} {v4}\n\
         gatekeeper_allowlist_entries{{family=\"ipv6\"}} {}",
        entries.len() - v4
    );
    let _ = writeln!(
        out,
        "# HELP gatekeeper_allowlist_hits_total Segments the live allowlist entries admitted.\n# TYPE gatekeeper_allowlist_hits_total counter\n\
         gatekeeper_allowlist_hits_total {}",
        entries.iter().map(|e| e.hits).sum::<u64>()
    );
    let _ = writeln!(
        out,
        "# HELP gatekeeper_config_reloads_total Config reloads applied.\n# TYPE gatekeeper_config_reloads_total counter\n\
         gatekeeper_config_reloads_total {}\n\
         # HELP gatekeeper_config_reload_failures_total Config reloads refused (the previous config stayed in force).\n# TYPE gatekeeper_config_reload_failures_total counter\n\
         gatekeeper_config_reload_failures_total {}\n\
         # HELP gatekeeper_attached_interfaces Interfaces the daemon has the filter attached to.\n# TYPE gatekeeper_attached_interfaces gauge\n\
         gatekeeper_attached_interfaces {}",
        daemon.reloads, daemon.reload_failures, daemon.attached_interfaces
    );
    Ok(out)
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Answers one HTTP request on `stream`: `GET /metrics` gets `body`, anything else a 404.
pub async fn answer(mut stream: TcpStream, body: String) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(buf.get(..n).unwrap_or(&[])),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), read_head)
        .await
        .is_err()
    {
        return;
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next(), words.next());
    let response = match (method, target) {
        (Some("GET"), Some("/metrics")) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        _ => "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 25\r\nConnection: close\r\n\r\nonly GET /metrics is here".to_string(),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
