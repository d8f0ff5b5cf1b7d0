use std::thread;

use crossbeam_channel::{unbounded, Receiver};
use signal_hook::consts::signal::*;
use signal_hook::iterator::Signals;

/// The master's signals, as data.
pub const MASTER_SIGNALS: [i32; 8] = [
    SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGUSR1, SIGTTIN, SIGTTOU,
];

/// Register the master's handlers (call before any other thread exists) and forward each
/// signal into a channel from a small thread. That thread never logs: a stderr lock held by
/// it at fork time would deadlock the child.
pub fn forward() -> std::io::Result<Receiver<i32>> {
    let mut signals = Signals::new(MASTER_SIGNALS)?;
    let (tx, rx) = unbounded();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGHUP => "SIGHUP",
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGCHLD => "SIGCHLD",
        SIGUSR1 => "SIGUSR1",
        SIGTTIN => "SIGTTIN",
        SIGTTOU => "SIGTTOU",
        SIGKILL => "SIGKILL",
        SIGSEGV => "SIGSEGV",
        SIGABRT => "SIGABRT",
        SIGBUS => "SIGBUS",
        SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}
