//! The supervisor of uwsgi-master: binds the shared sockets, drops privileges, forks workers
//! and keeps them alive through signals, deaths and reloads.
//!
//! It knows nothing of TLS or HTTP: an [`Application`] reads the configuration and prepares a
//! [`WorkerBody`] in the master; the body runs in each forked child.

mod app;
mod backoff;
mod bind;
mod error;
mod logfile;
mod pidfile;
mod privileges;
mod process;
mod scoreboard;
mod settings;
mod signals;
mod stats;
mod supervisor;

pub use app::{Application, BoxError, Stop, WorkerBody, WorkerContext};
pub use bind::Listener;
pub use error::StartError;
pub use privileges::{current_is_root, Identity};
pub use scoreboard::{monotonic_ms, Slot, MAX_THREADS};
pub use settings::{Plan, RestartSettings, RuntimeSettings};
pub use supervisor::run;

/// Exit code a worker uses when it cannot start at all (threads, resources): the master
/// backs off instead of respawning it in a tight loop.
pub const EXIT_BOOT_ERROR: i32 = 3;
