//! `log-file`: stderr of the master and of every worker goes to a file, reopened on SIGUSR1
//! (logrotate). Logging itself still writes to fd 2; we only point fd 2 elsewhere.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The path workers reopen, as a leaked C string (read from a signal handler).
static PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Remember `path` and point stderr at it now.
pub fn open(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let old = PATH.swap(c.into_raw(), Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` came from CString::into_raw in this function; no worker of this
        // process reads it (workers have their own copy of memory after fork).
        drop(unsafe { CString::from_raw(old) });
    }
    reopen()
}

/// Reopen the remembered file onto stderr. Async-signal-safe: open, dup2, close only.
pub fn reopen() -> std::io::Result<()> {
    let path = PATH.load(Ordering::SeqCst);
    if path.is_null() {
        return Ok(());
    }
    // SAFETY: `path` is a valid NUL-terminated string that is never freed while set.
    let fd = unsafe {
        libc::open(
            path,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o640,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are valid; dup2 atomically replaces stderr.
    let rc = unsafe { libc::dup2(fd, libc::STDERR_FILENO) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and no longer needed once duplicated.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    Ok(())
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    // SAFETY: errno is saved and restored; reopen only calls async-signal-safe functions.
    unsafe {
        let errno = *libc::__errno_location();
        let _ = reopen();
        *libc::__errno_location() = errno;
    }
}

/// In a worker: SIGUSR1 reopens the log file (when one is set).
pub fn install_worker_handler() -> nix::Result<()> {
    if PATH.load(Ordering::SeqCst).is_null() {
        return Ok(());
    }
    let action = SigAction::new(
        SigHandler::Handler(on_sigusr1),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: on_sigusr1 only calls async-signal-safe functions.
    unsafe { sigaction(Signal::SIGUSR1, &action) }.map(drop)
}
