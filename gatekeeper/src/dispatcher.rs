//! Running as a component of libxdp's dispatcher, compatible with xdp-tools (see
//! [`crate::xdp_attach`] for the protocol). Every change (a component added, replaced or
//! removed) is done as libxdp does it: under its lock, a new dispatcher is loaded from xdp-tools'
//! own object with the new slot table in its `conf`, every component is linked (`freplace`) into
//! its slot, the new dispatcher atomically replaces the old one on the interface (netlink,
//! `XDP_FLAGS_REPLACE`), the components are pinned under the new dispatcher's directory and the
//! old directory is removed. Packets meet the old set or the new one, never a gap.

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    EbpfLoader, Pod,
    maps::{Array, Map, MapData},
    programs::{Extension, ProgramError, ProgramFd, Xdp, links::FdLink, loaded_programs},
};
use tracing::info;

use crate::{
    netlink::{self, XdpAttachment},
    xdp_attach::{self, DISPATCHER_PROG_NAME, dispatch_dir, libxdp_dir},
};

/// Slots of xdp-tools' dispatcher (`MAX_DISPATCHER_ACTIONS`).
pub const MAX_COMPONENTS: usize = 10;
/// `XDP_DISPATCHER_MAGIC`: 'X' + 'D' + 'P'.
const MAGIC: u8 = 236;
/// The `conf` layout this module writes (`XDP_DISPATCHER_VERSION`).
const VERSION: u8 = 2;
/// The dispatcher's own return value for an empty slot: it always continues the chain.
const RETVAL_BIT: u32 = 1 << 31;
/// libxdp's default run priority.
pub const DEFAULT_PRIORITY: u32 = 50;
/// XDP_PASS continues to the next program; every other action ends the chain.
pub const CHAIN_ON_PASS: u32 = 1 << 2;
/// The trivial XDP program xdp-tools' dispatcher object carries for libxdp's own compatibility
/// check: loaded as an `freplace` program into a slot, it shows whether the kernel allows them.
const PROBE_PROGRAM: &str = "xdp_pass";

/// `struct xdp_dispatcher_config` of xdp-tools' `prog_dispatcher.h`, version 2.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DispatcherConfig {
    pub magic: u8,
    pub dispatcher_version: u8,
    pub num_progs_enabled: u8,
    pub is_xdp_frags: u8,
    pub chain_call_actions: [u32; MAX_COMPONENTS],
    pub run_prios: [u32; MAX_COMPONENTS],
    pub program_flags: [u32; MAX_COMPONENTS],
}

// SAFETY: repr(C), only integers, no padding (4 u8 then u32 arrays).
unsafe impl Pod for DispatcherConfig {}

/// Why this kernel cannot run libxdp's dispatcher, or `None` when it can: found once per process
/// by loading xdp-tools' dispatcher and its `xdp_pass` as an `freplace` (`BPF_PROG_TYPE_EXT`)
/// program into slot `prog0`, as libxdp checks before it uses a dispatcher. Nothing is attached.
/// Some hardened kernels (lockdown, a BPF LSM policy) refuse every extension with `EPERM`.
pub fn freplace_refusal() -> Option<&'static str> {
    FREPLACE_PROBE
        .get_or_init(|| probe_freplace().err().map(|err| format!("{err:#}")))
        .as_deref()
}

/// [`freplace_refusal`] if this process asked already (`auto` asks only when it would join a
/// dispatcher); `None` when it did not ask or the kernel allows extensions.
pub fn asked_and_refused() -> Option<&'static str> {
    FREPLACE_PROBE.get().and_then(|r| r.as_deref())
}

static FREPLACE_PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn probe_freplace() -> anyhow::Result<()> {
    let object = xdp_attach::dispatcher_object().with_context(|| {
        format!(
            "xdp-tools' {} is not installed",
            xdp_attach::DISPATCHER_OBJECT
        )
    })?;
    let conf = DispatcherConfig {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: 1,
        ..DispatcherConfig::default()
    };
    let (mut ebpf, target, _) = load_dispatcher(&object, &conf, Some(PROBE_PROGRAM))?;
    let probe: &mut Extension = ebpf
        .program_mut(PROBE_PROGRAM)
        .with_context(|| format!("{} has no {PROBE_PROGRAM}", object.display()))?
        .try_into()
        .context("the probe is not an extension")?;
    probe.load(target, "prog0").map_err(|err| {
        // The kernel's answer alone: a refused load has no verifier log worth showing.
        let answer = match err {
            ProgramError::LoadError { io_error, .. } => format!("BPF_PROG_LOAD: {io_error}"),
            other => format!("{other:#}"),
        };
        anyhow!(
            "the kernel refuses freplace (BPF_PROG_TYPE_EXT) programs, which libxdp's dispatcher runs its components as ({answer})"
        )
    })
}

/// One program in a dispatcher slot.
pub struct Component {
    pub program: Extension,
    pub name: String,
    pub run_prio: u32,
    pub chain_call_actions: u32,
    pub flags: u32,
}

/// This process's program joining a dispatcher: its name and run priority.
pub type Joining<'a> = (&'a mut Extension, &'a str, u32);

/// A slot of the dispatcher being built.
enum Slot<'a> {
    Other(Box<Component>),
    /// This process's program: loaded (verified) against its first dispatcher, linked to
    /// later ones.
    Ours(&'a mut Extension, &'a str, u32),
}

impl Slot<'_> {
    fn key(&self) -> (u32, &str) {
        match self {
            Slot::Other(c) => (c.run_prio, c.name.as_str()),
            Slot::Ours(_, name, prio) => (*prio, name),
        }
    }
}

/// libxdp's lock: `flock(LOCK_EX)` on its bpffs directory, released when dropped.
pub struct LibxdpLock {
    _dir: File,
}

impl LibxdpLock {
    pub fn acquire() -> anyhow::Result<LibxdpLock> {
        let dir = libxdp_dir();
        if let Err(err) = std::fs::DirBuilder::new().mode_0700().create(&dir)
            && err.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(err)
                .with_context(|| format!("creating libxdp's directory {}", dir.display()));
        }
        let file = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {} (libxdp's lock)", dir.display()));
        }
        Ok(LibxdpLock { _dir: file })
    }
}

trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt as _;
        self.mode(0o700)
    }
}

/// The dispatcher on an interface and its components, read from the kernel and libxdp's pins.
pub struct Current {
    pub prog_id: u32,
    pub mode: XdpAttachment,
    pub dir: PathBuf,
    pub components: Vec<Component>,
    /// Slots in use (pins to remove when it is replaced).
    slots: usize,
    /// The dispatcher program, held so the replacement can name it as expected.
    program: ProgramFd,
}

impl Current {
    /// Takes the components not named `name` (the ones a rebuild keeps).
    pub fn take_components_except(&mut self, name: &str) -> Vec<Component> {
        std::mem::take(&mut self.components)
            .into_iter()
            .filter(|c| c.name != name)
            .collect()
    }
}

/// The program ids of the components of dispatcher `prog_id` on `ifindex` (empty if it is not
/// libxdp's dispatcher).
pub fn component_ids(ifindex: u32, prog_id: u32) -> Vec<u32> {
    let dir = dispatch_dir(ifindex, prog_id);
    (0..MAX_COMPONENTS)
        .map_while(|slot| {
            aya::programs::ProgramInfo::from_pin(dir.join(format!("prog{slot}-prog"))).ok()
        })
        .map(|info| info.id())
        .collect()
}

/// Whether the dispatcher on `iface` holds a component named `name`.
pub fn has_component(iface: &str, name: &str) -> bool {
    let Ok(ifindex) = crate::filter::ifindex(iface) else {
        return false;
    };
    let Ok(Some(state)) = netlink::xdp_state(ifindex) else {
        return false;
    };
    let dir = dispatch_dir(ifindex, state.prog_id);
    (0..MAX_COMPONENTS)
        .map_while(|slot| {
            aya::programs::ProgramInfo::from_pin(dir.join(format!("prog{slot}-prog"))).ok()
        })
        .any(|info| info.name_as_str() == Some(name))
}

/// Takes the components named `name` out of the dispatcher on `iface` (the dispatcher goes
/// when none is left).
pub fn leave(iface: &str, name: &str) -> anyhow::Result<()> {
    let ifindex = crate::filter::ifindex(iface)?;
    let _lock = LibxdpLock::acquire()?;
    let Some(mut current) = current(ifindex)? else {
        return Ok(());
    };
    let others = current.take_components_except(name);
    let mode = current.mode;
    install(ifindex, mode, Some(&current), others, None)
        .with_context(|| format!("taking {name} out of libxdp's dispatcher on {iface}"))?;
    Ok(())
}

/// The dispatcher on `ifindex`, if libxdp's dispatcher runs there; an error if another program
/// runs there (it cannot be shared). Call under [`LibxdpLock`].
pub fn current(ifindex: u32) -> anyhow::Result<Option<Current>> {
    let Some(state) = netlink::xdp_state(ifindex)? else {
        return Ok(None);
    };
    let Some(running) = xdp_attach::running_dispatcher(ifindex, &state) else {
        bail!(
            "XDP program id {} runs on ifindex {ifindex} and is not libxdp's dispatcher: it cannot be shared",
            state.prog_id
        );
    };
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == state.prog_id)
        .context("the dispatcher program vanished")?;
    let program = info.fd().context("opening the dispatcher program")?;
    let map_ids = info
        .map_ids()
        .context("reading the dispatcher's maps")?
        .unwrap_or_default();
    let [map_id] = map_ids[..] else {
        bail!(
            "libxdp's dispatcher should have one map (its conf), it has {}",
            map_ids.len()
        );
    };
    let map = MapData::from_id(map_id).context("opening the dispatcher's conf")?;
    let conf: Array<MapData, DispatcherConfig> = Array::try_from(Map::Array(map))
        .context("the dispatcher's conf is not a version 2 xdp_dispatcher_config")?;
    let conf = conf.get(&0, 0).context("reading the dispatcher's conf")?;
    if conf.magic != MAGIC || conf.dispatcher_version != VERSION {
        bail!(
            "libxdp's dispatcher on ifindex {ifindex} has version {} (magic {}); this gatekeeper speaks version {VERSION}",
            conf.dispatcher_version,
            conf.magic
        );
    }
    let mut components = Vec::new();
    for slot in 0..usize::from(conf.num_progs_enabled).min(MAX_COMPONENTS) {
        let pin = running.pin_dir.join(format!("prog{slot}-prog"));
        let program = Extension::from_pin(&pin)
            .with_context(|| format!("opening the component {}", pin.display()))?;
        let name = program
            .info()
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_string))
            .unwrap_or_default();
        components.push(Component {
            program,
            name,
            run_prio: conf.run_prios[slot],
            chain_call_actions: conf.chain_call_actions[slot] & !RETVAL_BIT,
            flags: conf.program_flags[slot],
        });
    }
    Ok(Some(Current {
        prog_id: state.prog_id,
        mode: state.mode,
        dir: running.pin_dir,
        slots: components.len(),
        components,
        program,
    }))
}

/// Builds a dispatcher holding `components` (sorted as libxdp sorts: priority, then name) and
/// puts it on `ifindex` in place of `old` (or on the free interface, in `mode`); with no
/// components, takes the dispatcher off. Returns the new dispatcher's program id. Call under
/// [`LibxdpLock`].
pub fn install(
    ifindex: u32,
    mode: XdpAttachment,
    old: Option<&Current>,
    others: Vec<Component>,
    ours: Option<Joining<'_>>,
) -> anyhow::Result<Option<u32>> {
    let mut components: Vec<Slot<'_>> = others
        .into_iter()
        .map(|c| Slot::Other(Box::new(c)))
        .collect();
    if let Some((program, name, prio)) = ours {
        components.push(Slot::Ours(program, name, prio));
    }
    if components.len() > MAX_COMPONENTS {
        bail!("libxdp's dispatcher has {MAX_COMPONENTS} slots, all taken");
    }
    if components.is_empty() {
        if let Some(old) = old {
            netlink::set_xdp(
                ifindex,
                None,
                flags_for(mode),
                Some(old.program.as_fd().as_raw_fd()),
            )
            .context("taking libxdp's dispatcher off the interface")?;
            remove_dir(&old.dir, old.slots);
        }
        return Ok(None);
    }
    components.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut conf = DispatcherConfig {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: u8::try_from(components.len()).unwrap_or(0),
        ..DispatcherConfig::default()
    };
    for (slot, c) in components.iter().enumerate() {
        let (actions, prio, flags) = match c {
            Slot::Other(c) => (c.chain_call_actions, c.run_prio, c.flags),
            Slot::Ours(_, _, prio) => (CHAIN_ON_PASS, *prio, 0),
        };
        conf.chain_call_actions[slot] = actions | RETVAL_BIT;
        conf.run_prios[slot] = prio;
        conf.program_flags[slot] = flags;
    }
    let object = xdp_attach::dispatcher_object().with_context(|| {
        format!(
            "xdp-tools' {} is not installed (Debian: apt-get install xdp-tools)",
            xdp_attach::DISPATCHER_OBJECT
        )
    })?;
    let (_dispatcher, dispatcher_fd, new_id) = load_dispatcher(&object, &conf, None)?;
    let mut links = Vec::new();
    for (slot, c) in components.iter_mut().enumerate() {
        let func = format!("prog{slot}");
        let (program, name): (&mut Extension, String) = match c {
            Slot::Other(c) => (&mut c.program, c.name.clone()),
            Slot::Ours(p, name, _) => (&mut **p, name.to_string()),
        };
        let link = if program.fd().is_err() {
            program
                .load(dispatcher_fd.try_clone()?, &func)
                .with_context(|| format!("loading {name} as component {func}"))?;
            program.attach()
        } else {
            program.attach_to_program(&dispatcher_fd, &func)
        }
        .with_context(|| format!("linking {name} into dispatcher slot {func}"))?;
        let link: FdLink = program.take_link(link)?.into();
        links.push(link);
    }
    let flags = flags_for(old.map_or(mode, |o| o.mode));
    netlink::set_xdp(
        ifindex,
        Some(dispatcher_fd.as_fd().as_raw_fd()),
        flags,
        old.map(|o| o.program.as_fd().as_raw_fd()),
    )
    .context("putting the new dispatcher on the interface")?;
    let dir = dispatch_dir(ifindex, new_id);
    std::fs::DirBuilder::new()
        .mode_0700()
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for (slot, (c, link)) in components.iter_mut().zip(links).enumerate() {
        link.pin(dir.join(format!("prog{slot}-link")))
            .with_context(|| format!("pinning component {slot}'s link"))?;
        let program = match c {
            Slot::Other(c) => &mut c.program,
            Slot::Ours(p, _, _) => &mut **p,
        };
        program
            .pin(dir.join(format!("prog{slot}-prog")))
            .with_context(|| format!("pinning component {slot}"))?;
    }
    if let Some(old) = old {
        remove_dir(&old.dir, old.slots);
    }
    info!(
        ifindex,
        dispatcher = new_id,
        components = components.len(),
        "libxdp's dispatcher installed"
    );
    Ok(Some(new_id))
}

/// Loads (verifies) the dispatcher of xdp-tools' `object` with `conf`; `extension` names another
/// program of the object to be loaded as an extension later. The object stays loaded with the
/// returned `Ebpf`; the fd and the program id are the dispatcher's.
fn load_dispatcher(
    object: &Path,
    conf: &DispatcherConfig,
    extension: Option<&str>,
) -> anyhow::Result<(aya::Ebpf, ProgramFd, u32)> {
    let mut loader = EbpfLoader::new();
    loader.override_global("conf", conf, true);
    if let Some(name) = extension {
        loader.extension(name);
    }
    let mut ebpf = loader
        .load_file(object)
        .with_context(|| format!("loading {}", object.display()))?;
    let dispatcher: &mut Xdp = ebpf
        .program_mut(DISPATCHER_PROG_NAME)
        .with_context(|| format!("{} has no {DISPATCHER_PROG_NAME}", object.display()))?
        .try_into()
        .context("the dispatcher is not an XDP program")?;
    dispatcher.load().context("loading libxdp's dispatcher")?;
    let fd = dispatcher.fd()?.try_clone()?;
    let id = dispatcher.info()?.id();
    Ok((ebpf, fd, id))
}

fn flags_for(mode: XdpAttachment) -> u32 {
    match mode {
        XdpAttachment::Skb => netlink::XDP_FLAGS_SKB_MODE,
        _ => netlink::XDP_FLAGS_DRV_MODE,
    }
}

/// Removes a dispatcher's pin directory (its links go with the last reference).
fn remove_dir(dir: &Path, components: usize) {
    for slot in 0..components.max(MAX_COMPONENTS) {
        for kind in ["link", "prog"] {
            let _ = std::fs::remove_file(dir.join(format!("prog{slot}-{kind}")));
        }
    }
    let _ = std::fs::remove_dir(dir);
}
