//! Per-object exponential backoff for failed reconciles, reset on success.
//!
//! kube-runtime requeues failed objects only as the error policy says (kube-rs/kube #1916),
//! so each controller keeps the number of consecutive failures per object and waits
//! `base * 2^failures`, capped, before the next attempt (as Akri's controller does).

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Consecutive failures per object key, and the delay schedule.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(300))
    }
}

impl Backoff {
    /// A schedule starting at `base` and doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::default(),
        }
    }

    /// Record a failure of `key`; returns how long to wait before retrying it.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        let delay = self
            .base
            .checked_mul(1u32.checked_shl(*n).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        *n = n.saturating_add(1);
        delay
    }

    /// Forget the failures of `key` (after a successful reconcile or when it is deleted).
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// Consecutive failures recorded for `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets_per_object() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay("a").as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        // Another object has its own schedule.
        assert_eq!(b.next_delay("b"), Duration::from_millis(100));
        assert_eq!(b.failures("a"), 6);
        b.reset("a");
        assert_eq!(b.failures("a"), 0);
        assert_eq!(b.next_delay("a"), Duration::from_millis(100));
        assert_eq!(b.failures("b"), 1);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            assert!(b.next_delay("x") <= Duration::from_secs(300));
        }
        assert_eq!(b.next_delay("x"), Duration::from_secs(300));
    }
}
