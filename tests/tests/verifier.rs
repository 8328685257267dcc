//! What an admin is told when the kernel refuses the program: the failing instruction and the
//! verifier's reason in the message, the whole log in a file the message names, and no pinned
//! maps left behind by the failed start.

use std::path::PathBuf;

use gatekeeper::{
    filter::{Filter, LoadOptions, xdp_program},
    verifier::{self, Refusal},
};
use gatekeeper_bench_objects::{REFUSED_OBJECT, REFUSED_PROGRAM_NAME};
use gatekeeper_tests::{kernel_tests_enabled, process::PinDir};

#[test]
fn a_refused_program_is_explained_with_the_failing_instruction_and_the_whole_log() {
    if !kernel_tests_enabled(
        "a_refused_program_is_explained_with_the_failing_instruction_and_the_whole_log",
    ) {
        return;
    }
    let logs = tempfile::tempdir().expect("temp dir");
    let mut ebpf = aya::Ebpf::load(REFUSED_OBJECT).expect("parse the refused object");
    let program = xdp_program(&mut ebpf, REFUSED_PROGRAM_NAME).expect("program");
    let err = verifier::load_xdp(program, REFUSED_PROGRAM_NAME, logs.path())
        .expect_err("the verifier must refuse an unchecked packet read");
    let refusal = err.downcast_ref::<Refusal>().expect("a verifier refusal");
    let message = err.to_string();
    eprintln!("what an admin is told:\n{message}");
    // The reason and the instruction it is about: "N: (71) rX = *(u8 *)(rY +0)" then
    // "invalid access to packet ...".
    assert!(message.contains("invalid access to packet"), "{message}");
    assert!(
        message.lines().any(|l| l
            .trim_start()
            .split(':')
            .next()
            .is_some_and(|n| n.parse::<u32>().is_ok())
            && l.contains("*(u8 *)")),
        "no failing instruction line in:\n{message}"
    );
    assert!(message.contains(&verifier::kernel_release()), "{message}");
    let log = PathBuf::from(&refusal.log);
    assert!(log.starts_with(logs.path()), "{message}");
    assert!(message.contains(&refusal.log), "{message}");
    let whole = std::fs::read_to_string(&log).expect("the whole log");
    assert!(whole.contains("invalid access to packet"), "{whole}");
    assert!(whole.lines().count() >= refusal.tail.lines().count());
}

#[test]
fn a_refused_start_leaves_no_pinned_maps() {
    if !kernel_tests_enabled("a_refused_start_leaves_no_pinned_maps") {
        return;
    }
    let pins = PinDir::new("gkv");
    let logs = tempfile::tempdir().expect("temp dir");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let err = Filter::load_with(&LoadOptions {
        object: REFUSED_OBJECT,
        pin_dir: Some(pins.path()),
        verifier_log_dir: Some(logs.path()),
        ..LoadOptions::default()
    })
    .err()
    .expect("the verifier must refuse the program");
    assert!(
        err.downcast_ref::<Refusal>().is_some(),
        "not a verifier refusal: {err:#}"
    );
    let left: Vec<_> = std::fs::read_dir(pins.path())
        .expect("read pin dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "pins left behind: {left:?}");
    // The same call with the real program pins its maps there: the refusal's cleanup removed them.
    let filter = Filter::load_with(&LoadOptions {
        pin_dir: Some(pins.path()),
        ..LoadOptions::default()
    })
    .expect("load the real program");
    let pinned = std::fs::read_dir(pins.path())
        .expect("read pin dir")
        .count();
    assert!(pinned > 0, "the real program pinned nothing");
    filter.unpin().expect("unpin");
}
