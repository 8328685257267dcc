//! SPF (RFC 7208) for one transaction, started at MAIL FROM in its own task so the `250` goes
//! out at once (PIPELINING does not wait for DNS) and awaited after the message. The identity
//! is MAIL FROM, or for the null sender the HELO name (RFC 7208 2.4). The task is aborted when
//! the transaction ends without a message (RSET, EHLO, the client leaving).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfOutput, SpfResult};
use tokio::task::JoinHandle;

/// Who was checked: the inputs of the A-R `spf=` entry.
#[derive(Debug, Clone)]
pub struct SpfIdentity {
    pub ip: IpAddr,
    pub helo: String,
    /// The MAIL FROM address, empty for `<>`.
    pub sender: String,
}

impl SpfIdentity {
    /// The RFC 5321.MailFrom domain DMARC aligns with: the sender's, or the HELO name.
    pub fn mail_from_domain(&self) -> &str {
        self.sender
            .rsplit_once('@')
            .map_or(self.helo.as_str(), |(_, d)| d)
    }
}

/// An SPF check in flight for the current transaction.
pub struct SpfTask {
    pub identity: SpfIdentity,
    handle: Option<JoinHandle<SpfOutput>>,
    output: Option<SpfOutput>,
}

impl SpfTask {
    /// Starts the check; `hostname` is ours (the `%{r}` macro).
    pub fn spawn(
        auth: Arc<MessageAuthenticator>,
        identity: SpfIdentity,
        hostname: String,
        deadline: Duration,
    ) -> SpfTask {
        let id = identity.clone();
        let handle = tokio::spawn(async move {
            let domain = id.mail_from_domain().to_owned();
            // An address literal as HELO has no SPF record to ask for.
            if id.sender.is_empty() && id.helo.starts_with('[') {
                return SpfOutput::new(domain).with_result(SpfResult::None);
            }
            let params = if id.sender.is_empty() {
                SpfParameters::verify_ehlo(id.ip, &id.helo, &hostname)
            } else {
                SpfParameters::verify_mail_from(id.ip, &id.helo, &hostname, &id.sender)
            };
            match tokio::time::timeout(deadline, auth.verify_spf(params)).await {
                Ok(output) => output,
                Err(_) => SpfOutput::new(domain).with_result(SpfResult::TempError),
            }
        });
        SpfTask {
            identity,
            handle: Some(handle),
            output: None,
        }
    }

    /// Waits for the result (once). A task that died counts as `temperror`.
    pub async fn wait(&mut self) {
        if let Some(handle) = self.handle.take() {
            let output = handle.await.unwrap_or_else(|_| {
                SpfOutput::new(self.identity.mail_from_domain().to_owned())
                    .with_result(SpfResult::TempError)
            });
            self.output = Some(output);
        }
    }

    /// The result and whom it is about, once [`SpfTask::wait`] returned.
    pub fn get(&self) -> Option<(&SpfOutput, &SpfIdentity)> {
        self.output.as_ref().map(|o| (o, &self.identity))
    }
}

impl Drop for SpfTask {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}
