//! Starting child processes that log to a file and die with the test, process inspection
//! through /proc, and polling with deadlines.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Fields of /proc/<pid>/stat after the command name: (state, ppid, starttime).
fn stat_fields(pid: i32) -> Option<(char, i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (field 4), f[19] = starttime (field 22)
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

/// Start time (clock ticks since boot) of a process, to tell a pid from a
/// later process that reuses it.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).map(|(_, _, st)| st)
}

/// True when the process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    matches!(stat_fields(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// True when the process with this pid is alive and is still the one that
/// started at `start`.
pub fn same_process_alive(pid: i32, start: u64) -> bool {
    matches!(stat_fields(pid), Some((state, _, st)) if st == start && state != 'Z' && state != 'X')
}

/// Live (non-zombie) children of `pid`, sorted.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((state, ppid, _)) = stat_fields(child) {
            if ppid == pid && state != 'Z' && state != 'X' {
                out.push(child);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Uid/Gid/Groups lines of /proc/<pid>/status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// real, effective, saved, filesystem
    pub uid: [u32; 4],
    /// real, effective, saved, filesystem
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub name: String,
}

fn four(line: &str) -> Option<[u32; 4]> {
    let v: Vec<u32> = line
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    v.try_into().ok()
}

/// Parse /proc/<pid>/status. None if the process is gone.
pub fn proc_status(pid: i32) -> Option<ProcStatus> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    let mut name = String::new();
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("Uid:") {
            uid = four(v);
        } else if let Some(v) = line.strip_prefix("Gid:") {
            gid = four(v);
        } else if let Some(v) = line.strip_prefix("Groups:") {
            groups = v
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
        } else if let Some(v) = line.strip_prefix("Name:") {
            name = v.trim().to_string();
        }
    }
    Some(ProcStatus {
        uid: uid?,
        gid: gid?,
        groups,
        name,
    })
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

/// Poll `f` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send a signal to a pid (errors ignored: the process may be gone).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Make `cmd` log its stdout and stderr to a new file at `log_path`, read nothing, and die
/// with the test process (PR_SET_PDEATHSIG): no test leaves a child behind, even when it
/// panics before its guard drops.
pub fn log_and_tie(cmd: &mut Command, log_path: &Path) {
    let log =
        File::create(log_path).unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
    let log2 = log.try_clone().expect("dup log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
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
}

/// Wait (polling) up to `timeout` for `child` to exit; its status, or None if it still runs.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
