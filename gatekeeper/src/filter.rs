//! The loaded XDP program: loading (optionally with pinned maps), attaching, detaching.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use gatekeeper_common::{ALLOWLIST_CAPACITY, PROGRAM_NAME, dir24, map_names};
use tracing::{info, warn};

use crate::{
    config::XdpMode,
    maps::{FilterMaps, PINNED_MAPS},
};

/// The compiled XDP object, built by `build.rs` from `gatekeeper-ebpf`.
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper"));

/// A loaded (verified) gatekeeper program with its maps.
pub struct Filter {
    ebpf: Ebpf,
    maps: FilterMaps,
    events: Option<RingBuf<MapData>>,
    links: Vec<(String, XdpLinkId)>,
    pin_dir: Option<PathBuf>,
    loaded_siblings: Vec<String>,
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

/// How the IPv4 allowlist is looked up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4Lookup {
    /// Both structures kept; the trie serves lists shorter than
    /// [`AUTO_DIR24_THRESHOLD`] entries (it stays in cache), DIR-24-8 longer ones.
    #[default]
    Auto,
    /// DIR-24-8: constant cost per packet, about 64 MiB + 1 KiB per long block of kernel memory.
    Dir24,
    /// The kernel LPM trie: no fixed memory, cost grows with the list.
    Trie,
}

impl std::fmt::Display for Ipv4Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ipv4Lookup::Auto => "auto",
            Ipv4Lookup::Dir24 => "dir24",
            Ipv4Lookup::Trie => "trie",
        })
    }
}

/// IPv4 entries from which `auto` switches from the trie to DIR-24-8 (`cargo xtask bench xdp`
/// shows the trie ahead for short lists and DIR-24-8 far ahead for long ones).
pub const AUTO_DIR24_THRESHOLD: usize = 1024;

/// How to load the filter.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions<'a> {
    /// Pin (or reuse pinned) maps here.
    pub pin_dir: Option<&'a Path>,
    pub ipv4_lookup: Ipv4Lookup,
    /// Second-level DIR-24-8 blocks (one per /24 holding prefixes longer than /24).
    pub dir24_blocks: u32,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            pin_dir: None,
            ipv4_lookup: Ipv4Lookup::Auto,
            dir24_blocks: dir24::DEFAULT_LONG_BLOCKS,
        }
    }
}

impl Filter {
    /// Loads the program with the default IPv4 lookup (the verifier runs here). With `pin_dir`,
    /// its maps are pinned there, or reused from there when an earlier run pinned them, so their
    /// state survives this process.
    pub fn load(pin_dir: Option<&Path>) -> anyhow::Result<Filter> {
        Filter::load_with(&LoadOptions {
            pin_dir,
            ..LoadOptions::default()
        })
    }

    /// Loads the program as `options` say.
    pub fn load_with(options: &LoadOptions<'_>) -> anyhow::Result<Filter> {
        let pin_dir = options.pin_dir;
        let mut loader = EbpfLoader::new();
        // The DIR-24-8 tables shrink to one value each when the trie serves IPv4.
        let (tbl24, long, entries) = match options.ipv4_lookup {
            Ipv4Lookup::Auto | Ipv4Lookup::Dir24 => (
                dir24::TBL24_ENTRIES / 2,
                options.dir24_blocks.max(1) * 128,
                ALLOWLIST_CAPACITY,
            ),
            Ipv4Lookup::Trie => (1, 1, 1),
        };
        loader
            .map_max_entries(map_names::DIR24, tbl24)
            .map_max_entries(map_names::DIR24_LONG, long)
            .map_max_entries(map_names::ENTRY, entries);
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => PINNED_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(PROGRAM_OBJECT)
            .context("loading the eBPF object failed")?;
        let program = xdp_program(&mut ebpf, PROGRAM_NAME)?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        let mut maps = FilterMaps::take_from(&mut ebpf)?;
        maps.prefer_ipv4_lookup(options.ipv4_lookup);
        let events = ebpf
            .take_map(map_names::EVENTS)
            .map(RingBuf::try_from)
            .transpose()
            .context("the drop-event map is not a ring buffer")?;
        Ok(Filter {
            ebpf,
            maps,
            events,
            links: Vec::new(),
            pin_dir: pin_dir.map(Path::to_path_buf),
            loaded_siblings: Vec::new(),
        })
    }

    /// The program, for `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, PROGRAM_NAME)
    }

    /// Another program of the same object, loaded on first use; it shares this filter's maps.
    /// Used for the benchmark twins (`BENCH_SPREAD_PROGRAM_NAME`).
    pub fn sibling_program(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        if !self.loaded_siblings.iter().any(|n| n == name) {
            xdp_program(&mut self.ebpf, name)?
                .load()
                .with_context(|| format!("the kernel refused the {name} program"))?;
            self.loaded_siblings.push(name.to_string());
        }
        xdp_program(&mut self.ebpf, name)
    }

    /// The maps: policy, allowlists, counters.
    pub fn maps(&mut self) -> &mut FilterMaps {
        &mut self.maps
    }

    /// The drop-event ring buffer, once: whoever takes it reads the events.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Attaches the program to `iface` in `mode`; `Auto` falls back from native to skb, loudly.
    /// Its traffic is counted in counter slot `slot`.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: XdpMode,
        slot: u32,
    ) -> anyhow::Result<AttachedMode> {
        let ifindex = ifindex(iface)?;
        // Counting is set up first, so the first packet after attaching is already counted.
        self.maps.assign_slot(ifindex, slot)?;
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
        info!(iface, ifindex, mode = %attached, "attached");
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

    /// Removes the pinned maps (after detaching, when the filter is meant to stop).
    pub fn unpin(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        remove_pins(dir)
    }
}

/// Removes every pin the filter keeps under `dir`, and `dir` itself once empty.
pub fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    for name in PINNED_MAPS {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
    // Other files (an admin's, a newer version's) keep the directory.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Loads only the program `name` of the object (for the benchmark baselines, e.g.
/// `BASELINE_PROGRAM_NAME`, an empty program that returns XDP_PASS).
pub fn load_standalone(name: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(PROGRAM_OBJECT).context("loading the eBPF object failed")?;
    xdp_program(&mut ebpf, name)?
        .load()
        .with_context(|| format!("the kernel refused the {name} program"))?;
    Ok(ebpf)
}

/// The XDP program `name` of `ebpf`.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no {name} program"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .with_context(|| format!("interface name {iface:?} contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        anyhow::bail!("unknown network interface {iface}");
    }
    Ok(index)
}

fn native_failure(iface: &str) -> String {
    format!(
        "attaching to {iface} in native mode failed (set xdp_mode = \"auto\" to fall back to the slower skb mode, or \"skb\" to use it)"
    )
}
