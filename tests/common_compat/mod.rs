//! Helpers for the uWSGI compatibility tests (`e2e_uwsgi_compat`): a temp dir with
//! test-made certificates under the documentation's names (`foobar.crt`, `foobar.key`),
//! free ports, the `nobody`/`nogroup` identity, the master under a guard that kills it by
//! PID, curl, plain-HTTP requests, and a real uWSGI application server as the backend.
#![allow(dead_code)]

pub mod certs;
pub mod procs;
pub mod server;
mod uwsgi_app;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub use certs::{Certs, CLIENT_DN};
pub use procs::{proc_status, wait_until, watchdog};
pub use server::Server;
pub use uwsgi_app::UwsgiApp;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_uwsgi-master")
}

/// A fresh temp dir (removed on drop: declare it before any guard) with certificates,
/// including `foobar.crt` and `foobar.key` (copies of the server's).
pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    pub certs: Certs,
}

impl TestEnv {
    /// With `group`, the folder is 0755 and the keys 0640 root:group, so a master that
    /// dropped to that group reads them (SPEC §10).
    pub fn new(group: Option<u32>) -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("uwsgi-compat-")
            .tempdir()
            .expect("create temp dir");
        let certs = Certs::generate(tmp.path());
        let env = TestEnv { tmp, certs };
        fs::copy(&env.certs.server_crt, env.path("foobar.crt")).expect("copy foobar.crt");
        fs::copy(&env.certs.server_key, env.path("foobar.key")).expect("copy foobar.key");
        if let Some(gid) = group {
            fs::set_permissions(env.dir(), fs::Permissions::from_mode(0o755)).expect("chmod");
            for key in [
                env.path("foobar.key"),
                env.certs.server_key.clone(),
                env.certs.client_key.clone(),
            ] {
                std::os::unix::fs::chown(&key, Some(0), Some(gid)).expect("chown key");
                fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod key");
            }
        }
        env
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid of `nobody` and gid of `nogroup` when we are root; None otherwise (the tests that
/// drop privileges then skip, saying so).
pub fn nobody() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let uid = nix::unistd::User::from_name("nobody")
        .expect("look up nobody")
        .expect("user nobody exists")
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name("nogroup")
        .expect("look up nogroup")
        .expect("group nogroup exists")
        .gid
        .as_raw();
    Some((uid, gid))
}

/// What curl got: the status (None when no HTTP answer came) and the body.
#[derive(Debug)]
pub struct CurlOut {
    pub status: Option<u16>,
    pub body: String,
    pub stderr: String,
}

/// Run curl on `url` with `args`, 30 s at most, ignoring ~/.curlrc and proxies.
pub fn curl(url: &str, args: &[String]) -> CurlOut {
    let out = Command::new("curl")
        .args(["-q", "-sS", "--noproxy", "*", "--max-time", "30"])
        .args(args)
        .args(["-w", "\n%{http_code}", url])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    CurlOut {
        status: code.trim().parse().ok().filter(|&c| c != 0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `https://localhost:PORT{path}` verified against the test CA, plus `extra` arguments.
pub fn curl_https(env: &TestEnv, port: u16, path: &str, extra: &[String]) -> CurlOut {
    let mut args = vec![
        "--cacert".to_string(),
        env.certs.ca_crt.display().to_string(),
        "--resolve".to_string(),
        format!("localhost:{port}:127.0.0.1"),
    ];
    args.extend_from_slice(extra);
    curl(&format!("https://localhost:{port}{path}"), &args)
}

/// curl arguments presenting a client certificate.
pub fn client_cert((crt, key): (&Path, &Path)) -> Vec<String> {
    vec![
        "--cert".to_string(),
        crt.display().to_string(),
        "--key".to_string(),
        key.display().to_string(),
    ]
}

/// A response read from a connection that closes after it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Send `request` as is over plain TCP to 127.0.0.1:`port` and read everything until the
/// server closes (10 s at most).
pub fn http_raw(port: u16, request: &[u8]) -> std::io::Result<Response> {
    let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(request)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, text.to_string());
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}
