//! The loaded XDP program and its maps.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use gatekeeper_common::{AllowEntry as MapAllowEntry, PORT_PROTECTED, PROGRAM_NAME, map_names};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::XdpMode;

/// The compiled XDP program, built by `build.rs` from `gatekeeper-ebpf`.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper"));

/// A loaded (verified) gatekeeper program with handles on its maps.
pub struct Filter {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
}

/// How the program ended up attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Skb => "skb",
        })
    }
}

impl Filter {
    /// Loads the program into the kernel (the verifier runs here) with empty maps.
    pub fn load() -> anyhow::Result<Filter> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).context("loading the eBPF object failed")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .context("the eBPF object has no gatekeeper program")?
            .try_into()
            .context("the gatekeeper program is not an XDP program")?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        Ok(Filter {
            ebpf,
            links: Vec::new(),
        })
    }

    /// The program, for `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .context("the eBPF object has no gatekeeper program")?
            .try_into()
            .context("the gatekeeper program is not an XDP program")
    }

    /// Marks each of `ports` as protected.
    pub fn protect_ports(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, u16, u8> = HashMap::try_from(
            self.ebpf
                .map_mut(map_names::PORTS)
                .context("the eBPF object has no PORTS map")?,
        )?;
        for port in ports {
            map.insert(port, PORT_PROTECTED, 0)
                .with_context(|| format!("protecting port {port} failed"))?;
        }
        Ok(())
    }

    /// Adds `net` to the allowlist of its address family.
    pub fn allow(&mut self, net: IpNet) -> anyhow::Result<()> {
        let value = MapAllowEntry {
            prefix_len: u32::from(net.prefix_len()),
        };
        let result = match net.network() {
            IpAddr::V4(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], MapAllowEntry> =
                    LpmTrie::try_from(self.map_mut(map_names::ALLOW_V4)?)?;
                trie.insert(&Key::new(value.prefix_len, addr.octets()), value, 0)
            }
            IpAddr::V6(addr) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], MapAllowEntry> =
                    LpmTrie::try_from(self.map_mut(map_names::ALLOW_V6)?)?;
                trie.insert(&Key::new(value.prefix_len, addr.octets()), value, 0)
            }
        };
        result.with_context(|| format!("adding {net} to the allowlist failed"))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("the eBPF object has no {name} map"))
    }

    /// Attaches the program to `iface` in `mode`; `Auto` falls back from native to skb, loudly.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<AttachedMode> {
        let program = self.program_mut()?;
        let (link, attached) = match mode {
            XdpMode::Native => (
                program
                    .attach(iface, AyaXdpMode::Driver)
                    .with_context(|| native_failure(iface))?,
                AttachedMode::Native,
            ),
            XdpMode::Skb => (
                program.attach(iface, AyaXdpMode::Skb).with_context(|| {
                    format!("attaching to {iface} in skb (generic) mode failed")
                })?,
                AttachedMode::Skb,
            ),
            XdpMode::Auto => match program.attach(iface, AyaXdpMode::Driver) {
                Ok(link) => (link, AttachedMode::Native),
                Err(err) => {
                    warn!(
                        iface,
                        error = %err,
                        "native XDP is not available; FALLING BACK to generic (skb) XDP, which runs after the kernel allocated a socket buffer and is several times slower"
                    );
                    let link = program.attach(iface, AyaXdpMode::Skb).with_context(|| {
                        format!("attaching to {iface} failed in native and in skb mode")
                    })?;
                    (link, AttachedMode::Skb)
                }
            },
        };
        info!(iface, mode = %attached, "attached");
        self.links.push((iface.to_string(), link));
        Ok(attached)
    }

    /// Detaches the program from every interface it was attached to.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let links = std::mem::take(&mut self.links);
        let program = self.program_mut()?;
        for (iface, link) in links {
            program
                .detach(link)
                .with_context(|| format!("detaching from {iface} failed"))?;
            info!(iface, "detached");
        }
        Ok(())
    }
}

fn native_failure(iface: &str) -> String {
    format!(
        "attaching to {iface} in native mode failed (set xdp_mode = \"auto\" to fall back to the slower skb mode, or \"skb\" to use it)"
    )
}
