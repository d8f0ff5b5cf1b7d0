//! A guard around one running `uwsgi-master` process.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openssl::ssl::{HandshakeError, SslConnector, SslFiletype, SslMethod, SslVerifyMode};

use super::procs;
use super::watchdog;

/// A running master. Drop SIGKILLs its workers and the master (by PID) and
/// reaps it; when the test is panicking, the master's log is printed.
pub struct Server {
    child: Child,
    pub pid: i32,
    /// The port the readiness probe uses (0 when not waited for).
    pub port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Every worker ever seen: (pid, start time).
    seen_workers: Mutex<Vec<(i32, u64)>>,
    log_printed: bool,
}

/// Fmt an exit status for messages.
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

impl Server {
    /// Write `config` as `<dir>/app.toml` and start the master on it; do
    /// not wait for anything.
    pub fn spawn(dir: &Path, config: &str) -> Server {
        let config_path = dir.join("app.toml");
        fs::write(&config_path, config).expect("write app.toml");
        Self::spawn_args(
            dir,
            &["--config".as_ref(), config_path.as_os_str()],
            config_path.clone(),
        )
    }

    /// Start the master with arbitrary arguments; stdout+stderr go to
    /// `<dir>/master.log`.
    pub fn spawn_args(dir: &Path, args: &[&std::ffi::OsStr], config_path: PathBuf) -> Server {
        let log_path = dir.join("master.log");
        let mut cmd = Command::new(super::bin());
        cmd.args(args).current_dir(dir);
        // Safety net: if the test binary dies, its masters die too (the
        // product clears this when it changes credentials; the watchdog
        // and Drop cover that case).
        super::procs::log_and_tie(&mut cmd, &log_path);
        let child = cmd.spawn().expect("spawn uwsgi-master");
        let pid = child.id() as i32;
        watchdog::register_pid(pid);
        Server {
            child,
            pid,
            port: 0,
            dir: dir.to_path_buf(),
            config_path,
            log_path,
            seen_workers: Mutex::new(Vec::new()),
            log_printed: false,
        }
    }

    /// Spawn and wait until `port` completes a TLS handshake (30 s).
    pub fn start(dir: &Path, config: &str, port: u16) -> Server {
        let mut s = Self::spawn(dir, config);
        s.wait_ready(port, None);
        s
    }

    /// Like [`start`](Self::start), presenting a client certificate in the
    /// readiness probe (for listeners that require one).
    pub fn start_with_client(
        dir: &Path,
        config: &str,
        port: u16,
        client: (&Path, &Path),
    ) -> Server {
        let mut s = Self::spawn(dir, config);
        s.wait_ready(port, Some(client));
        s
    }

    /// Wait until a TLS handshake on 127.0.0.1:port gets an answer from a
    /// worker. Panics (with the log) on timeout or if the master exits.
    pub fn wait_ready(&mut self, port: u16, client: Option<(&Path, &Path)>) {
        self.port = port;
        let deadline = Instant::now() + super::READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(st) = self.try_exit() {
                panic!(
                    "uwsgi-master exited ({}) before answering on port {port}",
                    describe_status(&st)
                );
            }
            match tls_probe(port, client) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "uwsgi-master (pid {}) not answering TLS on 127.0.0.1:{port} after {:?}: {last}",
                    self.pid,
                    super::READY_TIMEOUT
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The master's live children (= its workers), recorded for cleanup.
    pub fn workers(&self) -> Vec<i32> {
        let w = procs::children_of(self.pid);
        let mut seen = self.seen_workers.lock().unwrap_or_else(|e| e.into_inner());
        for &pid in &w {
            if !seen.iter().any(|&(p, _)| p == pid) {
                if let Some(st) = procs::start_time(pid) {
                    seen.push((pid, st));
                    watchdog::register_pid(pid);
                }
            }
        }
        w
    }

    /// Wait until exactly `n` workers exist; returns them. Panics on timeout.
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> Vec<i32> {
        let mut last = Vec::new();
        let ok = procs::wait_until(timeout, || {
            last = self.workers();
            last.len() == n
        });
        assert!(
            ok,
            "expected {n} workers of master {}, found {last:?} after {timeout:?}",
            self.pid
        );
        last
    }

    /// Contents of the master's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Send a signal to the master.
    pub fn signal(&self, sig: i32) {
        if self.try_exit_peek().is_none() {
            procs::kill(self.pid, sig);
        }
    }

    fn try_exit_peek(&self) -> Option<()> {
        // A pid whose Child has not been reaped can not be reused, so a
        // zombie check on /proc is enough here.
        if procs::pid_alive(self.pid) {
            None
        } else {
            Some(())
        }
    }

    /// Non-blocking: the exit status if the master has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait (polling) up to `timeout` for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        procs::wait_exit(&mut self.child, timeout)
    }

    /// Wait for the master to exit; panic with the log if it does not.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(st) => st,
            None => panic!(
                "uwsgi-master (pid {}) still running after {timeout:?}",
                self.pid
            ),
        }
    }

    /// Print the log now (at most once per server).
    pub fn dump_log(&mut self) {
        if !self.log_printed {
            self.log_printed = true;
            eprintln!(
                "---- uwsgi-master pid {} log ({}) ----\n{}\n---- end of log ----",
                self.pid,
                self.log_path.display(),
                self.log()
            );
        }
    }

    /// SIGKILL every worker seen (still the same process) and the master.
    pub fn kill_all(&mut self) {
        let exited = self.try_exit().is_some();
        if !exited {
            self.workers();
        }
        let seen = self
            .seen_workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (pid, st) in seen {
            if procs::same_process_alive(pid, st) {
                procs::kill(pid, libc::SIGKILL);
            }
            watchdog::unregister_pid(pid);
        }
        if !exited {
            procs::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        watchdog::unregister_pid(self.pid);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_log();
        }
        self.kill_all();
    }
}

/// One readiness probe: Ok when a TLS handshake on 127.0.0.1:port got a
/// TLS answer (a finished handshake, or a TLS alert from the server).
pub fn tls_probe(port: u16, client: Option<(&Path, &Path)>) -> Result<(), String> {
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    if let Some((crt, key)) = client {
        b.set_certificate_chain_file(crt)
            .map_err(|e| e.to_string())?;
        b.set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| e.to_string())?;
    }
    let connector = b.build();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(2))).ok();
    let mut cfg = connector.configure().map_err(|e| e.to_string())?;
    cfg.set_verify_hostname(false);
    match cfg.connect("localhost", tcp) {
        Ok(mut s) => {
            let _ = s.shutdown();
            Ok(())
        }
        Err(HandshakeError::Failure(mid)) => {
            let e = mid.error();
            // An alert from the server (e.g. certificate required) means a
            // worker is answering; EOF/reset/timeout means not (yet).
            let alert = e.ssl_error().map(|s| {
                !s.errors().is_empty()
                    && !s.errors().iter().any(|x| {
                        x.reason()
                            .map(|r| r.to_ascii_lowercase().contains("unexpected eof"))
                            .unwrap_or(false)
                    })
            });
            if e.io_error().is_none() && alert.unwrap_or(false) {
                Ok(())
            } else {
                Err(format!("handshake: {e}"))
            }
        }
        Err(e) => Err(format!("handshake: {e}")),
    }
}
