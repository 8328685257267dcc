//! `xdp_attach`: whether the program has an interface to itself or shares it through libxdp's
//! dispatcher (the multi-program protocol of xdp-tools' `xdp-loader`/`xdp-filter` and bpfman),
//! and how `auto` decides.
//!
//! libxdp's protocol, as far as this module needs it: the interface runs one XDP program named
//! `xdp_dispatcher` (loaded from xdp-tools' `xdp-dispatcher.o`), attached through netlink; its
//! components are `freplace` programs in its slots `prog0`..`prog9`, pinned with their links as
//! `progN-prog`/`progN-link` in `/sys/fs/bpf/xdp/dispatch-IFINDEX-PROGID`, and whoever changes
//! them holds `flock(LOCK_EX)` on `/sys/fs/bpf/xdp`.

use std::path::{Path, PathBuf};

use aya::programs::loaded_programs;

use crate::{
    bpffs::CONVENTIONAL_MOUNT,
    config::XdpAttach,
    netlink::{XdpState, xdp_state},
};

/// The kernel's name of libxdp's dispatcher program (its function `xdp_dispatcher`, 15 bytes).
pub const DISPATCHER_PROG_NAME: &str = "xdp_dispatcher";
/// The dispatcher object xdp-tools installs (Debian: package `libxdp1`).
pub const DISPATCHER_OBJECT: &str = "xdp-dispatcher.o";
/// libxdp's environment variable naming the directory of its BPF objects.
pub const OBJECT_PATH_ENV: &str = "LIBXDP_OBJECT_PATH";

/// How the program is attached to one interface once `auto` is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    Exclusive,
    Dispatcher,
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attach::Exclusive => "exclusive",
            Attach::Dispatcher => "dispatcher",
        })
    }
}

/// libxdp's dispatcher found on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningDispatcher {
    pub prog_id: u32,
    /// `/sys/fs/bpf/xdp/dispatch-IFINDEX-PROGID`, where its components are pinned.
    pub pin_dir: PathBuf,
}

/// libxdp's bpffs directory: the lock and every dispatcher's pins live here.
pub fn libxdp_dir() -> PathBuf {
    Path::new(CONVENTIONAL_MOUNT).join("xdp")
}

/// Where libxdp pins the components of dispatcher `prog_id` on `ifindex`.
pub fn dispatch_dir(ifindex: u32, prog_id: u32) -> PathBuf {
    libxdp_dir().join(format!("dispatch-{ifindex}-{prog_id}"))
}

/// The kernel's name of program `id`, if this process may look it up.
fn program_name(id: u32) -> Option<String> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// Whether `state` (the program on `ifindex`) is libxdp's dispatcher: named `xdp_dispatcher`
/// with its pin directory where libxdp keeps it.
pub fn running_dispatcher(ifindex: u32, state: &XdpState) -> Option<RunningDispatcher> {
    if program_name(state.prog_id).as_deref() != Some(DISPATCHER_PROG_NAME) {
        return None;
    }
    let pin_dir = dispatch_dir(ifindex, state.prog_id);
    pin_dir.is_dir().then_some(RunningDispatcher {
        prog_id: state.prog_id,
        pin_dir,
    })
}

/// Where xdp-tools' dispatcher object is installed, looked up as libxdp does: the directory in
/// `LIBXDP_OBJECT_PATH`, else the distribution's BPF object directories (`/usr/lib/<triple>/bpf`
/// on Debian, `/usr/lib/bpf`, `/usr/local/lib/bpf`).
pub fn dispatcher_object() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(OBJECT_PATH_ENV)
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        let mut multiarch: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("bpf"))
            .filter(|p| {
                p.parent()
                    .is_some_and(|d| d.to_string_lossy().contains("-linux-"))
            })
            .collect();
        multiarch.sort();
        dirs.extend(multiarch);
    }
    dirs.push(PathBuf::from("/usr/lib/bpf"));
    dirs.push(PathBuf::from("/usr/local/lib/bpf"));
    dirs.into_iter()
        .map(|d| d.join(DISPATCHER_OBJECT))
        .find(|p| p.is_file())
}

/// How `wanted` attaches to `iface` (`ifindex`), and why, in words for `check` and the log.
///
/// `auto` picks `dispatcher` when libxdp's dispatcher already runs on the interface (another
/// program shares it through libxdp: joining is the only way on) or, on a free interface, when
/// xdp-tools' dispatcher object is installed (the admin has the tools to add programs beside
/// the gatekeeper later); otherwise `exclusive`. An interface running some other program that
/// is not a dispatcher stays `exclusive`: it cannot be shared and is refused naming it. Where
/// the kernel refuses the dispatcher's `freplace` components, `auto` is `exclusive` too, as
/// libxdp falls back to its single-program mode.
pub fn resolve(wanted: XdpAttach, ifindex: Option<u32>) -> (Attach, String) {
    match wanted {
        XdpAttach::Exclusive => (Attach::Exclusive, "configured".into()),
        XdpAttach::Dispatcher => (Attach::Dispatcher, "configured".into()),
        XdpAttach::Auto => match resolve_auto(ifindex) {
            (Attach::Dispatcher, why) => match crate::dispatcher::freplace_refusal() {
                Some(refusal) => (
                    Attach::Exclusive,
                    format!("auto: {why}, but libxdp's dispatcher cannot run here: {refusal}"),
                ),
                None => (Attach::Dispatcher, format!("auto: {why}")),
            },
            (Attach::Exclusive, why) => (Attach::Exclusive, format!("auto: {why}")),
        },
    }
}

/// `auto` before the kernel is asked whether it runs extensions.
fn resolve_auto(ifindex: Option<u32>) -> (Attach, String) {
    let state = ifindex.and_then(|i| xdp_state(i).ok().flatten().map(|s| (i, s)));
    if let Some((index, state)) = &state
        && let Some(running) = running_dispatcher(*index, state)
    {
        return (
            Attach::Dispatcher,
            format!(
                "libxdp's dispatcher (program id {}) already runs there",
                running.prog_id
            ),
        );
    }
    if let Some((_, state)) = state {
        return (
            Attach::Exclusive,
            format!(
                "XDP program id {} runs there and is not libxdp's dispatcher",
                state.prog_id
            ),
        );
    }
    match dispatcher_object() {
        Some(object) => (
            Attach::Dispatcher,
            format!("xdp-tools' dispatcher {} is installed", object.display()),
        ),
        None => (
            Attach::Exclusive,
            format!(
                "no libxdp dispatcher there and no {DISPATCHER_OBJECT} installed (package xdp-tools/libxdp1)"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_choices_need_no_lookup() {
        assert_eq!(resolve(XdpAttach::Exclusive, None).0, Attach::Exclusive);
        assert_eq!(resolve(XdpAttach::Dispatcher, None).0, Attach::Dispatcher);
    }

    #[test]
    fn auto_follows_the_installed_object_on_a_free_interface() {
        // Loopback runs no XDP program in the test's namespace.
        let (attach, why) = resolve(XdpAttach::Auto, Some(1));
        let expected =
            if dispatcher_object().is_some() && crate::dispatcher::freplace_refusal().is_none() {
                Attach::Dispatcher
            } else {
                Attach::Exclusive
            };
        assert_eq!(attach, expected, "{why}");
        assert!(why.starts_with("auto: "), "{why}");
    }

    #[test]
    fn dispatch_dirs_are_named_as_libxdp_names_them() {
        assert_eq!(
            dispatch_dir(7, 42),
            Path::new("/sys/fs/bpf/xdp/dispatch-7-42")
        );
    }
}
