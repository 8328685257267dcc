//! `cargo xtask bench relay`: builds the relay and its benchmark in release
//! mode and runs `smtp-relay/examples/bench_relay.rs` against the binary:
//! messages/second with 10 and 50 clients (4 KB, one message per
//! connection, durable queue, forwarded to a sink), p50/p99 from the end of
//! DATA to the 250, the relay's RSS with 1000 sessions open, and 200 AUTHs/s
//! against the company directory (OpenLDAP slapd on loopback: rate held,
//! p50/p99 login latency, RSS); then the
//! same client against a private Postfix instance when Postfix is installed
//! (`smtp-relay/bench/postfix.sh`). Both write their figures, merged into
//! `target/bench/relay.json` for `cargo xtask bench report`.

use anyhow::Context as _;

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
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (ours, postfix) = (
        out.join("relay-smtp-relay.json"),
        out.join("relay-postfix.json"),
    );
    for stale in [&ours, &postfix] {
        let _ = std::fs::remove_file(stale);
    }
    let relay = root.join("target/release/smtp-relay");
    shell::run(
        std::process::Command::new(root.join("target/release/examples/bench_relay"))
            .arg("--relay")
            .arg(relay)
            .arg("--json")
            .arg(&ours),
    )?;
    // The same client against Postfix, when it is installed (a private
    // instance on loopback, see the script).
    step("bench relay: Postfix baseline, same client and sink");
    if shell::is_root() {
        shell::run(
            std::process::Command::new(root.join("smtp-relay/bench/postfix.sh"))
                .env("BENCH_JSON", &postfix),
        )?;
    } else {
        println!("    SKIP Postfix baseline: needs root");
    }
    let read = |path: &std::path::Path| -> anyhow::Result<serde_json::Value> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display())),
            // No Postfix installed (or no root): the report says so.
            Err(_) => Ok(serde_json::Value::Null),
        }
    };
    let merged = serde_json::json!({ "smtp_relay": read(&ours)?, "postfix": read(&postfix)? });
    let path = out.join("relay.json");
    std::fs::write(&path, serde_json::to_string_pretty(&merged)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
