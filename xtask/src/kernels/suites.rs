//! Which test binaries of `gatekeeper-tests` run inside each guest kernel, and where cargo put
//! them. Only suites that need nothing but the kernel, iproute2 and the `gatekeeper` binary are
//! taken: the guest has no Python, OpenSSL, systemd or relay.

use std::{collections::HashMap, path::PathBuf, process::Stdio};

use anyhow::{Context as _, bail};

use crate::shell::{self, step};

/// One test binary run in the guest.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// The `[[test]]` target name, e.g. `program` for `tests/tests/program.rs`.
    pub name: &'static str,
    /// When not empty, only these tests run (libtest `--exact NAME...`).
    pub only: &'static [&'static str],
    /// Tests left out, passed to libtest as `--skip NAME`.
    pub skip: &'static [&'static str],
    /// Extra environment for this suite in the guest.
    pub env: &'static [(&'static str, &'static str)],
}

/// The suites every kernel runs, cheapest first so a refused load shows up at once.
pub const SUITES: &[Suite] = &[
    // BPF_PROG_TEST_RUN on crafted frames: no interface at all.
    Suite {
        name: "program",
        only: &[],
        skip: &[],
        env: &[],
    },
    // What an admin is told when the kernel refuses a program, on each kernel's verifier.
    Suite {
        name: "verifier",
        only: &[],
        skip: &[],
        env: &[],
    },
    // The random-edits test checks userspace table maintenance, whose kernel side is plain
    // array-map updates; under emulated CPUs it costs a minute per kernel. The in-kernel
    // DIR-24-8 lookup is what differential's dir24 test checks on every kernel.
    Suite {
        name: "dir24",
        only: &[],
        skip: &["dir24_names_the_longest_matching_entry_through_random_edits"],
        env: &[],
    },
    // 10,000 frames per test instead of up to 100,000, still every frame class many times over.
    // One test at a time: on 5.10 under TCG, two threads running BPF_PROG_TEST_RUN side by side
    // stalled both emulated CPUs (soft lockups, no progress in 5 minutes), while each test alone
    // passes in 20 s; the daemon never runs test runs, and one at a time checks the same frames.
    Suite {
        name: "differential",
        only: &[],
        skip: &[],
        env: &[("GATEKEEPER_FRAMES", "10000"), ("RUST_TEST_THREADS", "1")],
    },
    // Bans, deny entries, open ports and the SYN bucket against the reference, the /24 bitmap,
    // a full ban table, pinned bans: fewer frames, one test at a time, as for differential.
    // The default-size ban table (200,000 bans, 250,000 test runs) is userspace placement over
    // plain array reads: checked on the host; the guests check the slots and the overflow path.
    Suite {
        name: "rules",
        only: &[],
        skip: &["a_full_default_size_ban_table_drops_every_ban_and_nothing_else"],
        env: &[("GATEKEEPER_FRAMES", "5000"), ("RUST_TEST_THREADS", "1")],
    },
    // Namespaces, a veth and real TCP against the real daemon.
    Suite {
        name: "filter_e2e",
        only: &[],
        skip: &[],
        env: &[],
    },
    Suite {
        name: "xdp_e2e",
        only: &[],
        skip: &[],
        env: &[],
    },
    // The daemon's pinned program and link outliving it, and a link left on a vanished
    // interface: bpf_link pinning is where kernels differ. The suite's other tests check the
    // daemon's own logic at a minute per kernel under TCG, and its systemd test needs systemd.
    // Sharing a veth with Debian's xdp-filter through libxdp's dispatcher: freplace programs,
    // which some hardened kernels refuse (the build machine's does). Debian's kernels load them
    // (no lockdown without Secure Boot), so a refusal here fails instead of skipping.
    Suite {
        name: "xdp_dispatcher_e2e",
        only: &[],
        skip: &[],
        env: &[("GATEKEEPER_REQUIRE_FREPLACE", "1")],
    },
    Suite {
        name: "controller_e2e",
        only: &[
            "a_killed_daemon_leaves_the_filter_enforcing_and_its_successor_adopts_it",
            "a_stale_pinned_link_is_replaced_when_the_interface_was_recreated",
        ],
        skip: &[],
        env: &[],
    },
];

/// Builds the test binaries (a no-op when `cargo test` already did) and returns the executable of
/// each suite named in `names` (every suite when it is empty).
pub fn test_binaries(names: &[String]) -> anyhow::Result<Vec<(Suite, PathBuf)>> {
    let picked = pick(names)?;
    step("kernels: the kernel test binaries (`cargo test --no-run`: built already by a test run)");
    let executables = cargo_executables(
        &[
            "test",
            "--package",
            "gatekeeper-tests",
            "--tests",
            "--no-run",
        ],
        "test",
    )?;
    picked
        .into_iter()
        .map(|suite| {
            let path = executables
                .get(suite.name)
                .with_context(|| format!("cargo built no test binary named {}", suite.name))?;
            Ok((*suite, path.clone()))
        })
        .collect()
}

/// The suites named in `names`, in the matrix's order; all of them if `names` is empty.
fn pick(names: &[String]) -> anyhow::Result<Vec<&'static Suite>> {
    if let Some(unknown) = names.iter().find(|n| !SUITES.iter().any(|s| s.name == *n)) {
        let known: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
        bail!(
            "unknown suite {unknown:?} in --suites; known: {}",
            known.join(", ")
        );
    }
    Ok(SUITES
        .iter()
        .filter(|s| names.is_empty() || names.iter().any(|n| n == s.name))
        .collect())
}

/// Builds the `gatekeeper` binary the end-to-end suites spawn and returns its path.
pub fn gatekeeper_binary() -> anyhow::Result<PathBuf> {
    step("kernels: the gatekeeper binary the end-to-end suites run in the guest");
    let executables = cargo_executables(
        &["build", "--package", "gatekeeper", "--bin", "gatekeeper"],
        "bin",
    )?;
    executables
        .get("gatekeeper")
        .cloned()
        .context("cargo built no binary named gatekeeper")
}

/// Runs a cargo build command and returns the executables it produced for targets of `kind`.
fn cargo_executables(args: &[&str], kind: &str) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut cmd = shell::cargo();
    cmd.args(args).arg("--message-format=json");
    println!("    $ {}", shell::display(&cmd));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    if !out.status.success() {
        bail!("`{}` failed ({})", shell::display(&cmd), out.status);
    }
    Ok(executables(&String::from_utf8_lossy(&out.stdout), kind))
}

/// Target name → executable for targets of `kind`, from cargo's JSON messages.
fn executables(json_lines: &str, kind: &str) -> HashMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter(|msg| {
            msg["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
        })
        .filter_map(|msg| {
            let name = msg["target"]["name"].as_str()?.to_string();
            let exe = msg["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_picked_by_name_in_the_matrix_order() -> anyhow::Result<()> {
        let picked = pick(&["controller_e2e".to_string(), "program".to_string()])?;
        assert_eq!(
            picked.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["program", "controller_e2e"]
        );
        assert_eq!(pick(&[])?.len(), SUITES.len());
        assert!(pick(&["relay".to_string()]).is_err());
        Ok(())
    }

    #[test]
    fn test_targets_are_read_from_cargo_messages() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"program","kind":["test"]},"executable":"/t/debug/deps/program-1"}
{"reason":"compiler-artifact","target":{"name":"gatekeeper_tests","kind":["lib"]},"executable":null}
{"reason":"build-finished","success":true}"#;
        let found = executables(json, "test");
        assert_eq!(found.len(), 1);
        assert_eq!(found["program"], PathBuf::from("/t/debug/deps/program-1"));
    }
}
