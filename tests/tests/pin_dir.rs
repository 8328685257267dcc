//! The pin directory against local users, and the CLI where it cannot see the pins: a directory
//! an unprivileged user created first on a bpffs mounted with its default mode (1777) is refused
//! by the daemon with how to fix it; `detach`, `status` and `allow list` run inside `ip netns exec`
//! or unprivileged fail instead of reporting "nothing pinned" while the filter enforces.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output},
};

use gatekeeper_tests::{
    gk::Testbed, kernel_tests_enabled, process::TempDir, unique_name, workspace_binary,
};

/// The unprivileged user the tests act as.
const NOBODY: &str = "nobody";

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id")
        .args(["-u", user])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric uid")
}

/// `setpriv` arguments that run the rest of the command as `nobody` with its own group only.
fn as_nobody() -> Vec<String> {
    let gid = Command::new("id")
        .args(["-g", NOBODY])
        .output()
        .expect("run id");
    let gid = String::from_utf8_lossy(&gid.stdout).trim().to_string();
    [
        "setpriv",
        &format!("--reuid={}", uid_of(NOBODY)),
        &format!("--regid={gid}"),
        "--clear-groups",
    ]
    .map(String::from)
    .to_vec()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// In a private mount namespace: a fresh bpffs with the default mode at `mount`, `squat` (shell,
/// may use $M for the mount), then `gatekeeper run` on `config`, then `after` (shell). The
/// namespace and its bpffs vanish with the last process.
fn run_on_fresh_bpffs(mount: &Path, config: &Path, squat: &str, after: &str) -> Output {
    let script = format!(
        "set -e\nM='{m}'\nmount -t bpf bpf \"$M\"\n{squat}\nset +e\n'{gk}' run --config '{config}'\necho \"exit=$?\"\n{after}\n",
        m = mount.display(),
        gk = workspace_binary("gatekeeper").display(),
        config = config.display(),
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare")
}

#[test]
fn a_pin_dir_another_user_could_reach_into_is_refused() {
    if !kernel_tests_enabled("a_pin_dir_another_user_could_reach_into_is_refused") {
        return;
    }
    let dir = TempDir::new("squat").expect("temp dir");
    let mount = dir.path().join("bpf");
    std::fs::create_dir(&mount).expect("mount point");
    // Nobody must reach the mount point to squat it, as on a real /sys/fs/bpf.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = dir.path().join("gatekeeper.toml");
    let write_config = |pin_dir: &str| {
        std::fs::write(
            &config,
            format!(
                "interfaces = [\"{}\"]\npin_dir = \"{}/{pin_dir}\"\nkeep_attached_on_exit = true\n",
                unique_name("gknone"),
                mount.display()
            ),
        )
        .expect("config");
    };
    let m = mount.display().to_string();
    let nobody = as_nobody().join(" ");
    let uid = uid_of(NOBODY);
    let fix_mount = format!(
        "keep bpffs private to root (`chmod 700 {m}` now; at boot `mount -t bpf -o mode=700 bpf /sys/fs/bpf`)"
    );
    let cases = [
        // The scenario: the squatter creates pin_dir first.
        (
            "gatekeeper",
            format!("{nobody} mkdir \"$M/gatekeeper\""),
            format!(
                "pin_dir {m}/gatekeeper is owned by uid {uid}, not by root: that user could delete the filter's pins and turn it off. Check what is in it, remove it (`rm -r {m}/gatekeeper`) and {fix_mount}"
            ),
        ),
        // A parent of pin_dir on the same mount.
        (
            "shared/gatekeeper",
            format!("{nobody} mkdir \"$M/shared\""),
            format!(
                "{m}/shared, above pin_dir {m}/shared/gatekeeper on bpffs, is owned by uid {uid}, not by root: that user could replace pin_dir. Keep bpffs private to root: remove what that user created, and `chmod 700 {m}` now; at boot `mount -t bpf -o mode=700 bpf /sys/fs/bpf`"
            ),
        ),
        // Root's own directory, but anyone may write it.
        (
            "gatekeeper",
            "mkdir -m 777 \"$M/gatekeeper\"".to_string(),
            format!(
                "pin_dir {m}/gatekeeper is writable by group or others (mode 0777): any local user could delete the filter's pins and turn it off. Fix: `chmod 700 {m}/gatekeeper`"
            ),
        ),
        // A parent writable by anyone without the sticky bit: pin_dir could be renamed away.
        (
            "open/gatekeeper",
            "mkdir -m 777 \"$M/open\"".to_string(),
            format!(
                "{m}/open, above pin_dir {m}/open/gatekeeper on bpffs, is writable by group or others without the sticky bit (mode 0777): any local user could rename pin_dir away and put their own in its place. Fix: `chmod 700 {m}/open` (at boot `mount -t bpf -o mode=700 bpf /sys/fs/bpf`)"
            ),
        ),
    ];
    for (pin_dir, squat, message) in cases {
        write_config(pin_dir);
        let out = run_on_fresh_bpffs(&mount, &config, &squat, "");
        let (stdout, stderr) = text(&out);
        assert!(
            stdout.contains("exit=1"),
            "{pin_dir}: the daemon must refuse\n{stdout}{stderr}"
        );
        assert!(
            stderr.contains(&format!("gatekeeper: error: {message}\n")),
            "{pin_dir}: expected\n{message}\ngot\n{stderr}"
        );
    }
    // Nobody squatted: the daemon creates pin_dir and its missing parent 0700 (one recursive
    // create), then fails on the interface that does not exist and removes the pins and the
    // pin directory it made (a failed start leaves no pins), not the parent.
    write_config("a/gatekeeper");
    let out = run_on_fresh_bpffs(
        &mount,
        &config,
        "",
        "stat -c 'mode %a uid %u' \"$M/a\"; ls -A \"$M/a\"",
    );
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains("no such interface") || stderr.contains("gknone"),
        "the daemon got past the pin directory:\n{stdout}{stderr}"
    );
    assert_eq!(stdout, "exit=1\nmode 700 uid 0\n", "{stderr}");
}

/// A daemon started and stopped with keep_attached_on_exit: the filter stays attached and pinned
/// with nobody running.
fn left_enforcing(tag: &str) -> Testbed {
    let bed = Testbed::new(tag);
    bed.write_config(&bed.config_text("keep_attached_on_exit = true", &["198.51.100.0/24"]));
    let mut daemon = bed.start_daemon("gatekeeper-run");
    gatekeeper_tests::gk::stop_cleanly(&mut daemon);
    assert!(
        bed.pins
            .path()
            .join(format!("link-{}", bed.link.left_if))
            .exists(),
        "the link stays pinned"
    );
    bed
}

/// `gatekeeper ARGS --config CONFIG` run through `prefix` (a command and its arguments).
fn cli_through(bed: &Testbed, prefix: &[String], args: &[&str]) -> Output {
    Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(workspace_binary("gatekeeper"))
        .args(args)
        .arg("--config")
        .arg(&bed.config)
        .output()
        .expect("run the gatekeeper CLI")
}

fn assert_cannot_see(bed: &Testbed, prefix: &[String], message: &str) {
    for args in [
        &["detach"][..],
        &["detach", "--iface", &bed.link.left_if],
        &["status"],
        &["status", "--json"],
        &["allow", "list"],
        &["allow", "list", "--json"],
    ] {
        let out = cli_through(bed, prefix, args);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} must fail\n{stdout}{stderr}"
        );
        assert_eq!(
            stderr,
            format!("gatekeeper: error: {message}\n"),
            "{args:?}"
        );
        for wrong in ["nothing to detach", "not loaded", "nothing pinned"] {
            assert!(
                !stdout.contains(wrong),
                "{args:?} said {wrong:?}:\n{stdout}"
            );
        }
    }
    // The filter is still there, seen from where the pins are visible.
    let status = bed.cli(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(report["loaded"], true, "{report}");
    assert_eq!(report["interfaces"][0]["attached"], true, "{report}");
}

#[test]
fn inside_ip_netns_exec_the_cli_says_it_cannot_see_the_pins() {
    if !kernel_tests_enabled("inside_ip_netns_exec_the_cli_says_it_cannot_see_the_pins") {
        return;
    }
    let bed = left_enforcing("pnsx");
    let pins = bed.pins.path().display().to_string();
    let prefix = ["ip", "netns", "exec", bed.host().name()].map(String::from);
    assert_cannot_see(
        &bed,
        &prefix,
        &format!(
            "cannot see the pins in {pins}: /sys/fs/bpf is not on bpffs in this mount namespace (`ip netns exec` remounts /sys without it: run the command outside it, or enter only the network namespace with `nsenter --net=/run/netns/NAME`; if bpffs is not mounted at all, nothing was ever pinned: `mount -t bpf -o mode=700 bpf /sys/fs/bpf`)"
        ),
    );
    bed.cli_ok(&["detach"]);
}

#[test]
fn unprivileged_the_cli_says_it_cannot_see_the_pins() {
    if !kernel_tests_enabled("unprivileged_the_cli_says_it_cannot_see_the_pins") {
        return;
    }
    let bed = left_enforcing("pnob");
    // The config is readable by anyone, the pins are not.
    std::fs::set_permissions(bed.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(&bed.config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let pins = bed.pins.path().display().to_string();
    let mut prefix = vec![
        "nsenter".to_string(),
        format!("--net=/run/netns/{}", bed.host().name()),
        "--".into(),
    ];
    prefix.extend(as_nobody());
    prefix.push("--".into());
    // Under /sys/fs/bpf 0700 (systemd) nobody cannot search it; under 1777 (mounted without
    // options) the pin directory itself is 0700: either way the pin directory is denied.
    assert_cannot_see(
        &bed,
        &prefix,
        &format!(
            "cannot see the pins in {pins}: permission denied on {pins} (the pins belong to root: run this as root)"
        ),
    );
    bed.cli_ok(&["detach"]);
}
