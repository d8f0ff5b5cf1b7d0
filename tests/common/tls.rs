//! Helpers for the TLS tests (`e2e_tls`): `openssl s_client` runs (one-shot or held open),
//! reference peers (`openssl s_server`, HAProxy) as guarded child processes, `sslscan`, and a
//! small PKI with its CA key on disk (for SNI names, a second key type, and OCSP responses).

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Name, X509};

use super::{procs, watchdog};

// ---------------------------------------------------------------- child processes

/// A child process (s_client, s_server, haproxy, sslscan) with its stdout and stderr
/// collected by threads. Dropping it SIGKILLs it by PID (if still running) and reaps it.
pub struct Proc {
    child: Child,
    pub pid: i32,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    name: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let name = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        let out = Arc::new(Mutex::new(Vec::new()));
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        let mut readers = Vec::new();
        for mut pipe in pipes {
            let sink = Arc::clone(&out);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        Proc {
            stdin: child.stdin.take(),
            child,
            pid,
            out,
            readers,
            name,
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(data);
            let _ = stdin.flush();
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// stdout and stderr so far, interleaved as they came.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Poll until the output contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        procs::wait_until(timeout, || self.output().contains(needle))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                // The pipes reach EOF with the exit: collect everything.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn describe(&self) -> String {
        format!("{} (pid {}):\n{}", self.name, self.pid, self.output())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            procs::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        watchdog::unregister_pid(self.pid);
    }
}

/// True once 127.0.0.1:port accepts TCP connections (polled until `timeout`).
pub fn wait_tcp(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    procs::wait_until(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
}

// ---------------------------------------------------------------- openssl s_client

/// What one finished `openssl s_client` run printed.
#[derive(Debug, Clone)]
pub struct SClientOut {
    /// Exit code; None when it had to be killed.
    pub code: Option<i32>,
    pub out: String,
}

impl SClientOut {
    /// The negotiated protocol: `Protocol  : TLSv1.2` of the session block, or, when
    /// s_client left before printing it (TLS 1.3 prints it once a ticket arrives), the
    /// version in `New, TLSv1.3, Cipher is ...`. "" when there was no handshake.
    pub fn protocol(&self) -> String {
        let block = self
            .out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Protocol  :"))
            .map(|p| p.trim().to_string());
        block
            .or_else(|| {
                self.summary()
                    .and_then(|l| l.split(", ").nth(1).map(str::to_string))
            })
            .unwrap_or_default()
    }

    /// The `New, TLSv1.3, Cipher is X` (or `Reused, ...`) line.
    fn summary(&self) -> Option<&str> {
        self.out
            .lines()
            .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
    }

    /// A handshake was completed with a real cipher.
    pub fn handshake_ok(&self) -> bool {
        self.summary().is_some_and(|l| !l.contains("(NONE)"))
    }

    pub fn reused(&self) -> bool {
        self.out.lines().any(|l| l.starts_with("Reused, "))
    }

    /// The value of `name = value` in the server certificate's subject line
    /// (`subject=O = api, CN = api.example.com`).
    pub fn subject_field(&self, name: &str) -> Option<String> {
        let line = self.out.lines().find(|l| l.starts_with("subject="))?;
        line["subject=".len()..].split(", ").find_map(|kv| {
            let (k, v) = kv.split_once(" = ")?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }

    /// `key: value` lines of the built-in responder's page (e.g. `worker-pid`).
    pub fn page_value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}: ");
        self.out
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_string())
    }
}

/// `openssl s_client -connect 127.0.0.1:PORT` with `args`.
pub fn s_client_cmd(port: u16, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args);
    cmd
}

/// Run s_client: write `stdin`, close it, wait up to `timeout` for the exit.
pub fn s_client(port: u16, args: &[&OsStr], stdin: &[u8], timeout: Duration) -> SClientOut {
    let mut p = Proc::spawn(&mut s_client_cmd(port, args));
    p.write(stdin);
    p.close_stdin();
    let st = p.wait_exit(timeout);
    SClientOut {
        code: st.and_then(|s| s.code().or(s.signal().map(|n| 128 + n))),
        out: p.output(),
    }
}

/// An HTTP/1.0 GET for the built-in responder: it answers and closes, so
/// `s_client -ign_eof` exits after the page.
pub const GET_10: &[u8] = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";

/// `-arg` strings as the OsStr slices `s_client` takes.
pub fn args<'a>(a: &[&'a str]) -> Vec<&'a OsStr> {
    a.iter().map(|s| OsStr::new(*s)).collect()
}

// ---------------------------------------------------------------- sslscan

/// `sslscan --no-colour 127.0.0.1:PORT`: its output.
pub fn sslscan(port: u16, timeout: Duration) -> String {
    let mut p = Proc::spawn(
        Command::new("sslscan")
            .arg("--no-colour")
            .arg(format!("127.0.0.1:{port}")),
    );
    p.close_stdin();
    assert!(
        p.wait_exit(timeout).is_some(),
        "sslscan did not finish in {timeout:?}: {}",
        p.describe()
    );
    p.output()
}

/// The `SSLv3 disabled` / `TLSv1.2 enabled` lines of an sslscan output: (protocol, enabled).
pub fn sslscan_protocols(out: &str) -> Vec<(String, bool)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let proto = f.next()?;
            let state = f.next()?;
            let known = proto.starts_with("SSLv") || proto.starts_with("TLSv");
            (known && f.next().is_none() && (state == "enabled" || state == "disabled"))
                .then(|| (proto.to_string(), state == "enabled"))
        })
        .collect()
}

/// The accepted ciphers of an sslscan output: (protocol, bits, name).
pub fn sslscan_ciphers(out: &str) -> Vec<(String, u32, String)> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if !matches!(f.first(), Some(&"Accepted") | Some(&"Preferred")) || f.len() < 5 {
                return None;
            }
            let bits = f[2].parse().ok()?;
            (f[3] == "bits").then(|| (f[1].to_string(), bits, f[4].to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------- PKI

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ec,
    Rsa,
}

/// A CA whose key is written too (`<stem>.crt`, `<stem>.key`).
pub struct Ca {
    pub crt: PathBuf,
    pub key_path: PathBuf,
    cert: X509,
    key: PKey<Private>,
}

/// A certificate issued by a [`Ca`].
#[derive(Debug, Clone)]
pub struct Leaf {
    pub crt: PathBuf,
    pub key: PathBuf,
    /// Upper-case hex, as `openssl ca`'s index.txt writes it.
    pub serial_hex: String,
    pub subject: String,
}

fn new_key(kind: KeyKind) -> PKey<Private> {
    match kind {
        KeyKind::Ec => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
            PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
        }
        KeyKind::Rsa => PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("pkey"),
    }
}

fn x509_name(entries: &[(&str, &str)]) -> X509Name {
    let mut b = X509Name::builder().expect("name");
    for (k, v) in entries {
        b.append_entry_by_text(k, v).expect("name entry");
    }
    b.build()
}

fn random_serial() -> (Asn1Integer, String) {
    let mut b = [0u8; 8];
    openssl::rand::rand_bytes(&mut b).expect("rand");
    b[0] = (b[0] & 0x7f) | 0x10; // positive, and 16 hex digits without a leading zero
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    let bn = BigNum::from_hex_str(&hex).expect("bn");
    (bn.to_asn1_integer().expect("serial"), hex)
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Ca {
    pub fn new(dir: &Path, stem: &str, cn: &str) -> Ca {
        let key = new_key(KeyKind::Ec);
        let name = x509_name(&[("O", "TLS tests"), ("CN", cn)]);
        let mut b = X509::builder().expect("x509");
        b.set_version(2).expect("v3");
        b.set_serial_number(&random_serial().0).expect("serial");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(30).expect("t"))
            .expect("na");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("ext");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .digital_signature()
                .build()
                .expect("ku"),
        )
        .expect("ext");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        let crt = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        write_mode(&crt, &cert.to_pem().expect("pem"), 0o644);
        write_mode(
            &key_path,
            &key.private_key_to_pem_pkcs8().expect("pem"),
            0o600,
        );
        Ca {
            crt,
            key_path,
            cert,
            key,
        }
    }

    /// Issue a server certificate for `dns` names (the first is the CN), subject
    /// `O=<org>, CN=<dns[0]>`, written as `<dir>/<stem>.crt` and `.key` (0600).
    pub fn issue(&self, dir: &Path, stem: &str, org: &str, dns: &[&str], kind: KeyKind) -> Leaf {
        let key = new_key(kind);
        let subject = x509_name(&[("O", org), ("CN", dns[0])]);
        let mut b = X509::builder().expect("x509");
        b.set_version(2).expect("v3");
        let (serial, serial_hex) = random_serial();
        b.set_serial_number(&serial).expect("serial");
        b.set_subject_name(&subject).expect("subject");
        b.set_issuer_name(self.cert.subject_name()).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(30).expect("t"))
            .expect("na");
        let mut san = SubjectAlternativeName::new();
        for d in dns {
            san.dns(d);
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .expect("san");
        b.append_extension(san).expect("ext");
        b.sign(&self.key, MessageDigest::sha256()).expect("sign");
        let cert = b.build();
        let leaf = Leaf {
            crt: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            serial_hex,
            subject: format!("/O={org}/CN={}", dns[0]),
        };
        // Leaf then the CA: the chain a client needs.
        let mut pem = cert.to_pem().expect("pem");
        pem.extend(self.cert.to_pem().expect("pem"));
        write_mode(&leaf.crt, &pem, 0o644);
        write_mode(
            &leaf.key,
            &key.private_key_to_pem_pkcs8().expect("pem"),
            0o600,
        );
        leaf
    }

    /// A DER OCSP response saying `leaf` is good (or revoked), signed by this CA, made by
    /// the real `openssl ocsp` from a hand-written index.txt (valid one day).
    pub fn ocsp_response(&self, dir: &Path, leaf: &Leaf, out: &Path, revoked: bool) {
        let index = dir.join(format!("{}.index.txt", leaf.serial_hex));
        // status, expiry, revocation date (empty), serial, file name, subject
        let (status, revoked_at) = if revoked {
            ("R", "240101000000Z")
        } else {
            ("V", "")
        };
        let line = format!(
            "{status}\t491231235959Z\t{revoked_at}\t{}\tunknown\t{}\n",
            leaf.serial_hex, leaf.subject
        );
        fs::write(&index, line).expect("write index.txt");
        // Only the leaf (not the chain) as -cert.
        let leaf_only = dir.join(format!("{}.leaf.pem", leaf.serial_hex));
        let pem = fs::read(&leaf.crt).expect("read leaf");
        let first = X509::stack_from_pem(&pem).expect("pem")[0]
            .to_pem()
            .expect("pem");
        fs::write(&leaf_only, first).expect("write leaf");
        let mut p = Proc::spawn(
            Command::new("openssl")
                .arg("ocsp")
                .arg("-index")
                .arg(&index)
                .arg("-rsigner")
                .arg(&self.crt)
                .arg("-rkey")
                .arg(&self.key_path)
                .arg("-CA")
                .arg(&self.crt)
                .arg("-issuer")
                .arg(&self.crt)
                .arg("-cert")
                .arg(&leaf_only)
                .arg("-respout")
                .arg(out)
                .arg("-ndays")
                .arg("1"),
        );
        p.close_stdin();
        let st = p.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()) && out.exists(),
            "openssl ocsp failed: {}",
            p.describe()
        );
    }
}
