//! Forking one worker and preparing the child before its body runs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::signal::{
    sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::unistd::{fork, getppid, ForkResult, Pid};

use crate::app::{Stop, WorkerBody, WorkerContext};
use crate::bind::Listener;
use crate::privileges::Identity;
use crate::scoreboard::Slot;
use crate::EXIT_BOOT_ERROR;

/// Fork one worker. Must be called from the master's main thread: the child inherits only
/// the calling thread, and PR_SET_PDEATHSIG fires when the forking *thread* exits.
pub fn spawn_worker(
    body: &Arc<dyn WorkerBody>,
    listeners: &[Listener],
    id: usize,
    generation: u64,
    slot: &'static Slot,
    drop_to: Option<&Identity>,
) -> nix::Result<Pid> {
    let master = nix::unistd::getpid();
    // SAFETY: the master's only other thread is the signal forwarder, which holds no lock the
    // child needs (it never logs); the child sets itself up and never returns into the
    // master's code: it leaves through `_exit`.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = child_main(body, listeners, (id, generation, slot), drop_to, master);
            // SAFETY: _exit ends the process without running the master's atexit handlers
            // (OpenSSL cleanup) while worker threads may still be finishing.
            unsafe { libc::_exit(code) }
        }
    }
}

fn child_main(
    body: &Arc<dyn WorkerBody>,
    listeners: &[Listener],
    (id, generation, slot): (usize, u64, &'static Slot),
    drop_to: Option<&Identity>,
    master: Pid,
) -> i32 {
    if let Err(e) = reset_signals() {
        log::error!("worker {id}: cannot reset signal handlers: {e}");
        return EXIT_BOOT_ERROR;
    }
    if let Some(identity) = drop_to {
        if let Err(e) = identity.drop_privileges() {
            log::error!("worker {id}: {e}");
            return EXIT_BOOT_ERROR;
        }
    }
    // After any privilege change: setuid/setgid clear the death signal.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        log::error!(
            "worker {id}: PR_SET_PDEATHSIG failed: {}",
            std::io::Error::last_os_error()
        );
        return EXIT_BOOT_ERROR;
    }
    if getppid() != master {
        // The master died between fork and prctl.
        return 1;
    }
    if let Err(e) = crate::logfile::install_worker_handler() {
        log::error!("worker {id}: cannot install the SIGUSR1 handler: {e}");
        return EXIT_BOOT_ERROR;
    }
    let stop = match install_stop_handler() {
        Ok(stop) => stop,
        Err(e) => {
            log::error!("worker {id}: cannot install the SIGTERM handler: {e}");
            return EXIT_BOOT_ERROR;
        }
    };
    let ctx = WorkerContext {
        listeners,
        id,
        generation,
        stop,
        slot,
    };
    match catch_unwind(AssertUnwindSafe(|| body.run(ctx))) {
        Ok(code) => code,
        Err(_) => {
            log::error!("worker {id}: panicked");
            70
        }
    }
}

/// Put every signal back to its default and unblock them all: the master's signal-hook
/// handlers would otherwise write into the master's pipe. SIGPIPE stays ignored, so a peer
/// that hangs up gives EPIPE instead of killing the worker.
fn reset_signals() -> nix::Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL has no handler code to be unsafe.
        unsafe { sigaction(sig, &default) }?;
    }
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code; SIGHUP goes to the master only, workers follow it.
    unsafe {
        sigaction(Signal::SIGPIPE, &ignore)?;
        sigaction(Signal::SIGHUP, &ignore)?;
        sigaction(Signal::SIGUSR1, &ignore)?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
static STOP_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigterm(_: libc::c_int) {
    request_stop();
}

/// Set the stop flag and wake every thread: async-signal-safe, also called outside handlers.
pub fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    let fd = STOP_WRITE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: errno is saved and restored around write(2), which is async-signal-safe;
        // a full pipe is fine, the pipe only needs to be readable.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, b"s".as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// SIGTERM in a worker means "stop accepting and finish": it sets a flag and makes a pipe
/// readable, so threads blocked in epoll see it at once. A raw handler, not signal-hook:
/// its registry was inherited from the master and still holds the master's actions.
fn install_stop_handler() -> nix::Result<Stop> {
    let (read, write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    STOP_WRITE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
    // The write end lives as long as the process.
    std::mem::forget(write);
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: on_sigterm only touches atomics and calls write(2).
    unsafe { sigaction(Signal::SIGTERM, &action) }?;
    Ok(Stop::new(&STOP_REQUESTED, read))
}
