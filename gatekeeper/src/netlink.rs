//! What XDP program an interface runs, and in which mode, asked from the kernel over rtnetlink
//! (what `ip -d link show` prints as `prog/xdp` or `xdpgeneric`).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;

/// How an XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachment {
    /// In the driver (`xdp`).
    Native,
    /// Generic, in the stack (`xdpgeneric`).
    Skb,
    /// Offloaded to the NIC.
    Offload,
    /// Several programs in different modes.
    Multi,
}

impl std::fmt::Display for XdpAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpAttachment::Native => "native",
            XdpAttachment::Skb => "skb",
            XdpAttachment::Offload => "offload",
            XdpAttachment::Multi => "multi",
        })
    }
}

/// The XDP program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpState {
    pub mode: XdpAttachment,
    /// The kernel's id of the attached program (0 if it did not say).
    pub prog_id: u32,
}

/// The XDP program attached to `ifindex` in this network namespace, if any.
pub fn xdp_state(ifindex: u32) -> anyhow::Result<Option<XdpState>> {
    let socket = open_socket().context("opening an rtnetlink socket")?;
    let index = i32::try_from(ifindex).context("ifindex out of range")?;
    let mut request = Vec::with_capacity(NLMSG_HDR + IFINFOMSG);
    let len = u32::try_from(NLMSG_HDR + IFINFOMSG).unwrap_or(32);
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    request.extend_from_slice(&index.to_ne_bytes());
    request.extend_from_slice(&[0u8; 8]); // flags, change
    // SAFETY: sending a fully initialised buffer on a socket we own.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sending RTM_GETLINK");
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: receiving into a buffer of the given length.
    let received = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error()).context("receiving the RTM_GETLINK answer");
    }
    let received = usize::try_from(received).unwrap_or(0);
    parse_answer(buf.get(..received).unwrap_or(&[]))
}

/// `XDP_FLAGS_UPDATE_IF_NOEXIST`: fail if a program is attached already.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
/// `XDP_FLAGS_DRV_MODE`: native XDP.
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
/// `XDP_FLAGS_REPLACE`: replace only the program named by `IFLA_XDP_EXPECTED_FD`.
pub const XDP_FLAGS_REPLACE: u32 = 16;
const RTM_SETLINK: u16 = 19;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_EXPECTED_FD: u16 = 8;

/// Attaches program `fd` (or, with `None`, takes the program off) to `ifindex` through netlink,
/// as libxdp does for its dispatcher: with `expected`, atomically in place of that program
/// (`XDP_FLAGS_REPLACE`), else only if the interface runs none.
pub fn set_xdp(
    ifindex: u32,
    fd: Option<i32>,
    mode_flags: u32,
    expected: Option<i32>,
) -> anyhow::Result<()> {
    let socket = open_socket().context("opening an rtnetlink socket")?;
    let index = i32::try_from(ifindex).context("ifindex out of range")?;
    let mut flags = mode_flags;
    let mut nested = Vec::new();
    let mut attr = |kind: u16, value: [u8; 4]| {
        nested.extend_from_slice(&8u16.to_ne_bytes());
        nested.extend_from_slice(&kind.to_ne_bytes());
        nested.extend_from_slice(&value);
    };
    attr(IFLA_XDP_FD, fd.unwrap_or(-1).to_ne_bytes());
    match expected {
        Some(old) => {
            flags |= XDP_FLAGS_REPLACE;
            attr(IFLA_XDP_EXPECTED_FD, old.to_ne_bytes());
        }
        None => flags |= XDP_FLAGS_UPDATE_IF_NOEXIST,
    }
    attr(IFLA_XDP_FLAGS, flags.to_ne_bytes());
    let xdp_len = 4 + nested.len();
    let total = NLMSG_HDR + IFINFOMSG + xdp_len;
    let mut request = Vec::with_capacity(total);
    request.extend_from_slice(&u32::try_from(total).unwrap_or(0).to_ne_bytes());
    request.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    request.extend_from_slice(&index.to_ne_bytes());
    request.extend_from_slice(&[0u8; 8]);
    request.extend_from_slice(&u16::try_from(xdp_len).unwrap_or(0).to_ne_bytes());
    request.extend_from_slice(&(IFLA_XDP | NLA_F_NESTED).to_ne_bytes());
    request.extend_from_slice(&nested);
    // SAFETY: sending a fully initialised buffer on a socket we own.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sending RTM_SETLINK");
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: receiving into a buffer of the given length.
    let received = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error()).context("receiving the RTM_SETLINK answer");
    }
    let answer = buf
        .get(..usize::try_from(received).unwrap_or(0))
        .unwrap_or(&[]);
    if u16_at(answer, 4) != Some(NLMSG_ERROR) {
        bail!("unexpected answer to RTM_SETLINK");
    }
    let errno = u32_at(answer, NLMSG_HDR).map_or(0, |e| e as i32);
    if errno != 0 {
        return Err(io::Error::from_raw_os_error(-errno))
            .context("the kernel refused the XDP change");
    }
    Ok(())
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setting a receive timeout with a valid timeval.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            u32::try_from(size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
    Ok(socket)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Route attributes in `bytes` as `(type, payload)`.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (u16_at(bytes, 0), u16_at(bytes, 2)) {
        let len = usize::from(len);
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind & NLA_TYPE_MASK, &bytes[4..len]));
        let aligned = (len + 3) & !3;
        bytes = bytes.get(aligned..).unwrap_or(&[]);
    }
    out
}

fn parse_answer(bytes: &[u8]) -> anyhow::Result<Option<XdpState>> {
    let (Some(len), Some(kind)) = (u32_at(bytes, 0), u16_at(bytes, 4)) else {
        bail!("short rtnetlink answer");
    };
    let len = usize::try_from(len).unwrap_or(0).min(bytes.len());
    if kind == NLMSG_ERROR {
        let errno = u32_at(bytes, NLMSG_HDR).map_or(0, |e| e as i32);
        bail!(
            "the kernel answered RTM_GETLINK with {}",
            io::Error::from_raw_os_error(-errno)
        );
    }
    if kind != RTM_NEWLINK || len < NLMSG_HDR + IFINFOMSG {
        bail!("unexpected rtnetlink answer type {kind}");
    }
    let attrs = attributes(&bytes[NLMSG_HDR + IFINFOMSG..len]);
    let Some((_, xdp)) = attrs.iter().find(|(t, _)| *t == IFLA_XDP) else {
        return Ok(None);
    };
    let nested = attributes(xdp);
    let attached = nested
        .iter()
        .find(|(t, _)| *t == IFLA_XDP_ATTACHED)
        .and_then(|(_, v)| v.first().copied())
        .unwrap_or(0);
    let prog_id = nested
        .iter()
        .find(|(t, _)| *t == IFLA_XDP_PROG_ID)
        .and_then(|(_, v)| u32_at(v, 0))
        .unwrap_or(0);
    let mode = match attached {
        1 => XdpAttachment::Native,
        2 => XdpAttachment::Skb,
        3 => XdpAttachment::Offload,
        4 => XdpAttachment::Multi,
        _ => return Ok(None),
    };
    Ok(Some(XdpState { mode, prog_id }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_and_attributes_parse() {
        // Loopback exists in every namespace; without a program it reports none.
        assert_eq!(xdp_state(1).expect("rtnetlink answers"), None);
        let mut attr = Vec::new();
        attr.extend_from_slice(&5u16.to_ne_bytes());
        attr.extend_from_slice(&IFLA_XDP_ATTACHED.to_ne_bytes());
        attr.extend_from_slice(&[2, 0, 0, 0]);
        let parsed = attributes(&attr);
        assert_eq!(parsed, vec![(IFLA_XDP_ATTACHED, &[2u8][..])]);
        assert!(attributes(&[1, 0]).is_empty());
    }
}
