//! The config file and its lock against a local user and an admin having a bad day, with the real
//! `gatekeeper` binary: planted symlinks in a group-writable config directory are never followed,
//! an edit keeps owner, group, mode and ACLs, the lock file is private, an allowlist that admits
//! everyone or no one is warned about, IPv4-mapped entries and bytes that are not UTF-8 are
//! refused with what to write instead, and `--config DIR` leaves nothing behind.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use gatekeeper_tests::{
    gk::Attached, kernel_tests_enabled, process::TempDir, unique_name, workspace_binary,
};

const NOBODY: &str = "nobody";
const WARN_V4: &str = "allow entry 0.0.0.0/0: this entry admits every IPv4 source: the filter protects nothing on that family";
const WARN_V6: &str = "allow entry ::/0: this entry admits every IPv6 source: the filter protects nothing on that family";
const WARN_EMPTY: &str = "the allowlist is empty: every SMTP peer is refused";

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a numeric id")
}

fn nogroup_gid() -> u32 {
    id(&["-g", NOBODY])
}

/// Runs `argv` as nobody (its own group only).
fn as_nobody(argv: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={}", id(&["-u", NOBODY])))
        .arg(format!("--regid={}", nogroup_gid()))
        .arg("--clear-groups")
        .args(argv)
        .output()
        .expect("run setpriv")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gatekeeper ARGS --config CONFIG`.
fn gk(args: &[&str], config: &Path) -> Output {
    Command::new(workspace_binary("gatekeeper"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run gatekeeper")
}

/// A config for an interface that does not matter (nothing is loaded), with a pin directory of
/// this test's own that does not exist: the CLI edits the file only.
fn config_text(allow: &[&str]) -> String {
    let mut text = format!(
        "# keep this comment\ninterfaces = [\"eth0\"]\npin_dir = \"/sys/fs/bpf/{}\"\n",
        unique_name("gkcf")
    );
    for cidr in allow {
        text.push_str(&format!("\n[[allow]]\ncidr = \"{cidr}\"\n"));
    }
    text
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A group-writable config directory (root:nogroup 0775) with a root-owned config, and a victim
/// file elsewhere that the planted links point to.
struct SharedDir {
    _dir: TempDir,
    etc: PathBuf,
    config: PathBuf,
    victim: PathBuf,
}

impl SharedDir {
    fn new(tag: &str, text: &str) -> SharedDir {
        let dir = TempDir::new(tag).expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let etc = dir.path().join("etc");
        fs::create_dir(&etc).expect("mkdir");
        std::os::unix::fs::chown(&etc, Some(0), Some(nogroup_gid())).expect("chown");
        fs::set_permissions(&etc, fs::Permissions::from_mode(0o775)).expect("chmod");
        let config = etc.join("gatekeeper.toml");
        fs::write(&config, text).expect("config");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious\n").expect("victim");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod");
        SharedDir {
            _dir: dir,
            etc,
            config,
            victim,
        }
    }

    fn assert_victim_untouched(&self) {
        assert_eq!(
            fs::read_to_string(&self.victim).expect("victim"),
            "precious\n"
        );
        assert_eq!(fs::metadata(&self.victim).expect("stat").uid(), 0);
    }
}

/// Item 3 of issue 16: the names an atomic write could predict — the old `.NAME.tmp-PID` (the
/// CLI runs as PID 1 of its own PID namespace, so its PID is known) and the usual editor and
/// script names — hold links to a victim planted by another user; `allow add` follows none.
#[test]
fn planted_symlinks_in_a_group_writable_config_directory_are_never_followed() {
    if !kernel_tests_enabled(
        "planted_symlinks_in_a_group_writable_config_directory_are_never_followed",
    ) {
        return;
    }
    let shared = SharedDir::new("plant", &config_text(&["198.51.100.0/24"]));
    let planted = [
        ".gatekeeper.toml.tmp-1",
        ".gatekeeper.toml.tmp-2",
        ".gatekeeper.toml.tmp",
        "gatekeeper.toml.tmp",
        "gatekeeper.toml.new",
        "gatekeeper.toml~",
        ".gatekeeper.toml.swp",
    ];
    for name in planted {
        let link = shared.etc.join(name);
        let out = as_nobody(&[
            "ln",
            "-s",
            &shared.victim.display().to_string(),
            &link.display().to_string(),
        ]);
        assert!(out.status.success(), "plant {name}: {}", stderr(&out));
    }
    let out = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(workspace_binary("gatekeeper"))
        .args(["allow", "add", "192.0.2.0/24", "--config"])
        .arg(&shared.config)
        .output()
        .expect("run gatekeeper");
    assert!(out.status.success(), "{}", stderr(&out));
    shared.assert_victim_untouched();
    let meta = fs::symlink_metadata(&shared.config).expect("stat config");
    assert!(meta.is_file(), "the config is still a plain file");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
    let text = fs::read_to_string(&shared.config).expect("config");
    assert!(text.contains("cidr = \"192.0.2.0/24\"") && text.contains("# keep this comment"));
    for name in planted {
        let link = fs::symlink_metadata(shared.etc.join(name)).expect("the link is still there");
        assert!(link.file_type().is_symlink(), "{name}");
    }
    // Nothing else was left: the config, its lock, the links.
    let mut expected: Vec<String> = planted.iter().map(|n| n.to_string()).collect();
    expected.extend(["gatekeeper.toml".into(), "gatekeeper.toml.lock".into()]);
    expected.sort();
    assert_eq!(names(&shared.etc), expected);

    // The lock file swapped for a link: refused, nothing written anywhere.
    let lock = shared.etc.join("gatekeeper.toml.lock");
    let out = as_nobody(&[
        "sh",
        "-c",
        &format!(
            "rm -f '{lock}' && ln -s '{victim}' '{lock}'",
            lock = lock.display(),
            victim = shared.victim.display()
        ),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = fs::read_to_string(&shared.config).expect("config");
    let out = gk(&["allow", "add", "203.0.113.0/24"], &shared.config);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with(&format!(
            "gatekeeper: error: opening the lock file {}",
            lock.display()
        )),
        "{}",
        stderr(&out)
    );
    shared.assert_victim_untouched();
    assert_eq!(fs::read_to_string(&shared.config).expect("config"), before);
}

fn getfacl(path: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["--absolute-names", "--numeric"])
        .arg(path)
        .output()
        .expect("run getfacl (package acl; `cargo xtask setup` installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// Item 5: a `root:nogroup 0640` config that nobody may read through an ACL (as the relay reads
/// it through `allow_gatekeeper`) is still `root:nogroup 0640` with the same ACL after `allow add`
/// and `allow remove`, and nobody still reads it.
#[test]
fn an_edit_keeps_owner_group_mode_and_acl() {
    if !kernel_tests_enabled("an_edit_keeps_owner_group_mode_and_acl") {
        return;
    }
    let shared = SharedDir::new("acl", &config_text(&["198.51.100.0/24"]));
    let config = &shared.config;
    std::os::unix::fs::chown(config, Some(0), Some(nogroup_gid())).expect("chown");
    fs::set_permissions(config, fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = Command::new("setfacl")
        .args(["-m", &format!("u:{NOBODY}:r")])
        .arg(config)
        .output()
        .expect("run setfacl (package acl)");
    assert!(out.status.success(), "setfacl: {}", stderr(&out));
    let acl = getfacl(config);
    assert!(
        acl.contains(&format!("user:{}:r--", id(&["-u", NOBODY]))),
        "{acl}"
    );
    let readable_by_nobody = || {
        as_nobody(&["cat", &config.display().to_string()])
            .status
            .success()
    };
    assert!(readable_by_nobody(), "the ACL lets nobody read it");
    for args in [
        &["allow", "add", "192.0.2.0/24", "--comment", "acl test"][..],
        &["allow", "remove", "198.51.100.0/24"],
    ] {
        let out = gk(args, config);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let meta = fs::metadata(config).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, nogroup_gid(), 0o640),
            "{args:?}"
        );
        assert_eq!(getfacl(config), acl, "{args:?}");
        assert!(readable_by_nobody(), "{args:?}: nobody lost read access");
    }
    let text = fs::read_to_string(config).expect("config");
    assert!(text.contains("192.0.2.0/24") && !text.contains("198.51.100.0/24"));
}

/// Item 6, first half: the edit lock is 0600 (one left 0644 by an older version is made 0600),
/// so another user cannot open it to `flock` it and block every edit.
#[test]
fn the_config_lock_file_is_private() {
    if !kernel_tests_enabled("the_config_lock_file_is_private") {
        return;
    }
    let shared = SharedDir::new("lock", &config_text(&["198.51.100.0/24"]));
    let lock = shared.etc.join("gatekeeper.toml.lock");
    let out = gk(&["allow", "add", "192.0.2.0/24"], &shared.config);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| fs::metadata(p).expect("stat").mode() & 0o7777;
    assert_eq!(mode(&lock), 0o600);
    let flock = || as_nobody(&["flock", "-n", &lock.display().to_string(), "true"]);
    let out = flock();
    assert!(!out.status.success(), "nobody took the lock");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // An older version's 0644 lock file.
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(flock().status.success(), "0644: anyone can flock it");
    let out = gk(&["allow", "remove", "192.0.2.0/24"], &shared.config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&lock), 0o600);
    assert!(!flock().status.success(), "made private again");
}

/// A config file of its own in a temporary directory.
fn plain_config(tag: &str, text: &[u8]) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag).expect("temp dir");
    let config = dir.path().join("gatekeeper.toml");
    fs::write(&config, text).expect("config");
    (dir, config)
}

/// Item 8: `check` and `allow` warn (exit 0) about an entry admitting a whole family and about
/// an empty allowlist.
#[test]
fn check_and_allow_warn_about_everyone_or_no_one() {
    if !kernel_tests_enabled("check_and_allow_warn_about_everyone_or_no_one") {
        return;
    }
    let (_dir, config) = plain_config(
        "warn",
        config_text(&["0.0.0.0/0", "::/0", "198.51.100.0/24"]).as_bytes(),
    );
    let out = gk(&["check"], &config);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("gatekeeper: warning: {WARN_V4}\ngatekeeper: warning: {WARN_V6}\n")
    );
    assert!(stdout(&out).contains(": ok: "), "{}", stdout(&out));

    fs::write(&config, config_text(&["198.51.100.0/24"])).expect("config");
    let out = gk(&["check"], &config);
    assert_eq!((out.status.code(), stderr(&out)), (Some(0), String::new()));
    let out = gk(&["allow", "add", "0.0.0.0/0"], &config);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("gatekeeper: warning: {WARN_V4}\n"));
    let out = gk(&["allow", "remove", "0.0.0.0/0"], &config);
    assert_eq!((out.status.code(), stderr(&out)), (Some(0), String::new()));
    let out = gk(&["allow", "add", "::/0"], &config);
    assert_eq!(stderr(&out), format!("gatekeeper: warning: {WARN_V6}\n"));
    gk(&["allow", "remove", "::/0"], &config);
    let out = gk(&["allow", "remove", "198.51.100.0/24"], &config);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("gatekeeper: warning: {WARN_EMPTY}\n"));
    let out = gk(&["check"], &config);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), format!("gatekeeper: warning: {WARN_EMPTY}\n"));
}

/// Item 8: the daemon logs the same warnings at WARN when it loads the config, at start and on
/// every reload.
#[test]
fn the_daemon_warns_about_everyone_or_no_one_at_load() {
    if !kernel_tests_enabled("the_daemon_warns_about_everyone_or_no_one_at_load") {
        return;
    }
    let mut gk = Attached::start("warnd", "", &["0.0.0.0/0", "::/0"]);
    let log = gk.daemon.log();
    for warning in [WARN_V4, WARN_V6] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(warning)),
            "{warning}\n{log}"
        );
    }
    gk.bed.write_config(&gk.bed.config_text("", &[]));
    gk.daemon
        .wait_for_log(WARN_EMPTY, Duration::from_secs(10))
        .expect("the reload warns");
    let log = gk.daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(WARN_EMPTY)),
        "{log}"
    );
}

/// Item 9: an IPv4-mapped IPv6 entry never matches (IPv4 packets arrive as IPv4): refused by
/// `check`, by the daemon's parser, and by `allow add`, naming the IPv4 spelling.
#[test]
fn an_ipv4_mapped_entry_is_refused_with_its_ipv4_spelling() {
    if !kernel_tests_enabled("an_ipv4_mapped_entry_is_refused_with_its_ipv4_spelling") {
        return;
    }
    let text = config_text(&["::ffff:198.51.100.1"]);
    let (_dir, config) = plain_config("mapped", text.as_bytes());
    let line = text.lines().count();
    let out = gk(&["check"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "gatekeeper: error: {}:{line}:8: allow entry \"::ffff:198.51.100.1\" is an IPv4-mapped IPv6 address, which never matches: IPv4 packets arrive as IPv4; write 198.51.100.1\n",
            config.display()
        )
    );
    fs::write(&config, config_text(&["198.51.100.0/24"])).expect("config");
    let before = fs::read_to_string(&config).expect("config");
    let out = gk(&["allow", "add", "::ffff:203.0.113.0/120"], &config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "gatekeeper: error: invalid allowlist entry: \"::ffff:203.0.113.0/120\" is an IPv4-mapped IPv6 address, which never matches: IPv4 packets arrive as IPv4; write 203.0.113.0/24\n"
    );
    assert_eq!(fs::read_to_string(&config).expect("config"), before);
}

/// Item 13: a byte that is not UTF-8 is refused with its line and column by `check` and by
/// `allow`; `--config` naming a directory fails clearly and leaves no `<dir>.lock`.
#[test]
fn bytes_that_are_not_utf8_and_a_directory_as_config_are_refused_clearly() {
    if !kernel_tests_enabled(
        "bytes_that_are_not_utf8_and_a_directory_as_config_are_refused_clearly",
    ) {
        return;
    }
    let mut text = config_text(&["198.51.100.0/24"]).into_bytes();
    text.extend_from_slice(b"comment = \"caf\xe9\"\n");
    let line = text.iter().filter(|b| **b == b'\n').count();
    let (dir, config) = plain_config("utf8", &text);
    let expected = format!(
        "gatekeeper: error: {}:{line}:15: byte 0xe9 is not UTF-8: the config file must be UTF-8 text\n",
        config.display()
    );
    for args in [
        &["check"][..],
        &["allow", "add", "192.0.2.0/24"],
        &["allow", "list"],
    ] {
        let out = gk(args, &config);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out), expected, "{args:?}");
    }
    assert_eq!(fs::read(&config).expect("config"), text, "untouched");

    let as_dir = dir.path().join("conf.d");
    fs::create_dir(&as_dir).expect("mkdir");
    for args in [
        &["allow", "add", "192.0.2.0/24"][..],
        &["allow", "remove", "192.0.2.0/24"],
    ] {
        let out = gk(args, &as_dir);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "gatekeeper: error: {} is a directory: --config names the config file (e.g. /etc/gatekeeper/gatekeeper.toml)\n",
                as_dir.display()
            ),
            "{args:?}"
        );
    }
    let out = gk(&["allow", "list"], &as_dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Is a directory"), "{}", stderr(&out));
    assert!(
        !dir.path().join("conf.d.lock").exists(),
        "a stray lock file next to the directory"
    );
}
