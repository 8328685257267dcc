//! The nameservers both daemons resolve through: exactly the configured ones (never the system
//! resolver), each over UDP with TCP fallback on its own port.

use std::net::SocketAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig};

/// The `nameservers`, each over UDP with TCP fallback (for answers too large for UDP).
pub fn name_servers(nameservers: &[SocketAddr]) -> Vec<NameServerConfig> {
    nameservers
        .iter()
        .map(|ns| {
            let mut udp = ConnectionConfig::udp();
            udp.port = ns.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = ns.port();
            let mut c = NameServerConfig::udp_and_tcp(ns.ip());
            c.connections = vec![udp, tcp];
            c
        })
        .collect()
}
