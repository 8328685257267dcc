//! The directory's counters (`smtp_relay_directory_*`): lookups by kind and result, their
//! total latency, and whether the directory answers. Rendered by [`crate::metrics`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gatekeeper_support::metrics as expose;
use prometheus_client::encoding::DescriptorEncoder;
use strum::{EnumCount as _, IntoEnumIterator as _};

use crate::metrics::Counter;

/// What a lookup was for.
#[derive(Debug, Clone, Copy, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount)]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// AUTH: search, group, bind.
    Login,
    /// RCPT: does an enabled entry hold the address.
    Recipient,
}

/// How it ended.
#[derive(Debug, Clone, Copy, strum::IntoStaticStr, strum::EnumIter, strum::EnumCount)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// Login accepted, recipient exists.
    Found,
    /// Login refused, recipient unknown.
    NotFound,
    /// The directory did not answer (in time): 454 / 451.
    Error,
}

static LOOKUPS: [[Counter; Outcome::COUNT]; Kind::COUNT] =
    [const { [const { Counter::new() }; Outcome::COUNT] }; Kind::COUNT];
static MICROS: [Counter; Kind::COUNT] = [const { Counter::new() }; Kind::COUNT];
static DOWN: AtomicBool = AtomicBool::new(false);

pub fn lookup(kind: Kind, outcome: Outcome, took: Duration) {
    LOOKUPS[kind as usize][outcome as usize].inc();
    MICROS[kind as usize].add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
}

pub fn lookup_count(kind: Kind, outcome: Outcome) -> u64 {
    LOOKUPS[kind as usize][outcome as usize].get()
}

pub fn set_down(down: bool) {
    DOWN.store(down, Ordering::Relaxed);
}

/// Appends the directory's families to a scrape.
pub fn encode(e: &mut DescriptorEncoder) -> std::fmt::Result {
    expose::counter_family(
        e,
        "smtp_relay_directory_lookups",
        "Directory lookups by kind (login, recipient) and result (found, not_found, error).",
        Kind::iter().flat_map(|k| {
            Outcome::iter().map(move |o| {
                let labels = [("kind", <&str>::from(k)), ("result", <&str>::from(o))];
                (labels, lookup_count(k, o))
            })
        }),
    )?;
    expose::counter_family(
        e,
        "smtp_relay_directory_lookup_microseconds",
        "Time spent in directory lookups by kind (divide by the lookups for the mean).",
        Kind::iter().map(|k| ([("kind", <&str>::from(k))], MICROS[k as usize].get())),
    )?;
    expose::gauge(
        e,
        "smtp_relay_directory_down",
        "1 while no directory server answers (since the last failed lookup).",
        i64::from(DOWN.load(Ordering::Relaxed)),
    )
}
