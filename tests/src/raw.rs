//! Sending hand-made Ethernet frames out of an interface with an AF_PACKET socket, so a test can
//! put exactly the bytes it wants (VLAN tags in the frame, floods of SYNs) on a veth.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use crate::netns::Netns;

/// Sends each frame once out of `iface` inside `ns`.
pub fn send_frames(ns: &Netns, iface: &str, frames: Vec<Vec<u8>>) -> anyhow::Result<usize> {
    let iface = iface.to_string();
    ns.run(move || send_here(&iface, &frames))?
}

fn send_here(iface: &str, frames: &[Vec<u8>]) -> anyhow::Result<usize> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(ifindex != 0, "no interface {iface}");
    // SAFETY: plain socket(2); ownership moves into OwnedFd at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket (needs root)");
    }
    // SAFETY: fd is valid and owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = i32::try_from(ifindex)?;
    addr.sll_halen = 6;
    let mut sent = 0;
    for frame in frames {
        // SAFETY: frame and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sendto on AF_PACKET");
        }
        sent += 1;
    }
    Ok(sent)
}

/// Inserts an 802.1Q (or 802.1ad, with `tpid` 0x88a8) tag after the MAC addresses.
pub fn push_vlan(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut tagged = Vec::with_capacity(frame.len() + 4);
    tagged.extend_from_slice(&frame[..12]);
    tagged.extend_from_slice(&tpid.to_be_bytes());
    tagged.extend_from_slice(&vid.to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}
