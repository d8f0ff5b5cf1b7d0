use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::error::StartError;

/// Write our pid; a stale file (its pid is gone) is replaced, a live one is an error.
pub fn write(path: &Path) -> Result<(), StartError> {
    let err = |reason: String| StartError::Pidfile {
        path: path.to_path_buf(),
        reason,
    };
    match fs::read_to_string(path) {
        Ok(old) => {
            if let Ok(pid) = old.trim().parse::<i32>() {
                if pid > 0 && pid_alive(pid) && pid != std::process::id() as i32 {
                    return Err(err(format!("held by running process {pid}")));
                }
            }
            log::info!("replacing stale pidfile {}", path.display());
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    fs::write(path, format!("{}\n", std::process::id())).map_err(|e| err(e.to_string()))
}

/// Remove the pidfile at exit, if it still holds our pid.
pub fn remove(path: &PathBuf) {
    let ours = fs::read_to_string(path)
        .map(|s| s.trim() == std::process::id().to_string())
        .unwrap_or(false);
    if !ours {
        return;
    }
    if let Err(e) = fs::remove_file(path) {
        log::warn!("cannot remove pidfile {}: {e}", path.display());
    }
}

fn pid_alive(pid: i32) -> bool {
    // EPERM means the process exists but belongs to someone else.
    !matches!(
        kill(Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
