//! The scoreboard: a shared anonymous mapping made before the first fork, holding one slot of
//! counters per worker process. Workers write their own slot; the master reads all of them
//! for stats and harakiri. Everything in it is an atomic, so no lock crosses processes.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};

/// Worker slots: enough for two overlapping generations of a large worker count.
pub const MAX_SLOTS: usize = 256;
/// Threads per worker whose "busy since" is tracked (the config caps `threads` at this).
pub const MAX_THREADS: usize = 1024;

/// Slot states.
pub const FREE: u32 = 0;
pub const RUNNING: u32 = 1;
/// The worker reached `max-requests`: it stopped accepting and asks to be replaced.
pub const RECYCLING: u32 = 2;

/// One worker's counters.
#[repr(C)]
pub struct Slot {
    pub pid: AtomicI32,
    pub state: AtomicU32,
    pub generation: AtomicU64,
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub active_connections: AtomicU64,
    /// Per thread: monotonic milliseconds when its current request started, 0 when idle.
    pub busy_since: [AtomicU64; MAX_THREADS],
    /// Monotonic milliseconds when the oldest request waiting for its backend (with no
    /// thread on it) began, 0 when none waits.
    pub waiting_since: AtomicU64,
}

impl Slot {
    /// The worker's hooks, called on its request path.
    pub fn request_started(&self, thread: usize) {
        if let Some(t) = self.busy_since.get(thread) {
            t.store(monotonic_ms().max(1), Ordering::Relaxed);
        }
    }

    /// The thread's request waits for its backend without the thread.
    pub fn request_parked(&self, thread: usize) {
        if let Some(t) = self.busy_since.get(thread) {
            t.store(0, Ordering::Relaxed);
        }
    }

    /// The oldest request waiting for its backend began `longest` ago (zero: none waits).
    pub fn requests_waiting(&self, longest: std::time::Duration) {
        let since = if longest.is_zero() {
            0
        } else {
            monotonic_ms()
                .saturating_sub(longest.as_millis() as u64)
                .max(1)
        };
        self.waiting_since.store(since, Ordering::Relaxed);
    }

    pub fn request_finished(&self, thread: usize, bytes: u64) {
        if let Some(t) = self.busy_since.get(thread) {
            t.store(0, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The worker reached `max-requests`: the master will start its replacement.
    pub fn mark_recycling(&self) {
        self.state.store(RECYCLING, Ordering::Release);
    }

    /// The longest any request of this worker has been in the works (on a thread or waiting
    /// for its backend), in ms.
    pub fn longest_busy_ms(&self, now_ms: u64) -> u64 {
        self.busy_since
            .iter()
            .chain(std::iter::once(&self.waiting_since))
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|&t| t != 0)
            .map(|t| now_ms.saturating_sub(t))
            .max()
            .unwrap_or(0)
    }

    fn reset(&self, pid: i32, generation: u64) {
        self.pid.store(pid, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.active_connections.store(0, Ordering::Relaxed);
        for t in &self.busy_since {
            t.store(0, Ordering::Relaxed);
        }
        self.waiting_since.store(0, Ordering::Relaxed);
        self.state.store(RUNNING, Ordering::Release);
    }
}

pub struct Scoreboard {
    slots: NonNull<Slot>,
    /// Which slots the master has handed out (master memory only).
    used: Vec<bool>,
}

// SAFETY: the mapping lives as long as the process and every field in it is an atomic.
unsafe impl Send for Scoreboard {}
// SAFETY: as above; shared access goes through atomics only.
unsafe impl Sync for Scoreboard {}

impl Scoreboard {
    pub fn new() -> nix::Result<Self> {
        let len = NonZeroUsize::new(MAX_SLOTS * std::mem::size_of::<Slot>())
            .ok_or(nix::errno::Errno::EINVAL)?;
        // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid Slot (all
        // atomics at 0 = FREE). It is never unmapped: workers use it until they exit.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(Self {
            slots: ptr.cast(),
            used: vec![false; MAX_SLOTS],
        })
    }

    pub fn slot(&self, index: usize) -> &'static Slot {
        assert!(index < MAX_SLOTS);
        // SAFETY: index is in bounds of the mapping, which is never unmapped.
        unsafe { &*self.slots.as_ptr().add(index) }
    }

    /// Take a free slot for a worker about to be forked.
    pub fn alloc(&mut self) -> Option<usize> {
        let index = self.used.iter().position(|u| !u)?;
        self.used[index] = true;
        let slot = self.slot(index);
        slot.reset(0, 0);
        Some(index)
    }

    pub fn assign(&self, index: usize, pid: i32, generation: u64) {
        let slot = self.slot(index);
        slot.pid.store(pid, Ordering::Relaxed);
        slot.generation.store(generation, Ordering::Relaxed);
    }

    pub fn free(&mut self, index: usize) {
        if let Some(u) = self.used.get_mut(index) {
            *u = false;
            self.slot(index).state.store(FREE, Ordering::Release);
        }
    }
}

/// CLOCK_MONOTONIC in milliseconds: one clock for every process on the machine.
pub fn monotonic_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_and_freed() {
        let mut sb = Scoreboard::new().expect("mmap");
        let a = sb.alloc().expect("slot");
        let b = sb.alloc().expect("slot");
        assert_ne!(a, b);
        sb.slot(a).request_started(3);
        assert!(sb.slot(a).longest_busy_ms(monotonic_ms() + 2000) >= 2000);
        sb.slot(a).request_finished(3, 10);
        assert_eq!(sb.slot(a).longest_busy_ms(monotonic_ms()), 0);
        assert_eq!(sb.slot(a).requests.load(Ordering::Relaxed), 1);
        sb.free(a);
        assert_eq!(sb.alloc(), Some(a));
        assert_eq!(sb.slot(a).requests.load(Ordering::Relaxed), 0);
    }
}
