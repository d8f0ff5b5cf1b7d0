//! Idle keep-alive connections to HTTP backends, owned by one serving thread: no lock is
//! shared across threads on the request path.

use std::time::{Duration, Instant};

use super::BackendStream;

/// Idle connections kept per thread and backend.
const MAX_IDLE_PER_BACKEND: usize = 4;
/// Older idle connections are dropped rather than risked (gunicorn's default keep-alive is
/// 2 s; most servers allow more).
const MAX_IDLE_TIME: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Pool {
    idle: Vec<(usize, BackendStream, Instant)>,
}

impl Pool {
    /// An idle connection to backend `index` that is still open, if any.
    pub fn take(&mut self, index: usize) -> Option<BackendStream> {
        let now = Instant::now();
        self.idle
            .retain(|(_, _, since)| now.duration_since(*since) < MAX_IDLE_TIME);
        while let Some(pos) = self.idle.iter().rposition(|(i, _, _)| *i == index) {
            let (_, stream, _) = self.idle.swap_remove(pos);
            if stream.is_idle_and_open() {
                return Some(stream);
            }
        }
        None
    }

    /// Keep a connection whose last response was read completely.
    pub fn put(&mut self, index: usize, stream: BackendStream) {
        if self.idle.iter().filter(|(i, _, _)| *i == index).count() < MAX_IDLE_PER_BACKEND {
            self.idle.push((index, stream, Instant::now()));
        }
    }
}
