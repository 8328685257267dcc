//! Python's dkimpy (PyPI; an implementation independent of mail-auth) as a second DKIM verifier,
//! asking the tests' NSD through dnspython. Installed with pip (with PyNaCl for Ed25519) if
//! missing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

const IMPORTS: &str = "import dkim, dns.resolver, nacl";

/// Makes sure dkimpy, dnspython and PyNaCl import, installing them with pip if needed.
pub fn ensure_installed() {
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if ok(Command::new("python3").args(["-c", IMPORTS])) {
        return;
    }
    let packages = ["dkimpy", "dnspython", "pynacl"];
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        ok(c)
    };
    let installed = quiet(
        Command::new("python3")
            .args(["-m", "pip", "install", "-q"])
            .args(packages),
    ) || quiet(
        Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--break-system-packages"])
            .args(packages),
    );
    assert!(
        installed && ok(Command::new("python3").args(["-c", IMPORTS])),
        "dkimpy is missing and `python3 -m pip install dkimpy dnspython pynacl` failed"
    );
}

/// Verifies every DKIM-Signature of the message in `file` with dkimpy; one bool per signature,
/// top first.
pub fn verify(file: &Path, dns: SocketAddr) -> Vec<bool> {
    ensure_installed();
    let script = r#"
import sys, dkim, dns.resolver
path, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = dns.resolver.Resolver(configure=False)
r.nameservers = [ip]
r.port = port
def dnsfunc(name, timeout=5):
    try:
        answer = r.resolve(name.decode().rstrip('.') + '.', 'TXT', lifetime=timeout)
    except Exception:
        return None
    return b''.join(b''.join(rr.strings) for rr in answer)
msg = open(path, 'rb').read()
d = dkim.DKIM(msg)
n = sum(1 for (name, _) in d.headers if name.lower() == b'dkim-signature')
for i in range(n):
    try:
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
    except Exception as e:
        print('error', e, file=sys.stderr)
        ok = False
    print('pass' if ok else 'fail')
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(file)
        .arg(dns.ip().to_string())
        .arg(dns.port().to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "dkimpy script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "pass")
        .collect()
}
