//! Who already runs an XDP program on an interface, for the message when attaching there fails:
//! an interface runs one XDP program at a time whatever the mode, so the only fix is taking the
//! other one off, and the admin needs to know which one it is and who put it there.

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};

use crate::{
    bpffs::CONVENTIONAL_MOUNT,
    config::DEFAULT_PIN_DIR,
    filter::link_pin_path,
    lock,
    netlink::{XdpState, xdp_state},
};

/// The XDP program found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupant {
    pub iface: String,
    pub state: XdpState,
    /// The program's name as the kernel knows it (15 bytes at most).
    pub name: Option<String>,
    /// A gatekeeper pin directory whose `link-<iface>` holds that program.
    pub pinned_in: Option<PathBuf>,
    /// Whether a gatekeeper daemon holds that pin directory's lock.
    pub daemon_running: bool,
    /// That program is libxdp's dispatcher: the gatekeeper can join it instead.
    pub dispatcher: Option<crate::xdp_attach::RunningDispatcher>,
}

/// The XDP program on `iface` (`ifindex`), if there is one; `pin_dir` is this daemon's own pin
/// directory, searched first for the link that holds it.
pub fn find(iface: &str, ifindex: u32, pin_dir: Option<&Path>) -> Option<Occupant> {
    let state = xdp_state(ifindex).ok()??;
    let name = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == state.prog_id)
        .and_then(|p| p.name_as_str().map(str::to_string));
    let pinned_in = candidate_dirs(pin_dir)
        .into_iter()
        .find(|dir| link_program(&link_pin_path(dir, iface)) == Some(state.prog_id));
    let daemon_running = pinned_in
        .as_deref()
        .is_some_and(|dir| matches!(lock::try_lock_pin_dir(dir), Ok(None)));
    let dispatcher = crate::xdp_attach::running_dispatcher(ifindex, &state);
    Some(Occupant {
        iface: iface.to_string(),
        state,
        name,
        pinned_in,
        daemon_running,
        dispatcher,
    })
}

/// This daemon's pin directory, the default one, and every directory right under the bpffs
/// mount: where gatekeeper daemons pin their links.
fn candidate_dirs(pin_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = pin_dir.into_iter().map(Path::to_path_buf).collect();
    dirs.push(PathBuf::from(DEFAULT_PIN_DIR));
    if let Ok(entries) = std::fs::read_dir(CONVENTIONAL_MOUNT) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    dirs.dedup();
    dirs
}

/// The program id a pinned link holds.
fn link_program(pin: &Path) -> Option<u32> {
    if !pin.exists() {
        return None;
    }
    let link = PinnedLink::from_pin(pin).ok()?;
    FdLink::from(link).info().ok().map(|i| i.program_id())
}

impl std::fmt::Display for Occupant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let iface = &self.iface;
        write!(
            f,
            "{iface} already runs XDP program id {}",
            self.state.prog_id
        )?;
        if let Some(name) = &self.name {
            write!(f, " \"{name}\"")?;
        }
        write!(f, " ({} mode)", self.state.mode)?;
        match &self.pinned_in {
            Some(dir) => {
                write!(
                    f,
                    ", attached through the link pinned at {}",
                    link_pin_path(dir, iface).display()
                )?;
                if self.daemon_running {
                    write!(
                        f,
                        " by the gatekeeper daemon running with pin_dir {} (stop it first)",
                        dir.display()
                    )?;
                } else {
                    write!(
                        f,
                        " by a gatekeeper with pin_dir {} (no daemon runs there: `gatekeeper detach` with that pin_dir removes it)",
                        dir.display()
                    )?;
                }
            }
            None => write!(f, ", not pinned by any gatekeeper")?,
        }
        if let Some(dispatcher) = &self.dispatcher {
            return write!(
                f,
                ". It is libxdp's dispatcher (xdp-loader, xdp-filter, bpfman; components pinned in {}), which shares the interface: set xdp_attach = \"dispatcher\" (or \"auto\") to run the gatekeeper as one of its programs; `xdp-loader status {iface}` lists them",
                dispatcher.pin_dir.display()
            );
        }
        write!(
            f,
            ". An interface runs one XDP program at a time in any xdp_mode, so another mode does not help: take that program off first, or load it through libxdp's dispatcher (`xdp-loader load`) and set xdp_attach = \"dispatcher\" to run both. `ip -d link show dev {iface}` and `bpftool net show dev {iface}` show it"
        )
    }
}
