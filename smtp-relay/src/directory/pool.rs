//! Connections to the directory: the servers are tried in order (failover), idle connections
//! are kept for the next operation. Two pools: one bound as the service account (searches),
//! one whose connections only ever carry user binds (a bind changes the connection's
//! identity, so the two never mix).

use std::sync::{Arc, Mutex};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};

use crate::config::directory::{Server, Transport};

/// Why no connection could be had, per server tried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

pub struct Pool {
    servers: Vec<Server>,
    tls: Arc<rustls::ClientConfig>,
    /// Bind as this after connecting (the service account), or stay anonymous.
    service: Option<(String, String)>,
    idle: Mutex<Vec<Ldap>>,
    size: usize,
}

impl Pool {
    pub fn new(
        servers: Vec<Server>,
        tls: Arc<rustls::ClientConfig>,
        service: Option<(String, String)>,
        size: usize,
    ) -> Pool {
        Pool {
            servers,
            tls,
            service,
            idle: Mutex::new(Vec::new()),
            size,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Ldap>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection, else a new one to the first server that answers.
    pub async fn get(&self) -> Result<Ldap, ConnectError> {
        loop {
            let Some(mut ldap) = self.lock().pop() else {
                break;
            };
            if !ldap.is_closed() {
                return Ok(ldap);
            }
        }
        let mut errors = Vec::new();
        for server in &self.servers {
            match self.connect(server).await {
                Ok(ldap) => return Ok(ldap),
                Err(e) => errors.push(format!("{}: {e}", server.url)),
            }
        }
        Err(ConnectError(errors.join("; ")))
    }

    async fn connect(&self, server: &Server) -> Result<Ldap, ldap3::LdapError> {
        let settings = LdapConnSettings::new()
            .set_config(self.tls.clone())
            .set_starttls(server.transport == Transport::StartTls);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &server.url).await?;
        tokio::spawn(async move {
            // Ends when the last handle is dropped or the server goes away.
            let _ = conn.drive().await;
        });
        if let Some((dn, password)) = &self.service {
            ldap.simple_bind(dn, password).await?.success()?;
        }
        Ok(ldap)
    }

    /// Gives a connection that just worked back for the next operation.
    pub fn put(&self, ldap: Ldap) {
        let mut idle = self.lock();
        if idle.len() < self.size {
            idle.push(ldap);
        }
    }

    /// Drops every idle connection (after a failure: they may all be to a dead server).
    pub fn clear(&self) {
        self.lock().clear();
    }
}
