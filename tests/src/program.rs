//! The gatekeeper program loaded without an interface and judged frame by frame through
//! `BPF_PROG_TEST_RUN`: the kernel runs the verified program on a crafted frame and returns its
//! verdict.

use aya::programs::{TestRun as _, TestRunOptions};
use gatekeeper::{
    filter::{Filter, LoadOptions},
    policy::{Mode, Policy},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The program loaded with `options`, judging `ports` in `mode`, with an empty allowlist and no
/// drop events.
pub fn loaded(options: &LoadOptions, mode: Mode, ports: &[u16]) -> Filter {
    let mut filter = Filter::load_with(options).expect("load the XDP program");
    let policy = Policy {
        mode,
        ports: ports.to_vec(),
        event_rate: 0,
        event_burst: 0,
        ..Policy::default()
    };
    filter.maps().set_policy(&policy).expect("set the policy");
    filter
}

/// The program's verdict on `frame` (`XDP_PASS`, `XDP_DROP`, …).
pub fn verdict(filter: &mut Filter, frame: &[u8]) -> u32 {
    let program = filter.program_mut().expect("the XDP program");
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..Default::default()
    };
    program
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}
