//! Link events from the kernel (rtnetlink multicast group `RTNLGRP_LINK`: `RTM_NEWLINK`,
//! `RTM_DELLINK`, what `ip monitor link` shows). An XDP program is attached to an ifindex: when
//! its interface is deleted (a driver reload, a bond or VLAN rebuilt) the filter goes with it, and
//! an interface created under the same name gets a new ifindex and no filter. The daemon wakes up
//! on these events and compares every configured interface with what it attached; the events
//! themselves only say "look now", so a lost or overrun message (`ENOBUFS`) is harmless.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use tokio::io::{Interest, unix::AsyncFd};

/// `RTMGRP_LINK`: the multicast group bit of link events.
const RTMGRP_LINK: u32 = 1;

/// A socket subscribed to link events in this network namespace.
pub struct LinkWatch {
    socket: AsyncFd<OwnedFd>,
}

impl LinkWatch {
    /// Subscribes; must run inside a tokio runtime.
    pub fn open() -> anyhow::Result<LinkWatch> {
        let socket = open_socket().context("opening an rtnetlink socket for link events")?;
        // SAFETY: the AsyncFd owns the socket and so keeps its fd open while registered.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("watching the rtnetlink socket")?;
        Ok(LinkWatch { socket })
    }

    /// Waits for link events and drains them (after an overrun, when the kernel dropped some,
    /// too: the caller looks at every interface anyway).
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut guard = self.socket.readable().await?;
            let mut received_any = false;
            loop {
                // SAFETY: receiving into a buffer of the given length on a socket we own.
                let received = unsafe {
                    libc::recv(
                        guard.get_inner().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if received >= 0 {
                    received_any = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    // The kernel dropped events for us: what changed is unknown, so say changed.
                    Some(libc::ENOBUFS) => received_any = true,
                    Some(libc::EINTR) => continue,
                    _ => return Err(err),
                }
            }
            guard.clear_ready();
            if received_any {
                return Ok(());
            }
        }
    }
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = RTMGRP_LINK;
    // SAFETY: binding with a fully initialised sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            u32::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(12),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_link_wakes_the_watch() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP a_new_link_wakes_the_watch: needs root for a veth pair");
            return;
        }
        // A namespace of its own, so no other link is touched.
        std::thread::spawn(|| {
            // SAFETY: unshare on this fresh thread only changes its own network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut watch = LinkWatch::open().expect("subscribe");
                let status = std::process::Command::new("ip")
                    .args([
                        "link", "add", "gkwatch0", "type", "veth", "peer", "name", "gkwatch1",
                    ])
                    .status()
                    .expect("ip");
                assert!(status.success());
                tokio::time::timeout(std::time::Duration::from_secs(2), watch.changed())
                    .await
                    .expect("an event within 2 s")
                    .expect("read");
            });
        })
        .join()
        .expect("thread");
    }
}
