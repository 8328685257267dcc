//! Drop events from the kernel: decoding and naming.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gatekeeper_common::{DropEvent, rule};

/// A decoded drop event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop {
    pub source: IpAddr,
    pub dest_port: u16,
    pub ifindex: u32,
    /// Only counted (monitor mode), not dropped.
    pub monitor: bool,
    /// The rule that refused it, by its counter's name: `dropped` (not in the allowlist of an
    /// allowlist port), `denied_list`, `banned` or `rate_limited`.
    pub rule: &'static str,
}

impl Drop {
    /// The log line's message: what happened, and which rule did it.
    pub fn message(&self) -> &'static str {
        match (self.rule, self.monitor) {
            ("denied_list", false) => "dropped SYN from a source in the deny list",
            ("denied_list", true) => {
                "would drop SYN from a source in the deny list (monitor mode, passed)"
            }
            ("banned", false) => "dropped SYN from a banned source",
            ("banned", true) => "would drop SYN from a banned source (monitor mode, passed)",
            ("rate_limited", false) => "dropped SYN from a source over its SYN rate",
            ("rate_limited", true) => {
                "would drop SYN from a source over its SYN rate (monitor mode, passed)"
            }
            (_, false) => "dropped SYN from a source outside the allowlist",
            (_, true) => {
                "would drop SYN from a source outside the allowlist (monitor mode, passed)"
            }
        }
    }
}

/// Decodes one ring-buffer record; `None` if it is not a whole event.
pub fn decode(bytes: &[u8]) -> Option<Drop> {
    if bytes.len() < size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: the length is checked above and DropEvent is plain old data of integers.
    let event: DropEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let source = match event.family {
        4 => IpAddr::V4(Ipv4Addr::new(
            event.source[0],
            event.source[1],
            event.source[2],
            event.source[3],
        )),
        6 => IpAddr::V6(Ipv6Addr::from(event.source)),
        _ => return None,
    };
    Some(Drop {
        source,
        dest_port: event.dest_port,
        ifindex: event.ifindex,
        monitor: event.monitor != 0,
        rule: rule::name(event.rule),
    })
}

/// The interface name for `ifindex`, or the number if it has gone.
pub fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return format!("ifindex{ifindex}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(event: &DropEvent) -> Vec<u8> {
        // SAFETY: reading a plain struct as bytes.
        unsafe {
            std::slice::from_raw_parts(
                (event as *const DropEvent).cast::<u8>(),
                size_of::<DropEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_both_families_and_refuses_short_records() {
        let mut event = DropEvent {
            family: 4,
            ifindex: 7,
            dest_port: 25,
            ..Default::default()
        };
        event.source[..4].copy_from_slice(&[203, 0, 113, 66]);
        let drop = decode(&bytes(&event)).expect("event");
        assert_eq!(drop.source, "203.0.113.66".parse::<IpAddr>().unwrap());
        assert_eq!((drop.dest_port, drop.ifindex), (25, 7));
        assert_eq!(drop.rule, "dropped");
        event.rule = rule::BANNED;
        assert_eq!(decode(&bytes(&event)).unwrap().rule, "banned");
        event.family = 6;
        event.source = "2001:db8::66".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            decode(&bytes(&event)).unwrap().source,
            "2001:db8::66".parse::<IpAddr>().unwrap()
        );
        assert_eq!(decode(&bytes(&event)[..10]), None);
        event.family = 9;
        assert_eq!(decode(&bytes(&event)), None);
    }
}
