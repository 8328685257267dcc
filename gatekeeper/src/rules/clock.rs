//! The clock ban deadlines are on: `CLOCK_MONOTONIC`, what the program's `bpf_ktime_get_ns`
//! reads (its coarse twin on 5.11+ lags it by at most a tick). It does not count suspended time
//! and restarts at boot, so deadlines are converted from and to wall-clock time only at the edges
//! (the ban state file, `ban list`).

use std::time::{Duration, SystemTime};

/// Now on `CLOCK_MONOTONIC`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The deadline `duration` from now.
pub fn deadline_after(duration: Duration) -> u64 {
    monotonic_ns().saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// Time left until `deadline_ns` (zero once it passed).
pub fn remaining(deadline_ns: u64) -> Duration {
    Duration::from_nanos(deadline_ns.saturating_sub(monotonic_ns()))
}

/// The monotonic deadline of wall-clock instant `until` (in the past: a deadline already passed).
pub fn deadline_of_wall(until: SystemTime) -> u64 {
    match until.duration_since(SystemTime::now()) {
        Ok(ahead) => deadline_after(ahead),
        Err(_) => monotonic_ns().saturating_sub(1),
    }
}

/// The wall-clock instant of monotonic `deadline_ns`.
pub fn wall_of_deadline(deadline_ns: u64) -> SystemTime {
    let now = monotonic_ns();
    if deadline_ns >= now {
        SystemTime::now() + Duration::from_nanos(deadline_ns - now)
    } else {
        SystemTime::now() - Duration::from_nanos(now - deadline_ns)
    }
}
