//! Readiness for systemd's `Type=notify` (sd_notify(3) over `$NOTIFY_SOCKET`, through the
//! sd-notify crate): `READY=1` once a daemon does what its unit promises, `RELOADING=1` while it
//! applies a reload, `STATUS=` lines for `systemctl status`. Without `$NOTIFY_SOCKET` (not run by
//! systemd, or `Type=exec`) every call does nothing.
//!
//! A failed notification is logged, never fatal: the service manager may be gone or restarting,
//! and the daemon's job (filtering, relaying) does not depend on it.

use sd_notify::NotifyState;
use tracing::warn;

/// The daemon is ready: everything its unit's dependants rely on holds from now on.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts: systemd (≥ 253) shows the unit as reloading until the next [`ready`].
/// MONOTONIC_USEC tells it this message belongs to the reload it asked for, not an older one.
pub fn reloading(status: &str) {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status(status)]),
        Err(err) => {
            warn!(error = %err, "reading CLOCK_MONOTONIC for the reload notification");
            send(&[NotifyState::Reloading, NotifyState::Status(status)]);
        }
    }
}

/// A new `STATUS=` line, the state unchanged.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The daemon is stopping (shown by `systemctl status` while it drains).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!(error = %err, "notifying the service manager ($NOTIFY_SOCKET) failed");
    }
}
