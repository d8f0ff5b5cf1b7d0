//! Helpers for the uWSGI compatibility tests (`e2e_uwsgi_compat`): the documentation's
//! file names (`foobar.crt`, `foobar.key`), the `nobody`/`nogroup` identity, a real uWSGI
//! application server as the `http-to` backend, and plain-HTTP requests.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::client::{read_response, Response};
use super::{procs, watchdog, TestEnv};

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
        .expect("look up user nobody")
        .expect("user nobody exists")
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name("nogroup")
        .expect("look up group nogroup")
        .expect("group nogroup exists")
        .gid
        .as_raw();
    Some((uid, gid))
}

/// Copy the test server certificate and key to `foobar.crt` and `foobar.key` (the names of
/// uWSGI's documentation) in the env's folder. With `group`, the folder becomes 0755 and
/// every key 0640 root:group, so a master dropped to that group reads them (SPEC §10).
pub fn foobar(env: &TestEnv, group: Option<u32>) {
    let crt = env.path("foobar.crt");
    let key = env.path("foobar.key");
    fs::copy(&env.certs.server_crt, &crt).expect("copy foobar.crt");
    fs::copy(&env.certs.server_key, &key).expect("copy foobar.key");
    fs::set_permissions(&crt, fs::Permissions::from_mode(0o644)).expect("chmod foobar.crt");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod foobar.key");
    if let Some(gid) = group {
        env.certs
            .make_readable_by_group(gid)
            .expect("make TLS files readable by the group");
        std::os::unix::fs::chown(&key, Some(0), Some(gid)).expect("chown foobar.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod foobar.key");
    }
}

/// A WSGI app that answers with the uwsgi vars the router sent it.
const APP_PY: &str = r#"
KEYS = ("REQUEST_METHOD", "REQUEST_URI", "HTTPS", "UWSGI_SCHEME", "HTTPS_DN", "SERVER_PORT")

def application(env, start_response):
    body = "".join("%s=%s\n" % (k, env.get(k, "")) for k in KEYS)
    body = ("uwsgi-app\n" + body).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A real uWSGI application server (SPEC §10): python3 plugin, one process (no master: one
/// PID to kill), on a unix socket anyone may connect to (the router may run as nobody).
/// Killed by PID when dropped.
pub struct UwsgiApp {
    child: Child,
    pub pid: i32,
    pub socket: PathBuf,
    log_path: PathBuf,
}

impl UwsgiApp {
    /// None when no `uwsgi` binary is installed (the caller skips, saying so).
    pub fn start(dir: &Path) -> Option<UwsgiApp> {
        let socket = dir.join("app.sock");
        let app = dir.join("app.py");
        fs::write(&app, APP_PY).expect("write app.py");
        let log_path = dir.join("uwsgi-app.log");
        let mut cmd = Command::new("uwsgi");
        cmd.args(["--plugin", "python3", "--socket"])
            .arg(&socket)
            .args(["--chmod-socket=666", "--processes", "1", "--need-app"])
            .arg("--wsgi-file")
            .arg(&app)
            .current_dir(dir);
        super::procs::log_and_tie(&mut cmd, &log_path);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => panic!("spawn uwsgi: {e}"),
        };
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        let app = UwsgiApp {
            child,
            pid,
            socket,
            log_path,
        };
        let up = procs::wait_until(Duration::from_secs(30), || {
            UnixStream::connect(&app.socket).is_ok() || !procs::pid_alive(app.pid)
        });
        // On failure the guard is dropped: uWSGI is killed and its log printed.
        assert!(
            up && procs::pid_alive(app.pid),
            "uWSGI app server did not come up on {}",
            app.socket.display()
        );
        Some(app)
    }
}

impl Drop for UwsgiApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!("---- uWSGI app log ----\n{log}\n---- end ----");
        }
        if self.child.try_wait().ok().flatten().is_none() {
            procs::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        watchdog::unregister_pid(self.pid);
    }
}

/// Send `request` as is over plain TCP to 127.0.0.1:`port`, read until the server closes
/// (10 s at most) and parse one response; anything after it is an error (so a HEAD answer
/// must carry no body, and a body must match its Content-Length).
pub fn http_raw(port: u16, request: &[u8]) -> io::Result<Response> {
    let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(request)?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    let mut cursor = Cursor::new(raw);
    let response = read_response(&mut cursor, request.starts_with(b"HEAD "))?;
    let rest = cursor.get_ref().len() as u64 - cursor.position();
    if rest > 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{rest} bytes after the response {response:?}"),
        ));
    }
    Ok(response)
}
