use std::time::{Duration, Instant};

/// A worker that dies sooner than this after its start counts as a fast death.
const FAST_DEATH: Duration = Duration::from_secs(1);
const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Respawn pacing: workers that die fast are respawned with exponentially growing delay
/// (capped at one second) instead of in a fork loop.
#[derive(Debug, Default)]
pub struct Backoff {
    fast_deaths: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    /// Record a death; returns the delay now imposed on the next spawn, if any.
    pub fn record_death(&mut self, lived: Duration, now: Instant) -> Option<Duration> {
        if lived >= FAST_DEATH {
            self.fast_deaths = 0;
            self.not_before = None;
            return None;
        }
        self.fast_deaths = self.fast_deaths.saturating_add(1);
        let delay = FIRST_DELAY
            .saturating_mul(1u32 << self.fast_deaths.min(16))
            .min(MAX_DELAY);
        self.not_before = Some(now + delay);
        Some(delay)
    }

    /// When the next spawn may happen (None: now).
    pub fn ready_at(&self) -> Option<Instant> {
        self.not_before
    }

    pub fn may_spawn(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_deaths_grow_the_delay_up_to_the_cap() {
        let mut b = Backoff::default();
        let now = Instant::now();
        let d1 = b
            .record_death(Duration::from_millis(5), now)
            .expect("delay");
        let d2 = b
            .record_death(Duration::from_millis(5), now)
            .expect("delay");
        assert!(d2 > d1);
        for _ in 0..20 {
            b.record_death(Duration::from_millis(5), now);
        }
        assert_eq!(b.record_death(Duration::ZERO, now), Some(MAX_DELAY));
        assert!(!b.may_spawn(now));
        assert!(b.may_spawn(now + MAX_DELAY));
    }

    #[test]
    fn a_worker_that_lived_resets_the_backoff() {
        let mut b = Backoff::default();
        let now = Instant::now();
        b.record_death(Duration::ZERO, now);
        assert_eq!(b.record_death(Duration::from_secs(5), now), None);
        assert!(b.may_spawn(now));
    }
}
