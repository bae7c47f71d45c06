//! The GCRA arithmetic: one `u64` "theoretical arrival time" (TAT) per bucket.
//!
//! Times are nanoseconds since the limiter's epoch. A bucket whose TAT is at or before `now` is
//! full; each admitted request pushes the TAT one emission interval `T = period / limit` further.
//! A request is admitted at once while the new TAT stays within `burst * T` of `now`, delayed
//! (queue mode) while it stays within `burst * T + max_delay`, and rejected otherwise (a
//! rejection does not move the TAT).

use std::sync::atomic::{AtomicU64, Ordering};

/// How far ahead of now a setting may push a TAT, in ns (u64::MAX / 4, about 146 years).
///
/// The timeline ends at u64::MAX / 2 (see `clock`), and a TAT runs at most `burst * T + T`
/// plus the queue's max delay ahead of now. With both of those at most this span, no TAT
/// saturates, so the arithmetic stays exact; past it, a saturated TAT would stop moving and the
/// bucket would admit everything.
pub(super) const MAX_SPAN: u64 = u64::MAX / 4;

/// Outcome of one GCRA step. All durations in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Admitted now; the bucket holds `slack / interval` more tokens and is full again after
    /// `reset`. (The division is left to whoever needs the count: it is the slowest instruction
    /// here.)
    Allow { slack: u64, reset: u64 },
    /// Admitted after `delay`; the bucket is full again after `reset`.
    Delay { delay: u64, reset: u64 },
    /// Rejected; a request is admitted without delay after `retry_after`, the bucket is full
    /// again after `reset`.
    Reject { retry_after: u64, reset: u64 },
}

/// The `reset` of [`Verdict::ALLOW_UNKNOWN`]; no bucket's, since no TAT runs that far ahead.
pub(super) const UNKNOWN_RESET: u64 = u64::MAX;

#[cfg(feature = "redis")]
impl Verdict {
    /// Admitted without the bucket's state (from a Redis lease, or by a failure policy that
    /// admits): how many tokens are left, and when the bucket is full, is not known.
    pub(super) const ALLOW_UNKNOWN: Verdict = Verdict::Allow {
        slack: 0,
        reset: UNKNOWN_RESET,
    };
}

/// GCRA parameters, fixed when the layer is built.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gcra {
    /// Emission interval `T` (ns per token), at least 1.
    interval: u64,
    /// `burst * T`: how far ahead of `now` the TAT may run for an immediate admission.
    burst_tolerance: u64,
    /// Extra lead allowed in queue mode (0 in rejecting mode).
    max_delay: u64,
}

impl Gcra {
    /// The builder keeps `(burst + 1) * interval` and `max_delay` within [`MAX_SPAN`].
    pub(super) fn new(interval: u64, burst: u32, max_delay: u64) -> Self {
        let interval = interval.max(1);
        Gcra {
            interval,
            burst_tolerance: interval.saturating_mul(u64::from(burst)),
            max_delay,
        }
    }

    pub(super) fn interval(&self) -> u64 {
        self.interval
    }

    /// One step on a bucket whose TAT is `tat`, at `now`. Returns the TAT to store (`None`: leave
    /// it as it is) and the verdict.
    #[inline]
    pub(super) fn step(&self, tat: u64, now: u64) -> (Option<u64>, Verdict) {
        let new_tat = tat.max(now).saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead <= self.burst_tolerance {
            let slack = self.burst_tolerance - ahead;
            return (
                Some(new_tat),
                Verdict::Allow {
                    slack,
                    reset: ahead,
                },
            );
        }
        let delay = ahead - self.burst_tolerance;
        if delay <= self.max_delay {
            (
                Some(new_tat),
                Verdict::Delay {
                    delay,
                    reset: ahead,
                },
            )
        } else {
            let reset = tat.saturating_sub(now);
            (
                None,
                Verdict::Reject {
                    retry_after: delay,
                    reset,
                },
            )
        }
    }

    /// [`step`](Self::step) on a shared atomic TAT: one load and, when admitted, one
    /// compare-exchange (retried only when another thread moved the TAT in between).
    #[inline]
    pub(super) fn step_atomic(&self, cell: &AtomicU64, now: u64) -> Verdict {
        // Relaxed is enough: the TAT is the only shared datum and publishes nothing else.
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let (store, verdict) = self.step(tat, now);
            let Some(new_tat) = store else {
                return verdict;
            };
            match cell.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return verdict,
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 100;

    #[test]
    fn burst_then_reject_then_refill() {
        let g = Gcra::new(T, 3, 0);
        let mut tat = 0;
        for expected_remaining in [2, 1, 0] {
            let (store, v) = g.step(tat, 0);
            assert!(matches!(v, Verdict::Allow { slack, .. } if slack / T == expected_remaining));
            tat = store.unwrap();
        }
        let (store, v) = g.step(tat, 0);
        assert_eq!(store, None);
        assert_eq!(
            v,
            Verdict::Reject {
                retry_after: T,
                reset: 3 * T
            }
        );
        // One interval later exactly one token is back.
        let (store, v) = g.step(tat, T);
        assert_eq!(
            v,
            Verdict::Allow {
                slack: 0,
                reset: 3 * T
            }
        );
        tat = store.unwrap();
        assert!(matches!(g.step(tat, T).1, Verdict::Reject { .. }));
        // After a long idle period the bucket is full, not over-full.
        assert_eq!(
            g.step(tat, 10_000).1,
            Verdict::Allow {
                slack: 2 * T,
                reset: T
            }
        );
    }

    #[test]
    fn queue_reserves_future_slots_up_to_max_delay() {
        let g = Gcra::new(T, 1, 2 * T);
        let mut tat = 0;
        let mut delays = vec![];
        for _ in 0..4 {
            let (store, v) = g.step(tat, 0);
            if let Some(s) = store {
                tat = s;
            }
            delays.push(v);
        }
        assert!(matches!(delays[0], Verdict::Allow { .. }));
        assert_eq!(
            delays[1],
            Verdict::Delay {
                delay: T,
                reset: 2 * T
            }
        );
        assert_eq!(
            delays[2],
            Verdict::Delay {
                delay: 2 * T,
                reset: 3 * T
            }
        );
        assert!(matches!(delays[3], Verdict::Reject { retry_after, .. } if retry_after == 3 * T));
    }

    #[test]
    fn atomic_matches_plain() {
        let g = Gcra::new(T, 2, 0);
        let cell = AtomicU64::new(0);
        assert!(matches!(
            g.step_atomic(&cell, 0),
            Verdict::Allow { slack: T, .. }
        ));
        assert!(matches!(
            g.step_atomic(&cell, 0),
            Verdict::Allow { slack: 0, .. }
        ));
        assert!(matches!(g.step_atomic(&cell, 0), Verdict::Reject { .. }));
        assert_eq!(cell.load(Ordering::Relaxed), 2 * T);
    }
}
