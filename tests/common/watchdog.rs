//! A per-test watchdog, so that a hang fails the run instead of blocking CI.
//!
//! Every process the helpers start is registered here; when a watchdog
//! fires it kills all of them (by PID or process group) and exits the test
//! binary with a message.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use super::procs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// pid + start time (so a reused pid is never killed)
    Pid(i32, u64),
    /// a process group id
    Group(i32),
}

static REGISTRY: Mutex<Vec<Target>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Target>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remember a process to kill if a watchdog fires.
pub fn register_pid(pid: i32) {
    if let Some(st) = procs::start_time(pid) {
        registry().push(Target::Pid(pid, st));
    }
}

pub fn unregister_pid(pid: i32) {
    registry().retain(|t| !matches!(t, Target::Pid(p, _) if *p == pid));
}

/// Remember a process group to kill if a watchdog fires.
pub fn register_group(pgid: i32) {
    registry().push(Target::Group(pgid));
}

pub fn unregister_group(pgid: i32) {
    registry().retain(|t| *t != Target::Group(pgid));
}

fn kill_everything() {
    let targets = registry().clone();
    for t in targets {
        match t {
            Target::Pid(pid, st) => {
                for child in procs::children_of(pid) {
                    procs::kill(child, libc::SIGKILL);
                }
                if procs::same_process_alive(pid, st) {
                    procs::kill(pid, libc::SIGKILL);
                }
            }
            Target::Group(pgid) => procs::kill(-pgid, libc::SIGKILL),
        }
    }
}

/// Guard returned by [`watchdog`]; dropping it disarms the watchdog.
pub struct Watchdog {
    tx: Option<mpsc::Sender<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Arm a watchdog: if the guard is still alive after `limit`, every
/// registered process is SIGKILLed and the test binary exits with failure.
pub fn watchdog(test: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let test = test.to_string();
    std::thread::Builder::new()
        .name(format!("watchdog-{test}"))
        .spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!(
                    "WATCHDOG: test `{test}` still running after {limit:?}; \
                     killing its processes and failing the run"
                );
                kill_everything();
                std::process::exit(101);
            }
        })
        .expect("spawn watchdog thread");
    Watchdog { tx: Some(tx) }
}
