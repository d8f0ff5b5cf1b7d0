//! How many serving threads of a worker may run at once: about one per core, the cores
//! shared among the workers (Settings::running_threads). A thread holds a place while it waits on the shared epoll set or works on a ready
//! event; it gives the place up just before it blocks on a socket, so one of the spare
//! threads takes over while it waits. Spare threads sleep here, not in epoll.
//!
//! Without this, every ready event wakes another of the 64 threads, and handshakes share the
//! core like a time-sliced crowd: with RSA the slowest 1 % took ten times the median (p99
//! 0.7–1.1 s against 40 ms). With the gate, events wait their turn in the epoll set (FIFO)
//! and the tail follows the median.

use std::cell::Cell;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

struct Places {
    free: usize,
    closed: bool,
}

struct Gate {
    places: Mutex<Places>,
    freed: Condvar,
}

/// One worker per process: the gate is the process's.
static GATE: Gate = Gate {
    places: Mutex::new(Places {
        free: 0,
        closed: false,
    }),
    freed: Condvar::new(),
};

thread_local! {
    /// This thread holds a place.
    static HELD: Cell<bool> = const { Cell::new(false) };
}

fn places() -> MutexGuard<'static, Places> {
    // A panic while holding this lock leaves plain counters behind: keep using them.
    GATE.places.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open the gate with `n` places (at least one).
pub fn open(n: usize) {
    let mut p = places();
    p.free = n.max(1);
    p.closed = false;
}

/// The worker is done: every thread waiting for a place gets false.
pub fn close() {
    places().closed = true;
    GATE.freed.notify_all();
}

/// Take a place (or keep the one this thread holds). False once the gate is closed.
pub fn enter() -> bool {
    if HELD.with(Cell::get) {
        return true;
    }
    let mut p = places();
    while p.free == 0 && !p.closed {
        p = GATE.freed.wait(p).unwrap_or_else(|e| e.into_inner());
    }
    if p.closed {
        return false;
    }
    p.free -= 1;
    HELD.with(|h| h.set(true));
    true
}

/// This thread is about to block: give its place to a spare thread.
pub fn leave() {
    if !HELD.with(Cell::get) {
        return;
    }
    HELD.with(|h| h.set(false));
    places().free += 1;
    GATE.freed.notify_one();
}

/// Wait until `fd` is ready for `events`, giving up this thread's place first. Err of kind
/// WouldBlock when `timeout` passes (what a socket timeout gives, so callers treat both
/// alike).
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    timeout: Option<Duration>,
) -> io::Result<()> {
    leave();
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                // Round up: a sub-millisecond rest must not become a busy loop of poll(0).
                let ms = left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut [PollFd::new(fd, events)], wait) {
            Ok(0) => {}
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn places_limit_running_threads_and_close_releases_waiters() {
        open(2);
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (inside, most) = (inside.clone(), most.clone());
                std::thread::spawn(move || {
                    if !enter() {
                        return false;
                    }
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    leave();
                    true
                })
            })
            .collect();
        let entered = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|&ok| ok)
            .count();
        assert_eq!(entered, 8);
        assert_eq!(most.load(Ordering::SeqCst), 2);

        // Both places taken and never given back: a third thread waits until close().
        open(1);
        assert!(std::thread::spawn(enter).join().unwrap_or(false));
        let waiter = std::thread::spawn(enter);
        std::thread::sleep(Duration::from_millis(50));
        close();
        assert!(!waiter.join().unwrap_or(true));
    }
}
