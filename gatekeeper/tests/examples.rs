//! The shipped example config passes `gatekeeper check`, the command the README tells admins to
//! run, and a broken copy of it fails with the position of the fault.

use std::process::Command;

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gatekeeper.toml")
}

#[test]
fn example_config_passes_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_gatekeeper"))
        .args(["check", "--config"])
        .arg(example())
        .output()
        .expect("run gatekeeper check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok: interfaces eth0"), "{stdout}");
}

#[test]
fn a_broken_example_fails_check_with_its_position() {
    let text = std::fs::read_to_string(example()).expect("read example");
    let broken = text.replace("cidr = \"198.51.100.0/24\"", "cidr = \"198.51.100.1/24\"");
    assert_ne!(
        broken, text,
        "the example should contain the partner network"
    );
    let dir = std::env::temp_dir().join(format!("gk-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("gatekeeper.toml");
    std::fs::write(&path, broken).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gatekeeper"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run gatekeeper check");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has host bits set; the network is 198.51.100.0/24"),
        "{stderr}"
    );
}

#[test]
fn completions_and_man_page_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_gatekeeper"))
            .args(["completions", shell])
            .output()
            .expect("run gatekeeper completions");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        for verb in ["run", "check", "stats", "allow", "status", "detach"] {
            assert!(script.contains(verb), "{shell} completion lacks {verb}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_gatekeeper"))
        .arg("man")
        .output()
        .expect("run gatekeeper man");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(page.contains(".TH gatekeeper 1"), "{page}");
    assert!(page.contains(".TH gatekeeper-allow"), "{page}");
    assert!(
        page.contains("XDP filter"),
        "the description comes from the CLI docs"
    );
}
