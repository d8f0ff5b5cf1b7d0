//! Idle keep-alive connections to HTTP backends, one pool per worker. A request's answer
//! may be relayed by another thread than the one that sent it (see proxy.rs), so per-thread
//! pools scattered connections over the threads and reused few; like nginx's upstream
//! keepalive cache, the pool is the worker's. Its lock is held for a push or a pop only.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BackendStream;

/// Idle connections kept per backend (nginx's usual `keepalive 32`).
const MAX_IDLE_PER_BACKEND: usize = 32;
/// Older idle connections are dropped rather than risked (gunicorn's default keep-alive is
/// 2 s; most servers allow more).
const MAX_IDLE_TIME: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Pool {
    /// (backend index, connection, idle since); the most recently used last.
    idle: Mutex<Vec<(usize, BackendStream, Instant)>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(usize, BackendStream, Instant)>> {
        // A panic elsewhere cannot leave the list inconsistent: keep using it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection to backend `index` that is still open, if any (the most recently
    /// used first: it is the least likely to have been closed by the backend).
    pub fn take(&self, index: usize) -> Option<BackendStream> {
        loop {
            let candidate = {
                let mut idle = self.idle();
                let now = Instant::now();
                idle.retain(|(_, _, since)| now.duration_since(*since) < MAX_IDLE_TIME);
                let pos = idle.iter().rposition(|(i, _, _)| *i == index)?;
                idle.remove(pos).1
            };
            // Checked outside the lock: a syscall.
            if candidate.is_idle_and_open() {
                return Some(candidate);
            }
        }
    }

    /// Keep a connection whose last response was read completely.
    pub fn put(&self, index: usize, stream: BackendStream) {
        let mut idle = self.idle();
        if idle.iter().filter(|(i, _, _)| *i == index).count() < MAX_IDLE_PER_BACKEND {
            idle.push((index, stream, Instant::now()));
        }
    }
}
