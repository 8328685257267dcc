//! The daemon's interfaces: attaching at start and on reload, and keeping the filter on them
//! while it runs. An XDP program is attached to an ifindex; when its interface is deleted (a
//! driver reload, a bond or VLAN rebuilt by the network manager) the filter goes with it, and an
//! interface created again under the same name has a new ifindex and no filter. Someone may also
//! take the program off (`bpftool link detach`). The daemon looks at every configured interface on
//! each link event (see [`gatekeeper::link_watch`]), every second, and on SIGHUP: a lost filter is
//! logged at ERROR at once and attached again (same mode rules as at start, same counter slot) as
//! soon as an interface of that name exists without another XDP program; another program there is
//! named at ERROR and left alone (an interface runs one XDP program; fighting over it helps no
//! one).

use std::{collections::BTreeMap, time::Instant};

use gatekeeper::{
    config::Config,
    filter::{self, Filter},
    netlink::{self, XdpState},
    occupant,
};
use tracing::{error, info, warn};

/// What the daemon knows about one configured interface.
#[derive(Clone, Debug)]
enum State {
    /// The filter runs there, attached to this ifindex.
    Filtered { ifindex: u32 },
    /// It does not: the interface is gone, or attaching failed, or another program runs there.
    Unfiltered {
        /// The counter slot its traffic was counted in, kept for the next attachment.
        slot: Option<u32>,
        /// When the filter was lost (none if it never ran there).
        lost_at: Option<Instant>,
        /// What was last reported at ERROR, so a state that persists is reported once.
        reported: Option<String>,
    },
}

/// What is there now under a configured name.
enum Observed {
    Missing,
    Present {
        ifindex: u32,
        xdp: Option<XdpState>,
    },
    /// The kernel did not answer (rtnetlink failed): nothing is concluded.
    Unknown(String),
}

fn observe(iface: &str) -> Observed {
    let Ok(ifindex) = filter::ifindex(iface) else {
        return Observed::Missing;
    };
    match netlink::xdp_state(ifindex) {
        Ok(xdp) => Observed::Present { ifindex, xdp },
        Err(err) => Observed::Unknown(format!("{err:#}")),
    }
}

/// The configured interfaces and whether the filter runs on each.
pub(super) struct Interfaces {
    states: BTreeMap<String, State>,
    /// The kernel's id of this daemon's program.
    program_id: u32,
}

impl Interfaces {
    pub(super) fn new(filter: &mut Filter) -> anyhow::Result<Interfaces> {
        Ok(Interfaces {
            states: BTreeMap::new(),
            program_id: filter.program_id()?,
        })
    }

    /// Whether the filter runs on `ifindex`, whose XDP program is `prog_id`.
    fn runs_on(&self, filter: &mut Filter, ifindex: u32, prog_id: u32) -> bool {
        if filter.is_component() {
            filter.is_on(ifindex, prog_id)
        } else {
            prog_id == self.program_id
        }
    }

    /// Adopts the pinned link of `iface` or attaches anew (start-up, and interfaces a reload
    /// added); a failure leaves it unfiltered and is the caller's to report.
    /// After the program was replaced along with its IPv4 tables (same links, new program).
    pub(super) fn program_replaced(&mut self, filter: &mut Filter) -> anyhow::Result<()> {
        self.program_id = filter.program_id()?;
        Ok(())
    }

    pub(super) fn attach(
        &mut self,
        filter: &mut Filter,
        iface: &str,
        config: &Config,
    ) -> anyhow::Result<()> {
        let result = attach(filter, iface, config, None);
        self.states.insert(
            iface.to_string(),
            match &result {
                Ok(ifindex) => State::Filtered { ifindex: *ifindex },
                Err(err) => State::Unfiltered {
                    slot: None,
                    lost_at: None,
                    reported: Some(format!("{err:#}")),
                },
            },
        );
        result.map(|_| ())
    }

    /// Detaches from `iface` (taken out of the config) and gives its counter slot back.
    pub(super) fn detach(&mut self, filter: &mut Filter, iface: &str) -> anyhow::Result<()> {
        self.states.remove(iface);
        filter.detach(iface)?;
        if let Ok(index) = filter::ifindex(iface) {
            filter.maps().clear_slot(index)?;
        }
        Ok(())
    }

    /// Configured interfaces the filter does not run on.
    pub(super) fn unfiltered(&self, config: &Config) -> usize {
        config
            .interfaces
            .iter()
            .filter(|i| !matches!(self.states.get(*i), Some(State::Filtered { .. })))
            .count()
    }

    /// Looks at every configured interface and attaches again where the filter was lost.
    /// `retry` (SIGHUP) also retries an attachment that failed before on an unchanged interface.
    pub(super) fn check(&mut self, filter: &mut Filter, config: &Config, retry: bool) {
        self.states
            .retain(|iface, _| config.interfaces.contains(iface));
        for iface in &config.interfaces {
            self.check_one(filter, iface, config, retry);
        }
    }

    fn check_one(&mut self, filter: &mut Filter, iface: &str, config: &Config, retry: bool) {
        let now = observe(iface);
        if let Observed::Unknown(err) = &now {
            warn!(iface, error = %err, "could not read the interface's XDP state; looking again later");
            return;
        }
        let state = self
            .states
            .get(iface)
            .cloned()
            .unwrap_or(State::Unfiltered {
                slot: None,
                lost_at: None,
                reported: None,
            });
        let (slot, lost_at, reported) = match state {
            State::Filtered { ifindex } => match self.lost(filter, iface, ifindex, &now) {
                None => return,
                Some(slot) => (slot, Some(Instant::now()), None),
            },
            State::Unfiltered {
                slot,
                lost_at,
                reported,
            } => (slot, lost_at, if retry { None } else { reported }),
        };
        let unfiltered = |reported: Option<String>| State::Unfiltered {
            slot,
            lost_at,
            reported,
        };
        // Why the filter is not on the interface, at ERROR once per distinct reason (the
        // watcher looks again at every change of the interface).
        let not_on = |ifindex: u32, why: String, detail: &str| {
            if reported.as_deref() != Some(why.as_str()) {
                error!(
                    iface,
                    ifindex, "the filter is NOT on {iface}{detail}: {why}"
                );
            }
            unfiltered(Some(why))
        };
        // A dispatcher component counts as on the interface when it is among the dispatcher's
        // components; a dispatcher without it is joined like a free interface.
        let (ours, joinable) = match &now {
            Observed::Present {
                ifindex,
                xdp: Some(xdp),
            } => (
                self.runs_on(filter, *ifindex, xdp.prog_id),
                filter.is_component()
                    && gatekeeper::xdp_attach::running_dispatcher(*ifindex, xdp).is_some(),
            ),
            _ => (false, false),
        };
        let next = match now {
            Observed::Missing | Observed::Unknown(_) => unfiltered(reported),
            Observed::Present {
                ifindex,
                xdp: Some(_),
            } if ours => State::Filtered { ifindex },
            Observed::Present {
                ifindex,
                xdp: Some(_),
            } if joinable => match attach(filter, iface, config, slot) {
                Ok(ifindex) => {
                    info!(
                        iface,
                        ifindex, "joined libxdp's dispatcher: {iface} is filtered"
                    );
                    State::Filtered { ifindex }
                }
                Err(err) => not_on(
                    ifindex,
                    format!("{err:#}"),
                    ", joining libxdp's dispatcher failed",
                ),
            },
            Observed::Present {
                ifindex,
                xdp: Some(_),
            } => {
                let text = occupant::find(iface, ifindex, Some(&config.pin_dir)).map_or_else(
                    || format!("{iface} runs another XDP program"),
                    |o| o.to_string(),
                );
                not_on(ifindex, text, "")
            }
            Observed::Present { ifindex, xdp: None } => match attach(filter, iface, config, slot) {
                Ok(ifindex) => {
                    match lost_at {
                        Some(at) => info!(
                            iface,
                            ifindex,
                            after_ms = at.elapsed().as_millis() as u64,
                            "re-attached: {iface} is filtered again"
                        ),
                        None => info!(iface, ifindex, "attached: {iface} is filtered"),
                    }
                    State::Filtered { ifindex }
                }
                Err(err) => not_on(
                    ifindex,
                    format!("{err:#}"),
                    ", attaching failed (retried when the interface changes, and on SIGHUP)",
                ),
            },
        };
        self.states.insert(iface.to_string(), next);
    }

    /// Whether the filter attached to `iface` at `ifindex` is still there; if not, reports the
    /// loss at ERROR, drops the dead link, and returns the counter slot to reuse.
    fn lost(
        &mut self,
        filter: &mut Filter,
        iface: &str,
        ifindex: u32,
        now: &Observed,
    ) -> Option<Option<u32>> {
        match now {
            Observed::Present {
                ifindex: i,
                xdp: Some(xdp),
            } if *i == ifindex && self.runs_on(filter, ifindex, xdp.prog_id) => return None,
            Observed::Unknown(_) => return None,
            Observed::Present {
                ifindex: i,
                xdp: Some(_),
            } if *i == ifindex => error!(
                iface,
                ifindex,
                "the filter on {iface} (ifindex {ifindex}) was replaced by another XDP program"
            ),
            Observed::Present {
                ifindex: i,
                xdp: None,
            } if *i == ifindex => error!(
                iface,
                ifindex,
                "the filter was taken off {iface} (ifindex {ifindex}) by someone else: attaching again"
            ),
            Observed::Present { ifindex: i, .. } => error!(
                iface,
                ifindex,
                new_ifindex = i,
                "interface {iface} (ifindex {ifindex}) is gone, and the filter with it; an interface of that name is back (ifindex {i}): attaching again"
            ),
            Observed::Missing => error!(
                iface,
                ifindex,
                "interface {iface} (ifindex {ifindex}) is gone, and the filter with it: it is attached again as soon as an interface of that name appears"
            ),
        }
        // The counters follow the name: the slot goes to the next ifindex.
        let slot = filter.maps().slot_for(ifindex).ok().filter(|s| *s != 0);
        if let Err(err) = filter.maps().clear_slot(ifindex) {
            warn!(iface, error = %format!("{err:#}"), "could not free the old ifindex's counter slot");
        }
        if let Err(err) = filter.forget_link(iface) {
            warn!(iface, error = %format!("{err:#}"), "could not remove the dead link's pin");
        }
        Some(slot)
    }
}

/// Adopts the pinned link of `iface` or attaches anew, counting in `slot` (or the slot the
/// interface has, or a free one); returns the ifindex.
fn attach(
    filter: &mut Filter,
    iface: &str,
    config: &Config,
    slot: Option<u32>,
) -> anyhow::Result<u32> {
    let ifindex = filter::ifindex(iface)?;
    let slot = match slot {
        Some(slot) => slot,
        None => filter.maps().slot_for(ifindex)?,
    };
    if let Some(mode) = filter.adopt(iface, slot)? {
        let wanted = config.xdp_mode.to_string();
        if wanted != "auto" && wanted != mode.to_string() {
            warn!(
                iface,
                running = %mode,
                configured = %config.xdp_mode,
                "the adopted link runs in another XDP mode than configured; to switch, `gatekeeper detach --iface` it and restart (a short gap)"
            );
        }
        return Ok(ifindex);
    }
    filter.attach(iface, config.xdp_mode, slot)?;
    Ok(ifindex)
}
