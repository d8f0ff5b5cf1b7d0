//! A real uWSGI application server (SPEC §10: the `http-to` peer of the tests).

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::procs;

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

/// uWSGI with the python3 plugin, one process (no master: one PID to kill), on a unix
/// socket anyone may connect to (the router may run as nobody). Killed by PID on drop.
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
        let log = File::create(&log_path).expect("create uwsgi-app.log");
        let log2 = log.try_clone().expect("dup uwsgi-app.log");
        let mut cmd = Command::new("uwsgi");
        cmd.args(["--plugin", "python3", "--socket"])
            .arg(&socket)
            .args([
                "--chmod-socket=666",
                "--processes",
                "1",
                "--need-app",
                "--wsgi-file",
            ])
            .arg(&app)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("spawn uwsgi: {e}"),
        };
        let pid = child.id() as i32;
        procs::register(pid);
        let app = UwsgiApp {
            child,
            pid,
            socket,
            log_path,
        };
        let up = procs::wait_until(Duration::from_secs(30), || {
            UnixStream::connect(&app.socket).is_ok() || !procs::alive(app.pid, None)
        });
        assert!(
            up && procs::alive(app.pid, None),
            "uWSGI did not come up on {}",
            app.socket.display()
        );
        Some(app)
    }
}

impl Drop for UwsgiApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!("---- uWSGI app log ----\n{log}---- end ----");
        }
        if self.child.try_wait().ok().flatten().is_none() {
            procs::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        procs::unregister(self.pid);
    }
}
