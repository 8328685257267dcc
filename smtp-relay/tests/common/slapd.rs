//! OpenLDAP's `slapd` (Debian package `slapd`) on 127.0.0.1 as the company directory of the
//! directory tests: a slapd.conf, a small schema giving Active Directory's attributes
//! (`sAMAccountName`, `userPrincipalName`, `proxyAddresses`, `userAccountControl`,
//! `memberOf` on an auxiliary class `user`), an LDIF loaded with `slapadd`, TLS with a
//! certificate from [`super::write_certs`]. ldap:// (StartTLS) and ldaps:// on free ports.
//! Everything lives in a temp dir; the child is killed by PID on drop.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// Where Debian installs the daemon and the loader (not on a normal user's PATH).
const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";

pub const BASE_DN: &str = "dc=example,dc=org";
pub const SERVICE_DN: &str = "cn=svc-relay,ou=service,dc=example,dc=org";
pub const SERVICE_PASSWORD: &str = "service secret";
pub const RELAY_GROUP: &str = "cn=relay,ou=groups,dc=example,dc=org";

/// Makes sure slapd is installed (`cargo xtask setup` installs it; apt-get as a fallback).
pub fn ensure_installed() {
    super::debian::ensure_package("slapd", &[SLAPD, SLAPADD]);
}

/// AD's attributes and an auxiliary class carrying them (OIDs under a private test arc).
const AD_SCHEMA: &str = "\
attributetype ( 1.3.6.1.4.1.99999.20.1.1 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.20.1.2 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.20.1.3 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.3.6.1.4.1.99999.20.1.4 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.20.1.5 NAME 'memberOf'
  EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12 )
objectclass ( 1.3.6.1.4.1.99999.20.2.1 NAME 'user' SUP top AUXILIARY
  MAY ( sAMAccountName $ userPrincipalName $ proxyAddresses $ userAccountControl $ memberOf ) )
";

/// An AD-shaped account: `name`'s sAMAccountName, `name@corp.example.org` as UPN, `mail`,
/// proxyAddresses, userAccountControl and memberOf.
pub fn ad_user(
    name: &str,
    password: &str,
    mail: &str,
    aliases: &[&str],
    uac: u32,
    groups: &[&str],
) -> String {
    let mut s = format!(
        "dn: cn={name},ou=people,{BASE_DN}\nobjectClass: inetOrgPerson\nobjectClass: user\n\
         cn: {name}\nsn: {name}\nsAMAccountName: {name}\nuserPrincipalName: {name}@corp.example.org\n\
         userPassword: {password}\nmail: {mail}\nproxyAddresses: SMTP:{mail}\n\
         proxyAddresses: X500:/o=Example/ou=people/cn={name}\nuserAccountControl: {uac}\n"
    );
    for a in aliases {
        s.push_str(&format!("proxyAddresses: smtp:{a}\n"));
    }
    for g in groups {
        s.push_str(&format!("memberOf: {g}\n"));
    }
    s.push('\n');
    s
}

/// A plain OpenLDAP account (`inetOrgPerson`, `uid`, `mail`), no AD attributes.
pub fn plain_user(uid: &str, password: &str, mail: &str) -> String {
    format!(
        "dn: uid={uid},ou=people,{BASE_DN}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n\
         sn: {uid}\nuserPassword: {password}\nmail: {mail}\n\n"
    )
}

/// The tree's skeleton, the service account and the relay group (`groupOfNames`, for
/// `group_membership = "group_search"`) with `members` (DNs).
pub fn base_ldif(members: &[&str]) -> String {
    let mut s = format!(
        "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: ou=people,{BASE_DN}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: ou=service,{BASE_DN}\nobjectClass: organizationalUnit\nou: service\n\n\
         dn: {SERVICE_DN}\nobjectClass: inetOrgPerson\ncn: svc-relay\nsn: svc-relay\n\
         userPassword: {SERVICE_PASSWORD}\n\n\
         dn: {RELAY_GROUP}\nobjectClass: groupOfNames\ncn: relay\n"
    );
    for m in members {
        s.push_str(&format!("member: {m}\n"));
    }
    s.push('\n');
    s
}

pub struct Slapd {
    /// `ldap://127.0.0.1:PORT` (StartTLS) and `ldaps://127.0.0.1:PORT`.
    pub ldap_url: String,
    pub ldaps_url: String,
    ports: (u16, u16),
    child: Option<Child>,
    dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Slapd {
    /// Serves `ldif` (with [`base_ldif`] first). Panics (with slapd's output) if it does not
    /// come up.
    pub fn start(ldif: &str) -> Slapd {
        ensure_installed();
        let dir = TempDir::new("slapd");
        let d = dir.path().display().to_string();
        super::write_certs(dir.path());
        std::fs::write(dir.path().join("ad.schema"), AD_SCHEMA).expect("write schema");
        std::fs::create_dir_all(dir.path().join("db")).expect("mkdir db");
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude {d}/ad.schema\n\
             pidfile {d}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             TLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/cert.pem\n\
             TLSCertificateKeyFile {d}/key.pem\n\
             database mdb\nsuffix \"{BASE_DN}\"\nrootdn \"cn=admin,{BASE_DN}\"\n\
             directory {d}/db\nmaxsize 16777216\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by dn.exact=\"{SERVICE_DN}\" read by self read by anonymous auth by * none\n"
        );
        let conf_path = dir.path().join("slapd.conf");
        std::fs::write(&conf_path, conf).expect("write slapd.conf");
        let ldif_path = dir.path().join("data.ldif");
        std::fs::write(&ldif_path, ldif).expect("write ldif");
        run(
            Command::new(SLAPADD)
                .arg("-f")
                .arg(&conf_path)
                .arg("-l")
                .arg(&ldif_path),
            "slapadd",
        );
        let mut slapd = Slapd {
            ldap_url: String::new(),
            ldaps_url: String::new(),
            ports: (0, 0),
            child: None,
            dir,
        };
        for attempt in 0..5 {
            if slapd.spawn((free_port(), free_port())) {
                return slapd;
            }
            eprintln!("slapd attempt {attempt} failed: {}", slapd.log());
        }
        panic!("slapd did not start after 5 attempts: {}", slapd.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Starts slapd on `ports` (ldap, ldaps); true once it accepts connections.
    fn spawn(&mut self, ports: (u16, u16)) -> bool {
        let (ldap, ldaps) = ports;
        let log = std::fs::File::create(self.dir.path().join("slapd.log")).expect("log");
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{ldap}/ ldaps://127.0.0.1:{ldaps}/"
            ))
            // Any debug level keeps slapd in the foreground, so the PID is ours to kill.
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start slapd");
        self.child = Some(child);
        self.ports = ports;
        self.ldap_url = format!("ldap://127.0.0.1:{ldap}");
        self.ldaps_url = format!("ldaps://127.0.0.1:{ldaps}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                self.child = None;
                return false;
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, ldap)).is_ok()
                && TcpStream::connect((Ipv4Addr::LOCALHOST, ldaps)).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }

    /// The CA that signed slapd's certificate (the relay's `ca_file`).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Kills slapd (the directory goes down); the data stays for [`Slapd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped slapd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(self.ports),
            "slapd did not restart: {}",
            self.log()
        );
    }

    /// A `[directory]` table for this server: `servers`, the service account, its password
    /// in a file under `dir`, the CA, then `extra` lines.
    pub fn directory_section(&self, dir: &Path, servers: &[&str], extra: &str) -> String {
        let pw = dir.join("ldap.pw");
        std::fs::write(&pw, format!("{SERVICE_PASSWORD}\n")).expect("write password file");
        let servers = servers
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[directory]\nservers = [{servers}]\nca_file = \"{}\"\nbind_dn = \"{SERVICE_DN}\"\n\
             bind_password_file = \"{}\"\nbase_dn = \"{BASE_DN}\"\ntimeout_ms = 2000\n{extra}\n",
            self.ca().display(),
            pw.display()
        )
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
