//! Types shared by the XDP program (`gatekeeper-ebpf`) and its controller (`gatekeeper`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding, because the same bytes are
//! read by the kernel program and written by userspace through BPF maps.
#![no_std]

/// Names of the maps in the eBPF object, used by the loader to find them.
pub mod map_names {
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const PORTS: &str = "PORTS";
    pub const CONFIG: &str = "CONFIG";
}

/// Name of the XDP program in the eBPF object.
pub const PROGRAM_NAME: &str = "gatekeeper";

/// Largest number of entries each allowlist trie can hold.
pub const ALLOWLIST_CAPACITY: u32 = 1 << 20;

/// Largest number of protected TCP ports.
pub const MAX_PORTS: u32 = 64;

/// Value stored in the `PORTS` hash map for each protected port (key: port in host byte order).
pub const PORT_PROTECTED: u8 = 1;

/// Value stored in an allowlist trie for each entry. The value itself is not read by the
/// program (presence of a matching prefix is what admits a source); it carries the entry's
/// prefix length so userspace can tell entries apart when listing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowEntry {
    pub prefix_len: u32,
}

/// IPv6 address as the trie key data: 16 bytes in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ipv6Key {
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::Ipv6Key {}
}
