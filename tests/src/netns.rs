//! Network namespaces and veth pairs behind guards whose `Drop` removes them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    thread,
};

use anyhow::{Context as _, bail};

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2) failed")?;
    check(&out, &format!("ip {}", args.join(" ")))
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "`{what}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A network namespace created with `ip netns add`, deleted on drop (with its interfaces).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Leaves the namespace in place when the guard goes (for `--keep` in the demo).
    pub fn keep(self) {
        crate::cleanup::remove_namespace(&self.name);
        std::mem::forget(self);
    }
}

/// [`Netns::run`] in the namespace named `name` (one a [`Netns`] elsewhere owns).
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{name}");
    let handle = thread::spawn(move || -> anyhow::Result<T> {
        enter(&path)?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        // A namespace left by a killed earlier run with the same name would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        crate::cleanup::add_namespace(name);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<()> {
        let out = self.command(argv).output().context("ip netns exec")?;
        check(
            &out,
            &format!("ip netns exec {} {}", self.name, argv.join(" ")),
        )
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// A command that runs in this namespace's network stack but, unlike `ip netns exec`, keeps
    /// the host's mounts (so bpffs pins under /sys/fs/bpf are shared with the test).
    pub fn nsenter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name)).arg("--");
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created there stay in the
    /// namespace for their whole life, wherever they are used afterwards.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        run_in(&self.name, f)
    }

    /// Spawns a long-lived thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<anyhow::Result<T>> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || -> anyhow::Result<T> {
            enter(&path)?;
            Ok(f())
        })
    }

    /// Runs `f` on the calling thread inside this namespace, then returns the thread to the
    /// namespace it was in (for objects that must stay on this thread, such as a loaded filter).
    pub fn on_this_thread<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        // Opened before leaving: afterwards this path names the namespace entered.
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        enter(&format!("/run/netns/{}", self.name))?;
        let result = f();
        setns(&home)?;
        Ok(result)
    }

    /// The MAC address of `iface` in this namespace.
    pub fn mac(&self, iface: &str) -> anyhow::Result<[u8; 6]> {
        let out = self
            .command(&["cat", &format!("/sys/class/net/{iface}/address")])
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()?;
        bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("odd MAC address {text:?}"))
    }

    /// Adds an address to an interface in this namespace (IPv6 without duplicate detection, so
    /// it is usable at once).
    pub fn add_addr(&self, iface: &str, cidr: &str) -> anyhow::Result<()> {
        if cidr.contains(':') {
            self.exec(&["ip", "-6", "addr", "add", cidr, "dev", iface, "nodad"])
        } else {
            self.exec(&["ip", "addr", "add", cidr, "dev", iface])
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {err:#}");
        }
        crate::cleanup::remove_namespace(&self.name);
    }
}

fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    setns(&file)
}

fn setns(file: &File) -> anyhow::Result<()> {
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setns(CLONE_NEWNET)");
    }
    Ok(())
}

/// Two namespaces joined by a veth pair, both ends up. Dropping it removes both namespaces.
pub struct Link {
    pub left: Netns,
    pub left_if: String,
    pub right: Netns,
    pub right_if: String,
}

impl Link {
    /// Creates namespaces `<tag>-l…`/`<tag>-r…` and the veth `<tag>L…`/`<tag>R…` between them,
    /// unique to this process and call.
    pub fn new(tag: &str) -> anyhow::Result<Link> {
        let id = crate::unique_name("");
        Link::create(
            &format!("{tag}-l{id}"),
            &format!("{tag}L{id}"),
            &format!("{tag}-r{id}"),
            &format!("{tag}R{id}"),
        )
    }

    /// Creates two namespaces with these names and a veth pair between them.
    pub fn create(
        left_ns: &str,
        left_if: &str,
        right_ns: &str,
        right_if: &str,
    ) -> anyhow::Result<Link> {
        let link = Link {
            left: Netns::new(left_ns)?,
            left_if: left_if.to_string(),
            right: Netns::new(right_ns)?,
            right_if: right_if.to_string(),
        };
        link.add_veth()?;
        Ok(link)
    }

    /// Deletes the veth and creates it again under the same names, both ends up and without
    /// addresses (as a driver reload or a re-created interface leaves it).
    pub fn recreate_veth(&self) -> anyhow::Result<()> {
        self.delete_veth()?;
        self.add_veth()
    }

    /// Deletes the veth (both ends go), as a driver unload or a network manager does.
    pub fn delete_veth(&self) -> anyhow::Result<()> {
        self.left.exec(&["ip", "link", "del", &self.left_if])
    }

    /// Creates the veth under its names again, both ends up and without addresses.
    pub fn add_veth(&self) -> anyhow::Result<()> {
        ip(&[
            "link",
            "add",
            &self.left_if,
            "netns",
            self.left.name(),
            "type",
            "veth",
            "peer",
            "name",
            &self.right_if,
            "netns",
            self.right.name(),
        ])?;
        self.left
            .exec(&["ip", "link", "set", &self.left_if, "up"])?;
        self.right
            .exec(&["ip", "link", "set", &self.right_if, "up"])
    }

    /// Leaves both namespaces (and so the veth) in place.
    pub fn keep(self) {
        self.left.keep();
        self.right.keep();
    }
}
