use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::bind::Listener;
use crate::scoreboard::Slot;
use crate::settings::Plan;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The program the master supervises: it reads the configuration and builds what workers run.
pub trait Application {
    /// Read the configuration: at start (before binding, as the starting user) and on SIGHUP.
    fn configure(&mut self) -> Result<Plan, BoxError>;

    /// Build the worker body for the configuration last read (TLS contexts and the like).
    /// Called after the privilege drop, so every file is checked as the user that reloads.
    fn prepare(&mut self, listeners: &[Listener]) -> Result<Arc<dyn WorkerBody>, BoxError>;

    /// SIGUSR1: reopen log files (logrotate).
    fn reopen_logs(&mut self) {}
}

/// What runs in a forked worker. Called once per child, after fork; returns the exit code.
pub trait WorkerBody: Send + Sync {
    fn run(&self, ctx: WorkerContext<'_>) -> i32;
}

/// What a worker receives from the master.
pub struct WorkerContext<'a> {
    pub listeners: &'a [Listener],
    /// Slot number of this worker within its generation (0-based).
    pub id: usize,
    pub generation: u64,
    pub stop: Stop,
    /// This worker's counters in the scoreboard the master reads.
    pub slot: &'static Slot,
}

/// The worker's graceful-stop flag: set by SIGTERM (from the master on reload or shutdown).
/// `fd` becomes readable once stop is requested and stays readable, so every thread's epoll
/// set can hold it.
#[derive(Clone)]
pub struct Stop {
    flag: &'static AtomicBool,
    fd: Arc<OwnedFd>,
}

impl Stop {
    pub(crate) fn new(flag: &'static AtomicBool, fd: OwnedFd) -> Self {
        Self {
            flag,
            fd: Arc::new(fd),
        }
    }

    pub fn flag(&self) -> &'static AtomicBool {
        self.flag
    }

    /// Ask this worker to stop accepting, as SIGTERM does (used on `max-requests`).
    pub fn trigger(&self) {
        crate::process::request_stop();
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
