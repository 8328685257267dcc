//! `cargo xtask bench relay`: builds the relay and its benchmark in release
//! mode and runs `smtp-relay/examples/bench_relay.rs` against the binary:
//! messages/second with 10 and 50 clients (4 KB, one message per
//! connection, durable queue, forwarded to a sink), p50/p99 from the end of
//! DATA to the 250, and the relay's RSS with 1000 sessions open; then the
//! same client against a private Postfix instance when Postfix is installed
//! (`smtp-relay/bench/postfix.sh`).

use crate::shell::{self, step};

pub fn run() -> anyhow::Result<()> {
    step("bench relay: build smtp-relay and the benchmark (release)");
    shell::run(shell::cargo().args([
        "build",
        "--release",
        "-p",
        "smtp-relay",
        "--bin",
        "smtp-relay",
        "--example",
        "bench_relay",
    ]))?;
    step("bench relay: run");
    let root = shell::workspace_root();
    let relay = root.join("target/release/smtp-relay");
    shell::run(
        std::process::Command::new(root.join("target/release/examples/bench_relay"))
            .arg("--relay")
            .arg(relay),
    )?;
    // The same client against Postfix, when it is installed (a private
    // instance on loopback, see the script).
    step("bench relay: Postfix baseline, same client and sink");
    if !shell::is_root() {
        println!("    SKIP Postfix baseline: needs root");
        return Ok(());
    }
    shell::run(&mut std::process::Command::new(
        root.join("smtp-relay/bench/postfix.sh"),
    ))
}
