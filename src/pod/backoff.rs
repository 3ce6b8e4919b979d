//! CrashLoopBackOff timing, as the kubelet does it: the first restart is
//! immediate, then 10 s doubling up to 300 s; a container that ran cleanly for
//! 10 minutes starts over.

use std::time::Duration;

/// Per-container restart backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    reset_after: Duration,
    next: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(
            Duration::from_secs(10),
            Duration::from_secs(300),
            Duration::from_secs(600),
        )
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, reset_after: Duration) -> Self {
        Self {
            base,
            max,
            reset_after,
            next: None,
        }
    }

    /// How long to wait before restarting a container that just exited after
    /// running for `ran_for`.
    pub fn delay_after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.next = None;
        }
        let delay = self.next.unwrap_or(Duration::ZERO);
        self.next = Some(match self.next {
            None => self.base,
            Some(n) => (n * 2).min(self.max),
        });
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| b.delay_after_exit(Duration::from_secs(1)).as_secs())
            .collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn resets_after_ten_minutes_of_clean_running() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.delay_after_exit(Duration::from_secs(1));
        }
        assert_eq!(b.delay_after_exit(Duration::from_secs(601)).as_secs(), 0);
        assert_eq!(b.delay_after_exit(Duration::from_secs(1)).as_secs(), 10);
    }
}
