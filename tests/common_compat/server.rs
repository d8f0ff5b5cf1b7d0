//! A running `uwsgi-master`, killed by PID (workers first, then the master) when dropped,
//! also on panic, when its log is printed.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode};

use super::procs;

pub struct Server {
    child: Child,
    pub pid: i32,
    log_path: PathBuf,
    /// Every worker seen: (pid, start time), killed on drop if still that process.
    seen: Mutex<Vec<(i32, u64)>>,
}

impl Server {
    /// Start the binary with `args` in `dir`; stdout and stderr go to `dir/master.log`.
    pub fn spawn<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Server {
        let log_path = dir.join("master.log");
        let log = File::create(&log_path).expect("create master.log");
        let log2 = log.try_clone().expect("dup master.log");
        let mut cmd = Command::new(super::bin());
        cmd.args(args)
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
        let child = cmd.spawn().expect("spawn uwsgi-master");
        let pid = child.id() as i32;
        procs::register(pid);
        Server {
            child,
            pid,
            log_path,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Start and wait until 127.0.0.1:`port` answers TLS (30 s).
    pub fn start<S: AsRef<OsStr>>(dir: &Path, args: &[S], port: u16) -> Server {
        let mut s = Server::spawn(dir, args);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = s.child.try_wait().ok().flatten() {
                panic!("uwsgi-master exited ({st}) before serving port {port}");
            }
            if tls_answers(port) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "uwsgi-master not answering TLS on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master's live children, remembered for the cleanup.
    pub fn workers(&self) -> Vec<i32> {
        let workers = procs::children_of(self.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for &pid in &workers {
            if let Some(start) = procs::start_time(pid) {
                if !seen.contains(&(pid, start)) {
                    seen.push((pid, start));
                    procs::register(pid);
                }
            }
        }
        workers
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait for the master to exit; panics after `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for uwsgi-master") {
                return st;
            }
            assert!(Instant::now() < deadline, "uwsgi-master still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- uwsgi-master {} log ----\n{}---- end ----",
                self.pid,
                self.log()
            );
        }
        let running = self.child.try_wait().ok().flatten().is_none();
        if running {
            self.workers();
        }
        for &(pid, start) in self.seen.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if procs::alive(pid, Some(start)) {
                procs::kill(pid, libc::SIGKILL);
            }
            procs::unregister(pid);
        }
        if running {
            procs::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        procs::unregister(self.pid);
    }
}

/// A TLS handshake on 127.0.0.1:`port` gets a TLS answer (completed, or an alert).
fn tls_answers(port: u16) -> bool {
    let Ok(tcp) =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let mut b = SslConnector::builder(SslMethod::tls()).expect("TLS client");
    b.set_verify(SslVerifyMode::NONE);
    match b.build().connect("localhost", tcp) {
        Ok(_) => true,
        Err(HandshakeError::Failure(mid)) => mid.error().ssl_error().is_some(),
        Err(_) => false,
    }
}
