//! Processes through /proc, signals by PID, polling with deadlines, and a watchdog that
//! kills every process a test started if the test hangs.

use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// (state, ppid, start time) from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let fields: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(1)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, _, start)| start)
}

/// Alive and not a zombie; with `start`, still the same process (not a reused pid).
pub fn alive(pid: i32, start: Option<u64>) -> bool {
    match stat(pid) {
        Some((state, _, st)) => state != 'Z' && state != 'X' && start.unwrap_or(st) == st,
        None => false,
    }
}

/// Live children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&p| matches!(stat(p), Some((s, ppid, _)) if ppid == pid && s != 'Z'))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The Uid, Gid (real, effective, saved, filesystem) and Groups lines of /proc/<pid>/status.
#[derive(Debug)]
pub struct ProcStatus {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
}

pub fn proc_status(pid: i32) -> Option<ProcStatus> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ids = |prefix: &str| -> Vec<u32> {
        s.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(ProcStatus {
        uid: ids("Uid:").try_into().ok()?,
        gid: ids("Gid:").try_into().ok()?,
        groups: ids("Groups:"),
    })
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Poll `cond` every 50 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every process tests of this binary started and have not reaped yet.
static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub fn register(pid: i32) {
    PIDS.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

pub fn unregister(pid: i32) {
    PIDS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

/// Disarmed when dropped; otherwise, after `limit`, SIGKILLs every registered process and
/// fails the whole test binary (a hang fails fast instead of blocking the run).
pub struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

pub fn watchdog(test: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let test = test.to_string();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("WATCHDOG: {test} still running after {limit:?}; killing its processes");
            for &pid in PIDS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                kill(pid, libc::SIGKILL);
            }
            std::process::exit(101);
        }
    });
    Watchdog(Some(tx))
}
