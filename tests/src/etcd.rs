//! A three-member etcd cluster for the fleet tests (issue 23): the `etcd` binary from Debian's
//! `etcd-server`, in a namespace of its own (the "etcd host"), members peering over its loopback
//! on distinct ports, TLS everywhere with a test CA (made with `openssl`), client certificates
//! required. Each DMZ host joins it by a veth of its own, a /28 of 198.51.100.0/24 (a
//! documentation range the hosts' own links do not use): the members listen for clients on
//! loopback and on those links. Data directories and
//! certificates live in a [`TempDir`]; every member is a [`Daemon`], killed on drop (also when a
//! test fails), and the namespace goes with the guard.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    netns::{Netns, ip},
    process::{Daemon, TempDir},
    unique_name,
};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
const MEMBERS: usize = 3;

/// Makes sure Debian's `etcd-server` and `etcd-client` are installed (`cargo xtask setup`
/// installs them; a run without setup falls back to `apt-get install` once).
pub fn ensure_installed() {
    crate::debian::ensure_package("etcd-server", &[ETCD]);
    crate::debian::ensure_package("etcd-client", &[ETCDCTL]);
}

/// The client port of member `m` (the peer port is the next one).
fn client_port(m: usize) -> u16 {
    2379 + 10 * m as u16
}

/// The etcd side of host `h`'s link (198.51.100.16h+1/28; the host's side is the next one).
pub fn link_addr(h: usize) -> String {
    link_side(h, 1)
}

/// Address `i` of host `h`'s link, a /28 of 198.51.100.0/24.
fn link_side(h: usize, i: usize) -> String {
    assert!(h < 16, "198.51.100.0/24 holds 16 links");
    format!("198.51.100.{}", 16 * h + i)
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A certificate signed by the test CA: `NAME.crt`, `NAME.key`.
fn issue(dir: &Path, name: &str, subject: &str, ext: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    )?;
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

/// The cluster, its namespace and the links to the DMZ hosts.
pub struct Cluster {
    members: Vec<Option<Daemon>>,
    /// The etcd ends of the links, one per host.
    links: Vec<String>,
    pub dir: TempDir,
    pub ns: Netns,
}

impl Cluster {
    /// Starts the members in a new namespace and links each of `hosts` to it (host `h` reaches
    /// the members at [`link_addr`]`(h)`); waits until the cluster has a leader.
    pub fn start(tag: &str, hosts: &[&Netns]) -> Cluster {
        ensure_installed();
        Cluster::try_start(tag, hosts).unwrap_or_else(|err| panic!("etcd cluster: {err:#}"))
    }

    fn try_start(tag: &str, hosts: &[&Netns]) -> anyhow::Result<Cluster> {
        let ns = Netns::new(&unique_name(&format!("{tag}e")))?;
        let dir = TempDir::new(&format!("{tag}-etcd"))?;
        let mut links = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            let outer = unique_name(&format!("{tag}E"));
            let inner = unique_name(&format!("{tag}H"));
            ip(&[
                "link",
                "add",
                &outer,
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &inner,
                "netns",
                host.name(),
            ])?;
            ns.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/28", link_addr(h)),
                "dev",
                &outer,
            ])?;
            ns.exec(&["ip", "link", "set", &outer, "up"])?;
            host.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/28", link_side(h, 2)),
                "dev",
                &inner,
            ])?;
            host.exec(&["ip", "link", "set", &inner, "up"])?;
            links.push(outer);
        }
        let certs = dir.path();
        openssl(
            certs,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=gatekeeper test CA",
            ],
        )?;
        let mut sans = vec!["IP:127.0.0.1".to_string()];
        sans.extend((0..hosts.len()).map(|h| format!("IP:{}", link_addr(h))));
        issue(
            certs,
            "member",
            "/CN=etcd-member",
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
                sans.join(",")
            ),
        )?;
        // The gateway refuses client certificates with a CommonName: the daemons' has none.
        issue(
            certs,
            "client",
            "/O=gatekeeper fleet",
            "extendedKeyUsage=clientAuth\n",
        )?;
        let mut cluster = Cluster {
            members: (0..MEMBERS).map(|_| None).collect(),
            links,
            dir,
            ns,
        };
        for m in 0..MEMBERS {
            cluster.start_member(m)?;
        }
        cluster.wait_healthy(Duration::from_secs(20))?;
        Ok(cluster)
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[fleet]` table for host `h`: every member at its link address, TLS with the test CA
    /// and the client certificate, `prefix`, and `host` as the host's fleet name.
    pub fn fleet_table(&self, h: usize, prefix: &str, host: &str) -> String {
        let endpoints: Vec<String> = (0..MEMBERS)
            .map(|m| format!("\"https://{}:{}\"", link_addr(h), client_port(m)))
            .collect();
        format!(
            "[fleet]\nendpoints = [{}]\nprefix = \"{prefix}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nhost = \"{host}\"\n",
            endpoints.join(", "),
            self.cert("ca.crt").display(),
            self.cert("client.crt").display(),
            self.cert("client.key").display(),
        )
    }

    /// (Re)starts member `m` with its data directory (a restart keeps its data).
    pub fn start_member(&mut self, m: usize) -> anyhow::Result<()> {
        let name = format!("m{m}");
        let peer = |i: usize| format!("https://127.0.0.1:{}", client_port(i) + 1);
        let initial: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}={}", peer(i))).collect();
        let mut listen = vec![format!("https://127.0.0.1:{}", client_port(m))];
        listen.extend(
            (0..self.links.len()).map(|h| format!("https://{}:{}", link_addr(h), client_port(m))),
        );
        let (member_crt, member_key, ca) = (
            self.cert("member.crt"),
            self.cert("member.key"),
            self.cert("ca.crt"),
        );
        let mut cmd = self.ns.nsenter();
        cmd.arg(ETCD)
            .args(["--name", &name, "--data-dir"])
            .arg(self.dir.path().join(format!("{name}.etcd")))
            .args(["--listen-client-urls", &listen.join(",")])
            .args([
                "--advertise-client-urls",
                &format!("https://127.0.0.1:{}", client_port(m)),
            ])
            .args([
                "--listen-peer-urls",
                &peer(m),
                "--initial-advertise-peer-urls",
                &peer(m),
            ])
            .args([
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                "gk-test",
            ])
            .args([
                "--initial-cluster-state",
                "new",
                "--client-cert-auth",
                "--peer-client-cert-auth",
            ])
            .arg("--cert-file")
            .arg(&member_crt)
            .arg("--key-file")
            .arg(&member_key)
            .arg("--trusted-ca-file")
            .arg(&ca)
            .arg("--peer-cert-file")
            .arg(&member_crt)
            .arg("--peer-key-file")
            .arg(&member_key)
            .arg("--peer-trusted-ca-file")
            .arg(&ca)
            // Quick elections on loopback; the WAL on a TempDir is not what is measured.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let log = self.dir.path().join(format!("{name}.log"));
        self.members[m] = Some(Daemon::start(&format!("etcd {name}"), cmd, &log)?);
        Ok(())
    }

    /// Kills member `m` (SIGKILL: no goodbye to its peers or clients).
    pub fn kill_member(&mut self, m: usize) {
        if let Some(mut member) = self.members[m].take() {
            let _ = member.stop_with(libc::SIGKILL, Duration::from_secs(5));
        }
    }

    /// Takes the links to the hosts down (`false`) or up: the hosts cannot reach the members,
    /// while a test still can, over the namespace's loopback.
    pub fn set_links(&self, up: bool) {
        for link in &self.links {
            self.ns
                .exec(&["ip", "link", "set", link, if up { "up" } else { "down" }])
                .expect("set the etcd link");
        }
    }

    /// `etcdctl ARGS` against the running members (over loopback), its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let endpoints: Vec<String> = (0..MEMBERS)
            .filter(|m| self.members[*m].is_some())
            .map(|m| format!("https://127.0.0.1:{}", client_port(m)))
            .collect();
        let out = self
            .ns
            .nsenter()
            .arg(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", self.cert("ca.crt").display()))
            .arg(format!("--cert={}", self.cert("client.crt").display()))
            .arg(format!("--key={}", self.cert("client.key").display()))
            .args(["--command-timeout=5s"])
            .args(args)
            .output()
            .context("running etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until a write goes through (a leader, a quorum).
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.ctl(&["put", "/health-check", "ok"]) {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    let logs: Vec<String> = self
                        .members
                        .iter()
                        .flatten()
                        .map(|m| {
                            m.log()
                                .lines()
                                .rev()
                                .take(15)
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .collect();
                    bail!(
                        "the cluster did not become healthy: {err:#}\n{}",
                        logs.join("\n---\n")
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// The member that leads the cluster now.
    pub fn leader(&self) -> anyhow::Result<usize> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let all: Vec<serde_json::Value> = serde_json::from_str(&out)?;
        for member in &all {
            let status = &member["Status"];
            if status["leader"] == status["header"]["member_id"] {
                let endpoint = member["Endpoint"].as_str().unwrap_or_default();
                if let Some(m) =
                    (0..MEMBERS).find(|m| endpoint.ends_with(&format!(":{}", client_port(*m))))
                {
                    return Ok(m);
                }
            }
        }
        bail!("no member leads: {out}")
    }

    /// The store's current revision.
    pub fn revision(&self) -> anyhow::Result<i64> {
        let out = self.ctl(&["get", "/health-check", "-w", "json"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        json["header"]["revision"]
            .as_i64()
            .context("no revision in etcdctl's answer")
    }
}
