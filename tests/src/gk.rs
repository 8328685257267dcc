//! The mail host with the real `gatekeeper` binary: two namespaces joined by a veth, a config, a
//! pin directory, the daemon and the CLI. Fixtures panic with what failed, so tests read as the
//! scenario they check.

use std::{
    net::{IpAddr, SocketAddr},
    ops::Deref,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use crate::{
    addresses::{HOST_V4, LINK_PARTNER_V4, LINK_STRANGER_V4},
    netns::{Link, Netns},
    process::{Daemon, PinDir, TempDir},
    tcp::{BannerServer, Outcome, connect},
    workspace_binary,
};

/// How long a starting daemon may take to attach and log "enforcing".
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The mail host (`link.left`, with HOST_V4/24) and the Internet side (`link.right`), a directory
/// for the config (at `config`, not written yet) and logs, and a pin directory. No daemon yet.
/// Fields drop in order: pins, files, then namespaces.
pub struct Testbed {
    pub pins: PinDir,
    pub config: PathBuf,
    pub dir: TempDir,
    pub link: Link,
}

impl Testbed {
    /// Namespaces and veth named after `tag`.
    pub fn new(tag: &str) -> Testbed {
        let link = Link::new(tag).expect("namespaces and veth");
        link.left
            .add_addr(&link.left_if, &format!("{HOST_V4}/24"))
            .expect("host address");
        let dir = TempDir::new(tag).expect("temporary directory");
        let pins = PinDir::new(tag);
        let config = dir.path().join("gatekeeper.toml");
        Testbed {
            pins,
            config,
            dir,
            link,
        }
    }

    /// The namespace with the filter.
    pub fn host(&self) -> &Netns {
        &self.link.left
    }

    /// The namespace the peers connect from.
    pub fn client(&self) -> &Netns {
        &self.link.right
    }

    /// A config for the host interface with `extra` lines and `allow` entries.
    pub fn config_text(&self, extra: &str, allow: &[&str]) -> String {
        let mut text = format!(
            "interfaces = [\"{}\"]\npin_dir = \"{}\"\n{extra}\n",
            self.link.left_if,
            self.pins.path().display()
        );
        for cidr in allow {
            text.push_str(&format!("\n[[allow]]\ncidr = \"{cidr}\"\n"));
        }
        text
    }

    /// Replaces the config atomically (as an editor or config management would).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.path().join("gatekeeper.toml.new");
        std::fs::write(&tmp, text).expect("write the new config");
        std::fs::rename(&tmp, &self.config).expect("replace the config");
    }

    pub fn read_config(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap_or_default()
    }

    /// Starts `gatekeeper run --config <config>` in the host namespace (host mounts kept, so pins
    /// are shared), logging to `<name>.log`, and waits until it enforces.
    pub fn start_daemon(&self, name: &str) -> Daemon {
        let mut cmd = self.host().nsenter();
        cmd.arg(workspace_binary("gatekeeper"))
            .args(["run", "--config"])
            .arg(&self.config);
        let log = self.dir.path().join(format!("{name}.log"));
        let mut daemon = Daemon::start(name, cmd, &log).expect("start gatekeeper run");
        if let Err(err) = daemon.wait_for_log("enforcing", START_TIMEOUT) {
            panic!("{err:#}");
        }
        daemon
    }

    /// `gatekeeper ARGS --config <config>` in the host namespace, not run yet.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.host().nsenter();
        cmd.arg(workspace_binary("gatekeeper"))
            .args(args)
            .arg("--config")
            .arg(&self.config);
        cmd
    }

    /// Runs `gatekeeper ARGS --config <config>` in the host namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args)
            .output()
            .expect("run the gatekeeper CLI")
    }

    /// Runs the CLI, panicking unless it succeeds; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gatekeeper {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `gatekeeper stats --json`.
    pub fn stats(&self) -> serde_json::Value {
        let out = self.cli_ok(&["stats", "--json"]);
        serde_json::from_str(&out).expect("gatekeeper stats --json prints JSON")
    }

    /// One counter of the host interface from `stats`.
    pub fn counter(&self, stats: &serde_json::Value, family: &str, name: &str) -> u64 {
        stats["interfaces"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["interface"] == self.link.left_if))
            .and_then(|i| i["counters"][family][name].as_u64())
            .unwrap_or(0)
    }
}

/// Stops `daemon` with SIGTERM, panicking unless it exits successfully within 10 s.
pub fn stop_cleanly(daemon: &mut Daemon) {
    let clean = daemon
        .stop_with(libc::SIGTERM, Duration::from_secs(10))
        .expect("stop the daemon");
    assert!(clean, "the daemon did not exit cleanly:\n{}", daemon.log());
}

/// A testbed whose daemon runs. Fields drop in order: the daemon stops before its pins, files and
/// namespaces go.
pub struct Attached {
    pub daemon: Daemon,
    pub bed: Testbed,
}

impl Attached {
    /// A testbed named after `tag`, a config with `extra` lines and `allow`, the daemon running.
    pub fn start(tag: &str, extra: &str, allow: &[&str]) -> Attached {
        let bed = Testbed::new(tag);
        bed.write_config(&bed.config_text(extra, allow));
        let daemon = bed.start_daemon("gatekeeper-run");
        Attached { daemon, bed }
    }
}

/// A testbed with a banner server on the mail host's port 25, and the partner and stranger
/// addresses on the Internet side (which of them the config allows is the test's business).
pub struct MailHost {
    pub bed: Testbed,
    _smtp: BannerServer,
    /// The banner server's address on the mail host.
    pub smtp: SocketAddr,
}

impl Deref for MailHost {
    type Target = Testbed;

    fn deref(&self) -> &Testbed {
        &self.bed
    }
}

impl MailHost {
    /// Namespaces and veth named after `tag`; no config written, no daemon yet.
    pub fn new(tag: &str) -> MailHost {
        let bed = Testbed::new(tag);
        add_client_addresses(&bed);
        let server = BannerServer::start(bed.host(), "0.0.0.0:25".parse().expect("addr"), "mail")
            .expect("SMTP banner server");
        let smtp = SocketAddr::new(IpAddr::V4(HOST_V4), server.addr().port());
        MailHost {
            bed,
            _smtp: server,
            smtp,
        }
    }

    /// A connection from `source` (on the Internet side) to the mail host's port 25.
    pub fn connect(&self, source: IpAddr, timeout: Duration) -> Outcome {
        connect(self.client(), source, self.smtp, timeout)
    }

    /// Gives the partner and stranger addresses again (after the veth was re-created).
    pub fn add_client_addresses(&self) {
        add_client_addresses(&self.bed);
    }
}

fn add_client_addresses(bed: &Testbed) {
    for addr in [LINK_PARTNER_V4, LINK_STRANGER_V4] {
        bed.client()
            .add_addr(&bed.link.right_if, &format!("{addr}/24"))
            .expect("client address");
    }
}
